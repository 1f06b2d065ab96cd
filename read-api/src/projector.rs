//! The projector: consumes the events and applies them to the views.
//!
//! - **Own durable quorum queue** bound to the exchange with `#`, manual acks, a prefetch
//!   window. A message is acknowledged only after the transaction that applied it committed
//!   (and its cache entries were updated), so a crash at any point means a redelivery, which
//!   the version guard turns into a counted no-op.
//! - **Order per aggregate, parallel across aggregates.** Deliveries are routed to one of
//!   `PROJECTOR_WORKERS` workers by product, or by the order's customer (so one worker owns
//!   all of a customer's revision bumps); all events of one aggregate go to one worker.
//! - **Batches.** A worker applies everything waiting in its channel (up to [`MAX_BATCH`]) in
//!   one transaction: a set-wise statement per aggregate type and round, the events of one
//!   aggregate in version order ([`apply_all`]), and one notification naming the version
//!   each aggregate reached (split only if it outgrows PostgreSQL's payload limit). Then the
//!   cache writes (all in flight at once) and the acknowledgements. Commits, and with them
//!   the serialised NOTIFY commits, are per batch instead of per event.
//! - **Gaps** (an event whose predecessor is not applied yet, e.g. it went to another
//!   instance consuming the same queue) are held back, unacknowledged, and retried with the
//!   next delivery of that aggregate or on a short timer; they are counted once.
//! - **Poison** (a body that is not a well-formed event of a known type) is rejected without
//!   requeue, so the broker dead-letters it to `<queue>.dead`; the queue never blocks.
//!   Events of an unknown `type` or `aggregatetype` are acknowledged and counted.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use futures::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use ordering_platform::db::PgPool;
use ordering_schema::events::{AggregateType, CloudEvent, OrderData, ProductData};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::announcement::Announcement;
use crate::cache::{Cache, Kind};
use crate::views::{self, Continuity, Outcome, StoredView, Tables};

/// A parsed event the views know how to apply.
#[derive(Clone, Debug)]
pub enum Event {
    Product {
        data: ProductData,
        sequence: i64,
        time: DateTime<Utc>,
    },
    Order {
        data: OrderData,
        sequence: i64,
        time: DateTime<Utc>,
    },
}

impl Event {
    /// The aggregate this event changes.
    pub fn key(&self) -> (AggregateType, Uuid) {
        match self {
            Self::Product { data, .. } => (AggregateType::Product, data.id),
            Self::Order { data, .. } => (AggregateType::Order, data.id),
        }
    }

    /// What decides the worker an event goes to: the product, or the order's customer (so all
    /// of a customer's order events, which bump that customer's revision, go to one worker
    /// and two workers never wait on each other's customer rows). Either way, all events of
    /// one aggregate go to one worker.
    fn route(&self) -> (AggregateType, Uuid) {
        match self {
            Self::Product { data, .. } => (AggregateType::Product, data.id),
            Self::Order { data, .. } => (AggregateType::Order, data.customer_id),
        }
    }

    /// The aggregate's version after the event.
    pub fn sequence(&self) -> i64 {
        match self {
            Self::Product { sequence, .. } | Self::Order { sequence, .. } => *sequence,
        }
    }

    fn time(&self) -> DateTime<Utc> {
        match self {
            Self::Product { time, .. } | Self::Order { time, .. } => *time,
        }
    }
}

/// What a message body turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Event(Box<Event>),
    /// A well-formed event of a type or aggregate this version does not know.
    Unknown(String),
}

/// Why a message can never be applied.
#[derive(Debug, thiserror::Error)]
#[error("poison message: {0}")]
pub struct Poison(pub String);

/// Parses a message body.
pub fn parse(body: &[u8]) -> Result<Parsed, Poison> {
    let env: CloudEvent<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| Poison(format!("not a CloudEvent: {e}")))?;
    let Some(kind) = env.kind() else {
        return Ok(Parsed::Unknown(env.event_type));
    };
    match AggregateType::parse(&env.aggregatetype) {
        None => return Ok(Parsed::Unknown(env.aggregatetype)),
        Some(a) if a != kind.aggregate_type() => {
            return Err(Poison(format!(
                "type {} does not belong to aggregate {a:?}",
                env.event_type
            )));
        }
        Some(_) => {}
    }
    let subject = Uuid::parse_str(&env.subject).map_err(|_| Poison("subject is not a UUID".into()))?;
    if env.sequence < 1 {
        return Err(Poison(format!("sequence {} is not positive", env.sequence)));
    }
    let event = match kind.aggregate_type() {
        AggregateType::Product => {
            let data: ProductData =
                serde_json::from_value(env.data).map_err(|e| Poison(format!("product data: {e}")))?;
            if data.id != subject {
                return Err(Poison("data.id differs from subject".into()));
            }
            Event::Product {
                data,
                sequence: env.sequence,
                time: env.time,
            }
        }
        AggregateType::Order => {
            let data: OrderData = serde_json::from_value(env.data).map_err(|e| Poison(format!("order data: {e}")))?;
            if data.id != subject {
                return Err(Poison("data.id differs from subject".into()));
            }
            Event::Order {
                data,
                sequence: env.sequence,
                time: env.time,
            }
        }
    };
    Ok(Parsed::Event(Box::new(event)))
}

/// Applies one event to `tables` (see [`apply_all`]).
pub async fn apply(
    conn: &mut diesel_async::AsyncPgConnection,
    tables: &Tables,
    event: &Event,
    continuity: Continuity,
) -> diesel::QueryResult<Outcome> {
    let mut out = apply_all(conn, tables, &[event], continuity).await?;
    Ok(out.pop().unwrap_or(Outcome::Gap { have: 0 }))
}

/// Applies `events` to `tables`, those of one aggregate in the order given, and says what
/// each did (in input order). Set-wise: round `r` applies the `r`-th event of every
/// aggregate, one statement per aggregate type, so a batch of events of distinct aggregates
/// costs one or two statements. Once an event of an aggregate is a gap, its later events in
/// `events` are gaps too, without being tried. Atomic only inside the caller's transaction.
pub async fn apply_all(
    conn: &mut diesel_async::AsyncPgConnection,
    tables: &Tables,
    events: &[&Event],
    continuity: Continuity,
) -> diesel::QueryResult<Vec<Outcome>> {
    let mut round_of = Vec::with_capacity(events.len());
    let mut seen: HashMap<(AggregateType, Uuid), usize> = HashMap::new();
    for e in events {
        let n = seen.entry(e.key()).or_insert(0);
        round_of.push(*n);
        *n += 1;
    }
    let rounds = seen.values().copied().max().unwrap_or(0);
    let mut out: Vec<Option<Outcome>> = vec![None; events.len()];
    let mut gapped: HashMap<(AggregateType, Uuid), i64> = HashMap::new();
    for round in 0..rounds {
        let mut products = Vec::new();
        let mut product_at = Vec::new();
        let mut orders = Vec::new();
        let mut order_at = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if round_of[i] != round {
                continue;
            }
            if let Some(have) = gapped.get(&e.key()) {
                out[i] = Some(Outcome::Gap { have: *have });
                continue;
            }
            match e {
                Event::Product { data, sequence, .. } => {
                    products.push(views::ProductChange {
                        data,
                        sequence: *sequence,
                    });
                    product_at.push(i);
                }
                Event::Order { data, sequence, time } => {
                    orders.push(views::OrderChange {
                        data,
                        sequence: *sequence,
                        at: *time,
                    });
                    order_at.push(i);
                }
            }
        }
        let p = views::apply_products(conn, tables, &products, continuity).await?;
        let o = views::apply_orders(conn, tables, &orders, continuity).await?;
        for (i, outcome) in product_at.into_iter().zip(p).chain(order_at.into_iter().zip(o)) {
            if let Outcome::Gap { have } = outcome {
                gapped.insert(events[i].key(), have);
            }
            out[i] = Some(outcome);
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or(Outcome::Gap { have: 0 })).collect())
}

/// Where the projector reads from.
#[derive(Clone, Debug)]
pub struct Topology {
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    pub workers: usize,
}

impl Topology {
    /// The dead-letter queue of poison messages.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }
}

/// Declares the exchange (as the relay does, so either may start first), the dead-letter
/// exchange and queue, and the projector's quorum queue bound with `#`. Idempotent.
pub async fn declare(ch: &Channel, t: &Topology) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        t.exchange.as_str().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let dlx = t.dead_letter_exchange();
    ch.exchange_declare(
        dlx.as_str().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    let dlq = t.dead_letter_queue();
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let qopts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(dlq.as_str().into(), qopts, quorum.clone()).await?;
    ch.queue_bind(
        dlq.as_str().into(),
        dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut args = quorum;
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    ch.queue_declare(t.queue.as_str().into(), qopts, args).await?;
    ch.queue_bind(
        t.queue.as_str().into(),
        t.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// The running projector's shared state.
#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    cache: Cache,
    topology: Topology,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

struct Metrics {
    applied_product: metrics::Counter,
    applied_order: metrics::Counter,
    duplicates: metrics::Counter,
    gaps: metrics::Counter,
    held: metrics::Gauge,
    unknown: metrics::Counter,
    dead_lettered: metrics::Counter,
    lag: metrics::Gauge,
}

struct Work {
    event: Event,
    acker: Acker,
}

type Key = (AggregateType, Uuid);

/// Events held back per aggregate, by version.
type Held = HashMap<Key, BTreeMap<i64, Work>>;

/// The most deliveries one worker applies in one transaction.
const MAX_BATCH: usize = 512;

impl Projector {
    /// A projector applying to the live views in `pool`.
    pub fn new(pool: PgPool, cache: Cache, topology: Topology) -> Self {
        let metrics = Metrics {
            applied_product: metrics::counter!("read_events_applied_total", "aggregate" => "product"),
            applied_order: metrics::counter!("read_events_applied_total", "aggregate" => "order"),
            duplicates: metrics::counter!("read_events_duplicates_ignored_total"),
            gaps: metrics::counter!("read_events_gaps_held_total"),
            held: metrics::gauge!("read_events_held"),
            unknown: metrics::counter!("read_events_unknown_total"),
            dead_lettered: metrics::counter!("read_events_dead_lettered_total"),
            lag: metrics::gauge!("read_projection_lag_seconds"),
        };
        Self {
            pool,
            cache,
            topology,
            connected: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(metrics),
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

    /// Consumes until `stop`, reconnecting with backoff when the broker goes away. On `stop`
    /// it cancels the consumer, lets the workers finish what they were given, and closes.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !stop.is_cancelled() {
            match self.session(&stop).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => tracing::warn!(error = %e, "projector: broker session ended"),
            }
            self.connected.store(false, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        tracing::info!("projector stopped");
    }

    async fn session(&self, stop: &CancellationToken) -> Result<(), lapin::Error> {
        let props = ConnectionProperties::default().with_connection_name("read-api projector".into());
        let conn = Connection::connect(&self.topology.amqp_url, props).await?;
        let ch = conn.create_channel().await?;
        declare(&ch, &self.topology).await?;
        ch.basic_qos(self.topology.prefetch, BasicQosOptions::default()).await?;
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
            workers.push(tokio::spawn(self.clone().worker(rx, stop.clone())));
        }
        let result = loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                () = stop.cancelled() => break Ok(()),
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            };
            match parse(&delivery.data) {
                Ok(Parsed::Event(event)) => {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    event.route().hash(&mut h);
                    let i = (h.finish() % n as u64) as usize;
                    if senders[i]
                        .send(Work {
                            event: *event,
                            acker: delivery.acker,
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
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
                Err(poison) => {
                    tracing::warn!(error = %poison, routing_key = %delivery.routing_key, "dead-lettering");
                    self.metrics.dead_lettered.increment(1);
                    let _ = delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: false,
                            multiple: false,
                        })
                        .await;
                }
            }
        };
        // Stop taking deliveries, then let the workers finish what they hold.
        let _ = ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        drop(senders);
        for w in workers {
            let _ = w.await;
        }
        self.connected.store(false, Ordering::Relaxed);
        let _ = ch.close(200, "bye".into()).await;
        let _ = conn.close(200, "bye".into()).await;
        result
    }

    /// Applies what it is given in batches: everything waiting in its channel (up to
    /// [`MAX_BATCH`]) goes into one transaction with one announcement, and is acknowledged
    /// after the commit and the cache updates. Gaps are held back (unacknowledged) and tried
    /// again with the next delivery of their aggregate or on a short timer.
    async fn worker(self, mut rx: mpsc::Receiver<Work>, stop: CancellationToken) {
        let mut held: Held = HashMap::new();
        let mut held_count = 0usize;
        let mut retry = tokio::time::interval(Duration::from_millis(200));
        loop {
            let mut fresh = Vec::new();
            let mut retry_held = false;
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => fresh.push(w),
                    None => break,
                },
                _ = retry.tick(), if !held.is_empty() => retry_held = true,
            }
            while fresh.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => fresh.push(w),
                    Err(_) => break,
                }
            }
            self.batch(&mut held, fresh, retry_held, &stop).await;
            let now = held.values().map(BTreeMap::len).sum::<usize>();
            // The gauge is shared by the workers: each adds its own change.
            self.metrics.held.increment(now as f64 - held_count as f64);
            held_count = now;
        }
        self.metrics.held.decrement(held_count as f64);
        // Held events stay unacknowledged: the broker redelivers them.
    }

    /// Applies `fresh` deliveries, with the held events of their aggregates (all held events
    /// if `retry_held`), in one transaction.
    async fn batch(&self, held: &mut Held, fresh: Vec<Work>, retry_held: bool, stop: &CancellationToken) {
        // Per aggregate, its events in version order; `true` marks those held before.
        let mut queues: HashMap<Key, BTreeMap<i64, (Work, bool)>> = HashMap::new();
        let take = |q: BTreeMap<i64, Work>| q.into_iter().map(|(s, w)| (s, (w, true))).collect();
        if retry_held {
            for (k, q) in held.drain() {
                queues.insert(k, take(q));
            }
        }
        let mut settle: Vec<Acker> = Vec::new();
        for w in fresh {
            let key = w.event.key();
            let queue = queues
                .entry(key)
                .or_insert_with(|| held.remove(&key).map(take).unwrap_or_default());
            match queue.entry(w.event.sequence()) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    // A second copy of an event already in hand: the first will be applied.
                    self.metrics.duplicates.increment(1);
                    settle.push(w.acker);
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert((w, false));
                }
            }
        }
        let works: Vec<(Work, bool)> = queues.into_values().flat_map(BTreeMap::into_values).collect();
        if works.is_empty() {
            ack_all(settle).await;
            return;
        }
        let Some(outcomes) = self.commit(&works, stop).await else {
            // Stopping: nothing is acknowledged; the broker redelivers.
            return;
        };

        let mut views: HashMap<Key, (i64, Option<Uuid>, String)> = HashMap::new();
        let mut customers: HashMap<Uuid, i64> = HashMap::new();
        // Aggregates of which an event came again although its view already had it.
        let mut redelivered: Vec<Key> = Vec::new();
        let mut latest: Option<DateTime<Utc>> = None;
        for ((w, was_held), outcome) in works.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Applied { doc, revision } => {
                    latest = latest.max(Some(w.event.time()));
                    let owner = match &w.event {
                        Event::Product { .. } => {
                            self.metrics.applied_product.increment(1);
                            None
                        }
                        Event::Order { data, .. } => {
                            self.metrics.applied_order.increment(1);
                            if let Some(rev) = revision {
                                let r = customers.entry(data.customer_id).or_insert(rev);
                                *r = (*r).max(rev);
                            }
                            Some(data.customer_id)
                        }
                    };
                    // Events of one aggregate come in version order: the last one stays.
                    views.insert(w.event.key(), (w.event.sequence(), owner, doc));
                    settle.push(w.acker);
                }
                Outcome::Duplicate => {
                    self.metrics.duplicates.increment(1);
                    redelivered.push(w.event.key());
                    settle.push(w.acker);
                }
                Outcome::Gap { have } => {
                    tracing::debug!(
                        have,
                        sequence = w.event.sequence(),
                        "holding an event back: its predecessor is not applied yet"
                    );
                    if !was_held {
                        self.metrics.gaps.increment(1);
                    }
                    held.entry(w.event.key()).or_default().insert(w.event.sequence(), w);
                }
            }
        }
        if let Some(t) = latest {
            let lag = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
            self.metrics.lag.set(lag);
        }
        // Committed: now the cache (compare-and-set on the version, so never older over
        // newer), then the acknowledgements.
        redelivered.retain(|k| !views.contains_key(k));
        let (mut refreshed, refreshed_customers) = self.committed_views(redelivered).await;
        for (customer, revision) in refreshed_customers {
            let r = customers.entry(customer).or_insert(revision);
            *r = (*r).max(revision);
        }
        let views = views
            .into_iter()
            .map(|((aggregate, id), (version, owner, doc))| {
                let kind = match aggregate {
                    AggregateType::Product => Kind::Product,
                    AggregateType::Order => Kind::Order,
                };
                (kind, id, StoredView { version, owner, doc })
            })
            .chain(refreshed.drain(..))
            .collect();
        self.cache.publish_views(views).await;
        self.cache.publish_customers(customers.into_iter().collect()).await;
        ack_all(settle).await;
    }

    /// The views of `keys` as committed, and their customers' revisions, for the cache.
    ///
    /// An event that arrives again although its view has it is usually a redelivery after
    /// this process (or another instance) died between committing a batch and writing the
    /// cache: the cache may still hold the view before that batch, and without a refresh would
    /// serve it until its TTL. Redeliveries are rare, so reading their views back costs little.
    /// A failure only logs: the entries then age out with their TTL.
    async fn committed_views(&self, mut keys: Vec<Key>) -> (Vec<(Kind, Uuid, StoredView)>, Vec<(Uuid, i64)>) {
        if keys.is_empty() {
            return (Vec::new(), Vec::new());
        }
        keys.sort_unstable_by_key(|(a, id)| (*a == AggregateType::Order, *id));
        keys.dedup();
        let read = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            let mut views = Vec::new();
            let mut customers = Vec::new();
            for (aggregate, id) in keys {
                let (kind, view) = match aggregate {
                    AggregateType::Product => (Kind::Product, views::product(&mut conn, id).await),
                    AggregateType::Order => (Kind::Order, views::order(&mut conn, id).await),
                };
                let Some(view) = view.map_err(|e| e.to_string())? else {
                    continue;
                };
                if let Some(customer) = view.owner {
                    let revision = views::customer_revision(&mut conn, customer)
                        .await
                        .map_err(|e| e.to_string())?;
                    customers.push((customer, revision));
                }
                views.push((kind, id, view));
            }
            Ok::<_, String>((views, customers))
        };
        read.await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read redelivered events' views back; their cache entries age out");
            (Vec::new(), Vec::new())
        })
    }

    /// Applies `works` in one transaction that also announces what it applied; retries on a
    /// database failure until `stop` (then `None`).
    async fn commit(&self, works: &[(Work, bool)], stop: &CancellationToken) -> Option<Vec<Outcome>> {
        let tables = Tables::live();
        let events: Vec<&Event> = works.iter().map(|(w, _)| &w.event).collect();
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
                conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                    let outcomes = apply_all(conn, &tables, &events, Continuity::Strict).await?;
                    // The highest version each aggregate reached (events come in order).
                    let mut reached: HashMap<Key, i64> = HashMap::new();
                    for (e, o) in events.iter().zip(&outcomes) {
                        if matches!(o, Outcome::Applied { .. }) {
                            reached.insert(e.key(), e.sequence());
                        }
                    }
                    let entries: Vec<String> = reached
                        .into_iter()
                        .map(|((aggregate, id), version)| Announcement::Applied { aggregate, id, version }.to_string())
                        .collect();
                    views::announce(conn, &entries).await?;
                    Ok(outcomes)
                })
                .await
                .map_err(|e| e.to_string())
            };
            match attempt.await {
                Ok(o) => return Some(o),
                Err(e) => {
                    tracing::warn!(error = %e, events = works.len(), "projector: applying failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return None,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Acknowledges `ackers`, all frames in flight at once.
async fn ack_all(ackers: Vec<Acker>) {
    futures::future::join_all(ackers.iter().map(|a| a.ack(BasicAckOptions::default()))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordering_schema::events::EventKind;

    fn product(seq: i64) -> ProductData {
        let now = ordering_schema::events::now();
        ProductData {
            id: Uuid::now_v7(),
            sku: "s".into(),
            name: "n".into(),
            description: "d".into(),
            price_cents: 1,
            currency: "EUR".into(),
            stock: 1,
            version: seq,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn parses_known_unknown_and_poison() {
        let p = product(1);
        let ev = CloudEvent::new(EventKind::ProductCreated, p.id, 1, ordering_schema::events::now(), &p);
        let body = serde_json::to_vec(&ev).unwrap();
        assert!(matches!(parse(&body), Ok(Parsed::Event(_))));
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["type"] = "ordering.product.renamed.v9".into();
        assert!(matches!(
            parse(&serde_json::to_vec(&v).unwrap()),
            Ok(Parsed::Unknown(_))
        ));
        v["type"] = "ordering.product.created.v1".into();
        v["aggregatetype"] = "invoice".into();
        assert!(matches!(
            parse(&serde_json::to_vec(&v).unwrap()),
            Ok(Parsed::Unknown(_))
        ));
        v["aggregatetype"] = "product".into();
        v["data"] = serde_json::json!({"id": 1});
        assert!(parse(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(parse(b"{not json").is_err());
        v["aggregatetype"] = "order".into();
        assert!(parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
