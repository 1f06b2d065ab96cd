//! The write side of the ordering pipeline: catalog and order commands over HTTP.
//!
//! How it keeps its promises:
//! - **One transaction per command.** A command locks what it changes, asks the domain
//!   ([`domain`], plain Rust with no I/O) whether the change is allowed, stores the new state
//!   and appends the events to the outbox through the one outbox writer ([`store::outbox`]),
//!   all in one PostgreSQL transaction ([`commands::execute`]). An event exists if and only if
//!   its change committed; a refusal or a failure leaves no trace.
//! - **No lost updates.** Aggregates are loaded `FOR UPDATE`, and each write checks the
//!   version it read; `If-Match` turns a stale version into 412.
//! - **No oversell, no deadlock.** An order locks its products in ascending id order and
//!   reserves every line or none.
//! - **Idempotency.** An `Idempotency-Key` is claimed inside the command's transaction, so a
//!   concurrent repeat waits on it and replays the first answer ([`store::idempotency`]).
//! - **Errors.** Every refusal is problem+json with a stable code ([`error`]); nothing a
//!   client sends can produce a 500.
//! - **Timeouts.** A command has a budget a little under the request timeout, enforced by
//!   PostgreSQL's `statement_timeout` and a check before COMMIT ([`AppState::command_budget`]),
//!   so a "503 timeout" answer means nothing was written and a retry is safe.

pub mod app;
pub mod catalog;
pub mod commands;
pub mod domain;
pub mod error;
pub mod http;
pub mod router;
pub mod settings;
pub mod store;

pub use app::AppState;
pub use router::router;
pub use settings::Settings;

use std::time::Duration;

use ordering_platform::db::PgPool;

/// Deletes idempotency keys past their lifetime, once an hour, for as long as the service runs.
pub async fn expire_idempotency_keys(pool: PgPool, ttl: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let Ok(mut conn) = pool.get().await else {
            continue;
        };
        match store::idempotency::expire(&mut conn, ttl).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "expired idempotency keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not expire idempotency keys"),
        }
    }
}
