//! The publishing loop: read unsent rows of the partitions held, publish them with a window
//! of outstanding confirms (at most one unconfirmed message per aggregate), mark the
//! confirmed ones sent in one statement, and sleep until a notification or the poll.
//! Messages are `mandatory`: one the broker returns (no queue bound for it) is confirmed but
//! not delivered: it is retried, then dead-lettered after `RELAY_MAX_ATTEMPTS`. A nack is
//! different: the broker could not take the message *now* (a full queue that rejects
//! publishes, a quorum queue or stream without a leader while a cluster node is lost), so it is
//! retried for as long as that lasts, with a backoff, and never dead-lettered: a row is only
//! given up for what is wrong with it or with the topology, never for the broker's state.
//! Nacks that go on for `NACK_ROUNDS_BEFORE_RECONNECT` batches in a row also reopen the
//! connection (on the next node of `AMQP_URL`): a RabbitMQ 3.10 channel can keep publishing to
//! the dead leader of a stream after a failover it missed, and then nacks everything it is
//! given until it is closed, while a new channel reads the queue's current leader.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use ordering_platform::{backoff, trace_context};
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
    pub amqp_url: ordering_platform::amqp::AmqpNodes,
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
    /// Recent confirms, for the admin page.
    pub activity: Arc<crate::admin::Activity>,
}

type AggKey = (String, String);

/// The aggregate of `row`, owned: only for the rare sets of aggregates held back.
fn aggregate_of(row: &OutboxRow) -> AggKey {
    (row.aggregate_type.clone(), row.aggregate_id.clone())
}

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
    /// Rows the broker returned (no queue bound for them), with the reason.
    nacked: Vec<(OutboxRow, String)>,
    /// Rows the broker nacked: it could not take them now.
    busy: Vec<OutboxRow>,
    /// Rows that can never be published as they are.
    poison: Vec<(OutboxRow, String)>,
    /// The channel failed: the connection must be rebuilt.
    broken: Option<String>,
    /// Aggregates with a row of the batch that was not confirmed.
    unfinished: HashSet<AggKey>,
}

/// Why the broker returned a message: no queue is bound for its routing key (an operator
/// removed the stream's binding), so a confirm alone would have dropped it unseen.
fn returned_reason(r: &lapin::message::BasicReturnMessage) -> String {
    format!(
        "the broker returned the message ({} {}): no queue is bound for routing key {}",
        r.reply_code, r.reply_text, r.delivery.routing_key
    )
}

fn backoff() -> impl Iterator<Item = Duration> {
    backoff::endless(Duration::from_millis(100), Duration::from_secs(10)).build()
}

/// The pauses before reading again after a wake-up whose read found nothing, in order.
const RECHECK_PAUSES: [Duration; 3] = [
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(25),
];
/// How many rechecks a notification arms.
const RECHECKS: u8 = RECHECK_PAUSES.len() as u8;

/// Batches in a row with nacked rows after which the connection is reopened (and again after
/// as many more): a few rounds ride out a leader election, which a new channel would not speed
/// up; more than that suggests a channel with a stale view of a queue.
const NACK_ROUNDS_BEFORE_RECONNECT: u32 = 3;

/// A batch read from the outbox, ready to publish.
struct Batch {
    rows: Vec<OutboxRow>,
    /// The fence of each partition held when it was read.
    fences: HashMap<i32, i64>,
    /// Whether the read filled a whole batch (more rows are likely waiting).
    full: bool,
}

/// The publishing loop's state, kept between its steps.
struct Run<'a> {
    publisher: &'a Publisher,
    stop: CancellationToken,
    conn: Option<BrokerConn>,
    /// Confirmed rows not yet marked sent, and the one mark statement under way (marking
    /// batch N overlaps with publishing batch N+1; reads leave both sets out).
    to_mark: Vec<Confirmed>,
    marking: Option<Marking>,
    /// The next batch, read while the current one is published.
    prefetched: Option<Prefetch>,
    /// Aggregates waiting out a backoff after the broker refused their head row.
    blocked: HashMap<AggKey, Instant>,
    db_backoff: Box<dyn Iterator<Item = Duration> + Send>,
    broker_backoff: Box<dyn Iterator<Item = Duration> + Send>,
    /// How long aggregates whose row was nacked wait: grows while batches keep being nacked,
    /// starts again after a batch without a nack.
    nack_backoff: Box<dyn Iterator<Item = Duration> + Send>,
    /// Whether a connection was opened before (the next one is a reconnect).
    connected_before: bool,
    /// Batches in a row that had rows nacked.
    nacked_rounds: u32,
    /// After a wake-up whose read found nothing, read again shortly: a notification can
    /// arrive before the row is visible to other sessions.
    rechecks: u8,
}

impl Publisher {
    /// Runs until `stop` is cancelled, then finishes the batch in flight (waiting for its
    /// confirms) and records what was confirmed before returning.
    pub async fn run(self, stop: CancellationToken) {
        Run {
            publisher: &self,
            stop,
            conn: None,
            to_mark: Vec::new(),
            marking: None,
            prefetched: None,
            blocked: HashMap::new(),
            db_backoff: Box::new(backoff()),
            broker_backoff: Box::new(backoff()),
            nack_backoff: Box::new(backoff()),
            connected_before: false,
            nacked_rounds: 0,
            rechecks: 0,
        }
        .run()
        .await;
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
        // One queue per aggregate, numbered in the order of its oldest row, with its rows in
        // sequence order. Each row's aggregate is hashed once, borrowed: keyed by owned
        // strings, each row cost two string copies and three hashes (SipHash and malloc were
        // among the relay's hottest functions).
        rows.sort_by_key(|r| r.id);
        let queue_of: Vec<usize> = {
            let mut numbers: HashMap<(&str, &str), usize> = HashMap::new();
            rows.iter()
                .map(|r| {
                    let next = numbers.len();
                    *numbers
                        .entry((r.aggregate_type.as_str(), r.aggregate_id.as_str()))
                        .or_insert(next)
                })
                .collect()
        };
        let mut queues: Vec<VecDeque<OutboxRow>> = Vec::new();
        for (r, q) in rows.into_iter().zip(queue_of) {
            if q == queues.len() {
                queues.push(VecDeque::new());
            }
            queues[q].push_back(r);
        }
        for q in &mut queues {
            q.make_contiguous().sort_by_key(|r| (r.sequence, r.id));
        }
        let mut ready: VecDeque<usize> = (0..queues.len()).collect();
        // The per-row metrics, looked up in the registry once a batch rather than once a row.
        let publish_seconds = metrics::histogram!("relay_publish_seconds");
        let confirm_seconds = metrics::histogram!("relay_confirm_seconds");
        let commit_to_confirm_seconds = metrics::histogram!("relay_commit_to_confirm_seconds");
        let rows_published = metrics::counter!("relay_rows_published_total");
        // Each future borrows the connection's channel: it lives as long as the batch.
        type Pending<'c> = BoxFuture<
            'c,
            (
                usize,
                OutboxRow,
                Instant,
                tracing::Span,
                Result<Confirmation, lapin::Error>,
            ),
        >;
        let mut inflight: FuturesUnordered<Pending<'_>> = FuturesUnordered::new();
        // Messages the broker returned, by message id, with why. lapin hands a returned message
        // to the next confirm it completes, which a multiple ack can make another message's:
        // each confirm is checked against every return seen, not only the one it carries.
        let mut returned: HashMap<String, String> = HashMap::new();
        loop {
            while out.broken.is_none() && !stop.is_cancelled() && inflight.len() < self.window {
                let Some(queue) = ready.pop_front() else { break };
                let Some(row) = queues[queue].pop_front() else {
                    continue;
                };
                let fence = fences.get(&row.partition).copied().unwrap_or(-1);
                if !self.leases.valid(row.partition, fence) {
                    // The lease lapsed or was given up: its rows are someone else's now.
                    queues[queue].clear();
                    out.unfinished.insert(aggregate_of(&row));
                    continue;
                }
                // One span per row, from publish to confirm: see the crate's "Tracing".
                let span = tracing::info_span!(
                    "publish",
                    otel.name = format!("{} publish", self.topology.exchange),
                    otel.kind = "producer",
                    messaging.system = "rabbitmq",
                    messaging.operation.type = "send",
                    messaging.destination.name = %self.topology.exchange,
                    messaging.rabbitmq.destination.routing_key = %row.event_type,
                    messaging.message.id = %row.event_id,
                    outbox_id = row.id,
                );
                let (routing_key, props) = match broker::message(&row, &span) {
                    Ok(m) => m,
                    Err(p) => {
                        trace_context::fail(&span, p.to_string());
                        queues[queue].clear();
                        out.unfinished.insert(aggregate_of(&row));
                        out.poison.push((row, p.to_string()));
                        continue;
                    }
                };
                let started = Instant::now();
                // Mandatory: a message no queue takes is returned, not confirmed and dropped.
                // Not awaited here: lapin queues the frames when the future is first polled and
                // resolves it once its I/O thread has written them, so awaiting each publish in
                // turn costs a wake-up and a write per message. Polled together, the publishes
                // of the window go out in few writes. Their order on the wire is the order of
                // their first polls, which only matters within an aggregate, and an aggregate
                // has at most one message in flight.
                let (channel, exchange) = (&conn.channel, self.topology.exchange.as_str().into());
                let publish_seconds = &publish_seconds;
                inflight.push(Box::pin(async move {
                    let result = async {
                        let options = BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        };
                        let confirm = channel
                            .basic_publish(exchange, routing_key, options, row.payload.as_bytes(), props)
                            .await?;
                        publish_seconds.record(started.elapsed().as_secs_f64());
                        confirm.await
                    }
                    .await;
                    (queue, row, started, span, result)
                }));
            }
            if inflight.is_empty() {
                break;
            }
            // One timer for the window rather than one per message: no confirm at all for
            // this long means the channel is stuck.
            let Ok(Some((queue, row, started, span, result))) =
                tokio::time::timeout(self.confirm_timeout, inflight.next()).await
            else {
                out.broken
                    .get_or_insert_with(|| format!("no confirm within {:?}", self.confirm_timeout));
                break;
            };
            if let Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))) = &result
                && let Some(id) = r.delivery.properties.message_id()
            {
                returned.insert(id.to_string(), returned_reason(r));
            }
            // Returns are rare: the id is only rendered to look one up when there are some.
            if !returned.is_empty()
                && let Some(reason) = returned.remove(&row.event_id.to_string())
            {
                trace_context::fail(&span, reason.as_str());
                queues[queue].clear();
                out.unfinished.insert(aggregate_of(&row));
                out.nacked.push((row, reason));
                continue;
            }
            match result {
                Ok(Confirmation::Ack(_)) => {
                    let latency = started.elapsed();
                    confirm_seconds.record(latency.as_secs_f64());
                    self.activity.confirmed(latency);
                    // By the wall clock: the row's time is the database's (kept in step by NTP).
                    let since_commit = (chrono::Utc::now() - row.created_at)
                        .num_microseconds()
                        .unwrap_or(i64::MAX);
                    commit_to_confirm_seconds.record(since_commit.max(0) as f64 / 1e6);
                    rows_published.increment(1);
                    tracing::trace!(event_id = %row.event_id, outbox_id = row.id, "published");
                    let fence = fences.get(&row.partition).copied().unwrap_or(-1);
                    out.confirmed.push(Confirmed {
                        id: row.id,
                        partition: row.partition,
                        fence,
                        created_at: row.created_at,
                    });
                    if !queues[queue].is_empty() {
                        ready.push_back(queue);
                    }
                }
                Ok(_) => {
                    trace_context::fail(&span, "the broker refused the message (nack)");
                    queues[queue].clear();
                    out.unfinished.insert(aggregate_of(&row));
                    out.busy.push(row);
                }
                Err(e) => {
                    trace_context::fail(&span, e.to_string());
                    queues[queue].clear();
                    out.unfinished.insert(aggregate_of(&row));
                    out.broken.get_or_insert_with(|| e.to_string());
                }
            }
        }
        // Rows never published (stopped, channel broken) leave their aggregate unfinished.
        out.unfinished
            .extend(queues.iter().filter_map(|q| q.front()).map(aggregate_of));
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

impl Run<'_> {
    async fn run(mut self) {
        let p = self.publisher;
        loop {
            if !self.collect_mark(false).await {
                if self.stop.is_cancelled() {
                    // Unmarked rows are sent again by the next owner: duplicates, never losses.
                    return;
                }
                self.pause_for_db().await;
            }
            self.start_mark();
            if self.stop.is_cancelled() {
                self.mark_last_confirms().await;
                return;
            }
            let Some(conn) = self.connection().await else {
                continue;
            };
            let Some(batch) = self.read_batch().await else {
                self.conn = Some(conn);
                continue;
            };
            if batch.full && !self.stop.is_cancelled() {
                self.prefetch(&batch.rows);
            }
            let started = Instant::now();
            let fetched = batch.rows.len();
            let out = p.publish_batch(&conn, batch.rows, &batch.fences, &self.stop).await;
            self.after_publish(&out);
            tracing::debug!(fetched, publish = ?started.elapsed(), confirmed = out.confirmed.len(), "batch");
            self.to_mark.extend(out.confirmed);
            // At most one mark under way: wait for the previous one, then start this batch's.
            if !self.collect_mark(true).await {
                self.pause_for_db().await;
            }
            self.start_mark();
            for (row, reason) in out.poison {
                tracing::error!(event_id = %row.event_id, outbox_id = row.id, %reason, "poison row: dead-lettered");
                p.dead_letter(&row, &reason).await;
            }
            for (row, reason) in out.nacked {
                self.retry_later(row, reason).await;
            }
            let stale_channel = self.wait_out_nacks(out.busy);
            if let Some(reason) = out.broken.or(stale_channel) {
                Self::drop_connection(p, conn, &reason).await;
                continue;
            }
            self.conn = Some(conn);
            p.broker.success();
            if !batch.full && !self.stop.is_cancelled() {
                // Fewer rows than a batch: the backlog is drained; wait for news.
                self.idle().await;
            }
        }
    }

    /// Collects the mark under way, waiting for it if `wait` (else only if it has finished);
    /// on failure its rows go back to `to_mark`. Returns `false` if it failed.
    async fn collect_mark(&mut self, wait: bool) -> bool {
        match self.marking.take_if(|m| wait || m.task.is_finished()) {
            Some(m) => self.publisher.finish_marking(m, &mut self.to_mark).await,
            None => true,
        }
    }

    /// Starts marking the confirmed rows waiting, unless a mark is under way.
    fn start_mark(&mut self) {
        if self.marking.is_none() && !self.to_mark.is_empty() {
            self.marking = Some(self.publisher.start_marking(std::mem::take(&mut self.to_mark)));
        }
    }

    /// On the way out: the mark under way, then one for every confirm left.
    async fn mark_last_confirms(&mut self) {
        self.collect_mark(true).await;
        self.start_mark();
        if !self.collect_mark(true).await {
            tracing::warn!(
                rows = self.to_mark.len(),
                "could not record the last confirms; they will be sent again"
            );
        }
    }

    /// The broker connection, taken out of the state for this turn; `None` if there is none
    /// (lost, or refused by the breaker or the broker), after a pause.
    async fn connection(&mut self) -> Option<BrokerConn> {
        let p = self.publisher;
        if let Some(c) = self.conn.take() {
            if c.connected() {
                return Some(c);
            }
            tracing::warn!("broker connection lost");
            p.broker.failure();
            p.broker_up.store(false, Ordering::Relaxed);
        }
        if let Err(wait) = p.broker.allow() {
            p.pause(Some(wait), &self.stop).await;
            return None;
        }
        match broker::connect(&p.amqp_url, &p.topology).await {
            Ok(c) => {
                tracing::info!(exchange = %p.topology.exchange, node = %c.node, "connected to the broker");
                if std::mem::replace(&mut self.connected_before, true) {
                    metrics::counter!("relay_broker_reconnects_total").increment(1);
                }
                p.broker.success();
                p.broker_up.store(true, Ordering::Relaxed);
                self.broker_backoff = Box::new(backoff());
                // Connecting took this turn: see about stopping before reading.
                self.conn = Some(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to the broker");
                metrics::counter!("relay_retries_total", "dependency" => "rabbitmq").increment(1);
                p.broker.failure();
                p.broker_up.store(false, Ordering::Relaxed);
                p.pause(self.broker_backoff.next(), &self.stop).await;
            }
        }
        None
    }

    /// The next rows to publish (the prefetched read, or a read now), without the aggregates
    /// blocked or skipped; `None` if there are none (after waiting for news) or the read failed
    /// (after a pause).
    async fn read_batch(&mut self) -> Option<Batch> {
        let p = self.publisher;
        let held = p.leases.snapshot();
        if held.is_empty() {
            p.idle(&self.stop).await;
            return None;
        }
        if let Err(wait) = p.db.allow() {
            p.pause(Some(wait), &self.stop).await;
            return None;
        }
        let (rows, fences, skip) = match self.prefetched.take() {
            Some(pre) => {
                let rows = pre
                    .task
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Pool(format!("read task failed: {e}"))));
                (rows, pre.fences, pre.skip)
            }
            None => {
                let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
                let exclude = self.unmarked_ids().collect::<Vec<_>>();
                (
                    p.store.fetch(&partitions, p.batch, &exclude).await,
                    held.into_iter().collect(),
                    HashSet::new(),
                )
            }
        };
        let rows = match rows {
            Ok(rows) => {
                p.db.success();
                self.db_backoff = Box::new(backoff());
                rows
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                metrics::counter!("relay_retries_total", "dependency" => "postgres").increment(1);
                p.db.failure();
                self.pause_for_db().await;
                return None;
            }
        };
        let full = rows.len() as i64 >= p.batch;
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
        // Usually nothing is held back, and then no row's aggregate is copied to look it up.
        let rows: Vec<OutboxRow> = if self.blocked.is_empty() && skip.is_empty() {
            rows
        } else {
            rows.into_iter()
                .filter(|r| {
                    let key = aggregate_of(r);
                    !self.blocked.contains_key(&key) && !skip.contains(&key)
                })
                .collect()
        };
        if rows.is_empty() {
            self.wait_after_empty_read().await;
            return None;
        }
        Some(Batch { rows, fences, full })
    }

    /// Ids of rows confirmed but not yet marked sent (reads leave them out).
    fn unmarked_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.marking
            .iter()
            .flat_map(|m| m.rows.iter())
            .chain(self.to_mark.iter())
            .map(|c| c.id)
    }

    /// After a read that found nothing to publish: read again shortly while rechecks are
    /// left, else wait for news.
    async fn wait_after_empty_read(&mut self) {
        if self.rechecks > 0 {
            // The pauses grow (1, 5, 25 ms): the row of a notification that came early is
            // usually visible within a millisecond, and at low rates every row goes this way, so
            // the first pause is most of its lag. A new notification during the pause means
            // another commit: read at once rather than let its row wait out the pause.
            let recheck = RECHECK_PAUSES[RECHECK_PAUSES.len() - usize::from(self.rechecks)];
            self.rechecks -= 1;
            tokio::select! {
                () = self.publisher.pause(Some(recheck), &self.stop) => {}
                () = self.publisher.wake.notified() => self.rechecks = RECHECKS,
            }
        } else {
            self.idle().await;
        }
    }

    /// Waits for news; a notification arms the rechecks.
    async fn idle(&mut self) {
        if self.publisher.idle(&self.stop).await {
            self.rechecks = RECHECKS;
        }
    }

    /// Reads the next batch while `rows` are published. It leaves out these rows; its rows of
    /// an aggregate that does not finish here are dropped (see `skip`), so no row overtakes an
    /// earlier one of its aggregate.
    fn prefetch(&mut self, rows: &[OutboxRow]) {
        let p = self.publisher;
        let held = p.leases.snapshot();
        let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
        let exclude: Vec<i64> = self.unmarked_ids().chain(rows.iter().map(|r| r.id)).collect();
        let store = p.store.clone();
        let batch = p.batch;
        self.prefetched = Some(Prefetch {
            task: tokio::spawn(async move { store.fetch(&partitions, batch, &exclude).await }),
            fences: held.into_iter().collect(),
            skip: HashSet::new(),
        });
    }

    /// The prefetched read is dropped if the batch broke the channel or the relay is
    /// stopping; otherwise it must skip the aggregates this batch did not finish.
    fn after_publish(&mut self, out: &BatchOutcome) {
        if let Some(pre) = self.prefetched.as_mut() {
            if out.broken.is_some() || self.stop.is_cancelled() {
                pre.task.abort();
                self.prefetched = None;
            } else {
                pre.skip = out.unfinished.clone();
            }
        }
    }

    /// A row the broker returned: retried after a backoff that grows with its attempts (its
    /// aggregate waits), dead-lettered after `max_attempts`.
    async fn retry_later(&mut self, row: OutboxRow, reason: String) {
        let p = self.publisher;
        metrics::counter!("relay_retries_total", "dependency" => "rabbitmq").increment(1);
        let attempts = p
            .store
            .record_failure(row.id, &reason)
            .await
            .unwrap_or(row.attempts + 1);
        if attempts >= p.max_attempts {
            tracing::error!(event_id = %row.event_id, attempts, %reason, "refused too often: dead-lettered");
            p.dead_letter(&row, &reason).await;
        } else {
            let delay = backoff()
                .nth(attempts.max(1) as usize - 1)
                .unwrap_or(Duration::from_secs(1));
            tracing::warn!(event_id = %row.event_id, attempts, ?delay, %reason, "broker refused the event; will retry");
            self.blocked
                .insert((row.aggregate_type, row.aggregate_id), Instant::now() + delay);
        }
    }

    /// Rows the broker nacked wait (their aggregates with them) and are published again, as
    /// often as it takes; the wait grows while batches keep being nacked. Returns why the
    /// connection should be reopened once nacks have gone on for too many batches in a row.
    fn wait_out_nacks(&mut self, busy: Vec<OutboxRow>) -> Option<String> {
        if busy.is_empty() {
            self.nack_backoff = Box::new(backoff());
            self.nacked_rounds = 0;
            return None;
        }
        self.nacked_rounds += 1;
        let delay = self.nack_backoff.next().unwrap_or(Duration::from_secs(10));
        metrics::counter!("relay_retries_total", "dependency" => "rabbitmq").increment(busy.len() as u64);
        tracing::warn!(
            rows = busy.len(),
            first = %busy[0].event_id,
            ?delay,
            rounds = self.nacked_rounds,
            "the broker nacked rows (a full queue, or a queue without a leader); they will be published again"
        );
        let until = Instant::now() + delay;
        for row in busy {
            self.blocked.insert((row.aggregate_type, row.aggregate_id), until);
        }
        self.nacked_rounds
            .is_multiple_of(NACK_ROUNDS_BEFORE_RECONNECT)
            .then(|| {
                format!(
                    "{} batches in a row had rows nacked: a new channel reads the queues' current leaders",
                    self.nacked_rounds
                )
            })
    }

    /// Gives up a connection whose channel failed; the next turn reconnects.
    async fn drop_connection(p: &Publisher, conn: BrokerConn, reason: &str) {
        tracing::warn!(%reason, "broker channel failed; reconnecting");
        metrics::counter!("relay_retries_total", "dependency" => "rabbitmq").increment(1);
        p.broker.failure();
        p.broker_up.store(false, Ordering::Relaxed);
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            conn.connection.close(320, "reconnecting".into()),
        )
        .await;
    }

    async fn pause_for_db(&mut self) {
        let wait = self.db_backoff.next();
        self.publisher.pause_for_db(wait, &self.stop).await;
    }
}
