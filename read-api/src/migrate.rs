//! The read side's migrations (the `rv_*` view tables), applied under an advisory lock of
//! their own so they can share a database with the write side.

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use ordering_schema::migrate::{MigrateError, run_pending};

/// The view tables' migrations.
pub const READ_SIDE: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key of the read side's migrations ("readview" in ASCII).
pub const READ_SIDE_LOCK: i64 = 0x7265_6164_7669_6577;

/// Applies every pending read-side migration to `url`; returns the versions applied.
pub async fn run(url: &str) -> Result<Vec<String>, MigrateError> {
    run_pending(url, READ_SIDE, READ_SIDE_LOCK).await
}
