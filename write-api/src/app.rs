//! The application state shared by handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use ordering_platform::auth::Authenticator;
use ordering_platform::db::{self, PgPool};
use ordering_platform::http::layers::HttpLimits;
use ordering_schema::consistency::ConsistencyKey;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub auth: Authenticator,
    /// Signs the consistency tokens of answers (`CONSISTENCY_SECRET`).
    pub consistency: ConsistencyKey,
    /// How long a command's transaction may take before it is rolled back: a little under the
    /// request timeout, so a client answered "503 timeout" can rely on nothing having been
    /// written (see [`crate::commands::execute`]).
    pub command_budget: Duration,
    /// Where the resources this API creates can be read (`READ_API_URL`): `Location` headers
    /// point there, since the write-api serves no reads. Unset (as [`AppState::new`] makes it):
    /// relative `Location`s.
    pub read_api_url: ReadApiUrl,
}

/// The read-api's public base URL, without a trailing slash (`READ_API_URL`).
#[derive(Clone, Debug, Default)]
pub struct ReadApiUrl(Arc<str>);

impl ReadApiUrl {
    /// The URL where `path` (e.g. `/v1/orders/<id>`) can be read.
    pub fn of(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }
}

impl AppState {
    /// The state for a write-api serving with `limits`, with a pool of `pool_size` connections
    /// whose statements are cancelled by PostgreSQL after the command budget.
    pub fn new(
        database_url: &str,
        pool_size: usize,
        auth: Authenticator,
        consistency: ConsistencyKey,
        limits: &HttpLimits,
    ) -> Self {
        let command_budget = command_budget(limits.request_timeout);
        Self {
            pool: db::pool(database_url, pool_size, Some(command_budget)),
            auth,
            consistency,
            command_budget,
            read_api_url: ReadApiUrl::default(),
        }
    }

    /// The same state, with `Location` headers pointing at the read-api at `url`.
    pub fn with_read_api_url(mut self, url: &str) -> Self {
        self.read_api_url = ReadApiUrl(url.trim_end_matches('/').into());
        self
    }
}

/// The request timeout less a margin for answering and committing: a fifth of it, at most 1 s.
fn command_budget(request_timeout: Duration) -> Duration {
    request_timeout - (request_timeout / 5).min(Duration::from_secs(1))
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<AppState> for ReadApiUrl {
    fn from_ref(state: &AppState) -> Self {
        state.read_api_url.clone()
    }
}

impl FromRef<AppState> for ConsistencyKey {
    fn from_ref(state: &AppState) -> Self {
        state.consistency.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_a_margin_before_the_request_timeout() {
        assert_eq!(command_budget(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(command_budget(Duration::from_secs(1)), Duration::from_millis(800));
        assert_eq!(command_budget(Duration::from_millis(50)), Duration::from_millis(40));
    }
}
