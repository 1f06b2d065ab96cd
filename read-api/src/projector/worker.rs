//! The workers: each applies the deliveries routed to it in batches, one transaction each,
//! parking gaps and applying the parked events whose gap the batch fills.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use backon::Retryable;
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use lapin::Acker;
use lapin::options::BasicAckOptions;
use ordering_platform::{backoff, trace_context};
use ordering_schema::events::AggregateType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::dead_letter::DeadLetters;
use super::failure::{self, CommitError, Failure};
use super::parking::{self, Parked, ToPark};
use super::{Event, Key, Parsed, Projector, Work, apply_all, parse, within_broker_timeout};
use crate::announcement::Announcement;
use crate::error::{ErrorChain, StoreError};
use crate::views::{self, Continuity, Outcome, StoredView, Tables};

/// The most deliveries one worker applies in one transaction.
const MAX_BATCH: usize = 512;

/// How often a failure that is neither known to be transient nor a refusal is retried before
/// the events are given up (one by one, so only the one that causes it is lost).
const UNEXPECTED_RETRIES: usize = 5;

/// What became of one event.
enum Settled {
    /// Committed: applied, a duplicate, or parked (a gap).
    Done(Outcome),
    /// The database refuses it: it goes to the dead-letter queue.
    Refused(CommitError),
}

/// What one transaction did.
pub(super) struct Committed {
    /// Per event given, what applying it did (a gap was parked).
    outcomes: Vec<Outcome>,
    /// Parked events it applied because their gap filled, and what applying them did.
    pub(super) drained: Vec<(Event, Outcome)>,
}

/// What committed transactions changed, for the cache.
#[derive(Default)]
pub(super) struct Changes {
    views: HashMap<Key, (i64, Option<Uuid>, String)>,
    customers: HashMap<Uuid, i64>,
    /// Aggregates of which an event came again although its view already had it.
    redelivered: Vec<Key>,
    latest: Option<DateTime<Utc>>,
}

impl Projector {
    /// Applies what it is given in batches: everything waiting in its channel (up to
    /// [`MAX_BATCH`]) goes into one transaction with one announcement, and is acknowledged
    /// after the commit and the cache updates. Gaps are parked in that transaction and
    /// acknowledged with the rest.
    pub(super) async fn worker(self, mut rx: mpsc::Receiver<Work>, dead_letters: DeadLetters, stop: CancellationToken) {
        while let Some(first) = rx.recv().await {
            let mut fresh = vec![first];
            while fresh.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => fresh.push(w),
                    Err(_) => break,
                }
            }
            self.batch(fresh, &dead_letters, &stop).await;
        }
    }

    /// Applies `fresh` deliveries in one transaction (or, if the database refuses it, one
    /// transaction per delivery), then updates the cache and settles them with the broker.
    async fn batch(&self, fresh: Vec<Work>, dead_letters: &DeadLetters, stop: &CancellationToken) {
        // Per aggregate, its events in version order.
        let mut queues: HashMap<Key, BTreeMap<i64, Work>> = HashMap::new();
        let mut settle: Vec<Acker> = Vec::new();
        for w in fresh {
            match queues.entry(w.event.key()).or_default().entry(w.event.sequence()) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    // A second copy of an event already in hand: the first will be applied.
                    self.metrics.duplicates.increment(1);
                    settle.push(w.acker);
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(w);
                }
            }
        }
        let works: Vec<Work> = queues.into_values().flat_map(BTreeMap::into_values).collect();
        // Each delivery's span lasts until it is settled, at the end of the batch.
        let applies: Vec<tracing::Span> = works.iter().map(|w| w.span.clone()).collect();
        let refs: Vec<&Work> = works.iter().collect();
        let commit = self.commit(&refs, stop).instrument(batch_span("view write", &applies));
        let Some((settled, drained)) = commit.await else {
            // Stopping: nothing is acknowledged; the broker redelivers.
            return;
        };
        let mut changes = Changes::default();
        let mut refused: Vec<(Work, String)> = Vec::new();
        for (w, settled) in works.into_iter().zip(settled) {
            match settled {
                Settled::Done(Outcome::Gap { have }) => {
                    tracing::debug!(
                        have,
                        sequence = w.event.sequence(),
                        "parked an event: its predecessor is not applied yet"
                    );
                    self.metrics.gaps.increment(1);
                    settle.push(w.acker);
                }
                Settled::Done(outcome) => {
                    self.record(&mut changes, &w.event, outcome);
                    settle.push(w.acker);
                }
                Settled::Refused(e) => {
                    trace_context::fail(&w.span, e.to_string());
                    tracing::warn!(error = %e, sequence = w.event.sequence(), key = ?w.event.key(), "dead-lettering an event the database refuses");
                    self.metrics.refused.increment(1);
                    let reason = format!("refused by the database: {}", ErrorChain(&e));
                    refused.push((w, reason));
                }
            }
        }
        for (event, outcome) in drained {
            self.record(&mut changes, &event, outcome);
        }
        // Committed: now the cache (compare-and-set on the version, so never older over
        // newer), then the acknowledgements.
        self.publish(changes)
            .instrument(batch_span("cache update", &applies))
            .await;
        ack_all(settle).await;
        futures::future::join_all(
            refused
                .iter()
                .map(|(w, why)| dead_letters.give_up(&w.acker, &w.routing_key, &w.body, why)),
        )
        .await;
    }

    /// Adds what applying `event` did to `changes` (and the metrics).
    pub(super) fn record(&self, changes: &mut Changes, event: &Event, outcome: Outcome) {
        match outcome {
            Outcome::Applied { doc, revision } => {
                changes.latest = changes.latest.max(Some(event.time()));
                let lag = (Utc::now() - event.time()).num_microseconds().unwrap_or(i64::MAX);
                self.metrics.event_lag.record(lag.max(0) as f64 / 1e6);
                let owner = match event {
                    Event::Product { .. } => {
                        self.metrics.applied_product.increment(1);
                        None
                    }
                    Event::Order { data, .. } => {
                        self.metrics.applied_order.increment(1);
                        if let Some(rev) = revision {
                            let r = changes.customers.entry(data.customer_id).or_insert(rev);
                            *r = (*r).max(rev);
                        }
                        Some(data.customer_id)
                    }
                };
                // Events of one aggregate come in version order: the last one stays.
                changes.views.insert(event.key(), (event.sequence(), owner, doc));
            }
            Outcome::Duplicate => {
                self.metrics.duplicates.increment(1);
                changes.redelivered.push(event.key());
            }
            Outcome::Gap { .. } => {}
        }
    }

    /// Writes committed `changes` to the cache.
    pub(super) async fn publish(&self, changes: Changes) {
        let Changes {
            views,
            mut customers,
            mut redelivered,
            latest,
        } = changes;
        if let Some(t) = latest {
            let lag = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
            self.metrics.lag.set(lag);
        }
        redelivered.retain(|k| !views.contains_key(k));
        let (mut refreshed, refreshed_customers) = self.committed_views(redelivered).await;
        for (customer, revision) in refreshed_customers {
            let r = customers.entry(customer).or_insert(revision);
            *r = (*r).max(revision);
        }
        let views = views
            .into_iter()
            .map(|((aggregate, id), (version, owner, doc))| (aggregate, id, StoredView { version, owner, doc }))
            .chain(refreshed.drain(..))
            .collect();
        self.cache.publish_views(views).await;
        self.cache.publish_customers(customers.into_iter().collect()).await;
    }

    /// The views of `keys` as committed, and their customers' revisions, for the cache.
    ///
    /// An event that arrives again although its view has it is usually a redelivery after
    /// this process (or another instance) died between committing a batch and writing the
    /// cache: the cache may still hold the view before that batch, and without a refresh would
    /// serve it until its TTL. Redeliveries are rare, so reading their views back costs little.
    /// A failure only logs: the entries then age out with their TTL.
    async fn committed_views(&self, mut keys: Vec<Key>) -> (Vec<(AggregateType, Uuid, StoredView)>, Vec<(Uuid, i64)>) {
        if keys.is_empty() {
            return (Vec::new(), Vec::new());
        }
        keys.sort_unstable_by_key(|(a, id)| (*a == AggregateType::Order, *id));
        keys.dedup();
        let read = async {
            let mut conn = self.pool.get().await?;
            let mut views = Vec::new();
            let mut customers = Vec::new();
            for (aggregate, id) in keys {
                let Some(view) = views::single(&mut conn, aggregate, id).await? else {
                    continue;
                };
                if let Some(customer) = view.owner {
                    let revision = views::customer_revision(&mut conn, customer).await?;
                    customers.push((customer, revision));
                }
                views.push((aggregate, id, view));
            }
            Ok::<_, StoreError>((views, customers))
        };
        read.await.unwrap_or_else(|e| {
            tracing::warn!(error = %ErrorChain(&e), "cannot read redelivered events' views back; their cache entries age out");
            (Vec::new(), Vec::new())
        })
    }
}

impl Projector {
    /// Applies `works` in one transaction, and says what became of each (in input order)
    /// and which parked events it applied; `None` if `stop` came first.
    ///
    /// A batch the database refuses is applied again event by event, so that only the
    /// event it refuses is given up and every other one applies.
    async fn commit(&self, works: &[&Work], stop: &CancellationToken) -> Option<(Vec<Settled>, Vec<(Event, Outcome)>)> {
        match self.commit_retrying(works, &[], stop).await? {
            Ok(c) => Some((c.outcomes.into_iter().map(Settled::Done).collect(), c.drained)),
            Err(e) if works.len() == 1 => Some((vec![Settled::Refused(e)], Vec::new())),
            Err(e) => {
                tracing::warn!(error = %e, events = works.len(), "projector: a batch was refused; applying its events one by one");
                let mut settled = Vec::with_capacity(works.len());
                let mut drained = Vec::new();
                for w in works {
                    let (s, d) = Box::pin(self.commit(&[*w], stop)).await?;
                    settled.extend(s);
                    drained.extend(d);
                }
                Some((settled, drained))
            }
        }
    }

    /// [`Self::transaction`], retried with backoff while the failure is transient (for ever)
    /// or unexpected (at most [`UNEXPECTED_RETRIES`] times); `None` if `stop` came first,
    /// `Some(Err)` once the failure says the events can not be applied.
    pub(super) async fn commit_retrying(
        &self,
        works: &[&Work],
        also: &[Key],
        stop: &CancellationToken,
    ) -> Option<Result<Committed, CommitError>> {
        let mut unexpected = 0;
        let attempts = (|| self.transaction(works, also))
            .retry(backoff::endless(Duration::from_millis(50), Duration::from_secs(5)))
            .when(|e| match failure::classify(e) {
                Failure::Transient => true,
                Failure::Refused => false,
                Failure::Unexpected => {
                    unexpected += 1;
                    unexpected <= UNEXPECTED_RETRIES
                }
            })
            .notify(|e, after| {
                tracing::warn!(error = %e, events = works.len(), ?after, "projector: applying failed; retrying");
            });
        tokio::select! {
            r = attempts => Some(r),
            () = stop.cancelled() => None,
        }
    }

    /// One transaction: takes the locks of the aggregates of `works` and `also`, applies
    /// `works`, parks the gaps among them, applies the parked events whose gap is now filled
    /// (of those aggregates), and announces the versions reached.
    async fn transaction(&self, works: &[&Work], also: &[Key]) -> Result<Committed, CommitError> {
        let tables = Tables::live();
        let mut keys: Vec<Key> = works
            .iter()
            .map(|w| w.event.key())
            .chain(also.iter().copied())
            .collect();
        keys.sort_unstable_by_key(|(a, id)| (a.as_str(), *id));
        keys.dedup();
        let events: Vec<&Event> = works.iter().map(|w| &w.event).collect();
        let mut conn = self.pool.get().await?;
        let committed = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                parking::lock(conn, &keys).await?;
                let outcomes = apply_all(conn, &tables, &events, Continuity::Strict).await?;
                let gaps: Vec<ToPark<'_>> = works
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| matches!(o, Outcome::Gap { .. }))
                    .map(|(w, _)| ToPark {
                        key: w.event.key(),
                        sequence: w.event.sequence(),
                        routing_key: &w.routing_key,
                        body: &w.body,
                    })
                    .collect();
                parking::park(conn, &gaps).await?;
                let drained = drain(conn, &tables, &keys).await?;
                // The highest version each aggregate reached (events come in order).
                let mut reached: HashMap<Key, i64> = HashMap::new();
                let applied = events
                    .iter()
                    .copied()
                    .zip(&outcomes)
                    .chain(drained.iter().map(|(e, o)| (e, o)));
                for (e, o) in applied {
                    if matches!(o, Outcome::Applied { .. }) {
                        reached.insert(e.key(), e.sequence());
                    }
                }
                let entries: Vec<String> = reached
                    .into_iter()
                    .map(|((aggregate, id), version)| Announcement::Applied { aggregate, id, version }.to_string())
                    .collect();
                views::announce(conn, &entries).await?;
                Ok(Committed { outcomes, drained })
            })
            .await?;
        Ok(committed)
    }
}

/// The span of a step of a batch (`name`) for the deliveries `applies`: the child of the
/// first's span, following from (linked to) the others'.
fn batch_span(name: &'static str, applies: &[tracing::Span]) -> tracing::Span {
    let Some((first, others)) = applies.split_first() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(parent: first, "batch", otel.name = name, events = applies.len());
    for other in others {
        span.follows_from(other);
    }
    span
}

/// Applies the parked events of `keys` that follow their views' versions, in a savepoint, and
/// removes them (and those the views already reflect) from the parking. A parked event the
/// database refuses is left parked (its gap then times out to the dead-letter queue) rather
/// than failing the transaction that filled its gap.
async fn drain(
    conn: &mut AsyncPgConnection,
    tables: &Tables,
    keys: &[Key],
) -> diesel::QueryResult<Vec<(Event, Outcome)>> {
    match conn
        .transaction::<_, diesel::result::Error, _>(async |conn| drain_chain(conn, tables, keys).await)
        .await
    {
        Err(e) if failure::classify_db(&e) == Failure::Refused => {
            tracing::warn!("a parked event is refused by the database; it stays parked until its gap times out");
            Ok(Vec::new())
        }
        other => other,
    }
}

async fn drain_chain(
    conn: &mut AsyncPgConnection,
    tables: &Tables,
    keys: &[Key],
) -> diesel::QueryResult<Vec<(Event, Outcome)>> {
    let mut out = Vec::new();
    let mut keys = keys.to_vec();
    while !keys.is_empty() {
        let rows = parking::successors(conn, &keys).await?;
        if rows.is_empty() {
            break;
        }
        let mut done: Vec<&Parked> = Vec::new();
        let mut parsed: Vec<(&Parked, Event)> = Vec::new();
        for r in &rows {
            match parse(&r.body) {
                Ok(Parsed::Event(e)) if e.key().0.as_str() == r.aggregate && e.key().1 == r.id => parsed.push((r, *e)),
                // It parsed when it was parked: only a newer version could change its mind.
                _ => {
                    tracing::warn!(id = %r.id, sequence = r.sequence, "dropping a parked event that no longer parses");
                    done.push(r);
                }
            }
        }
        let events: Vec<&Event> = parsed.iter().map(|(_, e)| e).collect();
        let outcomes = apply_all(conn, tables, &events, Continuity::Strict).await?;
        keys.clear();
        for ((r, e), o) in parsed.into_iter().zip(outcomes) {
            match o {
                Outcome::Applied { .. } => {
                    keys.push(e.key());
                    done.push(r);
                    out.push((e, o));
                }
                Outcome::Duplicate => done.push(r),
                Outcome::Gap { .. } => {}
            }
        }
        parking::remove(conn, &done).await?;
        keys.dedup();
    }
    Ok(out)
}

/// Acknowledges `ackers`, all frames in flight at once.
async fn ack_all(ackers: Vec<Acker>) {
    let acks = futures::future::join_all(ackers.iter().map(|a| a.ack(BasicAckOptions::default())));
    within_broker_timeout("acknowledgements", acks).await;
}
