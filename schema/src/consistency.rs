//! Consistency tokens: how a reader learns which view versions reflect a command.
//!
//! The write-api hands one out with every successful command; the read-api waits until its
//! views have reached every version named in it. To clients it is an opaque string. Inside it
//! is a list of (aggregate type, aggregate id, version) marks, one per aggregate the command
//! changed, packed in 25 bytes each and base64url-encoded behind a format prefix. Decoding
//! refuses anything malformed or longer than [`MAX_MARKS`], so a client-made token can never
//! make a reader wait for more than one command's worth of views.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::events::AggregateType;

const PREFIX: &str = "c1.";
const MARK_LEN: usize = 1 + 16 + 8;
/// The most marks one token may carry: an order and its (at most 100) products.
pub const MAX_MARKS: usize = 101;

/// "The view of `aggregate` `id` must be at `version` or later."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionMark {
    pub aggregate: AggregateType,
    pub id: Uuid,
    pub version: i64,
}

/// A decoded consistency token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
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

impl ConsistencyToken {
    /// Encodes the token for the `X-Consistency-Token` header.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(self.marks.len() * MARK_LEN);
        for mark in &self.marks {
            bytes.push(match mark.aggregate {
                AggregateType::Product => b'p',
                AggregateType::Order => b'o',
            });
            bytes.extend_from_slice(mark.id.as_bytes());
            bytes.extend_from_slice(&mark.version.to_be_bytes());
        }
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Decodes a header value written by [`ConsistencyToken::encode`].
    pub fn decode(s: &str) -> Result<Self, TokenError> {
        let body = s.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        if body.len() > (MAX_MARKS * MARK_LEN).div_ceil(3) * 4 {
            return Err(TokenError::TooLarge);
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
        if bytes.is_empty() || bytes.len() % MARK_LEN != 0 {
            return Err(TokenError::Malformed);
        }
        let marks = bytes
            .chunks_exact(MARK_LEN)
            .map(|c| {
                let aggregate = match c[0] {
                    b'p' => AggregateType::Product,
                    b'o' => AggregateType::Order,
                    _ => return Err(TokenError::Malformed),
                };
                let id = Uuid::from_slice(&c[1..17]).map_err(|_| TokenError::Malformed)?;
                let version = i64::from_be_bytes(c[17..25].try_into().expect("8 bytes"));
                if version < 1 {
                    return Err(TokenError::Malformed);
                }
                Ok(VersionMark { aggregate, id, version })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { marks })
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

    #[test]
    fn round_trips() {
        let token = ConsistencyToken {
            marks: vec![mark(AggregateType::Order, 1), mark(AggregateType::Product, 42)],
        };
        assert_eq!(ConsistencyToken::decode(&token.encode()), Ok(token));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "c1.", "c1.!!!", "x1.AAAA", "c1.AAAA", "c2.cA"] {
            assert_eq!(ConsistencyToken::decode(bad), Err(TokenError::Malformed), "{bad}");
        }
        let zero = ConsistencyToken {
            marks: vec![mark(AggregateType::Order, 0)],
        };
        assert_eq!(ConsistencyToken::decode(&zero.encode()), Err(TokenError::Malformed));
    }

    #[test]
    fn refuses_tokens_naming_too_many_aggregates() {
        let big = ConsistencyToken {
            marks: (0..MAX_MARKS + 1).map(|_| mark(AggregateType::Product, 1)).collect(),
        };
        assert_eq!(ConsistencyToken::decode(&big.encode()), Err(TokenError::TooLarge));
        let max = ConsistencyToken {
            marks: (0..MAX_MARKS).map(|_| mark(AggregateType::Product, 1)).collect(),
        };
        assert!(ConsistencyToken::decode(&max.encode()).is_ok());
    }
}
