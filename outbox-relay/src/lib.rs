//! # outbox-relay: from the outbox table to the broker, nothing lost, nothing invented, in order
//!
//! The relay reads rows of the contract's outbox table (`OUTBOX_TABLE`) and publishes each to
//! a topic exchange (`OUTBOX_EXCHANGE`) with publisher confirms, as a sidecar of whatever
//! service writes the rows. Its own schema objects are all named after the table
//! ([`schema`]), so several outboxes and relays can share one database.
//!
//! ## How no row is skipped
//! There is no "published up to id N" mark. Rows become visible in commit order, not id
//! order: a transaction that took id 100 may commit after id 101 was published. So a row's
//! state lives on the row itself (`sent_at`, set only after the broker confirmed it), and
//! every read takes the oldest *unsent* rows through a partial index on `sent_at IS NULL`.
//! A row that commits late is unsent when it becomes visible, so the next read finds it; a
//! rolled-back row never becomes visible, so it is never read. Reads are triggered by a
//! NOTIFY trigger (LISTEN on a dedicated connection, [`listener`]) with a poll as a fallback;
//! a wake-up only triggers a read, and since a notification can arrive before its row is
//! visible, an empty read after a wake-up is repeated three times shortly after (1, 5 and 25 ms; a new wake-up cuts
//! that pause short). The wake-up is a stored permit, so a notification arriving while a read
//! runs causes another read.
//!
//! ## How per-aggregate order is kept, with several instances
//! Aggregates are hashed into `RELAY_PARTITIONS` partitions, and each partition is leased to
//! one instance at a time ([`leases`]), re-balanced every `RELAY_LEASE_TTL/3` as instances
//! come and go; a dead instance's partitions are claimed by the others once its leases
//! expire. Each claim increments the partition's fence. An instance publishes a partition's
//! rows only before its local lease deadline, which ends before the expiry the database
//! recorded, and marks rows sent only while the fence is still its own, so a stale owner can
//! neither publish nor record after losing a partition.
//!
//! Within an instance ([`publisher`]), up to `RELAY_WINDOW` confirms are outstanding across
//! many aggregates, but at most one per aggregate: an aggregate's next row is published only
//! once the previous one was confirmed. So whatever happens to an unconfirmed message (nack,
//! channel loss, crash), no later event of its aggregate has been published yet, and the
//! first delivery of every sequence reaches consumers in sequence order; what may be seen is
//! a duplicate of an event already seen. Confirmed rows are marked sent in one statement per
//! batch.
//!
//! ## What happens on each failure
//! - **Relay killed** (even `kill -9`): rows published but not yet marked are unsent, so the
//!   next owner of their partition publishes them again (duplicates, at-least-once). Leases
//!   of the dead instance expire after `RELAY_LEASE_TTL`.
//! - **Broker down, connection cut, channel error, missing confirm**: the batch stops, rows
//!   without a confirm stay unsent, the connection is rebuilt with exponential backoff and
//!   jitter (backon) behind a circuit breaker (to the next node of `AMQP_URL` that answers,
//!   when it lists a cluster's nodes: `ordering_platform::amqp`), the topology is declared
//!   again, and the rows are published again in order.
//! - **Database down**: reads and marks fail and are retried with backoff behind the
//!   database's breaker; rows confirmed meanwhile are kept in memory and marked first when
//!   the database is back (if the relay dies before, they are sent again). The listener
//!   reconnects by itself (at least every 2 s), and its reconnection ends the publisher's
//!   backoff, so publishing resumes within moments of the database's return; the poll covers
//!   the gap.
//! - **Poison row**: a row that can never be a valid message (a routing key over 255 bytes,
//!   headers that are not an object of strings) is dead-lettered at once.
//! - **Nack**: the broker could not take the message now (a full queue that rejects publishes,
//!   a quorum queue or stream without a leader while a cluster node is lost). That says nothing
//!   against the row: it is published again with a growing backoff (up to 10 s) for as long
//!   as it takes, and never dead-lettered; its aggregate waits.
//! - **Nowhere to route**: messages are published `mandatory`. The relay binds its stream
//!   (`<exchange>.log`) with `#`, so normally every message is routed; if an operator removed
//!   that binding and no other queue takes the routing key, the broker returns the message
//!   (`basic.return`, 312 NO_ROUTE) before confirming it. A returned message counts as not
//!   delivered: the row stays unsent, is retried with backoff and is dead-lettered after
//!   `RELAY_MAX_ATTEMPTS` with the return as its error. Once the binding
//!   is back (a relay restart declares it again), `dlq replay --all` sends them in order.
//!   A dead letter stays unsent in the outbox and blocks the later rows of its aggregate
//!   (order before progress) while other aggregates flow, until `outbox-relay dlq replay` or
//!   `dlq discard`.
//! - **SIGTERM**: stop starting publishes, wait for outstanding confirms, mark them, give the
//!   leases back (so another instance takes over at once), exit 0.
//!
//! ## Tracing
//! With OpenTelemetry on (`OTEL_EXPORTER_OTLP_ENDPOINT`), each row is published under a
//! `publish` span (kind producer) that is the **child** of the context stored in the row's
//! headers (the write-api's command transaction), and the message carries the publish span's
//! own `traceparent`/`tracestate`, so the consumer's span is the publish span's child. One
//! trace per command, unbroken from the HTTP request to the view.
//!
//! Not one span per batch with links to each row's trace: a batch mixes rows of many commands,
//! and a batch span would belong to none of their traces (links are shown beside a trace, not
//! in it), so a command's trace would stop at the outbox. A span per row costs one span per
//! message, which is what the relay does anyway; it runs from publish to confirm and ends with
//! an error status when the broker refuses, returns or loses the message, or the row is
//! poison. Untraced (OpenTelemetry off, or a row without headers), the stored headers are
//! published unchanged.
//!
//! `/health/ready` answers 503 while PostgreSQL or the broker is unreachable or a breaker is
//! open, and names this instance and the partitions it holds (never a cause of 503); `/metrics` has rows published, pending rows, lag, publish, confirm and
//! commit-to-confirm latencies, retries, dead letters, breaker states, partitions held, the
//! pool, the process and the build ([`catalog`]). With `JWT_SECRET` set, `/admin` is a page
//! for a person with the same figures, partition owners and the dead letters ([`admin`]).
//!
//! ## Which instance reports the backlog
//! Pending rows, lag and dead letters are figures of the whole table, the same whichever
//! instance reads them. Only the instance holding partition 0 publishes them
//! (`relay_backlog_reporter` 1); the others report 0. So `sum()` over instances is the table's
//! figure (as is `max()`), and the elected reporter moves with the partition's lease.
//!
//! ## Retention
//! On the `OUTBOX_CLEANUP_CRON` schedule, sent rows older than `OUTBOX_RETENTION` go: deleted
//! in small batches from a plain table, or, from an outbox partitioned by day, as whole days
//! dropped, with the coming days created ahead ([`retention`]).

pub mod admin;
pub mod broker;
pub mod catalog;
pub mod dlq;
pub mod leases;
pub mod listener;
pub mod publisher;
pub mod retention;
pub mod schema;
pub mod settings;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use futures::FutureExt;
use ordering_platform::breaker::{Breaker, BreakerState};
use ordering_platform::http::ops::{DependencyState, ReadinessCheck};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;
use crate::store::Store;

/// The gauge of the relay's circuit breakers (0 closed, 1 half-open, 2 open), by dependency.
const BREAKER_GAUGE: &str = "relay_breaker_state";

/// Why the relay could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Setting(#[from] ordering_platform::settings::SettingError),
    #[error("cannot set up the relay's schema: {0}")]
    Schema(#[from] schema::SchemaError),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("the publisher stopped unexpectedly: {0}")]
    Publisher(String),
}

/// Runs the relay until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn serve(settings: Settings) -> Result<(), RelayError> {
    run(settings, ordering_platform::shutdown::signal()).await
}

/// Runs the relay until `shutdown` resolves: sets up its schema, then publishes, keeps its
/// leases, listens for notifications, cleans up on schedule and serves `/health/*` and
/// `/metrics`.
pub async fn run(s: Settings, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RelayError> {
    // The recorder first, so that gauges set while starting (breakers) are kept.
    catalog::install();
    let listener = ordering_platform::http::bind("RELAY_ADDR", s.addr).await?;
    migrate_with_retry(&s).await?;
    let pool = ordering_platform::db::pool(&s.database_url, 8, None);
    let store = Store::new(pool.clone(), s.table.clone(), s.partitions);
    // Today's partition before the first publish, so that the day's rows do not gather in the
    // default partition until the first scheduled run. Not fatal: that run tries again.
    if let Err(e) = prepare_days(&store, s.retention).await {
        tracing::warn!(error = %e, "cannot create the outbox's day partitions yet; the cleanup schedule retries");
    }
    ordering_platform::meters::watch_pool(pool.clone());
    let owner = uuid::Uuid::new_v4();
    let leases = Arc::new(leases::Leases::new(owner, s.partitions));
    let db = Arc::new(Breaker::new(
        BREAKER_GAUGE,
        "postgres",
        s.breaker_failures,
        s.breaker_cooldown,
    ));
    let broker = Arc::new(Breaker::new(
        BREAKER_GAUGE,
        "rabbitmq",
        s.breaker_failures,
        s.breaker_cooldown,
    ));
    let broker_up = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let db_reachable = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    tracing::info!(%owner, table = %s.table.table(), exchange = %s.exchange, partitions = s.partitions, "relay starting");

    let http_stop = CancellationToken::new();
    let ready = readiness(
        pool.clone(),
        db.clone(),
        broker.clone(),
        broker_up.clone(),
        leases.clone(),
    );
    let activity = Arc::new(admin::Activity::default());
    let admin_state = s.admin.clone().map(|gate| admin::AdminState {
        gate,
        store: store.clone(),
        leases: leases.clone(),
        breakers: vec![db.clone(), broker.clone()],
        activity: activity.clone(),
        exchange: s.exchange.clone(),
    });
    let router = ordering_platform::http::layers::wrap(
        ordering_platform::http::ops::router(ready).merge(admin::router(admin_state)),
        ordering_platform::http::layers::HttpLimits::default(),
    );
    let http = tokio::spawn(ordering_platform::http::serve(
        listener,
        router,
        http_stop.clone().cancelled_owned(),
    ));

    let tasks = vec![
        tokio::spawn(listener::listen(
            s.database_url.clone(),
            s.table.channel(),
            wake.clone(),
            db_reachable.clone(),
            s.poll_interval.max(Duration::from_secs(5)),
            stop.clone(),
        )),
        tokio::spawn(leases::keep(
            leases.clone(),
            store.clone(),
            s.lease_ttl,
            db.clone(),
            wake.clone(),
            stop.clone(),
        )),
        tokio::spawn(cleanup_on_schedule(
            store.clone(),
            s.cleanup_cron.clone(),
            s.retention,
            s.cleanup_batch,
            stop.clone(),
        )),
        tokio::spawn(watch_backlog(store.clone(), leases.clone(), stop.clone())),
    ];
    let publisher = publisher::Publisher {
        store: store.clone(),
        leases: leases.clone(),
        topology: broker::Topology {
            exchange: s.exchange.clone(),
            stream: s.stream(),
            max_bytes: s.event_log_max_bytes,
            max_age: s.event_log_max_age.clone(),
            replication_factor: s.replication_factor,
        },
        amqp_url: s.amqp_url.clone(),
        window: s.window,
        batch: s.batch,
        poll_interval: s.poll_interval,
        max_attempts: s.max_attempts,
        confirm_timeout: s.confirm_timeout,
        db,
        broker,
        broker_up,
        wake,
        db_reachable,
        activity,
    };
    let publishing = tokio::spawn(publisher.run(stop.clone()));
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });
    // The publisher returns once stopped and its last confirms are recorded.
    let published = publishing.await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    if let Err(e) = leases.release_all(&store).await {
        tracing::warn!(error = %e, "cannot release leases; they expire by themselves");
    }
    http_stop.cancel();
    if let Err(e) = published {
        // Unconfirmed rows stay unsent: a restarted relay sends them again.
        return Err(RelayError::Publisher(e.to_string()));
    }
    if let Ok(Err(e)) = http.await {
        return Err(e.into());
    }
    tracing::info!("relay stopped");
    Ok(())
}

/// Sets up the relay's schema, retrying for about 30 s while PostgreSQL is not there yet (a
/// relay started beside its database); a partition count that disagrees with the outbox's is
/// final.
async fn migrate_with_retry(s: &Settings) -> Result<(), RelayError> {
    let retries = ConstantBuilder::default()
        .with_delay(Duration::from_secs(2))
        .with_max_times(15);
    (|| schema::migrate(&s.database_url, &s.table, s.partitions))
        .retry(retries)
        .when(|e| !matches!(e, schema::SchemaError::Partitions { .. }))
        .notify(|e, _| tracing::warn!(error = %e, "cannot set up the relay schema yet; retrying"))
        .await
        .map(|_| ())
        .map_err(Into::into)
}

/// `/health/ready`: PostgreSQL and the broker (both required), and, never down, the partitions
/// this instance may publish now, so that whoever looks at one instance of a fleet sees what it
/// owns.
fn readiness(
    pool: ordering_platform::db::PgPool,
    db: Arc<Breaker>,
    broker: Arc<Breaker>,
    broker_up: Arc<AtomicBool>,
    leases: Arc<leases::Leases>,
) -> ReadinessCheck {
    Arc::new(move || {
        let (pool, db, broker, broker_up) = (pool.clone(), db.clone(), broker.clone(), broker_up.clone());
        let partitions = leases.describe();
        async move {
            let mut deps = BTreeMap::new();
            let pg = match ordering_platform::db::ping(&pool).await {
                Err(e) => DependencyState::down(true, e),
                Ok(()) if db.state() == BreakerState::Open => DependencyState::down(true, "circuit breaker open"),
                Ok(()) => DependencyState::up(true),
            };
            deps.insert("postgres", pg);
            let mq = if broker.state() == BreakerState::Open {
                DependencyState::down(true, "circuit breaker open")
            } else if !broker_up.load(Ordering::Relaxed) {
                DependencyState::down(true, "not connected to the broker")
            } else {
                DependencyState::up(true)
            };
            deps.insert("rabbitmq", mq);
            // Holding none is normal (just started, or more instances than partitions): this
            // entry informs, it never makes the instance unready or degraded.
            deps.insert(
                "partitions",
                DependencyState {
                    detail: Some(partitions),
                    ..DependencyState::up(false)
                },
            );
            deps
        }
        .boxed()
    })
}

/// Creates the day partitions an outbox partitioned by day needs now ([`retention::prepare`]).
async fn prepare_days(store: &Store, retention: Duration) -> Result<(), store::StoreError> {
    let mut c = store.conn().await?;
    let created = retention::prepare(&mut c, store.names(), retention, chrono::Utc::now()).await?;
    metrics::counter!("relay_day_partitions_created_total").increment(created);
    Ok(())
}

/// Keeps the outbox to `retention` whenever `schedule` fires ([`retention::run`]).
async fn cleanup_on_schedule(
    store: Store,
    schedule: cron::Schedule,
    retention: Duration,
    batch: i64,
    stop: CancellationToken,
) {
    loop {
        let Some(next) = schedule.upcoming(chrono::Utc).next() else {
            return;
        };
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        match retention::run(&store, retention, batch).await {
            Ok(o) => {
                metrics::counter!("relay_cleaned_rows_total").increment(o.deleted);
                metrics::counter!("relay_day_partitions_created_total").increment(o.created);
                metrics::counter!("relay_day_partitions_dropped_total").increment(o.dropped);
                metrics::gauge!("relay_day_partitions_overdue").set(o.overdue as f64);
                tracing::info!(
                    deleted_rows = o.deleted,
                    days_created = o.created,
                    days_dropped = o.dropped,
                    days_overdue = o.overdue,
                    "outbox kept to its retention"
                );
            }
            Err(e) => tracing::warn!(error = %e, "outbox cleanup failed; next run will retry"),
        }
    }
}

/// The partition whose holder reports the table-wide backlog gauges ([`catalog`]).
const REPORTER_PARTITION: i32 = 0;

/// Every two seconds, the holder of partition 0 publishes the table-wide backlog gauges
/// (pending rows, lag, dead letters); any other instance reports 0, so that a `sum()` over
/// instances counts the table once.
async fn watch_backlog(store: Store, leases: Arc<leases::Leases>, stop: CancellationToken) {
    loop {
        let reporter = leases.snapshot().iter().any(|(p, _)| *p == REPORTER_PARTITION);
        let backlog = if reporter {
            store.backlog().await.ok()
        } else {
            Some(store::Backlog {
                pending: 0,
                lag: 0.0,
                dead_letters: 0,
            })
        };
        if let Some(b) = backlog {
            metrics::gauge!("relay_backlog_reporter").set(if reporter { 1.0 } else { 0.0 });
            metrics::gauge!("relay_pending_rows").set(b.pending as f64);
            metrics::gauge!("relay_lag_seconds").set(b.lag);
            metrics::gauge!("relay_dead_letters").set(b.dead_letters as f64);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return,
        }
    }
}
