//! The write-api's one error type, and how each error becomes a problem response.
//!
//! Client errors (4xx) carry a message meant for the client and are remembered for an
//! `Idempotency-Key`; everything else is an internal error, logged under an id and answered
//! with that id only (or 503 when the database is unreachable, so clients know to retry).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use ordering_platform::problem::{FieldProblem, Problem};

use crate::domain::DomainError;

/// Why a command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{}", version_conflict(aggregate, expected, *actual))]
    VersionConflict {
        aggregate: &'static str,
        expected: String,
        actual: Option<i64>,
    },
    #[error("a product with sku {0:?} already exists")]
    SkuTaken(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// A refusal already shaped as a problem (extractors, auth).
    #[error("{}", .0.detail)]
    Problem(Problem),
    #[error("the database is unavailable: {0}")]
    DatabaseUnavailable(String),
    /// The command's budget ran out (see [`crate::commands::execute`]); nothing was written.
    #[error("the command took too long and was rolled back")]
    TimedOut,
    #[error("database error: {0}")]
    Database(DieselError),
}

fn version_conflict(aggregate: &str, expected: &str, actual: Option<i64>) -> String {
    match actual {
        Some(v) => format!("the {aggregate} is at version {v}, not {expected}"),
        None => format!("the {aggregate} does not exist yet, so If-Match {expected} cannot hold"),
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl From<DieselError> for ApiError {
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
                if info.constraint_name() == Some("products_sku_key") =>
            {
                Self::SkuTaken(String::new())
            }
            // A connection that dies mid-command surfaces as "unable to send" (no SQLSTATE); a
            // server shutting down as a message without a specific kind. Both mean: retry later.
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            )
            | DieselError::BrokenTransactionManager => Self::DatabaseUnavailable(e.to_string()),
            DieselError::DatabaseError(_, info) if is_unavailable_message(info.message()) => {
                Self::DatabaseUnavailable(e.to_string())
            }
            // The pool's statement_timeout (SQLSTATE 57014, which diesel reports without a kind).
            DieselError::DatabaseError(_, info)
                if info.message().contains("canceling statement due to statement timeout") =>
            {
                Self::TimedOut
            }
            _ => Self::Database(e),
        }
    }
}

/// Server-side disconnects that diesel reports without a specific kind.
fn is_unavailable_message(message: &str) -> bool {
    [
        "terminating connection",
        "connection closed",
        "the database system is",
        "server closed the connection",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApiError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::DatabaseUnavailable(e.to_string())
    }
}

impl ApiError {
    /// Whether the client caused this (4xx): such answers are final and may be remembered.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::DatabaseUnavailable(_) | Self::TimedOut | Self::Database(_))
            && !matches!(self, Self::Problem(p) if p.status >= 500)
    }

    /// The problem answered for this error.
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::Domain(DomainError::Validation(errors)) => Problem::validation(
                errors
                    .iter()
                    .map(|e| FieldProblem {
                        field: e.field.clone(),
                        message: e.message.clone(),
                    })
                    .collect(),
            ),
            Self::Domain(e @ DomainError::InsufficientStock { .. }) => {
                Problem::new(StatusCode::CONFLICT, "insufficient_stock", e.to_string())
            }
            Self::Domain(e @ DomainError::InvalidTransition { .. }) => {
                Problem::new(StatusCode::CONFLICT, "invalid_transition", e.to_string())
            }
            Self::NotFound(what) => Problem::not_found(what),
            Self::VersionConflict { .. } => {
                Problem::new(StatusCode::PRECONDITION_FAILED, "version_conflict", self.to_string())
            }
            Self::SkuTaken(_) => Problem::new(
                StatusCode::CONFLICT,
                "sku_taken",
                "a product with this sku already exists",
            ),
            Self::Forbidden(why) => Problem::new(StatusCode::FORBIDDEN, "forbidden", *why),
            Self::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                self.to_string(),
            ),
            Self::Problem(p) => p.clone(),
            Self::DatabaseUnavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                Problem::unavailable("the database is unavailable; retry shortly")
            }
            Self::TimedOut => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the command took too long and was rolled back; nothing was written, so it is safe to retry",
            )
            .with_retry_after(1),
            Self::Database(e) => Problem::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.to_problem().into_response()
    }
}
