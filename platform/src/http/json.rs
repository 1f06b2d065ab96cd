//! The JSON body extractor: the contract's status for every way a body can be wrong.
//!
//! - over the body limit: 413 `payload_too_large`, at once when the declared `Content-Length`
//!   is over it (without waiting for a body that may never come);
//! - not `Content-Type: application/json`: 415 `unsupported_media_type`;
//! - not JSON at all: 400 `malformed_json`;
//! - JSON of the wrong shape (missing, unknown or mistyped fields, numbers out of range, even
//!   out of a double's range like `1e400`): 422 `validation_failed`, naming the field.
//!
//! The body is parsed once into a `serde_json::Value` and kept: "the same body" for
//! idempotency means the same JSON value, whatever the spacing or key order.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::problem::{FieldProblem, Problem};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A request body parsed as `T`, with the JSON value it came from.
#[derive(Debug, Clone)]
pub struct JsonBody<T> {
    pub value: T,
    pub json: serde_json::Value,
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        if declared_length(req.headers()).is_some_and(|len| len > BODY_LIMIT as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    "the request body could not be read",
                )
            }
        })?;
        if bytes.len() > BODY_LIMIT {
            return Err(too_large());
        }
        let json = match content_type {
            // No body and no content type: an empty command, as `{}`.
            None if bytes.is_empty() => serde_json::Value::Object(Default::default()),
            Some(ct) if is_json(ct.to_str().unwrap_or("")) => parse(&bytes)?,
            _ => {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the request body must be sent with Content-Type: application/json",
                ));
            }
        };
        let value = decode(&json)?;
        Ok(Self { value, json })
    }
}

/// The `Content-Length` the client declared, if it is a number (hyper refuses a malformed or
/// contradictory one before the request gets here).
fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than {} KiB", BODY_LIMIT / 1024),
    )
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json"
}

/// Parses the body as a JSON value. A number beyond a double's range (`1e400`) is valid JSON
/// (RFC 8259 sets no range) that no field can take: 422 naming where it is, as for any other
/// out-of-range value, not 400.
fn parse(bytes: &[u8]) -> Result<serde_json::Value, Problem> {
    let malformed = |e: &serde_json::Error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.to_string().starts_with("number out of range") {
            return malformed(&inner);
        }
        Problem::validation(vec![FieldProblem {
            field: if path == "." { "body".to_owned() } else { path },
            message: "number out of range".to_owned(),
        }])
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

/// Decodes a parsed body into `T`, turning serde's complaint into a field error. Every body
/// of the APIs is a JSON object (serde would otherwise take an array as a struct's fields in
/// order).
pub fn decode<T: DeserializeOwned>(json: &serde_json::Value) -> Result<T, Problem> {
    if !json.is_object() {
        return Err(Problem::validation(vec![FieldProblem {
            field: "body".to_owned(),
            message: "must be a JSON object".to_owned(),
        }]));
    }
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported at its parent's path, with its name only in the message.
        let field = match missing_field(&inner) {
            Some(f) if path == "." => f.to_owned(),
            Some(f) => format!("{path}.{f}"),
            None if path == "." => "body".to_owned(),
            None => path,
        };
        Problem::validation(vec![FieldProblem { field, message: inner }])
    })
}

fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        count: i64,
        lines: Vec<Line>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        quantity: i64,
    }

    fn field(v: serde_json::Value) -> String {
        let p = decode::<Body>(&v).unwrap_err();
        assert_eq!((p.status, p.code.as_str()), (422, "validation_failed"));
        p.errors[0].field.clone()
    }

    #[test]
    fn names_the_offending_field() {
        assert_eq!(field(json!({"lines": []})), "count");
        assert_eq!(field(json!({"count": 1, "lines": [], "extra": 1})), "extra");
        assert_eq!(field(json!({"count": "1", "lines": []})), "count");
        assert_eq!(
            field(json!({"count": 9_223_372_036_854_775_808u64, "lines": []})),
            "count"
        );
        assert_eq!(
            field(json!({"count": 1, "lines": [{"quantity": 1.5}]})),
            "lines[0].quantity"
        );
        assert_eq!(field(json!({"count": 1, "lines": [{}]})), "lines[0].quantity");
        assert_eq!(field(json!([1, 2])), "body");
    }

    #[test]
    fn numbers_beyond_a_double_are_422_at_their_field() {
        for (raw, field) in [
            (r#"{"delta": 1e400}"#, "delta"),
            (r#"{"lines": [{"quantity": -1e999}]}"#, "lines[0].quantity"),
            ("1e400", "body"),
        ] {
            let p = parse(raw.as_bytes()).unwrap_err();
            assert_eq!((p.status, p.code.as_str()), (422, "validation_failed"), "{raw}");
            assert_eq!(p.errors[0].field, field, "{raw}");
        }
        for bad in [r#"{"delta": 1"#, r#"{"delta": 1} x"#, "nul"] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().code, "malformed_json", "{bad}");
        }
        assert_eq!(parse(br#"{"a": [1, 2.5e10]}"#).unwrap(), json!({"a": [1, 2.5e10]}));
    }

    #[test]
    fn content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("text/plain"));
    }
}
