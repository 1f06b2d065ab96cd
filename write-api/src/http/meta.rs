//! The request headers a command reads: `If-Match`, `Idempotency-Key`, `traceparent` and
//! `tracestate`, with the caller and the scope of its idempotency key, as one extractor. A
//! malformed `If-Match` or `Idempotency-Key` is 400 `invalid_header`; a malformed
//! `traceparent` is ignored, as W3C Trace Context asks.

use axum::extract::{FromRef, FromRequestParts, MatchedPath, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use ordering_platform::auth::{Authenticator, Caller};
use ordering_platform::http::layers::trace_id_of;
use ordering_platform::problem::Problem;
use ordering_platform::trace_context::{TRACEPARENT, TRACESTATE};
use ordering_schema::consistency::{ConsistencyKey, ConsistencyToken, VersionMark};
use uuid::Uuid;

use crate::app::ReadApiUrl;

/// A parsed `If-Match` precondition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: any existing version.
    Any,
    /// `"<version>"` or `W/"<version>"`.
    Version(i64),
}

impl IfMatch {
    /// Parses the header value.
    pub fn parse(v: &str) -> Option<Self> {
        let v = v.trim();
        if v == "*" {
            return Some(Self::Any);
        }
        let tag = v.strip_prefix("W/").unwrap_or(v);
        let inner = tag.strip_prefix('"')?.strip_suffix('"')?;
        if inner.is_empty() || inner.len() > 19 || !inner.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        inner.parse().ok().map(Self::Version)
    }

    /// Whether an aggregate at `version` meets the precondition.
    pub fn matches(self, version: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Version(v) => v == version,
        }
    }

    /// The precondition as written, for error messages.
    pub fn describe(self) -> String {
        match self {
            Self::Any => "*".to_owned(),
            Self::Version(v) => v.to_string(),
        }
    }
}

/// Everything a command needs from the request besides its body and path.
#[derive(Clone, Debug)]
pub struct CommandMeta {
    pub caller: Caller,
    pub if_match: Option<IfMatch>,
    /// The `Idempotency-Key` (1 to 255 visible ASCII characters).
    pub idempotency_key: Option<String>,
    /// The caller's W3C trace context (a well-formed `traceparent`, and its `tracestate` if
    /// given), stored with the command's events when the service does not trace itself
    /// (`outbox::append`).
    pub trace_headers: serde_json::Map<String, serde_json::Value>,
    /// The scope of an idempotency key, with the caller: `METHOD path`, with the ids in the
    /// path written as canonical UUIDs however the client spelled them.
    pub target: String,
    /// Signs the answer's consistency token.
    pub consistency: ConsistencyKey,
    /// Where created resources can be read (their `Location`).
    pub read_api_url: ReadApiUrl,
}

impl CommandMeta {
    /// The consistency token covering `marks`, bound to the customer whose orders they name
    /// (`owner`), else to the caller. Bound to the owner, not to whoever issued the command: an
    /// admin who ships a customer's order hands the token on, and the customer's own read must
    /// wait for it; anyone else's read ignores its order marks.
    pub fn consistency_token(&self, owner: Option<Uuid>, marks: Vec<VersionMark>) -> String {
        self.consistency.sign(&ConsistencyToken {
            subject: owner.unwrap_or(self.caller.subject),
            marks,
        })
    }
}

fn invalid_header(name: &str, rule: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_header",
        format!("the {name} header is malformed: {rule}"),
    )
}

fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Problem> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid_header(name, "it must be given once"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| invalid_header(name, "it must be visible ASCII"))
}

/// `METHOD path` with the route's path ids parsed as UUIDs and written canonically, so the
/// spellings of one id (upper-case, without hyphens, `urn:uuid:`, braced) name one target and a
/// key applies once whichever is used. An id that is not a UUID is kept as sent: such a request
/// is 404, and remembering it under its own spelling harms nothing. Outside a matched route
/// (never, for a command), the raw path.
async fn idempotency_target<S: Send + Sync>(parts: &mut Parts, state: &S) -> String {
    let Some(route) = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_owned()) else {
        return format!("{} {}", parts.method, parts.uri.path());
    };
    let mut path = route;
    // Not UTF-8 after decoding: not a UUID either, and the handler answers 404.
    if let Ok(params) = RawPathParams::from_request_parts(parts, state).await {
        for (name, value) in &params {
            let id = Uuid::try_parse(value).map_or_else(|_| value.to_owned(), |id| id.to_string());
            path = path.replace(&format!("{{{name}}}"), &id);
        }
    }
    format!("{} {path}", parts.method)
}

/// Parses the idempotency key rule of the contract: 1 to 255 visible ASCII characters.
pub fn parse_idempotency_key(v: &str) -> Option<&str> {
    (!v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic())).then_some(v)
}

impl<S> FromRequestParts<S> for CommandMeta
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
    ConsistencyKey: FromRef<S>,
    ReadApiUrl: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let headers = &parts.headers;
        let if_match = single(headers, header::IF_MATCH.as_str())?
            .map(|v| {
                IfMatch::parse(v)
                    .ok_or_else(|| invalid_header("If-Match", "expected \"<version>\", W/\"<version>\" or *"))
            })
            .transpose()?;
        let idempotency_key = single(headers, "idempotency-key")?
            .map(|v| {
                parse_idempotency_key(v)
                    .map(str::to_owned)
                    .ok_or_else(|| invalid_header("Idempotency-Key", "expected 1 to 255 visible ASCII characters"))
            })
            .transpose()?;
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let mut trace_headers = serde_json::Map::new();
        if let Some(tp) = text(TRACEPARENT).filter(|v| trace_id_of(v).is_some()) {
            trace_headers.insert(TRACEPARENT.to_owned(), tp.into());
            if let Some(ts) = text(TRACESTATE).filter(|v| !v.is_empty()) {
                trace_headers.insert(TRACESTATE.to_owned(), ts.into());
            }
        }
        let target = idempotency_target(parts, state).await;
        Ok(Self {
            caller,
            if_match,
            idempotency_key,
            trace_headers,
            target,
            consistency: ConsistencyKey::from_ref(state),
            read_api_url: ReadApiUrl::from_ref(state),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        assert_eq!(IfMatch::parse("\"3\""), Some(IfMatch::Version(3)));
        assert_eq!(IfMatch::parse("W/\"3\""), Some(IfMatch::Version(3)));
        assert_eq!(IfMatch::parse("*"), Some(IfMatch::Any));
        for bad in [
            "3",
            "\"\"",
            "\"-1\"",
            "\"x\"",
            "\"99999999999999999999\"",
            "W/3",
            "\"1\", \"2\"",
        ] {
            assert_eq!(IfMatch::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn idempotency_keys() {
        assert!(parse_idempotency_key("order-1").is_some());
        assert!(parse_idempotency_key(&"k".repeat(255)).is_some());
        assert!(parse_idempotency_key(&"k".repeat(256)).is_none());
        assert!(parse_idempotency_key("").is_none());
        assert!(parse_idempotency_key("has space").is_none());
    }
}
