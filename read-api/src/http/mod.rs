//! The query endpoints, one module per resource, and what they share: query parsing,
//! consistency tokens, conditional answers.
//!
//! Every endpoint honours `X-Consistency-Token`: one not signed with `CONSISTENCY_SECRET`
//! (forged or altered) is 400 `invalid_header` before anything else. Of a valid token, a reader
//! uses only the marks it may read: product marks (the catalog is public) always; order marks
//! only when the caller is the customer the token is bound to, or an admin. The others are
//! dropped, so a token naming an order the caller may not read is answered exactly as if it
//! had not been sent, without waiting, and reveals nothing about that order.

pub mod customers;
pub mod orders;
pub mod products;
pub mod schemas;

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use ordering_platform::auth::Caller;
use ordering_schema::consistency::{TokenError, VersionMark};
use ordering_schema::events::AggregateType;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::AppState;
use crate::cache::{Entry, LoadError, Source};
use crate::error::{ReadError, StoreError, field};
use crate::views;

/// `X-Consistency-Token`.
pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("x-consistency-token");
/// `X-Cache`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The marks of the request's consistency token that `caller` (`None`: an unauthenticated
/// catalog read) may wait for; `None` if it sent no token or none of them (400 if the token is
/// malformed, forged or altered).
pub fn consistency_marks(
    app: &AppState,
    headers: &HeaderMap,
    caller: Option<&Caller>,
) -> Result<Option<Vec<VersionMark>>, ReadError> {
    let Some(raw) = headers.get(&CONSISTENCY_TOKEN) else {
        return Ok(None);
    };
    let raw = raw
        .to_str()
        .map_err(|_| ReadError::InvalidHeader("X-Consistency-Token is not ASCII".into()))?;
    let token = app
        .consistency
        .verify(raw.trim())
        .map_err(|e: TokenError| ReadError::InvalidHeader(format!("X-Consistency-Token: {e}")))?;
    let reads_orders = caller.is_some_and(|c| c.is_admin() || c.subject == token.subject);
    let marks: Vec<VersionMark> = token
        .marks
        .into_iter()
        .filter(|m| m.aggregate == AggregateType::Product || reads_orders)
        .collect();
    Ok((!marks.is_empty()).then_some(marks))
}

/// Waits until the views reflect every mark of the request's token (if any).
pub async fn await_consistency(app: &AppState, marks: Option<&[VersionMark]>) -> Result<(), ReadError> {
    match marks {
        // Boxed: most requests carry no token, and their futures stay small.
        Some(m) if !m.is_empty() => Ok(Box::pin(app.hub.wait_for(&app.pool, m, app.consistency_wait)).await?),
        _ => Ok(()),
    }
}

/// The single view of `aggregate` named by the path id `raw_id`, as the request of `caller` may
/// see it: after waiting for its consistency token, and never older than the version the token
/// names for this aggregate (a cached entry from before the caller's own write is not served).
/// With PostgreSQL down, a token naming this view alone is still answered from the cache when
/// it holds the token's version or a later one.
pub async fn consistent_view(
    app: &AppState,
    headers: &HeaderMap,
    caller: Option<&Caller>,
    aggregate: AggregateType,
    raw_id: &str,
) -> Result<(Entry, Source), ReadError> {
    let what = aggregate.as_str();
    let marks = consistency_marks(app, headers, caller)?;
    let id = path_id(raw_id, what)?;
    let min_version = marks
        .iter()
        .flatten()
        .filter(|m| m.aggregate == aggregate && m.id == id)
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    match await_consistency(app, marks.as_deref()).await {
        Ok(()) => {}
        // PostgreSQL can not say whether the views reflect the token. When the token names
        // this view alone, a cached entry at its version or later says so (the tiers only
        // ever hold committed versions): the answer is the one PostgreSQL would have allowed.
        Err(ReadError::Store(e)) => {
            let only_this = marks.iter().flatten().all(|m| m.aggregate == aggregate && m.id == id);
            let cached = if only_this {
                app.cache.cached_view(aggregate, id, min_version).await
            } else {
                None
            };
            return cached.map(|entry| (entry, Source::Hit)).ok_or(ReadError::Store(e));
        }
        Err(e) => return Err(e),
    }
    let pool = app.pool.clone();
    let load = move || {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.map_err(StoreError::from)?;
            views::single(&mut conn, aggregate, id)
                .await
                .map_err(|e| LoadError::from(StoreError::from(e)))
        }
    };
    let (entry, source) = app.cache.view(aggregate, id, min_version, load).await?;
    Ok((entry.ok_or(ReadError::NotFound(what))?, source))
}

/// A path id: anything but a UUID is "not found", as the contract asks.
pub fn path_id(raw: &str, what: &'static str) -> Result<Uuid, ReadError> {
    Uuid::parse_str(raw).map_err(|_| ReadError::NotFound(what))
}

/// Whether `If-None-Match` names `etag` (or `*`); weak tags compare equal to strong ones.
pub fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(v) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let want = etag.as_bytes();
    v.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == want)
}

/// The 200 (or 304) answer of a JSON body with its validator and cache status.
pub fn answer(headers: &HeaderMap, body: Bytes, etag: HeaderValue, source: Source) -> Response {
    let fresh = not_modified(headers, &etag);
    let mut res = if fresh {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body))
    };
    if fresh {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
    } else {
        res.headers_mut().insert(header::CONTENT_TYPE, JSON);
    }
    let h = res.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(X_CACHE, source.header());
    res
}

/// A strong validator from a body's content (lists and summaries).
pub fn etag_of_body(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12]))).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The query string as name → value, refusing unknown and repeated parameters.
pub fn query_params(raw: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, ReadError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ReadError::Validation(vec![field("query", format!("unreadable query string: {e}"))]))?;
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            errors.push(field(&k, "unknown query parameter"));
        } else if v.contains('\0') {
            errors.push(field(&k, "must not contain NUL"));
        } else if out.insert(k.clone(), v).is_some() {
            errors.push(field(&k, "given more than once"));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ReadError::Validation(errors))
    }
}

/// `limit`: 1 to 100, default 20.
pub fn limit_param(q: &HashMap<String, String>, errors: &mut Vec<ordering_platform::problem::FieldProblem>) -> i64 {
    match q.get("limit") {
        None => 20,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                errors.push(field("limit", "must be an integer from 1 to 100"));
                20
            }
        },
    }
}

/// `{"items": [...], "next_cursor": ...}` from pre-serialized items.
pub fn page_body<'a>(items: impl Iterator<Item = &'a str>, next_cursor: Option<String>) -> Bytes {
    let mut out = String::from("{\"items\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push_str("],\"next_cursor\":");
    out.push_str(&serde_json::to_string(&next_cursor).unwrap_or_else(|_| "null".into()));
    out.push('}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_variants() {
        let tag = HeaderValue::from_static("\"3\"");
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &tag));
        for v in ["\"3\"", "W/\"3\"", "\"1\", \"3\"", "*"] {
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            assert!(not_modified(&h, &tag), "{v}");
        }
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"4\""));
        assert!(!not_modified(&h, &tag));
    }

    #[test]
    fn query_parameters_are_strict() {
        assert!(query_params(Some("limit=5"), &["limit"]).is_ok());
        assert!(query_params(Some("limit=5&limit=6"), &["limit"]).is_err());
        assert!(query_params(Some("colour=red"), &["limit"]).is_err());
        let mut errors = Vec::new();
        let q = query_params(Some("limit=1000"), &["limit"]).unwrap();
        limit_param(&q, &mut errors);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn pages_are_json() {
        let b = page_body(["{\"a\":1}", "{\"b\":2}"].into_iter(), Some("c".into()));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 2);
        assert_eq!(v["next_cursor"], "c");
    }
}
