//! Opaque, signed keyset cursors.
//!
//! A cursor is the key of the last row of a page, serialized, base64url-encoded and signed
//! with HMAC-SHA256 over the key *and* the query it belongs to (filters, sort, customer). A
//! client can not forge one, and can not replay one against another customer's list or other
//! filters: both fail the signature and are refused as invalid.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

/// Signs and checks cursors.
#[derive(Clone)]
pub struct Cursors {
    key: std::sync::Arc<Vec<u8>>,
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cursors")
    }
}

const MAC_LEN: usize = 16;

impl Cursors {
    /// Cursors signed with `secret` (shared by every instance serving the same clients).
    pub fn new(secret: &[u8]) -> Self {
        // Domain separation: the JWT secret may be reused here.
        let mut key = b"ordering-read-api-cursor:".to_vec();
        key.extend_from_slice(secret);
        Self {
            key: std::sync::Arc::new(key),
        }
    }

    fn mac(&self, payload: &[u8], scope: &str) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        m.update(scope.as_bytes());
        m.update(&[0]);
        m.update(payload);
        m.finalize().into_bytes()[..MAC_LEN].to_vec()
    }

    /// The cursor of `key` for the query `scope`.
    pub fn encode<T: Serialize>(&self, key: &T, scope: &str) -> String {
        let payload = serde_json::to_vec(key).unwrap_or_default();
        let mut bytes = self.mac(&payload, scope);
        bytes.extend_from_slice(&payload);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The key in `cursor`, if it was issued by us for `scope`.
    pub fn decode<T: DeserializeOwned>(&self, cursor: &str, scope: &str) -> Option<T> {
        if cursor.len() > 2048 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        if bytes.len() <= MAC_LEN {
            return None;
        }
        let (mac, payload) = bytes.split_at(MAC_LEN);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        m.update(scope.as_bytes());
        m.update(&[0]);
        m.update(payload);
        m.verify_truncated_left(mac).ok()?;
        serde_json::from_slice(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let c = Cursors::new(b"secret");
        let s = c.encode(&("name", 5), "scope-a");
        assert_eq!(c.decode::<(String, i64)>(&s, "scope-a"), Some(("name".into(), 5)));
        assert_eq!(c.decode::<(String, i64)>(&s, "scope-b"), None);
        assert_eq!(Cursors::new(b"other").decode::<(String, i64)>(&s, "scope-a"), None);
        let mut tampered = s.clone();
        tampered.pop();
        tampered.push(if s.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(c.decode::<(String, i64)>(&tampered, "scope-a"), None);
        assert_eq!(c.decode::<(String, i64)>("!!", "scope-a"), None);
    }
}
