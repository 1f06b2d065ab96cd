//! Applying embedded migrations safely when several instances start at once.

use diesel::Connection;
use diesel::RunQueryDsl;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// The write side's migrations (domain tables, outbox, idempotency keys).
pub const WRITE_SIDE: EmbeddedMigrations = embed_migrations!("migrations");

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database error while migrating: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("migration task panicked")]
    Panicked,
}

/// Applies every pending migration of `migrations` to `database_url`.
///
/// The whole run holds `pg_advisory_lock(lock_key)`, so instances that start together apply
/// each migration exactly once; the later ones wait, then find nothing left to do. Returns the
/// versions that this call applied.
pub async fn run_pending(
    database_url: &str,
    migrations: EmbeddedMigrations,
    lock_key: i64,
) -> Result<Vec<String>, MigrateError> {
    let url = database_url.to_owned();
    // diesel_migrations is synchronous; AsyncConnectionWrapper blocks on the runtime, which
    // is only allowed on a blocking thread.
    tokio::task::spawn_blocking(move || {
        let mut conn = <AsyncConnectionWrapper<AsyncPgConnection> as Connection>::establish(&url)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({lock_key})")).execute(&mut conn)?;
        let applied = conn
            .run_pending_migrations(migrations)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| MigrateError::Migration(e.to_string()));
        // The lock is released with the session anyway; unlocking explicitly just frees the
        // waiting instances sooner.
        diesel::sql_query(format!("SELECT pg_advisory_unlock({lock_key})")).execute(&mut conn)?;
        applied
    })
    .await
    .map_err(|_| MigrateError::Panicked)?
}

/// How many migrations `migrations` holds.
pub fn count(migrations: &EmbeddedMigrations) -> usize {
    diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(migrations)
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Advisory lock key of the write side's migrations ("ordering" in ASCII, as a number).
pub const WRITE_SIDE_LOCK: i64 = 0x6f72_6465_7269_6e67;
