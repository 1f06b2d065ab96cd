//! The workers: each applies the deliveries routed to it in batches, one transaction each.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use ordering_schema::events::AggregateType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::failure::{self, CommitError, Failure};
use super::{Event, Key, Projector, Work, apply_all};
use crate::announcement::Announcement;
use crate::cache::Kind;
use crate::views::{self, Continuity, Outcome, StoredView, Tables};

/// Events held back per aggregate, by version.
type Held = HashMap<Key, BTreeMap<i64, Work>>;

/// The most deliveries one worker applies in one transaction.
const MAX_BATCH: usize = 512;

/// How often a failure that is neither known to be transient nor a refusal is retried before
/// the events are given up (one by one, so only the one that causes it is lost).
const UNEXPECTED_RETRIES: usize = 5;

/// What became of one event.
enum Settled {
    /// Committed (or found a duplicate, or a gap).
    Done(Outcome),
    /// The database refuses it: it goes to the dead-letter queue.
    Refused(CommitError),
}

impl Projector {
    /// Applies what it is given in batches: everything waiting in its channel (up to
    /// [`MAX_BATCH`]) goes into one transaction with one announcement, and is acknowledged
    /// after the commit and the cache updates. Gaps are held back (unacknowledged) and tried
    /// again with the next delivery of their aggregate or on a short timer.
    pub(super) async fn worker(self, mut rx: mpsc::Receiver<Work>, stop: CancellationToken) {
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
        let events: Vec<&Event> = works.iter().map(|(w, _)| &w.event).collect();
        let Some(outcomes) = self.commit(&events, stop).await else {
            // Stopping: nothing is acknowledged; the broker redelivers.
            return;
        };

        let mut views: HashMap<Key, (i64, Option<Uuid>, String)> = HashMap::new();
        let mut customers: HashMap<Uuid, i64> = HashMap::new();
        // Aggregates of which an event came again although its view already had it.
        let mut redelivered: Vec<Key> = Vec::new();
        let mut latest: Option<DateTime<Utc>> = None;
        let mut refused: Vec<Acker> = Vec::new();
        for ((w, was_held), settled) in works.into_iter().zip(outcomes) {
            let outcome = match settled {
                Settled::Done(outcome) => outcome,
                Settled::Refused(e) => {
                    tracing::warn!(error = %e, sequence = w.event.sequence(), key = ?w.event.key(), "dead-lettering an event the database refuses");
                    self.metrics.refused.increment(1);
                    refused.push(w.acker);
                    continue;
                }
            };
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
        dead_letter_all(refused).await;
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

    /// Applies `events` in one transaction that also announces what it applied, and says
    /// what became of each (in input order); `None` if `stop` came first.
    ///
    /// A batch the database refuses is applied again event by event, so that only the
    /// event it refuses is given up and every other one applies.
    async fn commit(&self, events: &[&Event], stop: &CancellationToken) -> Option<Vec<Settled>> {
        match self.commit_retrying(events, stop).await? {
            Ok(outcomes) => Some(outcomes.into_iter().map(Settled::Done).collect()),
            Err(e) if events.len() == 1 => Some(vec![Settled::Refused(e)]),
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(), "projector: a batch was refused; applying its events one by one");
                let mut settled = Vec::with_capacity(events.len());
                for event in events {
                    settled.extend(Box::pin(self.commit(&[*event], stop)).await?);
                }
                Some(settled)
            }
        }
    }

    /// One transaction applying `events`, retried with backoff while the failure is transient
    /// (for ever) or unexpected (at most [`UNEXPECTED_RETRIES`] times); `None` if `stop`
    /// came first, `Some(Err)` once the failure says the events can not be applied.
    async fn commit_retrying(
        &self,
        events: &[&Event],
        stop: &CancellationToken,
    ) -> Option<Result<Vec<Outcome>, CommitError>> {
        let mut unexpected = 0;
        let attempts = (|| self.transaction(events))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times(),
            )
            .when(|e| match failure::classify(e) {
                Failure::Transient => true,
                Failure::Refused => false,
                Failure::Unexpected => {
                    unexpected += 1;
                    unexpected <= UNEXPECTED_RETRIES
                }
            })
            .notify(|e, after| {
                tracing::warn!(error = %e, events = events.len(), ?after, "projector: applying failed; retrying");
            });
        tokio::select! {
            r = attempts => Some(r),
            () = stop.cancelled() => None,
        }
    }

    async fn transaction(&self, events: &[&Event]) -> Result<Vec<Outcome>, CommitError> {
        let tables = Tables::live();
        let mut conn = self.pool.get().await?;
        let outcomes = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let outcomes = apply_all(conn, &tables, events, Continuity::Strict).await?;
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
            .await?;
        Ok(outcomes)
    }
}

/// Acknowledges `ackers`, all frames in flight at once.
async fn ack_all(ackers: Vec<Acker>) {
    futures::future::join_all(ackers.iter().map(|a| a.ack(BasicAckOptions::default()))).await;
}

/// Rejects `ackers` without requeueing: the broker moves them to the dead-letter queue.
async fn dead_letter_all(ackers: Vec<Acker>) {
    let reject = BasicNackOptions {
        requeue: false,
        multiple: false,
    };
    futures::future::join_all(ackers.iter().map(|a| a.nack(reject))).await;
}
