//! The application state shared by handlers.

use axum::extract::FromRef;
use ordering_platform::auth::Authenticator;
use ordering_platform::db::PgPool;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Authenticator,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}
