//! The publishing loop: read unsent rows of the partitions held, publish them with a window
//! of outstanding confirms (at most one unconfirmed message per aggregate), mark the
//! confirmed ones sent in one statement, and sleep until a notification or the poll.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, BrokerConn, Topology};
use crate::leases::Leases;
use crate::store::{Confirmed, OutboxRow, Store, StoreError};
use ordering_platform::breaker::Breaker;

/// What the publisher needs, shared with the rest of the relay.
pub struct Publisher {
    pub store: Store,
    pub leases: Arc<Leases>,
    pub topology: Topology,
    pub amqp_url: String,
    pub window: usize,
    pub batch: i64,
    pub poll_interval: Duration,
    pub max_attempts: i32,
    pub confirm_timeout: Duration,
    pub db: Arc<Breaker>,
    pub broker: Arc<Breaker>,
    /// Whether the broker connection is up, for readiness.
    pub broker_up: Arc<AtomicBool>,
    pub wake: Arc<Notify>,
    /// Signalled by the listener each time it (re)connects to PostgreSQL: the database is
    /// reachable again, so a backoff waiting on it can end early.
    pub db_reachable: Arc<Notify>,
}

type AggKey = (String, String);

/// A read of the next batch under way.
struct Prefetch {
    task: tokio::task::JoinHandle<Result<Vec<OutboxRow>, StoreError>>,
    fences: HashMap<i32, i64>,
    /// Aggregates whose rows must not be published from this read: the batch before did not
    /// get all of their rows confirmed.
    skip: HashSet<AggKey>,
}

/// A mark statement under way, with the rows it marks.
struct Marking {
    task: tokio::task::JoinHandle<Result<usize, crate::store::StoreError>>,
    rows: Vec<Confirmed>,
}

/// How one batch ended.
#[derive(Default)]
struct BatchOutcome {
    confirmed: Vec<Confirmed>,
    /// Rows the broker refused, with the reason.
    nacked: Vec<(OutboxRow, String)>,
    /// Rows that can never be published as they are.
    poison: Vec<(OutboxRow, String)>,
    /// The channel failed: the connection must be rebuilt.
    broken: Option<String>,
    /// Aggregates with a row of the batch that was not confirmed.
    unfinished: HashSet<AggKey>,
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build()
}

impl Publisher {
    /// Runs until `stop` is cancelled, then finishes the batch in flight (waiting for its
    /// confirms) and records what was confirmed before returning.
    pub async fn run(self, stop: CancellationToken) {
        let mut conn: Option<BrokerConn> = None;
        // Confirmed rows not yet marked sent, and the one mark statement under way (marking
        // batch N overlaps with publishing batch N+1; reads leave both sets out).
        let mut to_mark: Vec<Confirmed> = Vec::new();
        let mut marking: Option<Marking> = None;
        // The next batch, read while the current one is published.
        let mut prefetched: Option<Prefetch> = None;
        // Aggregates waiting out a backoff after the broker refused their head row.
        let mut blocked: HashMap<AggKey, Instant> = HashMap::new();
        let mut db_backoff = backoff();
        let mut broker_backoff = backoff();
        // After a wake-up whose read found nothing, read again shortly: a notification can
        // arrive before the row is visible to other sessions.
        let mut rechecks = 0u8;
        loop {
            if marking.as_ref().is_some_and(|m| m.task.is_finished())
                && let Some(m) = marking.take()
                && !self.finish_marking(m, &mut to_mark).await
            {
                if stop.is_cancelled() {
                    // Unmarked rows are sent again by the next owner: duplicates, never losses.
                    return;
                }
                self.pause_for_db(db_backoff.next(), &stop).await;
            }
            if marking.is_none() && !to_mark.is_empty() {
                marking = Some(self.start_marking(std::mem::take(&mut to_mark)));
            }
            if stop.is_cancelled() {
                if let Some(m) = marking.take() {
                    self.finish_marking(m, &mut to_mark).await;
                }
                if !to_mark.is_empty() && self.mark(&to_mark).await.is_err() {
                    tracing::warn!(
                        rows = to_mark.len(),
                        "could not record the last confirms; they will be sent again"
                    );
                }
                return;
            }
            if let Some(c) = &conn
                && !c.connected()
            {
                tracing::warn!("broker connection lost");
                self.broker.failure();
                self.broker_up.store(false, Ordering::Relaxed);
                conn = None;
            }
            let Some(c) = conn.as_ref() else {
                if let Err(wait) = self.broker.allow() {
                    self.pause(Some(wait), &stop).await;
                    continue;
                }
                match broker::connect(&self.amqp_url, &self.topology).await {
                    Ok(c) => {
                        tracing::info!(exchange = %self.topology.exchange, "connected to the broker");
                        self.broker.success();
                        self.broker_up.store(true, Ordering::Relaxed);
                        broker_backoff = backoff();
                        conn = Some(c);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to the broker");
                        metrics::counter!("relay_retries_total", "dependency" => "rabbitmq").increment(1);
                        self.broker.failure();
                        self.broker_up.store(false, Ordering::Relaxed);
                        self.pause(broker_backoff.next(), &stop).await;
                    }
                }
                continue;
            };
            let held = self.leases.snapshot();
            if held.is_empty() {
                self.idle(&stop).await;
                continue;
            }
            if let Err(wait) = self.db.allow() {
                self.pause(Some(wait), &stop).await;
                continue;
            }
            let now_fetch = Instant::now();
            let (rows, fences, skip) = match prefetched.take() {
                Some(p) => {
                    let rows = p
                        .task
                        .await
                        .unwrap_or_else(|e| Err(StoreError::Pool(format!("read task failed: {e}"))));
                    (rows, p.fences, p.skip)
                }
                None => {
                    let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
                    let fences: HashMap<i32, i64> = held.into_iter().collect();
                    let exclude: Vec<i64> = marking
                        .iter()
                        .flat_map(|m| m.rows.iter())
                        .chain(to_mark.iter())
                        .map(|c| c.id)
                        .collect();
                    (
                        self.store.fetch(&partitions, self.batch, &exclude).await,
                        fences,
                        HashSet::new(),
                    )
                }
            };
            let rows = match rows {
                Ok(rows) => {
                    self.db.success();
                    db_backoff = backoff();
                    rows
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    metrics::counter!("relay_retries_total", "dependency" => "postgres").increment(1);
                    self.db.failure();
                    self.pause_for_db(db_backoff.next(), &stop).await;
                    continue;
                }
            };
            let fetched = rows.len();
            let fetch_time = now_fetch.elapsed();
            let full = rows.len() as i64 >= self.batch;
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            let rows: Vec<OutboxRow> = rows
                .into_iter()
                .filter(|r| {
                    let key = (r.aggregate_type.clone(), r.aggregate_id.clone());
                    !blocked.contains_key(&key) && !skip.contains(&key)
                })
                .collect();
            if rows.is_empty() {
                if rechecks > 0 {
                    rechecks -= 1;
                    // A new notification during the pause means another commit: read at once
                    // rather than let its row wait out the pause.
                    let recheck = Duration::from_millis(if rechecks == 1 { 5 } else { 25 });
                    tokio::select! {
                        () = self.pause(Some(recheck), &stop) => {}
                        () = self.wake.notified() => rechecks = 2,
                    }
                } else if self.idle(&stop).await {
                    rechecks = 2;
                }
                continue;
            }
            if full && !stop.is_cancelled() {
                // Read the next batch while this one is published. It leaves out this
                // batch's rows; its rows of an aggregate that does not finish here are dropped
                // (see `skip`), so no row overtakes an earlier one of its aggregate.
                let held = self.leases.snapshot();
                let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
                let exclude: Vec<i64> = marking
                    .iter()
                    .flat_map(|m| m.rows.iter().map(|c| c.id))
                    .chain(to_mark.iter().map(|c| c.id))
                    .chain(rows.iter().map(|r| r.id))
                    .collect();
                let store = self.store.clone();
                let batch = self.batch;
                prefetched = Some(Prefetch {
                    task: tokio::spawn(async move { store.fetch(&partitions, batch, &exclude).await }),
                    fences: held.into_iter().collect(),
                    skip: HashSet::new(),
                });
            }
            let started = Instant::now();
            let out = self.publish_batch(c, rows, &fences, &stop).await;
            if let Some(p) = prefetched.as_mut() {
                if out.broken.is_some() || stop.is_cancelled() {
                    p.task.abort();
                    prefetched = None;
                } else {
                    p.skip = out.unfinished.clone();
                }
            }
            tracing::debug!(fetched, fetch = ?fetch_time, publish = ?started.elapsed(), confirmed = out.confirmed.len(), "batch");
            to_mark.extend(out.confirmed);
            // At most one mark under way: wait for the previous one, then start this batch's.
            if let Some(m) = marking.take()
                && !self.finish_marking(m, &mut to_mark).await
            {
                self.pause_for_db(db_backoff.next(), &stop).await;
            }
            if !to_mark.is_empty() {
                marking = Some(self.start_marking(std::mem::take(&mut to_mark)));
            }
            for (row, reason) in out.poison {
                tracing::error!(event_id = %row.event_id, outbox_id = row.id, %reason, "poison row: dead-lettered");
                self.dead_letter(&row, &reason).await;
            }
            for (row, reason) in out.nacked {
                metrics::counter!("relay_retries_total", "dependency" => "rabbitmq").increment(1);
                let attempts = self
                    .store
                    .record_failure(row.id, &reason)
                    .await
                    .unwrap_or(row.attempts + 1);
                if attempts >= self.max_attempts {
                    tracing::error!(event_id = %row.event_id, attempts, %reason, "refused too often: dead-lettered");
                    self.dead_letter(&row, &reason).await;
                } else {
                    let delay = backoff()
                        .nth(attempts.max(1) as usize - 1)
                        .unwrap_or(Duration::from_secs(1));
                    tracing::warn!(event_id = %row.event_id, attempts, ?delay, %reason, "broker refused the event; will retry");
                    blocked.insert((row.aggregate_type, row.aggregate_id), Instant::now() + delay);
                }
            }
            if let Some(reason) = out.broken {
                tracing::warn!(%reason, "broker channel failed; reconnecting");
                metrics::counter!("relay_retries_total", "dependency" => "rabbitmq").increment(1);
                self.broker.failure();
                self.broker_up.store(false, Ordering::Relaxed);
                if let Some(c) = conn.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), c.connection.close(320, "reconnecting".into()))
                            .await;
                }
                continue;
            }
            self.broker.success();
            if !full && !stop.is_cancelled() {
                // Fewer rows than a batch: the backlog is drained; wait for news.
                if self.idle(&stop).await {
                    rechecks = 2;
                }
            }
        }
    }

    /// Publishes `rows`, keeping up to `window` confirms outstanding and at most one per
    /// aggregate, so a refused or lost message never has a later one of its aggregate
    /// overtake it.
    async fn publish_batch(
        &self,
        conn: &BrokerConn,
        mut rows: Vec<OutboxRow>,
        fences: &HashMap<i32, i64>,
        stop: &CancellationToken,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        // Aggregates in the order of their oldest row; each with its rows in sequence order.
        rows.sort_by_key(|r| r.id);
        let mut queues: HashMap<AggKey, VecDeque<OutboxRow>> = HashMap::new();
        let mut ready: VecDeque<AggKey> = VecDeque::new();
        for r in rows {
            let key = (r.aggregate_type.clone(), r.aggregate_id.clone());
            let q = queues.entry(key.clone()).or_default();
            if q.is_empty() {
                ready.push_back(key);
            }
            q.push_back(r);
        }
        for q in queues.values_mut() {
            q.make_contiguous().sort_by_key(|r| (r.sequence, r.id));
        }
        type Pending = BoxFuture<'static, (AggKey, OutboxRow, Instant, Result<Confirmation, lapin::Error>)>;
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        loop {
            while out.broken.is_none() && !stop.is_cancelled() && inflight.len() < self.window {
                let Some(key) = ready.pop_front() else { break };
                let Some(row) = queues.get_mut(&key).and_then(VecDeque::pop_front) else {
                    continue;
                };
                let fence = fences.get(&row.partition).copied().unwrap_or(-1);
                if !self.leases.valid(row.partition, fence) {
                    // The lease lapsed or was given up: its rows are someone else's now.
                    queues.remove(&key);
                    out.unfinished.insert(key.clone());
                    continue;
                }
                let (routing_key, props) = match broker::message(&row) {
                    Ok(m) => m,
                    Err(p) => {
                        queues.remove(&key);
                        out.unfinished.insert(key.clone());
                        out.poison.push((row, p.to_string()));
                        continue;
                    }
                };
                let started = Instant::now();
                let publish = conn.channel.basic_publish(
                    self.topology.exchange.as_str().into(),
                    routing_key,
                    BasicPublishOptions::default(),
                    row.payload.as_bytes(),
                    props,
                );
                match publish.await {
                    Ok(confirm) => {
                        metrics::histogram!("relay_publish_seconds").record(started.elapsed().as_secs_f64());
                        inflight.push(Box::pin(async move { (key, row, started, confirm.await) }));
                    }
                    Err(e) => {
                        out.unfinished.insert(key);
                        out.broken = Some(e.to_string());
                    }
                }
            }
            if inflight.is_empty() {
                break;
            }
            // One timer for the window rather than one per message: no confirm at all for
            // this long means the channel is stuck.
            let Ok(Some((key, row, started, result))) =
                tokio::time::timeout(self.confirm_timeout, inflight.next()).await
            else {
                out.broken
                    .get_or_insert_with(|| format!("no confirm within {:?}", self.confirm_timeout));
                break;
            };
            match result {
                Ok(Confirmation::Ack(_)) => {
                    metrics::histogram!("relay_confirm_seconds").record(started.elapsed().as_secs_f64());
                    metrics::counter!("relay_rows_published_total").increment(1);
                    tracing::trace!(event_id = %row.event_id, outbox_id = row.id, "published");
                    let fence = fences.get(&row.partition).copied().unwrap_or(-1);
                    out.confirmed.push(Confirmed {
                        id: row.id,
                        partition: row.partition,
                        fence,
                    });
                    if queues.get(&key).is_some_and(|q| !q.is_empty()) {
                        ready.push_back(key);
                    }
                }
                Ok(_) => {
                    queues.remove(&key);
                    out.unfinished.insert(key.clone());
                    out.nacked
                        .push((row, "the broker refused the message (nack)".to_owned()));
                }
                Err(e) => {
                    queues.remove(&key);
                    out.unfinished.insert(key.clone());
                    out.broken.get_or_insert_with(|| e.to_string());
                }
            }
        }
        // Rows never published (stopped, channel broken) leave their aggregate unfinished.
        out.unfinished
            .extend(queues.into_iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| k));
        out
    }

    fn start_marking(&self, rows: Vec<Confirmed>) -> Marking {
        let store = self.store.clone();
        let owner = self.leases.owner();
        let ids = rows.clone();
        let task = tokio::spawn(async move { store.mark_sent(&ids, owner).await });
        Marking { task, rows }
    }

    /// Waits for a mark under way; on failure its rows go back to `to_mark` for a retry.
    /// Returns whether it succeeded.
    async fn finish_marking(&self, m: Marking, to_mark: &mut Vec<Confirmed>) -> bool {
        let result = match m.task.await {
            Ok(r) => r,
            Err(e) => Err(crate::store::StoreError::Pool(format!("mark task failed: {e}"))),
        };
        match result {
            Ok(n) => {
                self.db.success();
                if n < m.rows.len() {
                    tracing::warn!(
                        confirmed = m.rows.len(),
                        marked = n,
                        "some leases were lost; their rows will be sent again"
                    );
                }
                true
            }
            Err(e) => {
                self.db.failure();
                metrics::counter!("relay_retries_total", "dependency" => "postgres").increment(1);
                tracing::warn!(error = %e, rows = m.rows.len(), "cannot mark confirmed rows sent; retrying");
                to_mark.extend(m.rows);
                false
            }
        }
    }

    async fn mark(&self, rows: &[Confirmed]) -> Result<(), crate::store::StoreError> {
        match self.store.mark_sent(rows, self.leases.owner()).await {
            Ok(n) => {
                self.db.success();
                if n < rows.len() {
                    tracing::warn!(
                        confirmed = rows.len(),
                        marked = n,
                        "some leases were lost; their rows will be sent again"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.db.failure();
                metrics::counter!("relay_retries_total", "dependency" => "postgres").increment(1);
                Err(e)
            }
        }
    }

    async fn dead_letter(&self, row: &OutboxRow, reason: &str) {
        match self.store.dead_letter(row.id, reason).await {
            Ok(()) => metrics::counter!("relay_dead_lettered_total").increment(1),
            // The row stays unsent; it will be tried (and refused) again, then dead-lettered.
            Err(e) => tracing::warn!(error = %e, event_id = %row.event_id, "cannot dead-letter the row"),
        }
    }

    /// A backoff after a database failure, cut short when the listener reconnects: after an
    /// outage the relay resumes within moments of PostgreSQL's return rather than at the end
    /// of a backoff step that may have grown to seconds.
    async fn pause_for_db(&self, wait: Option<Duration>, stop: &CancellationToken) {
        tokio::select! {
            () = self.pause(wait, stop) => {}
            () = self.db_reachable.notified() => {}
        }
    }

    /// Waits for a notification or the poll interval; `true` if woken by a notification.
    async fn idle(&self, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = self.wake.notified() => true,
            () = tokio::time::sleep(self.poll_interval) => false,
            () = stop.cancelled() => false,
        }
    }

    async fn pause(&self, wait: Option<Duration>, stop: &CancellationToken) {
        let wait = wait.unwrap_or(Duration::from_secs(10));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {}
        }
    }
}
