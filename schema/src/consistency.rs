//! Consistency tokens: how a reader learns which view versions reflect a command.
//!
//! The write-api hands one out with every successful command; the read-api waits until its
//! views have reached every version named in it. To clients it is an opaque string. Inside it
//! is the customer it is bound to (whose order the command changed, else the caller's `sub`)
//! and a list of (aggregate type, aggregate id,
//! version) marks, one per aggregate the command changed, packed in 25 bytes each, signed with
//! HMAC-SHA256 ([`ConsistencyKey`], shared by both APIs) and base64url-encoded behind a format
//! prefix. Verifying refuses anything malformed, unsigned, altered or longer than
//! [`MAX_MARKS`], so no client can name versions that were never issued, and a token can
//! never make a reader wait for more than one command's worth of views. The reader decides
//! which marks the caller may use (see the read-api's `http` module): product marks are
//! anyone's, order marks only the bound customer's (or an admin's).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::events::AggregateType;

const PREFIX: &str = "c2.";
const MAC_LEN: usize = 16;
const SUBJECT_LEN: usize = 16;
const MARK_LEN: usize = 1 + 16 + 8;
/// The most marks one token may carry: an order and its (at most 100) products.
pub const MAX_MARKS: usize = 101;
/// The key used when neither `CONSISTENCY_SECRET` nor `JWT_SECRET` is set (only possible with
/// `AUTH=off`): public, so tokens then prove nothing. Fine for a local demo, where every
/// caller is an admin anyway.
pub const DEMO_SECRET: &str = "ordering-demo-consistency-secret (AUTH=off only)";

/// "The view of `aggregate` `id` must be at `version` or later."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionMark {
    pub aggregate: AggregateType,
    pub id: Uuid,
    pub version: i64,
}

/// A consistency token's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// Whose order marks these are: the customer whose order the command changed, else the
    /// `sub` of the caller it was issued to.
    pub subject: Uuid,
    pub marks: Vec<VersionMark>,
}

/// Why a string is not a consistency token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a consistency token issued by this service")]
    Malformed,
    #[error("consistency token names more than {MAX_MARKS} aggregates")]
    TooLarge,
}

/// Signs and verifies consistency tokens.
#[derive(Clone)]
pub struct ConsistencyKey {
    /// The HMAC keyed once, with the format prefix already fed: each token clones this state
    /// instead of hashing the key again.
    keyed: Arc<Hmac<Sha256>>,
}

impl std::fmt::Debug for ConsistencyKey {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsistencyKey")
    }
}

impl ConsistencyKey {
    /// Tokens signed with `secret` (the same on every write-api and read-api instance).
    pub fn new(secret: &[u8]) -> Self {
        // Domain separation: the JWT secret may be reused here (and for cursors).
        let mut key = b"ordering-consistency-token:".to_vec();
        key.extend_from_slice(secret);
        let mut keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes keys of any length");
        keyed.update(PREFIX.as_bytes());
        Self { keyed: Arc::new(keyed) }
    }

    /// The key from `CONSISTENCY_SECRET`, else `JWT_SECRET`, else (possible only with
    /// `AUTH=off`) the public [`DEMO_SECRET`], with a warning. The error says what is wrong
    /// with `CONSISTENCY_SECRET`.
    pub fn from_settings(consistency_secret: Option<&str>, jwt_secret: Option<&str>) -> Result<Self, &'static str> {
        match (consistency_secret, jwt_secret) {
            (Some(s), _) if s.len() < 16 => Err("must be at least 16 bytes long"),
            (Some(s), _) | (None, Some(s)) => Ok(Self::new(s.as_bytes())),
            (None, None) => {
                tracing::warn!(
                    "neither CONSISTENCY_SECRET nor JWT_SECRET is set: consistency tokens are signed with a public demo key; never run this way in production"
                );
                Ok(Self::new(DEMO_SECRET.as_bytes()))
            }
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::clone(&self.keyed)
    }

    /// The `X-Consistency-Token` header value of `token`.
    pub fn sign(&self, token: &ConsistencyToken) -> String {
        let mut payload = Vec::with_capacity(SUBJECT_LEN + token.marks.len() * MARK_LEN);
        payload.extend_from_slice(token.subject.as_bytes());
        for mark in &token.marks {
            payload.push(match mark.aggregate {
                AggregateType::Product => b'p',
                AggregateType::Order => b'o',
            });
            payload.extend_from_slice(mark.id.as_bytes());
            payload.extend_from_slice(&mark.version.to_be_bytes());
        }
        let mut m = self.mac();
        m.update(&payload);
        let mut bytes = m.finalize().into_bytes()[..MAC_LEN].to_vec();
        bytes.extend_from_slice(&payload);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token in a header value written by [`ConsistencyKey::sign`] with this key.
    pub fn verify(&self, s: &str) -> Result<ConsistencyToken, TokenError> {
        let body = s.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        if body.len() > (MAC_LEN + SUBJECT_LEN + MAX_MARKS * MARK_LEN).div_ceil(3) * 4 {
            return Err(TokenError::TooLarge);
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
        if bytes.len() <= MAC_LEN + SUBJECT_LEN || !(bytes.len() - MAC_LEN - SUBJECT_LEN).is_multiple_of(MARK_LEN) {
            return Err(TokenError::Malformed);
        }
        let (mac, payload) = bytes.split_at(MAC_LEN);
        let mut m = self.mac();
        m.update(payload);
        m.verify_truncated_left(mac).map_err(|_| TokenError::Malformed)?;
        let (subject, marks) = payload.split_at(SUBJECT_LEN);
        let marks = marks
            .chunks_exact(MARK_LEN)
            .map(|c| {
                let aggregate = match c[0] {
                    b'p' => AggregateType::Product,
                    b'o' => AggregateType::Order,
                    _ => return Err(TokenError::Malformed),
                };
                let id = Uuid::from_slice(&c[1..17]).map_err(|_| TokenError::Malformed)?;
                let version = c[17..]
                    .first_chunk()
                    .map(|b| i64::from_be_bytes(*b))
                    .ok_or(TokenError::Malformed)?;
                if version < 1 {
                    return Err(TokenError::Malformed);
                }
                Ok(VersionMark { aggregate, id, version })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ConsistencyToken {
            subject: Uuid::from_slice(subject).map_err(|_| TokenError::Malformed)?,
            marks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(aggregate: AggregateType, version: i64) -> VersionMark {
        VersionMark {
            aggregate,
            id: Uuid::now_v7(),
            version,
        }
    }

    fn token(marks: Vec<VersionMark>) -> ConsistencyToken {
        ConsistencyToken {
            subject: Uuid::now_v7(),
            marks,
        }
    }

    #[test]
    fn round_trips() {
        let key = ConsistencyKey::new(b"secret");
        let t = token(vec![mark(AggregateType::Order, 1), mark(AggregateType::Product, 42)]);
        assert_eq!(key.verify(&key.sign(&t)), Ok(t));
    }

    #[test]
    fn refuses_garbage_forgeries_and_alterations() {
        let key = ConsistencyKey::new(b"secret");
        for bad in ["", "c2.", "c2.!!!", "x1.AAAA", "c2.AAAA", "c1.cA"] {
            assert_eq!(key.verify(bad), Err(TokenError::Malformed), "{bad}");
        }
        let t = token(vec![mark(AggregateType::Product, 3)]);
        let signed = key.sign(&t);
        assert_eq!(
            ConsistencyKey::new(b"other").verify(&signed),
            Err(TokenError::Malformed)
        );
        // Any change to the subject or a mark breaks the MAC.
        let mut bytes = URL_SAFE_NO_PAD.decode(&signed[PREFIX.len()..]).unwrap();
        for i in MAC_LEN..bytes.len() {
            bytes[i] ^= 1;
            let altered = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes));
            assert_eq!(key.verify(&altered), Err(TokenError::Malformed), "byte {i}");
            bytes[i] ^= 1;
        }
        let zero = token(vec![mark(AggregateType::Order, 0)]);
        assert_eq!(key.verify(&key.sign(&zero)), Err(TokenError::Malformed));
    }

    #[test]
    fn refuses_tokens_naming_too_many_aggregates() {
        let key = ConsistencyKey::new(b"secret");
        let big = token((0..MAX_MARKS + 1).map(|_| mark(AggregateType::Product, 1)).collect());
        assert_eq!(key.verify(&key.sign(&big)), Err(TokenError::TooLarge));
        let max = token((0..MAX_MARKS).map(|_| mark(AggregateType::Product, 1)).collect());
        assert!(key.verify(&key.sign(&max)).is_ok());
    }

    #[test]
    fn the_key_comes_from_the_settings() {
        let t = token(vec![mark(AggregateType::Product, 1)]);
        let jwt = ConsistencyKey::from_settings(None, Some("jwt-secret-0123456789")).unwrap();
        let own = ConsistencyKey::from_settings(Some("own-secret-0123456789"), Some("jwt-secret-0123456789")).unwrap();
        assert!(own.verify(&jwt.sign(&t)).is_err());
        assert_eq!(
            ConsistencyKey::new(b"jwt-secret-0123456789").verify(&jwt.sign(&t)),
            Ok(t.clone())
        );
        let demo = ConsistencyKey::from_settings(None, None).unwrap();
        assert!(
            ConsistencyKey::new(DEMO_SECRET.as_bytes())
                .verify(&demo.sign(&t))
                .is_ok()
        );
        assert!(ConsistencyKey::from_settings(Some("short"), None).is_err());
    }
}
