//! The read-api's errors, their problem+json mapping, and how their causes are logged.

use std::error::Error;
use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use diesel_async::pooled_connection::deadpool::PoolError;
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
    #[error("view store unavailable")]
    Store(#[from] StoreError),
    /// 503: PostgreSQL could not answer a read made through the cache.
    #[error("view store unavailable")]
    Load(#[from] LoadError),
    /// Authentication failed (its problem is already made).
    #[error("unauthorized")]
    Auth(Problem),
}

/// Why PostgreSQL could not answer a read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("no connection to the view store")]
    Connection(#[from] PoolError),
    /// A query failed.
    #[error("view store query failed")]
    Query(#[from] diesel::result::Error),
}

impl From<PoolError> for ReadError {
    fn from(e: PoolError) -> Self {
        Self::Store(e.into())
    }
}

impl From<diesel::result::Error> for ReadError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<WaitError> for ReadError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout => Self::NotYetConsistent,
            WaitError::TooManyWaiters => Self::TooManyWaiters,
            WaitError::Database(e) => Self::Store(e),
        }
    }
}

/// An error and its sources, `: `-separated, for logs (the JSON log format records an error
/// field by its `Display` alone).
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

fn unavailable(cause: &(dyn Error + 'static)) -> Problem {
    tracing::warn!(error = %ErrorChain(cause), "view store unavailable");
    Problem::unavailable("the views are unavailable right now; retry shortly")
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
            ReadError::Store(e) => unavailable(&e),
            ReadError::Load(e) => unavailable(&e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::LoadError;

    #[test]
    fn store_failures_keep_their_source_and_answer_503() {
        let direct = ReadError::from(diesel::result::Error::NotFound);
        let cached = ReadError::from(LoadError::from(StoreError::from(diesel::result::Error::NotFound)));
        for e in [direct, cached] {
            assert!(
                ErrorChain(&e).to_string().ends_with(": Record not found"),
                "{}",
                ErrorChain(&e)
            );
            let p = Problem::from(e);
            assert_eq!((p.status, p.code.as_str()), (503, "service_unavailable"));
        }
    }
}
