//! Assembling the running service: pool, cache, notification listener, projector, router.
//! Used by `main` and by the tests, so both run exactly the same thing.

use std::time::Duration;

use axum::Router;
use ordering_platform::db;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::cache::Cache;
use crate::consistency::{self, Hub};
use crate::cursor::Cursors;
use crate::projector::{Projector, Topology};
use crate::settings::Settings;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("migrating the views: {0}")]
    Migrate(#[from] ordering_schema::migrate::MigrateError),
    #[error("bad setting REDIS_URL: {0}")]
    Redis(#[from] crate::cache::RedisUrlError),
}

/// A running read-api: the state handlers share, and its background tasks.
pub struct Service {
    pub state: AppState,
    pub projector: Option<Projector>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Service {
    /// Applies the migrations and starts the listener, the cache's retry loop and (unless
    /// `PROJECTOR=off`) the projector.
    pub async fn start(settings: &Settings) -> Result<Self, StartError> {
        // The recorder must exist before the cache and projector create their counters.
        crate::catalog::install();
        let applied = crate::migrate::run(&settings.database_url).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "view migrations applied");
        }
        let pool = db::pool(&settings.database_url, settings.pool_size, None);
        ordering_platform::meters::watch_pool(pool.clone());
        let cache = Cache::new(
            &settings.redis_url,
            &settings.redis_key_prefix,
            settings.cache_ttl,
            settings.local_cache_ttl,
            settings.redis_timeout,
        )?;
        let hub = Hub::new(settings.max_waiters);
        let stop = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(consistency::listen(
                settings.database_url.clone(),
                hub.clone(),
                cache.clone(),
                stop.clone(),
            )),
            tokio::spawn({
                let cache = cache.clone();
                let stop = stop.clone();
                async move {
                    tokio::select! {
                        () = cache.retry_pending() => {}
                        () = stop.cancelled() => {}
                    }
                }
            }),
        ];
        let projector = settings.projector.then(|| {
            Projector::new(
                pool.clone(),
                cache.clone(),
                Topology {
                    amqp_url: settings.amqp_url.clone(),
                    replication_factor: settings.replication_factor,
                    exchange: settings.exchange.clone(),
                    queue: settings.queue.clone(),
                    prefetch: settings.prefetch,
                    workers: settings.workers,
                },
                settings.gap_timeout,
            )
        });
        if let Some(p) = &projector {
            tasks.push(tokio::spawn(p.clone().run(stop.clone())));
        }
        let state = AppState::new(crate::app::Shared {
            pool,
            cache,
            hub,
            auth: settings.auth.clone(),
            cursors: Cursors::new(&settings.cursor_secret),
            consistency: settings.consistency_key.clone(),
            consistency_wait: settings.consistency_wait,
            broker_connected: projector.as_ref().map(Projector::connected_flag),
            gap_report: projector
                .as_ref()
                .map(|p| (p.gap_report(), format!("{}.dead", settings.queue))),
        });
        Ok(Self {
            state,
            projector,
            stop,
            tasks,
        })
    }

    /// The HTTP application.
    pub fn router(&self, settings: &Settings) -> Router {
        let admin = settings.admin.clone().map(|gate| crate::admin::AdminState {
            gate,
            app: self.state.clone(),
            amqp: settings.amqp_url.clone(),
            queue: settings.queue.clone(),
            projector: settings.projector,
            gap_timeout: settings.gap_timeout,
            queue_turn: std::sync::Arc::default(),
        });
        crate::router::router(self.state.clone(), settings.limits, admin)
    }

    /// Stops consuming, lets in-flight events finish (bounded), and stops the background tasks.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), t).await.is_err() {
                tracing::warn!("a background task did not stop within 10 s");
            }
        }
    }
}
