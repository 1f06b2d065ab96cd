//! The projector: consumes the events and applies them to the views.
//!
//! - **Own durable quorum queue** bound to the exchange with `#`, manual acks, a prefetch
//!   window. A message is acknowledged only after the transaction that applied (or parked) it committed
//!   (and its cache entries were updated), so a crash at any point means a redelivery, which
//!   the version guard turns into a counted no-op.
//! - **Order per aggregate, parallel across aggregates.** Deliveries are routed to one of
//!   `PROJECTOR_WORKERS` workers by product, or by the order's customer (so one worker owns
//!   all of a customer's revision bumps); all events of one aggregate go to one worker.
//! - **Batches.** A worker applies everything waiting in its channel (up to 512) in
//!   one transaction: a set-wise statement per aggregate type and round, the events of one
//!   aggregate in version order ([`apply_all`]), and one notification naming the version
//!   each aggregate reached (split only if it outgrows PostgreSQL's payload limit). Then the
//!   cache writes (all in flight at once) and the acknowledgements. Commits, and with them
//!   the serialised NOTIFY commits, are per batch instead of per event.
//! - **Gaps** (an event whose predecessor is not applied yet, e.g. it went to another
//!   instance consuming the same queue, or a publisher sent it for an aggregate the views
//!   never saw) leave the prefetch window: the transaction that finds the gap parks the
//!   message in `rv_parked` ([`parking`]) and it is acknowledged with the batch. The
//!   transaction that applies its predecessor applies it too, under per-aggregate advisory
//!   locks that make this correct with several instances (argued in [`parking`]); a sweep
//!   applies anything parked behind an applied version. A gap older than `GAP_TIMEOUT` is
//!   given up ([`sweep`]): its parked events go to `<queue>.dead` with a header saying why,
//!   a warning is logged, the gauges `read_events_parked` / `read_gaps_timed_out` show it and
//!   readiness names it (still ready) for [`GAP_REPORT_FOR`].
//! - **A read-api started on an empty view database while the stream has history** does not
//!   replay it by itself: later events of old aggregates park, their gaps time out to the
//!   dead-letter queue, and the warning and readiness say to run `read-api rebuild` (which
//!   replays the stream into fresh tables; the dead letters can then be discarded).
//! - **Poison** (a body that is not a well-formed event of a known type, or whose data holds
//!   a NUL, which PostgreSQL can not store) goes to `<queue>.dead` with a header saying why
//!   ([`dead_letter`]; rejected without requeue should that publish fail); the queue never
//!   blocks. Events of an unknown `type`
//!   or `aggregatetype` are acknowledged and counted.
//! - **Failures** ([`failure`]) are classified: the database refusing an event (data errors,
//!   constraint violations, undefined objects) dead-letters that event alone at once (a
//!   refused batch is applied again event by event to find it, so every other event applies
//!   and no other aggregate waits); connection loss, serialization failures, deadlocks and
//!   shutdowns are retried with backoff (backon) for as long as they last; anything else is
//!   retried a few times, then treated as a refusal. Metrics: `read_events_dead_lettered_total`
//!   by `reason` (`poison`, `refused`, `gap_timeout`).
//! - **Tracing.** Each delivery of an event gets an `apply` span (kind consumer), the child of
//!   the relay's publish span whose `traceparent`/`tracestate` the message carries; it lasts
//!   until the delivery is settled and ends with an error status when the database refuses the
//!   event. A batch's `view write` (the transaction) and `cache update` spans are children of
//!   its first delivery's `apply` span and follow from (are linked to) the others', since one
//!   transaction serves several traces. Parked events applied later get no span of their own.

mod apply;
mod dead_letter;
mod event;
pub mod failure;
pub mod parking;
pub mod sweep;
mod topology;
mod worker;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use ordering_platform::amqp::ConnectError;
use ordering_platform::db::PgPool;
use ordering_platform::{backoff, trace_context};
use ordering_schema::events::AggregateType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use apply::{apply, apply_all};
pub use dead_letter::REASON_HEADER;
pub use event::{Event, Parsed, Poison, parse};
pub use sweep::{GAP_REPORT_FOR, GapReport};
pub use topology::{Topology, dead_letter_exchange, dead_letter_queue, declare};

use crate::cache::Cache;
use dead_letter::DeadLetters;

/// The longest the projector waits on one exchange with the broker (acknowledgements, a dead
/// letter's publish and confirm, the dead-letter count). A closed connection fails them at
/// once, but on a half-open one (the broker gone without a reset) a confirm waits until the
/// heartbeat gives up, and a full socket buffer holds acknowledgements as long. A session ends
/// only once its workers and its sweep have, so one of them stuck on the broker would keep the
/// projector from reconnecting; and the sweep publishes while it holds aggregates' locks that
/// the workers wait on. What is not settled is redelivered after the reconnect, and a
/// replayed event changes nothing.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// `call`, or `None` (logged) when the broker has not answered within [`BROKER_TIMEOUT`].
pub(super) async fn within_broker_timeout<T>(what: &'static str, call: impl Future<Output = T>) -> Option<T> {
    let answer = tokio::time::timeout(BROKER_TIMEOUT, call).await.ok();
    if answer.is_none() {
        tracing::warn!(what, timeout = ?BROKER_TIMEOUT, "the broker did not answer in time; given up (unsettled deliveries come again after a reconnect)");
    }
    answer
}

/// The running projector's shared state.
#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    cache: Cache,
    topology: Topology,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// `GAP_TIMEOUT`.
    gap_timeout: Duration,
    gap_report: Arc<GapReport>,
}

struct Metrics {
    applied_product: metrics::Counter,
    applied_order: metrics::Counter,
    duplicates: metrics::Counter,
    gaps: metrics::Counter,
    /// Events parked (all instances), as of the last sweep.
    parked: metrics::Gauge,
    /// Aggregates with events parked (all instances), as of the last sweep.
    gaps_open: metrics::Gauge,
    /// Messages in the dead-letter queue, as of the last sweep.
    dead_letters: metrics::Gauge,
    /// Gaps timed out within [`GAP_REPORT_FOR`].
    gaps_timed_out: metrics::Gauge,
    /// Parked events moved to the dead-letter queue.
    timed_out: metrics::Counter,
    unknown: metrics::Counter,
    /// Messages that are not well-formed events.
    poison: metrics::Counter,
    /// Events the database refuses.
    refused: metrics::Counter,
    lag: metrics::Gauge,
    /// Event time to applied, per event.
    event_lag: metrics::Histogram,
}

pub(crate) struct Work {
    /// Applying this delivery, in the trace the message carries.
    span: tracing::Span,
    event: Event,
    acker: Acker,
    /// The message as delivered, kept to park it.
    routing_key: String,
    body: Vec<u8>,
}

pub(crate) type Key = (AggregateType, Uuid);

/// Why a session with the broker ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
}

/// The span of applying `delivery`: the child of the publish span named by its
/// `traceparent`/`tracestate` headers (a root without them).
fn apply_span(delivery: &lapin::message::Delivery) -> tracing::Span {
    let span = tracing::info_span!(
        "apply",
        otel.name = format!("{} process", delivery.routing_key),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
    );
    let header = |name: &str| match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        _ => None,
    };
    trace_context::continue_from(
        &span,
        trace_context::extract(header(trace_context::TRACEPARENT), header(trace_context::TRACESTATE)),
    );
    span
}

impl Projector {
    /// A projector applying to the live views in `pool`; gaps older than `gap_timeout` are
    /// given up.
    pub fn new(pool: PgPool, cache: Cache, topology: Topology, gap_timeout: Duration) -> Self {
        let metrics = Metrics {
            applied_product: metrics::counter!("read_events_applied_total", "aggregate" => "product"),
            applied_order: metrics::counter!("read_events_applied_total", "aggregate" => "order"),
            duplicates: metrics::counter!("read_events_duplicates_ignored_total"),
            gaps: metrics::counter!("read_events_gaps_held_total"),
            parked: metrics::gauge!("read_events_parked"),
            gaps_open: metrics::gauge!("read_gaps_open"),
            dead_letters: metrics::gauge!("read_dead_letters"),
            gaps_timed_out: metrics::gauge!("read_gaps_timed_out"),
            timed_out: metrics::counter!("read_events_dead_lettered_total", "reason" => "gap_timeout"),
            unknown: metrics::counter!("read_events_unknown_total"),
            poison: metrics::counter!("read_events_dead_lettered_total", "reason" => "poison"),
            refused: metrics::counter!("read_events_dead_lettered_total", "reason" => "refused"),
            lag: metrics::gauge!("read_projection_lag_seconds"),
            event_lag: metrics::histogram!("read_event_lag_seconds"),
        };
        Self {
            pool,
            cache,
            topology,
            connected: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(metrics),
            gap_timeout,
            gap_report: Arc::default(),
        }
    }

    /// Whether the projector is connected to the broker and consuming.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A handle on the connected flag (for readiness).
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Gaps that timed out lately (for readiness).
    pub fn gap_report(&self) -> Arc<GapReport> {
        self.gap_report.clone()
    }

    /// Consumes until `stop`, reconnecting with backoff when the broker goes away (to the next
    /// node of `AMQP_URL` that answers, when it lists a cluster's nodes). On `stop`
    /// it cancels the consumer, lets the workers finish what they were given, and closes.
    pub async fn run(self, stop: CancellationToken) {
        let backoff = || backoff::endless(Duration::from_millis(200), Duration::from_secs(10)).build();
        let mut delays = backoff();
        while !stop.is_cancelled() {
            match self.session(&stop).await {
                Ok(()) => delays = backoff(),
                Err(e) => tracing::warn!(error = %e, "projector: broker session ended"),
            }
            self.connected.store(false, Ordering::Relaxed);
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => break,
            }
        }
        tracing::info!("projector stopped");
    }

    /// One connection's life: connect to a node that answers (after a lost one, the next
    /// node first), declare, consume until the connection fails or `stop`.
    async fn session(&self, stop: &CancellationToken) -> Result<(), SessionError> {
        let conn = self.topology.amqp_url.connect("read-api projector").await?.connection;
        let ch = conn.create_channel().await?;
        declare(&conn, &ch, &self.topology).await?;
        ch.basic_qos(self.topology.prefetch, BasicQosOptions::default()).await?;
        let dead_letters = DeadLetters {
            channel: conn.create_channel().await?,
            exchange: self.topology.dead_letter_exchange(),
        };
        dead_letters
            .channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // A channel of its own for counting the dead letters: a failed passive declare closes
        // its channel, which must not be the one dead letters are published on.
        let counting = conn.create_channel().await?;
        let tag = format!("read-api-{}", Uuid::new_v4().simple());
        let mut consumer = ch
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.topology.queue, "projector consuming");

        let n = self.topology.workers;
        let mut senders = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel::<Work>(usize::from(self.topology.prefetch).max(1));
            senders.push(tx);
            workers.push(tokio::spawn(self.clone().worker(
                rx,
                dead_letters.clone(),
                stop.clone(),
            )));
        }
        let sweep_stop = stop.child_token();
        let sweeper = tokio::spawn(
            self.clone()
                .sweeper(dead_letters.clone(), counting.clone(), sweep_stop.clone()),
        );
        let result = loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                () = stop.cancelled() => break Ok(()),
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            };
            match parse(&delivery.data) {
                Ok(Parsed::Event(event)) => {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    event.route().hash(&mut h);
                    let i = (h.finish() % n as u64) as usize;
                    if senders[i]
                        .send(Work {
                            span: apply_span(&delivery),
                            event: *event,
                            acker: delivery.acker,
                            routing_key: delivery.routing_key.to_string(),
                            body: delivery.data,
                        })
                        .await
                        .is_err()
                    {
                        break Ok(());
                    }
                }
                Ok(Parsed::Unknown(what)) => {
                    tracing::debug!(what, "acknowledging an event this version does not know");
                    self.metrics.unknown.increment(1);
                    within_broker_timeout("acknowledgement", delivery.acker.ack(BasicAckOptions::default())).await;
                }
                Err(poison) => {
                    tracing::warn!(error = %poison, routing_key = %delivery.routing_key, "dead-lettering");
                    self.metrics.poison.increment(1);
                    dead_letters
                        .give_up(
                            &delivery.acker,
                            delivery.routing_key.as_str(),
                            &delivery.data,
                            &poison.to_string(),
                        )
                        .await;
                }
            }
        };
        // No more deliveries: readiness says so now, not once the workers are done.
        self.connected.store(false, Ordering::Relaxed);
        tracing::info!(ended = ?result.as_ref().err(), "projector: deliveries stopped; settling what the workers hold");
        // Stop taking deliveries, then let the workers finish what they hold.
        within_broker_timeout(
            "consumer cancel",
            ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
        drop(senders);
        let mut settled = futures::future::join_all(workers);
        while tokio::time::timeout(Duration::from_secs(10), &mut settled)
            .await
            .is_err()
        {
            // Every step of a worker is bounded except the database's retries, which log their own.
            tracing::warn!("projector: workers still settling their deliveries after 10 s; reconnecting after them");
        }
        sweep_stop.cancel();
        let _ = sweeper.await;
        within_broker_timeout("close", async {
            let _ = dead_letters.channel.close(200, "bye".into()).await;
            let _ = counting.close(200, "bye".into()).await;
            let _ = ch.close(200, "bye".into()).await;
            let _ = conn.close(200, "bye".into()).await;
        })
        .await;
        result
    }
}
