//! The application state shared by handlers.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::extract::FromRef;
use ordering_platform::auth::Authenticator;
use ordering_platform::db::PgPool;
use ordering_schema::consistency::ConsistencyKey;

use crate::cache::Cache;
use crate::consistency::Hub;
use crate::cursor::Cursors;
use crate::projector::GapReport;

/// What every handler can reach: one reference-counted [`Shared`], so handing it to a
/// request costs one atomic increment, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub pool: PgPool,
    pub cache: Cache,
    pub hub: Hub,
    pub auth: Authenticator,
    pub cursors: Cursors,
    /// Verifies `X-Consistency-Token` (`CONSISTENCY_SECRET`).
    pub consistency: ConsistencyKey,
    /// `CONSISTENCY_WAIT_MS`.
    pub consistency_wait: Duration,
    /// The projector's broker connection, when this instance runs one (readiness).
    pub broker_connected: Option<Arc<AtomicBool>>,
    /// The projector's timed-out gaps and its dead-letter queue, when this instance runs one
    /// (readiness).
    pub gap_report: Option<(Arc<GapReport>, String)>,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}
