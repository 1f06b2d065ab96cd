//! What to do when applying a batch fails: retry it, or give up on the message.
//!
//! PostgreSQL says why it refused with a SQLSTATE, but diesel-async 0.9 does not pass it on:
//! it maps a handful of codes to [`DatabaseErrorKind`] and keeps the rest of the server's
//! error (`tokio_postgres::error::DbError`) behind a private wrapper that only exposes the
//! message, detail and hint. So errors are classified by kind where diesel has one and by
//! the server's (English, the default `lc_messages`) message otherwise; each message below
//! names the SQLSTATE it stands for. A message not recognised is [`Failure::Unexpected`]:
//! retried a bounded number of times, then treated as a refusal, so a translated or new
//! message costs a few retries, never a stall.

use diesel::result::{DatabaseErrorKind, Error};
use diesel_async::pooled_connection::deadpool::PoolError;

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("no database connection: {0}")]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Database(#[from] Error),
}

/// What a failure says about the messages being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The database is unavailable or the transaction lost a race: the same messages will
    /// apply later (connection loss, 40001, 40P01, 57P01-57P03, 57014, 55P03, 53xxx).
    Transient,
    /// The database refuses what a message says (classes 22, 23, 42): it never will apply.
    Refused,
    /// Anything else: retried a bounded number of times, then treated as [`Failure::Refused`].
    Unexpected,
}

/// Server messages and what they mean (by SQLSTATE).
const MESSAGES: &[(&str, Failure)] = &[
    ("deadlock detected", Failure::Transient),          // 40P01
    ("could not serialize access", Failure::Transient), // 40001
    ("terminating connection", Failure::Transient),     // 57P01 admin shutdown, 57P02
    ("the database system is", Failure::Transient),     // 57P03 starting up / shutting down
    ("too many connections", Failure::Transient),       // 53300
    ("remaining connection slots", Failure::Transient), // 53300
    ("out of memory", Failure::Transient),              // 53200
    ("no space left on device", Failure::Transient),    // 53100
    ("could not extend file", Failure::Transient),      // 53100
    ("canceling statement due to", Failure::Transient), // 57014 statement or lock timeout
    ("could not obtain lock", Failure::Transient),      // 55P03
    ("invalid byte sequence", Failure::Refused),        // 22021
    ("unsupported unicode escape", Failure::Refused),   // 22P05
    ("untranslatable character", Failure::Refused),     // 22P05
    ("out of range", Failure::Refused),                 // 22003, 22008
    ("numeric field overflow", Failure::Refused),       // 22003
    ("value too long", Failure::Refused),               // 22001
    ("invalid input syntax", Failure::Refused),         // 22P02
    ("invalid input value", Failure::Refused),          // 22P02
    ("division by zero", Failure::Refused),             // 22012
    ("violates", Failure::Refused),                     // 23xxx
    ("syntax error", Failure::Refused),                 // 42601
    ("does not exist", Failure::Refused),               // 42P01, 42703, 42883
    ("cannot cast", Failure::Refused),                  // 42846
    ("is of type", Failure::Refused),                   // 42804
];

/// Classifies a failure to apply.
pub fn classify(e: &CommitError) -> Failure {
    match e {
        CommitError::Pool(_) => Failure::Transient,
        CommitError::Database(e) => classify_db(e),
    }
}

/// Classifies a database error (see [`classify`]).
pub fn classify_db(e: &Error) -> Failure {
    match e {
        Error::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ClosedConnection => Failure::Transient,
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::RestrictViolation
            | DatabaseErrorKind::ExclusionViolation => Failure::Refused,
            _ => by_message(info.message()),
        },
        Error::RollbackErrorOnCommit { commit_error, .. } => classify_db(commit_error),
        // The event's data could not be turned into the parameters of a statement.
        Error::SerializationError(_) => Failure::Refused,
        Error::BrokenTransactionManager => Failure::Transient,
        _ => Failure::Unexpected,
    }
}

fn by_message(message: &str) -> Failure {
    let message = message.to_ascii_lowercase();
    MESSAGES
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or(Failure::Unexpected, |(_, f)| *f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(kind: DatabaseErrorKind, message: &str) -> CommitError {
        CommitError::Database(Error::DatabaseError(kind, Box::new(message.to_owned())))
    }

    #[test]
    fn refusals_races_and_outages() {
        let unknown = DatabaseErrorKind::Unknown;
        for (e, want) in [
            (
                db(unknown, "invalid byte sequence for encoding \"UTF8\": 0x00"),
                Failure::Refused,
            ),
            (db(unknown, "timestamp out of range"), Failure::Refused),
            (
                db(
                    unknown,
                    "value \"99999999999999999999\" is out of range for type bigint",
                ),
                Failure::Refused,
            ),
            (db(unknown, "relation \"rv_products\" does not exist"), Failure::Refused),
            (
                db(DatabaseErrorKind::CheckViolation, "new row violates check constraint"),
                Failure::Refused,
            ),
            (
                db(DatabaseErrorKind::SerializationFailure, "could not serialize access"),
                Failure::Transient,
            ),
            (db(unknown, "deadlock detected"), Failure::Transient),
            (
                db(unknown, "terminating connection due to administrator command"),
                Failure::Transient,
            ),
            (
                db(unknown, "sorry, too many clients already: too many connections"),
                Failure::Transient,
            ),
            (db(DatabaseErrorKind::ClosedConnection, "closed"), Failure::Transient),
            (
                db(DatabaseErrorKind::UnableToSendCommand, "broken pipe"),
                Failure::Transient,
            ),
            (
                db(unknown, "canceling statement due to statement timeout"),
                Failure::Transient,
            ),
            (
                db(unknown, "something this version never heard of"),
                Failure::Unexpected,
            ),
            (CommitError::Database(Error::NotFound), Failure::Unexpected),
        ] {
            assert_eq!(classify(&e), want, "{e}");
        }
    }
}
