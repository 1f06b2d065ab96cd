//! The read-api's one error type and its problem+json mapping.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ordering_platform::problem::{FieldProblem, Problem};

use crate::cache::LoadError;
use crate::consistency::WaitError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// 404 `not_found`: no such view, a path id that is not a UUID, or another customer's data.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 422 `validation_failed`: bad query parameters.
    #[error("invalid query parameters")]
    Validation(Vec<FieldProblem>),
    /// 400 `invalid_header`.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// 503 `not_yet_consistent`: the views did not reflect the command in time.
    #[error("the views do not reflect the command yet")]
    NotYetConsistent,
    /// 503 `too_many_waiters`: `CONSISTENCY_MAX_WAITERS` requests are waiting already.
    #[error("too many requests are waiting for the views")]
    TooManyWaiters,
    /// 503: PostgreSQL could not answer.
    #[error("view store unavailable: {0}")]
    Store(String),
    /// Authentication failed (its problem is already made).
    #[error("unauthorized")]
    Auth(Problem),
}

impl From<LoadError> for ReadError {
    fn from(e: LoadError) -> Self {
        Self::Store(e.0.to_string())
    }
}

impl From<WaitError> for ReadError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => Self::NotYetConsistent,
            WaitError::TooManyWaiters => Self::TooManyWaiters,
            WaitError::Database(m) => Self::Store(m),
        }
    }
}

impl From<Problem> for ReadError {
    fn from(p: Problem) -> Self {
        Self::Auth(p)
    }
}

impl From<ReadError> for Problem {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NotFound(what) => Problem::not_found(what),
            ReadError::Validation(errors) => {
                let mut p = Problem::validation(errors);
                p.detail = "the query parameters are invalid".to_owned();
                p
            }
            ReadError::InvalidHeader(detail) => Problem::new(StatusCode::BAD_REQUEST, "invalid_header", detail),
            ReadError::NotYetConsistent => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_yet_consistent",
                "the views do not reflect the command yet; retry shortly",
            )
            .with_retry_after(1),
            ReadError::TooManyWaiters => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_waiters",
                "too many requests are waiting for the views to reflect their commands; retry shortly",
            )
            .with_retry_after(1),
            ReadError::Store(detail) => {
                tracing::warn!(error = %detail, "view store unavailable");
                Problem::unavailable("the views are unavailable right now; retry shortly")
            }
            ReadError::Auth(p) => p,
        }
    }
}

impl IntoResponse for ReadError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

/// One refused query parameter.
pub fn field(name: &str, message: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: name.to_owned(),
        message: message.into(),
    }
}
