//! RFC 9457 problem details: the one shape of every 4xx and 5xx answer.
//!
//! The split of errors follows crates.io's policy: a client error carries a message meant for
//! the client; an internal error is logged with a fresh id and answered with that id only, so
//! nothing about the server (queries, hosts, secrets) leaks into a response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One refused field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldProblem {
    /// Where in the body: `price_cents`, `lines[2].quantity`, ...
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem with the contract's stable `code`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:ordering:problem:<code>`).
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case identifier clients can branch on.
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// For internal errors: the id under which the error was logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            type_uri: format!("urn:ordering:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            errors: Vec::new(),
            error_id: None,
            retry_after_secs: None,
        }
    }

    /// 422 `validation_failed` listing every refused field.
    pub fn validation(errors: Vec<FieldProblem>) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "the request body has invalid fields",
        );
        p.errors = errors;
        p
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 503 `service_unavailable`, for a dependency that is down; clients may retry.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", detail).with_retry_after(1)
    }

    /// A 500 for an unexpected failure: logs `error` under a new id and answers with the id only.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        tracing::error!(error_id = %id, error = %error, "internal error");
        let mut p = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("an internal error occurred; quote error id {id} when reporting it"),
        );
        p.error_id = Some(id);
        p
    }

    /// Adds a `Retry-After` header (seconds).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry = self.retry_after_secs;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response();
        if let Some(secs) = retry {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // RFC 9110 §15.5.2: a 401 names the scheme that would succeed; ours is the only one.
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_contract_fields() {
        let p = Problem::validation(vec![FieldProblem {
            field: "sku".into(),
            message: "bad".into(),
        }]);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["code"], "validation_failed");
        assert_eq!(v["type"], "urn:ordering:problem:validation_failed");
        assert_eq!(v["errors"][0]["field"], "sku");
        assert!(v.get("error_id").is_none());
    }

    #[test]
    fn internal_errors_reveal_only_an_id() {
        let p = Problem::internal(&"password=hunter2 at db:5432");
        let body = serde_json::to_string(&p).unwrap();
        assert!(!body.contains("hunter2"));
        assert!(body.contains(p.error_id.as_deref().unwrap()));
    }
}
