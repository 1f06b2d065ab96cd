//! A cached view as both tiers hold it, and its encoding in Redis.

use axum::http::HeaderValue;
use bytes::Bytes;
use uuid::Uuid;

use crate::views::StoredView;

/// A cached view, ready to send.
#[derive(Clone, Debug)]
pub struct Entry {
    pub version: i64,
    /// The customer an order belongs to.
    pub owner: Option<Uuid>,
    pub body: Bytes,
    /// `"<version>"`.
    pub etag: HeaderValue,
}

impl Entry {
    /// The entry of a view read from PostgreSQL.
    pub fn from_view(v: StoredView) -> Self {
        Self {
            version: v.version,
            owner: v.owner,
            body: Bytes::from(v.doc),
            etag: etag_of_version(v.version),
        }
    }

    /// `<version>|<owner>|<body>`: the version leads, so the Redis scripts can compare it.
    pub(super) fn encode(&self) -> Vec<u8> {
        let owner = self.owner.map(|o| o.to_string()).unwrap_or_default();
        let mut out = format!("{}|{}|", self.version, owner).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    pub(super) fn decode(raw: &[u8]) -> Option<Self> {
        let mut parts = raw.splitn(3, |b| *b == b'|');
        let version: i64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let owner = parts.next()?;
        let owner = if owner.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(std::str::from_utf8(owner).ok()?).ok()?)
        };
        let body = Bytes::copy_from_slice(parts.next()?);
        Some(Self {
            version,
            owner,
            body,
            etag: etag_of_version(version),
        })
    }
}

/// `"<version>"` as a header value.
pub fn etag_of_version(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let owner = Uuid::now_v7();
        let e = Entry {
            version: 7,
            owner: Some(owner),
            body: Bytes::from_static(b"{\"a\":\"x|y\"}"),
            etag: etag_of_version(7),
        };
        let d = Entry::decode(&e.encode()).unwrap();
        assert_eq!((d.version, d.owner, d.body.clone()), (7, Some(owner), e.body.clone()));
        assert_eq!(d.etag, "\"7\"");
        let anon = Entry { owner: None, ..e };
        assert_eq!(Entry::decode(&anon.encode()).unwrap().owner, None);
        assert!(Entry::decode(b"garbage").is_none());
    }
}
