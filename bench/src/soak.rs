//! `bench soak <duration>`: the whole pipeline (write-api, two relays, read-api) under a steady
//! rate of commands, sampled once a minute: commands asked, sent and answered by status class,
//! lag (the services' own histograms, over that minute), each service's resident memory and CPU,
//! the outbox table's and its indexes' size, its dead tuples and autovacuum runs, and what the
//! load generator itself cost. The report says, for each series, whether it grows.
//!
//! The figures must show the services, not the harness, so:
//! - the services are started directly as child processes (the binaries the other benchmarks
//!   start), with no proxy and no delivery recorder between them and PostgreSQL, RabbitMQ or
//!   Redis;
//! - the database is on a PostgreSQL server of the run's own with autovacuum on, as in
//!   production (the machine's shared server may run with it off, as CI machines do); RabbitMQ
//!   and Redis are the machine's, under names and a key prefix of the run's own, deleted after;
//! - the load generator's cost per command does not grow with the run: a fixed set of products
//!   and customers, and commands on orders picked from a bounded ring of recent ones;
//! - the load is open loop: commands are due on a fixed schedule whatever the answers' latency,
//!   at most [`MAX_IN_FLIGHT`] at a time; a command that cannot be sent on time is counted as
//!   missed, not sent late, so a slow pipeline shows as misses and lag, never as a lower rate
//!   asked;
//! - the rate is half of what a short closed-loop calibration on the same pipeline sustains
//!   (unless `--rate` names one), so the soak runs with headroom;
//! - the generator's own CPU share and the machine's idle share are in every minute's sample.
//!
//! The relay runs with `OUTBOX_RETENTION=2m` and cleanup every 30 s, so that the outbox reaches
//! its steady state within the run: with the default retention (7 days) it grows by design for a
//! week, which says nothing about leaks or bloat.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use indicatif::{ProgressBar, ProgressStyle};
use ordering_tests::cpu::Group;
use ordering_tests::pg_server::PgServer;
use ordering_tests::pipeline::{JsonClient, Posted, REDIS_URL, memory_kib};
use ordering_tests::process::ServiceProcess;
use ordering_tests::read_app::delete_keys;
use ordering_tests::relay::broker::{AMQP_URL, delete};
use ordering_tests::write_app::{SECRET, token_with};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use uuid::Uuid;

use crate::machine;

/// Products the load orders from, each with stock enough for any run.
const PRODUCTS: usize = 50;
const STOCK: i64 = 1_000_000_000;
/// Customers placing orders.
const CUSTOMERS: usize = 200;
/// Orders the load remembers for paying, shipping and cancelling: the last this many placed.
const RECENT_ORDERS: usize = 1024;
/// Commands in flight at most; past it, a command due is missed.
const MAX_IN_FLIGHT: usize = 128;
/// A command not sent within this of its due time is missed (the generator fell behind).
const LATE: Duration = Duration::from_millis(100);
/// The client gives up on an answer after this (counted as a transport failure).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Closed-loop calibration: workers sending back to back, for this long, the first part being
/// a warm-up whose answers are not counted.
const CALIBRATION_WORKERS: usize = 32;
const CALIBRATION_WARM_UP: Duration = Duration::from_secs(5);
const CALIBRATION_MEASURED: Duration = Duration::from_secs(20);
/// How long the outbox may take to drain after the calibration before the soak starts anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);
/// The soak's PostgreSQL server: autovacuum at PostgreSQL's defaults (on, as in production), and
/// `fsync = on` like the machine's server (the throwaway servers of the tests turn it off).
const PG_SETTINGS: &str = "autovacuum = on\nfsync = on\n\
    shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_planning = on\n";
/// Statements the report lists, the dearest first.
const TOP_STATEMENTS: i64 = 12;
/// The settings the report quotes from the soak's server.
const PG_SETTINGS_SHOWN: [&str; 13] = [
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_max_workers",
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_threshold",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
    "fsync",
    "synchronous_commit",
    "shared_buffers",
    "max_connections",
];
/// Upper bounds (ms) of the buckets of the commands' answer times; one more bucket is unbounded.
const LATENCY_BOUNDS_MS: [f64; 20] = [
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0, 2000.0,
    5000.0, 10000.0,
];

// ---------------------------------------------------------------------------------------------
// What the load sends.

/// SplitMix64: a few arithmetic operations per number, so picking commands costs nothing next to
/// sending them (this crate does not depend on `rand`).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0); the modulo's bias is negligible for small `n`.
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

/// Where a recent order stands, as far as the load knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderState {
    Placed,
    Paid,
    /// Shipped, cancelled, or unknown after a refusal or a failure: no more commands for it.
    Done,
}

/// An order the load placed.
#[derive(Debug, Clone, Copy)]
struct Recent {
    order: Uuid,
    customer: usize,
    state: OrderState,
}

/// The last `capacity` orders placed, oldest overwritten first: the load's whole memory of
/// orders, so its cost per command is the same in the first minute and the hundredth.
#[derive(Debug)]
struct Ring {
    slots: Vec<Recent>,
    capacity: usize,
    next: usize,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            slots: Vec::with_capacity(capacity),
            capacity: capacity.max(1),
            next: 0,
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn push(&mut self, r: Recent) {
        if self.slots.len() < self.capacity {
            self.slots.push(r);
        } else {
            self.slots[self.next] = r;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    fn get(&self, slot: usize) -> Option<Recent> {
        self.slots.get(slot).copied()
    }

    /// Sets the state of `order` if `slot` still holds it (a newer order may have taken it).
    fn set_state(&mut self, slot: usize, order: Uuid, state: OrderState) {
        if let Some(r) = self.slots.get_mut(slot)
            && r.order == order
        {
            r.state = state;
        }
    }
}

/// A kind of command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Place,
    Pay,
    Ship,
    Cancel,
    Restock,
}

/// The command for `roll` (0 to 99) and the state of the recent order picked (`None` while
/// there is none): restock 5%, place 50%, and on the other 45% move the picked order on (pay a
/// placed one, ship a paid one, now and then cancel either); with nothing to move on, place.
fn choose(roll: u32, picked: Option<OrderState>) -> Kind {
    match (roll, picked) {
        (0..5, _) => Kind::Restock,
        (5..55, _) => Kind::Place,
        (55..92, Some(OrderState::Placed)) => Kind::Pay,
        (55..92, Some(OrderState::Paid)) => Kind::Ship,
        (_, Some(OrderState::Placed | OrderState::Paid)) => Kind::Cancel,
        _ => Kind::Place,
    }
}

/// One command, ready to send.
#[derive(Debug)]
struct Command {
    kind: Kind,
    url: String,
    token: Arc<str>,
    body: Value,
    /// For a placed order: the customer; for a command on a recent order: its slot and id.
    customer: usize,
    target: Option<(usize, Uuid)>,
}

/// The soak's commands: a fixed catalogue and set of customers (tokens signed once), and the
/// ring of recent orders.
struct Workload {
    write: String,
    products: Vec<Uuid>,
    /// Each customer's id and token.
    customers: Vec<(Uuid, Arc<str>)>,
    admin: Arc<str>,
    state: Mutex<(Rng, Ring)>,
}

impl Workload {
    /// Creates the products through the write-api (as the e2e tests' `Driver::seed` does) and
    /// signs tokens for an admin and the customers, valid for `ttl`.
    async fn seed(client: &JsonClient, write: String, ttl: Duration) -> anyhow::Result<Self> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let admin: Arc<str> = token_with(&Uuid::now_v7().to_string(), "admin", ttl, SECRET).into();
        let run = Uuid::new_v4().simple().to_string();
        let mut products = Vec::with_capacity(PRODUCTS);
        for i in 0..PRODUCTS {
            let body = json!({"sku": format!("soak-{}-{i}", &run[..8]), "name": format!("product {i}"),
                              "description": "soak", "price_cents": 100 + i as i64 * 7, "currency": "EUR",
                              "stock": STOCK});
            let posted = client
                .post(&format!("{write}/v1/products"), &admin, &body)
                .await
                .context("create a product")?;
            match (posted.status, posted.id) {
                (201, Some(id)) => products.push(id),
                (status, _) => anyhow::bail!("create a product: {status} {:?}", posted.code),
            }
        }
        let customers = (0..CUSTOMERS)
            .map(|_| {
                let id = Uuid::now_v7();
                (id, token_with(&id.to_string(), "customer", ttl, SECRET).into())
            })
            .collect();
        let (seed, _) = Uuid::new_v4().as_u64_pair();
        Ok(Self {
            write,
            products,
            customers,
            admin,
            state: Mutex::new((Rng::new(seed), Ring::new(RECENT_ORDERS))),
        })
    }

    /// The next command. A command on a recent order moves the order's state on at once, so
    /// that the same move is not sent twice while the first is in flight.
    fn next(&self) -> Command {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (rng, ring) = &mut *guard;
        let roll = rng.below(100) as u32;
        let slot = rng.below(ring.len());
        let picked = ring.get(slot);
        let kind = choose(roll, picked.map(|r| r.state));
        let (kind, customer, target) = match (kind, picked) {
            (Kind::Pay | Kind::Ship | Kind::Cancel, Some(r)) => (kind, r.customer, Some((slot, r.order))),
            // `choose` moves an order on only when one was picked; a placement otherwise.
            (Kind::Pay | Kind::Ship | Kind::Cancel, None) => (Kind::Place, rng.below(self.customers.len()), None),
            _ => (kind, rng.below(self.customers.len()), None),
        };
        if let Some((slot, order)) = target {
            let state = if kind == Kind::Pay {
                OrderState::Paid
            } else {
                OrderState::Done
            };
            ring.set_state(slot, order, state);
        }
        let w = &self.write;
        let (cid, ctoken) = self.customers[customer].clone();
        let (url, token, body) = match (kind, target) {
            (Kind::Pay, Some((_, id))) => (
                format!("{w}/v1/orders/{id}/pay"),
                ctoken,
                json!({"payment_reference": format!("soak-{}", rng.next_u64())}),
            ),
            (Kind::Ship, Some((_, id))) => (format!("{w}/v1/orders/{id}/ship"), self.admin.clone(), json!({})),
            (Kind::Cancel, Some((_, id))) => (format!("{w}/v1/orders/{id}/cancel"), ctoken, json!({"reason": "soak"})),
            (Kind::Restock, _) => {
                let product = self.products[rng.below(self.products.len())];
                (
                    format!("{w}/v1/products/{product}/stock-adjustments"),
                    self.admin.clone(),
                    json!({"delta": 1 + rng.below(40), "reason": "soak"}),
                )
            }
            _ => {
                // 1 to 3 distinct products, 1 to 5 of each.
                let n = 1 + rng.below(3.min(self.products.len()));
                let start = rng.below(self.products.len());
                let lines: Vec<Value> = (0..n)
                    .map(|k| {
                        json!({"product_id": self.products[(start + k) % self.products.len()],
                               "quantity": 1 + rng.below(5)})
                    })
                    .collect();
                (
                    format!("{w}/v1/orders"),
                    ctoken,
                    json!({"customer_id": cid, "lines": lines}),
                )
            }
        };
        Command {
            kind,
            url,
            token,
            body,
            customer,
            target,
        }
    }

    /// Learns from an answer: a placed order joins the ring; an order whose move was refused or
    /// failed is left alone from now on (its state is unknown).
    fn learn(&self, cmd: &Command, answer: &anyhow::Result<Posted>) {
        let ok = matches!(answer, Ok(p) if (200..300).contains(&p.status));
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (_, ring) = &mut *guard;
        match (cmd.kind, cmd.target, answer) {
            (Kind::Place, _, Ok(Posted { id: Some(order), .. })) if ok => ring.push(Recent {
                order: *order,
                customer: cmd.customer,
                state: OrderState::Placed,
            }),
            (Kind::Pay | Kind::Ship | Kind::Cancel, Some((slot, order)), _) if !ok => {
                ring.set_state(slot, order, OrderState::Done);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counting the answers.

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// 2xx.
    Ok,
    /// 4xx: a refusal the load provokes by design (an order moved on concurrently, ...).
    Refused,
    /// 5xx or anything else: a failure.
    Failed,
    /// No answer (connection refused or reset, timeout).
    Transport,
}

fn class_of(status: Option<u16>) -> Class {
    match status {
        Some(200..=299) => Class::Ok,
        Some(400..=499) => Class::Refused,
        Some(_) => Class::Failed,
        None => Class::Transport,
    }
}

/// The bucket of an answer time (index into [`LATENCY_BOUNDS_MS`], or one past it).
fn latency_bucket(ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Per-bucket counts as cumulative `(upper bound in s, count)` pairs, the shape [`quantile_ms`]
/// reads.
fn cumulative(counts: &[u64]) -> Vec<(f64, f64)> {
    let mut total = 0.0;
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            total += *c as f64;
            let le = LATENCY_BOUNDS_MS.get(i).map_or(f64::INFINITY, |ms| ms / 1000.0);
            (le, total)
        })
        .collect()
}

/// Running totals of the load, updated by every command's task (atomics: no lock per command).
#[derive(Default)]
struct Tally {
    asked: AtomicU64,
    sent: AtomicU64,
    missed: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    transport: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    /// Refusals by `code` and failures by status, over the whole run (they are few).
    codes: Mutex<BTreeMap<String, u64>>,
}

/// A copy of a [`Tally`] at one moment, or the difference of two.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    asked: u64,
    sent: u64,
    missed: u64,
    ok: u64,
    refused: u64,
    failed: u64,
    transport: u64,
    latency: Vec<u64>,
}

impl Counts {
    fn since(&self, before: &Counts) -> Counts {
        Counts {
            asked: self.asked - before.asked,
            sent: self.sent - before.sent,
            missed: self.missed - before.missed,
            ok: self.ok - before.ok,
            refused: self.refused - before.refused,
            failed: self.failed - before.failed,
            transport: self.transport - before.transport,
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, c)| c - before.latency.get(i).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// Commands that got an answer (2xx or 4xx).
    fn answered(&self) -> u64 {
        self.ok + self.refused
    }

    /// The `q` quantile of the answer times (ms).
    fn latency_ms(&self, q: f64) -> Option<f64> {
        quantile_ms(&[], &cumulative(&self.latency), q)
    }
}

impl Tally {
    fn record(&self, answer: &anyhow::Result<Posted>, elapsed: Duration) {
        let status = answer.as_ref().ok().map(|p| p.status);
        let counter = match class_of(status) {
            Class::Ok => &self.ok,
            Class::Refused => &self.refused,
            Class::Failed => &self.failed,
            Class::Transport => &self.transport,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latency[latency_bucket(elapsed.as_secs_f64() * 1000.0)].fetch_add(1, Ordering::Relaxed);
        let code = match answer {
            Ok(p) if p.status >= 400 => Some(format!("{} {}", p.status, p.code.as_deref().unwrap_or("?"))),
            Ok(_) => None,
            Err(e) => Some(format!("no answer: {}", root_cause(e))),
        };
        if let Some(code) = code {
            *self
                .codes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(code)
                .or_default() += 1;
        }
    }

    fn snapshot(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            asked: get(&self.asked),
            sent: get(&self.sent),
            missed: get(&self.missed),
            ok: get(&self.ok),
            refused: get(&self.refused),
            failed: get(&self.failed),
            transport: get(&self.transport),
            latency: self.latency.iter().map(get).collect(),
        }
    }
}

/// The innermost cause of an error, short enough to count by.
fn root_cause(e: &anyhow::Error) -> String {
    e.root_cause().to_string().chars().take(80).collect()
}

/// Sends one command and counts its answer.
async fn send(client: &JsonClient, work: &Workload, tally: &Tally, cmd: Command) {
    let started = Instant::now();
    let answer = client.post(&cmd.url, &cmd.token, &cmd.body).await;
    tally.record(&answer, started.elapsed());
    work.learn(&cmd, &answer);
}

// ---------------------------------------------------------------------------------------------
// The two ways of driving it.

/// When command `i` (from 0) is due, `rate` commands a second from the start.
fn due_after(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate.max(f64::MIN_POSITIVE))
}

/// Open loop: command `i` is due at `start + i / rate`, whatever the answers' latency, until
/// `until`; it is sent if it is not [`LATE`] and fewer than [`MAX_IN_FLIGHT`] are in flight, else
/// counted as missed. Returns when every command sent has its answer (or timed out).
async fn open_loop(rate: f64, until: Instant, client: JsonClient, work: Arc<Workload>, tally: Arc<Tally>) {
    let inflight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    for i in 0.. {
        let due = start + due_after(i, rate);
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due).await;
        tally.asked.fetch_add(1, Ordering::Relaxed);
        if due.elapsed() > LATE {
            tally.missed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            tally.missed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let cmd = work.next();
        let (client, work, tally) = (client.clone(), work.clone(), tally.clone());
        tokio::spawn(async move {
            send(&client, &work, &tally, cmd).await;
            drop(permit);
        });
    }
    // Every permit back: every command sent has been answered or has timed out.
    let _ = inflight.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// What the closed-loop calibration measured.
#[derive(Debug, Clone, Serialize)]
struct Calibration {
    workers: usize,
    warm_up_s: f64,
    measured_s: f64,
    /// Commands answered (2xx or 4xx) a second, after the warm-up.
    answered_per_s: f64,
    ok_share: f64,
    failures: u64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    bench_cpu_share: Option<f64>,
    machine_cpu_idle: f64,
    /// How long the outbox took to drain afterwards (s); `None` if it had not within the limit.
    drained_after_s: Option<f64>,
    /// Refusals by status and code, failures by status or cause, warm-up included.
    answers_by_code: BTreeMap<String, u64>,
}

/// Closed loop: `workers` tasks each sending a command as soon as the last was answered, for
/// `warm_up + measured`; the answers after the warm-up give the rate the pipeline sustains.
async fn calibrate(client: &JsonClient, work: &Arc<Workload>) -> Calibration {
    let tally = Arc::new(Tally::default());
    let end = Instant::now() + CALIBRATION_WARM_UP + CALIBRATION_MEASURED;
    let tasks: Vec<_> = (0..CALIBRATION_WORKERS)
        .map(|_| {
            let (client, work, tally) = (client.clone(), work.clone(), tally.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let cmd = work.next();
                    send(&client, &work, &tally, cmd).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(CALIBRATION_WARM_UP).await;
    let before = tally.snapshot();
    let cpu_before = Group::This.seconds();
    let idle = tokio::spawn(machine::idle_share(CALIBRATION_MEASURED));
    let t0 = Instant::now();
    tokio::time::sleep_until(end).await;
    let counts = tally.snapshot().since(&before);
    let secs = t0.elapsed().as_secs_f64();
    let bench_cpu_share = cpu_share(cpu_before, Group::This.seconds(), secs);
    for t in tasks {
        let _ = t.await;
    }
    Calibration {
        workers: CALIBRATION_WORKERS,
        warm_up_s: CALIBRATION_WARM_UP.as_secs_f64(),
        measured_s: secs,
        answered_per_s: counts.answered() as f64 / secs,
        ok_share: counts.ok as f64 / (counts.answered().max(1)) as f64,
        failures: counts.failed + counts.transport,
        latency_p50_ms: counts.latency_ms(0.5),
        latency_p99_ms: counts.latency_ms(0.99),
        bench_cpu_share,
        machine_cpu_idle: idle.await.unwrap_or(f64::NAN),
        drained_after_s: None,
        answers_by_code: std::mem::take(&mut *tally.codes.lock().unwrap_or_else(|e| e.into_inner())),
    }
}

/// The soak's rate: `asked` if given, else half the calibrated rate (at least 1).
fn soak_rate(asked: Option<u32>, calibrated: Option<f64>) -> u32 {
    match (asked, calibrated) {
        (Some(r), _) => r.max(1),
        (None, Some(c)) if c.is_finite() => ((c / 2.0).round() as u32).max(1),
        (None, _) => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline.

/// The run's names on the machine's RabbitMQ and Redis; deletes what they name when dropped.
struct RunNames {
    exchange: String,
    redis_prefix: String,
}

impl RunNames {
    fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            exchange: format!("soak.{id}"),
            redis_prefix: format!("soak:{id}:"),
        }
    }

    fn projector_queue(&self) -> String {
        format!("{}.projector", self.exchange)
    }
}

impl Drop for RunNames {
    fn drop(&mut self) {
        let exchange = self.exchange.clone();
        let queue = self.projector_queue();
        let prefix = self.redis_prefix.clone();
        // The relay's exchange and stream, the read-api's queue, its dead letters' queue and
        // exchange (as the read-api names them), and the cache's keys.
        ordering_tests::run_aside(async move {
            delete(
                exchange.clone(),
                vec![format!("{exchange}.log"), queue.clone(), format!("{queue}.dead")],
            )
            .await;
            delete(format!("{queue}.dlx"), Vec::new()).await;
            delete_keys(REDIS_URL, &prefix).await;
        });
    }
}

/// The services as child processes on a PostgreSQL server of the run's own. Dropping it kills
/// the services, deletes the run's broker objects and Redis keys, then stops the server (fields
/// drop in this order).
struct Services {
    write_api: ServiceProcess,
    relays: Vec<ServiceProcess>,
    read_api: ServiceProcess,
    names: RunNames,
    write_db: String,
    pg: PgServer,
}

/// A service's process, watched for memory and CPU.
#[derive(Debug, Clone)]
struct Watched {
    name: String,
    pid: u32,
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Services {
    /// Starts write-api, read-api and two relays with their default settings (the e2e tests'
    /// `Pipeline` shortens timeouts for its faults; a soak has none) but the names of this run
    /// and a short outbox retention; each logs to a file in `logs`. Panics (as the test
    /// support it uses does) if a service does not start: run it in a task of its own.
    async fn start(pg: PgServer, names: RunNames, logs: PathBuf) -> Self {
        let write_db = pg.create_database("ordering").await;
        let read_db = pg.create_database("ordering_read").await;
        let log = |name: &str| {
            std::fs::File::create(logs.join(format!("{name}.log")))
                .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from)
        };
        let exchange = names.exchange.as_str();
        let stream = format!("{exchange}.log");
        let queue = names.projector_queue();
        let common = [("RUST_LOG", "warn"), ("LOG_FORMAT", "pretty")];
        let mut write_env = env(&[("DATABASE_URL", write_db.as_str()), ("JWT_SECRET", SECRET)]);
        write_env.extend(env(&common));
        let mut relay_env = env(&[
            ("DATABASE_URL", write_db.as_str()),
            ("AMQP_URL", AMQP_URL),
            ("OUTBOX_EXCHANGE", exchange),
            // Kept short so the broker's disk does not fill over a long soak.
            ("EVENT_LOG_MAX_AGE", "1h"),
            ("OUTBOX_RETENTION", "2m"),
            ("OUTBOX_CLEANUP_CRON", "*/30 * * * * *"),
        ]);
        relay_env.extend(env(&common));
        let mut read_env = env(&[
            ("DATABASE_URL", read_db.as_str()),
            ("READ_DATABASE_URL", read_db.as_str()),
            ("AMQP_URL", AMQP_URL),
            ("REDIS_URL", REDIS_URL),
            ("REDIS_KEY_PREFIX", names.redis_prefix.as_str()),
            ("EVENTS_EXCHANGE", exchange),
            ("EVENT_LOG_STREAM", stream.as_str()),
            ("PROJECTOR_QUEUE", queue.as_str()),
            ("JWT_SECRET", SECRET),
        ]);
        read_env.extend(env(&common));
        let ready = ordering_tests::pipeline::READY;
        let write_api =
            ServiceProcess::spawn_with_stdout("write-api", &[], "WRITE_API_ADDR", &write_env, log("write-api"));
        write_api.wait_ready_status(200, ready).await;
        // The read-api before the relays: it declares its queue, bound to the exchange, so no
        // event is published before something receives it.
        let read_api = ServiceProcess::spawn_with_stdout("read-api", &[], "READ_API_ADDR", &read_env, log("read-api"));
        read_api.wait_ready_status(200, ready).await;
        let relays: Vec<_> = (1..=2)
            .map(|i| {
                ServiceProcess::spawn_with_stdout(
                    "outbox-relay",
                    &[],
                    "RELAY_ADDR",
                    &relay_env,
                    log(&format!("outbox-relay-{i}")),
                )
            })
            .collect();
        for r in &relays {
            r.wait_ready_status(200, ready).await;
        }
        Self {
            write_api,
            relays,
            read_api,
            names,
            write_db,
            pg,
        }
    }

    /// The services' processes, named as the report names them.
    fn watched(&self) -> Vec<Watched> {
        let relays = self
            .relays
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("outbox-relay {}", i + 1), r));
        [("write-api".to_owned(), &self.write_api)]
            .into_iter()
            .chain(relays)
            .chain([("read-api".to_owned(), &self.read_api)])
            .map(|(name, s)| Watched { name, pid: s.pid() })
            .collect()
    }

    /// The relays' `/metrics` pages, one after the other (their histograms add up per bound).
    async fn relay_metrics(&self, client: &JsonClient) -> String {
        let mut all = String::new();
        for r in &self.relays {
            all.push_str(&client.get_text(&r.url("/metrics")).await.unwrap_or_default());
            all.push('\n');
        }
        all
    }

    async fn read_metrics(&self, client: &JsonClient) -> String {
        client
            .get_text(&self.read_api.url("/metrics"))
            .await
            .unwrap_or_default()
    }
}

/// What a panicked task said, as an error.
fn panicked(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> anyhow::Error {
    move |e| anyhow::anyhow!("{what} failed: {e}")
}

// ---------------------------------------------------------------------------------------------
// Sampling.

/// Cumulative bucket counts of histogram `name` in a Prometheus text page: (upper bound s, count).
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let Some(count) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        // Series with other labels (and other instances' pages) add up per bound.
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => out.push((le, count)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile (ms) of the observations between two pages' buckets, interpolated inside
/// its bucket as Prometheus' `histogram_quantile` does; `None` without observations.
fn quantile_ms(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, c0)| *c0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, count) in &delta {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let share = if count - lower.1 > 0.0 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * share) * 1000.0);
        }
        lower = (*le, *count);
    }
    None
}

/// The pid of the postmaster of the PostgreSQL cluster in `cluster`.
fn postmaster_pid(cluster: &Path) -> Option<u32> {
    std::fs::read_to_string(cluster.join("data").join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Share of one core used between two readings (CPU seconds) `secs` apart (1.0 = a whole core).
fn cpu_share(before: Option<f64>, after: Option<f64>, secs: f64) -> Option<f64> {
    let (b, a) = (before?, after?);
    (secs > 0.0).then(|| (a - b).max(0.0) / secs)
}

/// What the rest of the machine used (share of one core): `cpus` less the idle share, less what
/// the named processes and this one used. `None` when a figure is missing.
fn other_cpu_share(idle: f64, cpus: usize, named: &[(String, f64)], own: Option<f64>) -> Option<f64> {
    let busy = (1.0 - idle) * cpus as f64;
    let ours = named.iter().map(|(_, v)| v).sum::<f64>() + own?;
    busy.is_finite().then(|| (busy - ours).max(0.0))
}

#[derive(QueryableByName)]
struct TableStats {
    #[diesel(sql_type = BigInt)]
    table_bytes: i64,
    #[diesel(sql_type = BigInt)]
    index_bytes: i64,
    #[diesel(sql_type = BigInt)]
    live: i64,
    #[diesel(sql_type = BigInt)]
    dead: i64,
    #[diesel(sql_type = BigInt)]
    autovacuums: i64,
    #[diesel(sql_type = BigInt)]
    unsent: i64,
}

/// The outbox's size and vacuum figures now.
async fn table_stats(url: &str) -> anyhow::Result<TableStats> {
    // In here only: its `load` and `first` would shadow the atomics' and the slices'.
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(url).await?;
    // Summed over the table's leaves: a partitioned table has no storage or statistics of its
    // own (its size reads 0 and it has no row in pg_stat_user_tables); a plain table is its
    // own only leaf. Rows kept are counted exactly, once a minute.
    Ok(diesel::sql_query(
        "SELECT coalesce(sum(pg_table_size(t.relid)), 0)::bigint AS table_bytes,
                coalesce(sum(pg_indexes_size(t.relid)), 0)::bigint AS index_bytes,
                (SELECT count(*) FROM outbox) AS live,
                coalesce(sum(s.n_dead_tup), 0)::bigint AS dead,
                coalesce(sum(s.autovacuum_count), 0)::bigint AS autovacuums,
                (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS unsent
           FROM pg_partition_tree('outbox') t LEFT JOIN pg_stat_user_tables s ON s.relid = t.relid
          WHERE t.isleaf",
    )
    .get_result(&mut conn)
    .await?)
}

/// The soak's server's settings that the report quotes, as `name = value`.
async fn pg_settings(url: &str) -> anyhow::Result<Vec<String>> {
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        value: String,
    }
    let mut conn = AsyncPgConnection::establish(url).await?;
    let list = PG_SETTINGS_SHOWN.map(|n| format!("'{n}'")).join(",");
    let rows: Vec<Setting> = diesel::sql_query(format!(
        "SELECT name, setting || coalesce(unit, '') AS value FROM pg_settings WHERE name IN ({list}) ORDER BY name"
    ))
    .load(&mut conn)
    .await?;
    Ok(rows.into_iter().map(|s| format!("{} = {}", s.name, s.value)).collect())
}

/// What one statement cost PostgreSQL over the soak (all databases of its server), from
/// `pg_stat_statements`: times are the backends' (planning and execution), not CPU alone.
#[derive(Debug, QueryableByName, Serialize)]
struct StatementCost {
    #[diesel(sql_type = Text)]
    database: String,
    #[diesel(sql_type = BigInt)]
    calls: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    plan_ms: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    exec_ms: f64,
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = Text)]
    query: String,
}

/// Forgets what `pg_stat_statements` counted so far (the seeding and the calibration), so the
/// statements' costs are the soak's own.
async fn reset_statements(url: &str) -> anyhow::Result<()> {
    use diesel_async::SimpleAsyncConnection;
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()")
        .await?;
    Ok(())
}

/// The statements that cost PostgreSQL the most time since [`reset_statements`].
async fn top_statements(url: &str) -> anyhow::Result<Vec<StatementCost>> {
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(url).await?;
    Ok(diesel::sql_query(
        "SELECT d.datname::text AS database, s.calls, s.total_plan_time AS plan_ms, s.total_exec_time AS exec_ms,
                s.rows, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 200) AS query
           FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
          ORDER BY s.total_plan_time + s.total_exec_time DESC LIMIT $1",
    )
    .bind::<BigInt, _>(TOP_STATEMENTS)
    .load(&mut conn)
    .await?)
}

/// Whether the outbox is partitioned (the write-api's own, by day) rather than a plain table.
async fn outbox_partitioned(url: &str) -> anyhow::Result<bool> {
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Kind {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        partitioned: bool,
    }
    let mut conn = AsyncPgConnection::establish(url).await?;
    let kind: Kind =
        diesel::sql_query("SELECT relkind = 'p' AS partitioned FROM pg_class WHERE oid = 'outbox'::regclass")
            .get_result(&mut conn)
            .await?;
    Ok(kind.partitioned)
}

/// Waits until every outbox row is sent, up to `limit`; how long it took, `None` past `limit`.
async fn wait_drained(url: &str, limit: Duration) -> Option<f64> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if table_stats(url).await.is_ok_and(|s| s.unsent == 0) {
            return Some(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The report.

/// One minute's sample.
#[derive(Debug, Clone, Serialize)]
struct Minute {
    minute: u32,
    /// Commands due in the minute, sent, and not sent on time.
    asked: u64,
    sent: u64,
    missed: u64,
    /// Answers: 2xx + 4xx (the refusals are expected: see [`choose`]).
    commands_answered: u64,
    answered_2xx: u64,
    answered_4xx: u64,
    failed_5xx: u64,
    failed_transport: u64,
    command_latency_p50_ms: Option<f64>,
    command_latency_p99_ms: Option<f64>,
    /// Over both relays.
    relay_commit_to_confirm_p50_ms: Option<f64>,
    relay_commit_to_confirm_p99_ms: Option<f64>,
    read_event_lag_p50_ms: Option<f64>,
    read_event_lag_p99_ms: Option<f64>,
    rss_kib: Vec<(String, u64)>,
    /// Share of one core each service, and the soak's PostgreSQL server, used over the minute.
    cpu_share: Vec<(String, f64)>,
    /// Share of one core this process (the load generator and the sampling) used.
    bench_cpu_share: Option<f64>,
    /// The machine's idle share over the minute (all cores).
    machine_cpu_idle: f64,
    /// Share of one core used by every other process (RabbitMQ, Redis, anything else running):
    /// the machine's busy time less the services', PostgreSQL's and this process's.
    other_cpu_share: Option<f64>,
    outbox_table_bytes: i64,
    outbox_index_bytes: i64,
    outbox_live_rows: i64,
    outbox_dead_rows: i64,
    autovacuum_runs: i64,
    unsent_rows: i64,
}

/// The soak's report.
#[derive(Debug, Serialize)]
struct SoakReport {
    date: String,
    host: String,
    machine: machine::Machine,
    started_at: String,
    duration_s: u64,
    cpu_idle_before: f64,
    /// How the pipeline ran.
    setup: Vec<String>,
    /// The soak's own PostgreSQL server's settings.
    postgres_settings: Vec<String>,
    calibration: Option<Calibration>,
    rate_asked: u32,
    /// Where the rate came from.
    rate_source: String,
    max_in_flight: usize,
    minutes: Vec<Minute>,
    /// Refusals by status and code, failures by status or cause, over the run.
    answers_by_code: BTreeMap<String, u64>,
    verdicts: Vec<(String, String)>,
    /// The statements that cost PostgreSQL the most over the soak.
    statements: Vec<StatementCost>,
    notes: Vec<String>,
    logs: String,
}

/// Whether a series grows: its last value is over 20% above its value after the first minute
/// (the warm-up) and the last three samples never fall.
fn grows(series: &[f64]) -> bool {
    let (Some(&base), Some(&last)) = (series.get(1), series.last()) else {
        return false;
    };
    let tail = &series[series.len().saturating_sub(3)..];
    last > base * 1.2 + 1.0 && tail.windows(2).all(|w| w[1] >= w[0])
}

/// The verdict on the load itself: whether every command due was sent on time and answered.
fn load_verdict(minutes: &[Minute]) -> String {
    let sum = |f: fn(&Minute) -> u64| minutes.iter().map(f).sum::<u64>();
    let (asked, missed) = (sum(|m| m.asked), sum(|m| m.missed));
    let failed = sum(|m| m.failed_5xx + m.failed_transport);
    if missed == 0 && failed == 0 {
        format!("kept up: all {asked} commands due were sent on time; none failed")
    } else {
        format!("FELL BEHIND: {missed} of {asked} commands due not sent on time; {failed} failed (5xx or no answer)")
    }
}

/// The verdict on the generator: the most CPU it used in a minute. A generator using a large
/// share of a core may be what limits the rate sent.
fn generator_verdict(minutes: &[Minute]) -> String {
    let top = minutes
        .iter()
        .filter_map(|m| m.bench_cpu_share)
        .fold(f64::NAN, f64::max);
    if top.is_nan() {
        "unknown (no /proc/self/stat)".to_owned()
    } else if top < 0.25 {
        format!(
            "not the bottleneck: bench used at most {:.0}% of a core in a minute",
            top * 100.0
        )
    } else {
        format!("SUSPECT: bench used up to {:.0}% of a core in a minute", top * 100.0)
    }
}

/// The verdict on the machine: whether it had idle CPU every minute. Without any, lag and misses
/// may come from the machine (other work on it, or the pipeline's own PostgreSQL and broker)
/// rather than from the services.
fn machine_verdict(minutes: &[Minute]) -> String {
    let least = minutes.iter().map(|m| m.machine_cpu_idle).fold(f64::NAN, f64::min);
    let busy = minutes.iter().filter(|m| m.machine_cpu_idle < 0.10).count();
    if busy == 0 {
        format!("spare CPU every minute (at least {:.0}% idle)", least * 100.0)
    } else {
        format!(
            "SATURATED in {busy} of {} minutes (at least {:.0}% idle): lag and misses there may be the machine's, \
             not the services'",
            minutes.len(),
            least * 100.0
        )
    }
}

/// Bytes per row kept (0 with no rows, or when a reading failed).
fn per_row(bytes: i64, rows: i64) -> f64 {
    if bytes < 0 || rows <= 0 {
        0.0
    } else {
        bytes as f64 / rows as f64
    }
}

/// Every verdict: the load's, the generator's, and whether each series grows. An outbox
/// `partitioned` by day keeps every row until its day is past the retention and then drops the
/// day whole, so within a soak its size grows by design: bloat shows in its bytes per row kept.
fn verdicts(minutes: &[Minute], services: &[Watched], partitioned: bool) -> Vec<(String, String)> {
    let mut out = vec![
        ("load".to_owned(), load_verdict(minutes)),
        ("load generator".to_owned(), generator_verdict(minutes)),
        ("machine".to_owned(), machine_verdict(minutes)),
    ];
    let judge = |what: String, series: Vec<f64>| {
        let verdict = if series.len() < 3 {
            "too short to tell (3 minutes or more)".to_owned()
        } else if grows(&series) {
            format!(
                "GROWS: {} after minute 1, {} at the end",
                series[1],
                series[series.len() - 1]
            )
        } else {
            "flat".to_owned()
        };
        (what, verdict)
    };
    for s in services {
        out.push(judge(
            format!("{} RSS (KiB)", s.name),
            minutes
                .iter()
                .map(|m| {
                    m.rss_kib
                        .iter()
                        .find(|(n, _)| *n == s.name)
                        .map_or(0.0, |(_, v)| *v as f64)
                })
                .collect(),
        ));
    }
    let series = |f: fn(&Minute) -> f64| minutes.iter().map(f).collect::<Vec<f64>>();
    if partitioned {
        for what in ["outbox table bytes", "outbox index bytes"] {
            out.push((
                what.to_owned(),
                "grow by design: the outbox is partitioned by day and keeps each day until it is past \
                 the retention (see per row kept)"
                    .to_owned(),
            ));
        }
    } else {
        out.push(judge(
            "outbox table bytes".into(),
            series(|m| m.outbox_table_bytes as f64),
        ));
        out.push(judge(
            "outbox index bytes".into(),
            series(|m| m.outbox_index_bytes as f64),
        ));
    }
    out.push(judge(
        "outbox table bytes per row kept".into(),
        series(|m| per_row(m.outbox_table_bytes, m.outbox_live_rows)),
    ));
    out.push(judge(
        "outbox index bytes per row kept".into(),
        series(|m| per_row(m.outbox_index_bytes, m.outbox_live_rows)),
    ));
    out.push(judge("outbox dead rows".into(), series(|m| m.outbox_dead_rows as f64)));
    out.push(judge("outbox unsent rows".into(), series(|m| m.unsent_rows as f64)));
    out.push(judge(
        "relay commit-to-confirm p99 (ms)".into(),
        series(|m| m.relay_commit_to_confirm_p99_ms.unwrap_or(0.0)),
    ));
    out.push(judge(
        "read lag p99 (ms)".into(),
        series(|m| m.read_event_lag_p99_ms.unwrap_or(0.0)),
    ));
    out
}

/// Runs the soak for `duration` at `rate` commands a second (else half the calibrated rate)
/// and writes its report into `out`.
pub async fn run(duration: Duration, rate: Option<u32>, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let cpu_idle_before = machine::idle_share(Duration::from_secs(1)).await;
    let started = chrono::Utc::now();
    let logs = std::env::temp_dir().join(format!("soak-logs-{}", started.format("%Y%m%dT%H%M%S")));
    std::fs::create_dir_all(&logs)?;
    let mut notes = Vec::new();
    if let Some(note) = crate::postgres_note().await {
        notes.push(format!(
            "The machine's shared PostgreSQL server: {note} The soak ran on a server of its own, with autovacuum on."
        ));
    }
    println!(
        "soak: starting PostgreSQL and the services (logs in {})",
        logs.display()
    );
    let pg = tokio::task::spawn_blocking(|| PgServer::start_with(PG_SETTINGS))
        .await
        .map_err(panicked("starting a PostgreSQL server"))?;
    let services = tokio::spawn(Services::start(pg, RunNames::new(), logs.clone()))
        .await
        .map_err(panicked("starting the services"))?;
    let postgres_settings = pg_settings(&services.pg.url("postgres")).await?;
    let client = JsonClient::new(MAX_IN_FLIGHT, REQUEST_TIMEOUT)?;
    let calibration_time = if rate.is_some() {
        Duration::ZERO
    } else {
        CALIBRATION_WARM_UP + CALIBRATION_MEASURED + DRAIN_LIMIT
    };
    let ttl = duration + calibration_time + Duration::from_secs(3600);
    let work = Arc::new(Workload::seed(&client, services.write_api.url(""), ttl).await?);
    let watched = services.watched();
    let calibration = match rate {
        Some(_) => None,
        None => {
            println!(
                "soak: calibrating, {CALIBRATION_WORKERS} workers closed loop for {} s",
                (CALIBRATION_WARM_UP + CALIBRATION_MEASURED).as_secs()
            );
            let mut c = calibrate(&client, &work).await;
            c.drained_after_s = wait_drained(&services.write_db, DRAIN_LIMIT).await;
            if c.drained_after_s.is_none() {
                notes.push(format!(
                    "The outbox had not drained {} s after the calibration: the soak started with a backlog.",
                    DRAIN_LIMIT.as_secs()
                ));
            }
            println!(
                "soak: sustained {:.0} commands/s closed loop (p99 {} ms); outbox drained after {} s",
                c.answered_per_s,
                ms(c.latency_p99_ms),
                c.drained_after_s.map_or("-".to_owned(), |s| format!("{s:.1}"))
            );
            Some(c)
        }
    };
    let rate_asked = soak_rate(rate, calibration.as_ref().map(|c| c.answered_per_s));
    let rate_source = match (&calibration, rate) {
        (_, Some(_)) => "given with --rate (no calibration)".to_owned(),
        (Some(c), None) => format!(
            "half of the {:.0} commands/s the calibration sustained",
            c.answered_per_s
        ),
        (None, None) => "default".to_owned(),
    };
    if let Err(e) = reset_statements(&services.pg.url("postgres")).await {
        notes.push(format!("pg_stat_statements could not be reset: {e}"));
    }
    let (minutes, answers_by_code) = Soak {
        services: &services,
        client: &client,
        work: &work,
        watched: &watched,
    }
    .run(duration, rate_asked, &mut notes)
    .await;
    let statements = top_statements(&services.pg.url("postgres")).await.unwrap_or_else(|e| {
        notes.push(format!("pg_stat_statements could not be read: {e}"));
        Vec::new()
    });
    let partitioned = outbox_partitioned(&services.write_db).await?;
    let verdicts = verdicts(&minutes, &watched, partitioned);
    let setup = vec![
        "write-api, read-api and two outbox-relays started directly as child processes (the binaries the \
         benchmarks start), with no proxy and no delivery recorder in the path"
            .to_owned(),
        format!(
            "services at their default settings, but the relays with OUTBOX_RETENTION=2m and \
             OUTBOX_CLEANUP_CRON=*/30 * * * * * ({})",
            if partitioned {
                "the write-api's outbox is partitioned by day: its rows stay until their day is past the \
                 retention, so within the run it only grows, and its size is judged per row kept"
            } else {
                "a plain outbox reaches its steady state within the run"
            }
        ),
        format!(
            "PostgreSQL: a server of the run's own (PgServer) with `{}`; RabbitMQ and Redis: the machine's, \
             under exchange {} and key prefix {} (deleted after)",
            PG_SETTINGS.trim().replace('\n', "`, `"),
            services.names.exchange,
            services.names.redis_prefix
        ),
        format!(
            "load: {PRODUCTS} products, {CUSTOMERS} customers, the last {RECENT_ORDERS} orders placed; restock 5%, \
             place 50%, pay/ship/cancel a recent order 45% (place when none can move on); open loop, at most \
             {MAX_IN_FLIGHT} in flight, a command more than {} ms late is missed; one keep-alive HTTP client",
            LATE.as_millis()
        ),
    ];
    drop(services);
    let report = SoakReport {
        date: started.format("%Y-%m-%d").to_string(),
        host: machine::host(),
        machine: machine::Machine::read(),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_s: duration.as_secs(),
        cpu_idle_before,
        setup,
        postgres_settings,
        calibration,
        rate_asked,
        rate_source,
        max_in_flight: MAX_IN_FLIGHT,
        minutes,
        answers_by_code,
        verdicts,
        statements,
        notes,
        logs: logs.display().to_string(),
    };
    let stem = out.join(format!("{}-{}-soak", report.date, report.host));
    let md = markdown(&report);
    crate::report::write_pair(&stem, &report, &md)?;
    println!("{md}\nReport: {}.md (and .json)", stem.display());
    Ok(())
}

/// The histograms the lag columns read.
const RELAY_LAG: &str = "relay_commit_to_confirm_seconds";
const READ_LAG: &str = "read_event_lag_seconds";

/// The soak proper, on a started and seeded pipeline.
struct Soak<'a> {
    services: &'a Services,
    client: &'a JsonClient,
    work: &'a Arc<Workload>,
    watched: &'a [Watched],
}

impl Soak<'_> {
    /// CPU seconds so far of each service and of the soak's PostgreSQL server (its postmaster
    /// and the backends, autovacuum workers, checkpointer... under it), named.
    fn cpu_seconds(&self) -> Vec<(String, Option<f64>)> {
        let mut all: Vec<(String, Option<f64>)> = self
            .watched
            .iter()
            .map(|w| (w.name.clone(), Group::Pids(vec![w.pid]).seconds()))
            .collect();
        let server = postmaster_pid(self.services.pg.dir()).and_then(|pid| Group::Tree(pid).seconds());
        all.push(("postgres".to_owned(), server));
        all
    }

    /// The open-loop load at `rate` for `duration`, sampled at the end of every minute; the
    /// samples, and the refusals and failures by code over the run. What goes wrong while
    /// sampling goes into `notes`, and the run goes on.
    async fn run(
        &self,
        duration: Duration,
        rate: u32,
        notes: &mut Vec<String>,
    ) -> (Vec<Minute>, BTreeMap<String, u64>) {
        let Self {
            services,
            client,
            work,
            watched,
        } = *self;
        println!(
            "soak: {rate} commands/s for {} s, sampled every minute",
            duration.as_secs()
        );
        let minutes_total = duration.as_secs().div_ceil(60).max(1);
        let cpus = machine::Machine::read().cpus;
        let bar = ProgressBar::new(minutes_total);
        if let Ok(style) = ProgressStyle::with_template("soak [{bar:30}] {pos}/{len} min {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        let tally = Arc::new(Tally::default());
        let mut relay_before = buckets(&services.relay_metrics(client).await, RELAY_LAG);
        let mut read_before = buckets(&services.read_metrics(client).await, READ_LAG);
        let mut cpu_before = self.cpu_seconds();
        let mut own_before = Group::This.seconds();
        let t0 = Instant::now();
        let generator = tokio::spawn(open_loop(
            f64::from(rate),
            t0 + duration,
            client.clone(),
            work.clone(),
            tally.clone(),
        ));
        let mut counts_before = Counts::default();
        let mut last = t0;
        let mut gone: Vec<String> = Vec::new();
        let mut minutes = Vec::new();
        for minute in 1..=minutes_total {
            let end = t0 + Duration::from_secs((minute * 60).min(duration.as_secs()));
            let idle = tokio::spawn(machine::idle_share(end.saturating_duration_since(Instant::now())));
            tokio::time::sleep_until(end).await;
            let now = Instant::now();
            let secs = (now - last).as_secs_f64();
            last = now;
            let counts_now = tally.snapshot();
            let c = counts_now.since(&counts_before);
            let cpu_now = self.cpu_seconds();
            let own_now = Group::This.seconds();
            let relay_now = buckets(&services.relay_metrics(client).await, RELAY_LAG);
            let read_now = buckets(&services.read_metrics(client).await, READ_LAG);
            let stats = match table_stats(&services.write_db).await {
                Ok(s) => s,
                Err(e) => {
                    notes.push(format!("Minute {minute}: the outbox's figures could not be read: {e}"));
                    TableStats::unknown()
                }
            };
            let mut rss_kib = Vec::new();
            for w in watched {
                match memory_kib(w.pid) {
                    Some((_, rss)) => rss_kib.push((w.name.clone(), rss)),
                    None if !gone.contains(&w.name) => {
                        notes.push(format!("{} (pid {}) was gone at minute {minute}.", w.name, w.pid));
                        gone.push(w.name.clone());
                    }
                    None => {}
                }
            }
            let cpu_share_now: Vec<(String, f64)> = cpu_before
                .iter()
                .zip(&cpu_now)
                .filter_map(|((name, b), (_, a))| Some((name.clone(), cpu_share(*b, *a, secs)?)))
                .collect();
            let bench_cpu_share = cpu_share(own_before, own_now, secs);
            let machine_cpu_idle = idle.await.unwrap_or(f64::NAN);
            let m = Minute {
                minute: minute as u32,
                asked: c.asked,
                sent: c.sent,
                missed: c.missed,
                commands_answered: c.answered(),
                answered_2xx: c.ok,
                answered_4xx: c.refused,
                failed_5xx: c.failed,
                failed_transport: c.transport,
                command_latency_p50_ms: c.latency_ms(0.5),
                command_latency_p99_ms: c.latency_ms(0.99),
                relay_commit_to_confirm_p50_ms: quantile_ms(&relay_before, &relay_now, 0.5),
                relay_commit_to_confirm_p99_ms: quantile_ms(&relay_before, &relay_now, 0.99),
                read_event_lag_p50_ms: quantile_ms(&read_before, &read_now, 0.5),
                read_event_lag_p99_ms: quantile_ms(&read_before, &read_now, 0.99),
                rss_kib,
                other_cpu_share: other_cpu_share(machine_cpu_idle, cpus, &cpu_share_now, bench_cpu_share),
                cpu_share: cpu_share_now,
                bench_cpu_share,
                machine_cpu_idle,
                outbox_table_bytes: stats.table_bytes,
                outbox_index_bytes: stats.index_bytes,
                outbox_live_rows: stats.live,
                outbox_dead_rows: stats.dead,
                autovacuum_runs: stats.autovacuums,
                unsent_rows: stats.unsent,
            };
            bar.set_message(format!(
                "{} answered, {} missed, {} failed; read lag p99 {} ms; bench CPU {:.0}%",
                m.commands_answered,
                m.missed,
                m.failed_5xx + m.failed_transport,
                ms(m.read_event_lag_p99_ms),
                m.bench_cpu_share.unwrap_or(f64::NAN) * 100.0
            ));
            bar.inc(1);
            minutes.push(m);
            (relay_before, read_before, counts_before) = (relay_now, read_now, counts_now);
            (cpu_before, own_before) = (cpu_now, own_now);
        }
        if let Err(e) = generator.await {
            notes.push(format!("The load generator stopped early: {e}"));
        }
        bar.finish();
        let codes = std::mem::take(&mut *tally.codes.lock().unwrap_or_else(|e| e.into_inner()));
        (minutes, codes)
    }
}

impl TableStats {
    /// What a failed reading leaves in the sample.
    fn unknown() -> Self {
        Self {
            table_bytes: -1,
            index_bytes: -1,
            live: -1,
            dead: -1,
            autovacuums: -1,
            unsent: -1,
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.1}"))
}

fn percent(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or("-".to_owned(), |v| format!("{:.0}", v * 100.0))
}

/// `409 invalid_transition: 3, ...`, or `none`.
fn codes(by_code: &BTreeMap<String, u64>) -> String {
    if by_code.is_empty() {
        return "none".to_owned();
    }
    by_code
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn markdown(r: &SoakReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak: {} on {}\n\n{} commands/s asked ({}) for {} s through write-api, two relays and read-api; \
         CPU {:.0}% idle before. Lag is each service's histogram over the minute (interpolated within buckets); \
         answer times are the load generator's, from sending a command to its whole answer.\n",
        r.date,
        r.host,
        r.rate_asked,
        r.rate_source,
        r.duration_s,
        r.cpu_idle_before * 100.0
    );
    if let Some(c) = &r.calibration {
        let _ = writeln!(
            md,
            "Calibration: {} workers closed loop, {:.0} s warm-up then {:.0} s measured: {:.0} commands/s answered \
             ({:.0}% 2xx, {} failed), answer p50 {} / p99 {} ms, bench {} % of a core, machine {:.0}% idle; the \
             outbox drained {}. Refusals and failures: {}.\n",
            c.workers,
            c.warm_up_s,
            c.measured_s,
            c.answered_per_s,
            c.ok_share * 100.0,
            c.failures,
            ms(c.latency_p50_ms),
            ms(c.latency_p99_ms),
            percent(c.bench_cpu_share),
            c.machine_cpu_idle * 100.0,
            c.drained_after_s
                .map_or("not within the limit".to_owned(), |s| format!("{s:.1} s after")),
            codes(&c.answers_by_code)
        );
    }
    md.push_str("## Setup\n\n");
    for line in &r.setup {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "- the soak's PostgreSQL server's settings: {}\n",
        r.postgres_settings.join(", ")
    );
    md.push_str("## Verdicts\n\n| what | verdict |\n|---|---|\n");
    for (what, verdict) in &r.verdicts {
        let _ = writeln!(md, "| {what} | {verdict} |");
    }
    let names: Vec<&str> = r
        .minutes
        .first()
        .map(|m| m.rss_kib.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    md.push_str(
        "\n## Load and lag, per minute\n\n| min | asked / sent / missed | 2xx / 4xx / failed | answer p50 / p99 ms | \
         relays' commit-to-confirm p50 / p99 ms | read lag p50 / p99 ms | bench CPU % of a core | machine idle % | \
         other processes' CPU % of a core |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in &r.minutes {
        let _ = writeln!(
            md,
            "| {} | {} / {} / {} | {} / {} / {} | {} / {} | {} / {} | {} / {} | {} | {} | {} |",
            m.minute,
            m.asked,
            m.sent,
            m.missed,
            m.answered_2xx,
            m.answered_4xx,
            m.failed_5xx + m.failed_transport,
            ms(m.command_latency_p50_ms),
            ms(m.command_latency_p99_ms),
            ms(m.relay_commit_to_confirm_p50_ms),
            ms(m.relay_commit_to_confirm_p99_ms),
            ms(m.read_event_lag_p50_ms),
            ms(m.read_event_lag_p99_ms),
            percent(m.bench_cpu_share),
            percent(Some(m.machine_cpu_idle)),
            percent(m.other_cpu_share),
        );
    }
    let cpu_names: Vec<&str> = r
        .minutes
        .first()
        .map(|m| m.cpu_share.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "\n## Services and outbox, per minute\n\n| min | RSS MiB ({}) | CPU % of a core ({}) | \
         outbox table / index kB | table / index B per row kept | rows kept / dead | autovacuums | unsent |\n\
         |---|---|---|---|---|---|---|---|",
        names.join(", "),
        cpu_names.join(", ")
    );
    for m in &r.minutes {
        let rss = m
            .rss_kib
            .iter()
            .map(|(_, v)| format!("{:.1}", *v as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ");
        let cpu = m
            .cpu_share
            .iter()
            .map(|(_, v)| format!("{:.0}", v * 100.0))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| {} | {rss} | {cpu} | {} / {} | {:.0} / {:.0} | {} / {} | {} | {} |",
            m.minute,
            m.outbox_table_bytes / 1024,
            m.outbox_index_bytes / 1024,
            per_row(m.outbox_table_bytes, m.outbox_live_rows),
            per_row(m.outbox_index_bytes, m.outbox_live_rows),
            m.outbox_live_rows,
            m.outbox_dead_rows,
            m.autovacuum_runs,
            m.unsent_rows
        );
    }
    if !r.statements.is_empty() {
        let _ = writeln!(
            md,
            "\n## Where PostgreSQL's time went\n\nThe {} statements of the soak (after the calibration) that \
             took its server the most time, planning and executing, in all its databases \
             (`pg_stat_statements`; time in the backends, waits included).\n\n\
             | database | calls | planning ms | executing ms | ms a call | rows | statement |\n\
             |---|---|---|---|---|---|---|",
            r.statements.len()
        );
        for st in &r.statements {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.3} | {} | `{}` |",
                st.database,
                st.calls,
                st.plan_ms,
                st.exec_ms,
                (st.plan_ms + st.exec_ms) / st.calls.max(1) as f64,
                st.rows,
                st.query.replace('|', "\\|").replace('`', "'")
            );
        }
    }
    if !r.answers_by_code.is_empty() {
        md.push_str("\n## Refusals and failures over the run\n\n| answer | commands |\n|---|---|\n");
        for (code, n) in &r.answers_by_code {
            let _ = writeln!(md, "| {code} | {n} |");
        }
    }
    if !r.notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let _ = writeln!(md, "\nThe services' logs: `{}`.", r.logs);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_minutes_own_observations() {
        let page = |counts: [u64; 4]| {
            format!(
                "x_bucket{{le=\"0.001\"}} {}\nx_bucket{{le=\"0.01\"}} {}\nx_bucket{{le=\"0.1\"}} {}\nx_bucket{{le=\"+Inf\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3]
            )
        };
        let before = buckets(&page([10, 10, 10, 10]), "x");
        // 100 new observations, all between 1 and 10 ms.
        let after = buckets(&page([10, 110, 110, 110]), "x");
        let p50 = quantile_ms(&before, &after, 0.5).unwrap();
        assert!((p50 - 5.5).abs() < 1e-9, "{p50}");
        assert_eq!(quantile_ms(&after, &after, 0.5), None);
    }

    #[test]
    fn two_relays_pages_add_up_per_bound() {
        let page = "x_bucket{le=\"0.01\"} 3\nx_bucket{le=\"+Inf\"} 4\n";
        let both = buckets(&format!("{page}\n{page}"), "x");
        assert_eq!(both, vec![(0.01, 6.0), (f64::INFINITY, 8.0)]);
    }

    #[test]
    fn growth_is_a_rise_past_the_warm_up_that_does_not_fall_back() {
        assert!(grows(&[10.0, 100.0, 130.0, 160.0, 200.0]));
        assert!(!grows(&[10.0, 100.0, 130.0, 100.0, 110.0]));
        assert!(!grows(&[10.0, 100.0, 101.0, 102.0, 103.0]));
    }

    #[test]
    fn a_day_partitioned_outbox_is_judged_per_row_kept() {
        // Rows pile up all run (none is past its day yet) at a steady size per row.
        let minutes: Vec<Minute> = (1..=5)
            .map(|n| {
                let mut m = minute(0, 0, 0.05, 0.5);
                m.outbox_live_rows = n * 10_000;
                m.outbox_table_bytes = n * 10_000 * 900;
                m.outbox_index_bytes = n * 10_000 * 100;
                m
            })
            .collect();
        let verdict = |partitioned: bool, what: &str| {
            verdicts(&minutes, &[], partitioned)
                .into_iter()
                .find(|(w, _)| w == what)
                .map(|(_, v)| v)
                .unwrap()
        };
        assert!(verdict(true, "outbox table bytes").starts_with("grow by design"));
        assert_eq!(verdict(true, "outbox table bytes per row kept"), "flat");
        assert_eq!(verdict(true, "outbox index bytes per row kept"), "flat");
        // A plain outbox should have reached its steady state: the same rise is growth.
        assert!(verdict(false, "outbox table bytes").starts_with("GROWS"));
        assert_eq!(verdict(false, "outbox table bytes per row kept"), "flat");
    }

    #[test]
    fn bloat_shows_per_row_kept() {
        let minutes: Vec<Minute> = (1..=5)
            .map(|n| {
                let mut m = minute(0, 0, 0.05, 0.5);
                m.outbox_live_rows = 10_000;
                m.outbox_table_bytes = 10_000 * 900 * n;
                m
            })
            .collect();
        let found = verdicts(&minutes, &[], true)
            .into_iter()
            .find(|(w, _)| w == "outbox table bytes per row kept")
            .unwrap();
        assert!(found.1.starts_with("GROWS"), "{found:?}");
        assert_eq!(per_row(-1, 10), 0.0);
        assert_eq!(per_row(10, 0), 0.0);
    }

    #[test]
    fn the_generator_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert!((0..1000).all(|_| a.below(3) < 3));
        assert_eq!(a.below(0), 0);
    }

    fn recent(n: u128, state: OrderState) -> Recent {
        Recent {
            order: Uuid::from_u128(n),
            customer: 0,
            state,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_orders_and_only_updates_the_one_it_holds() {
        let mut ring = Ring::new(3);
        for n in 1..=5 {
            ring.push(recent(n, OrderState::Placed));
        }
        assert_eq!(ring.len(), 3);
        let mut held: Vec<u128> = (0..3).filter_map(|i| ring.get(i)).map(|r| r.order.as_u128()).collect();
        held.sort();
        assert_eq!(held, vec![3, 4, 5]);
        // Slot 0 held order 1, then 4: an answer about order 1 changes nothing.
        ring.set_state(0, Uuid::from_u128(1), OrderState::Done);
        assert_eq!(ring.get(0).map(|r| r.state), Some(OrderState::Placed));
        ring.set_state(0, Uuid::from_u128(4), OrderState::Paid);
        assert_eq!(ring.get(0).map(|r| r.state), Some(OrderState::Paid));
    }

    #[test]
    fn commands_follow_the_mix_and_the_orders_states() {
        assert_eq!(choose(0, Some(OrderState::Placed)), Kind::Restock);
        assert_eq!(choose(30, Some(OrderState::Placed)), Kind::Place);
        assert_eq!(choose(60, Some(OrderState::Placed)), Kind::Pay);
        assert_eq!(choose(60, Some(OrderState::Paid)), Kind::Ship);
        assert_eq!(choose(95, Some(OrderState::Placed)), Kind::Cancel);
        assert_eq!(choose(95, Some(OrderState::Paid)), Kind::Cancel);
        assert_eq!(choose(60, Some(OrderState::Done)), Kind::Place);
        assert_eq!(choose(60, None), Kind::Place);
        let places = (0..100).filter(|r| choose(*r, None) == Kind::Place).count();
        assert_eq!(places, 95);
    }

    fn workload() -> Workload {
        Workload {
            write: "http://w".into(),
            products: (1..=5).map(Uuid::from_u128).collect(),
            customers: (1..=3)
                .map(|n| (Uuid::from_u128(100 + n), Arc::from(format!("c{n}"))))
                .collect(),
            admin: Arc::from("admin"),
            state: Mutex::new((Rng::new(1), Ring::new(8))),
        }
    }

    fn answer(status: u16, id: Option<Uuid>) -> anyhow::Result<Posted> {
        Ok(Posted { status, id, code: None })
    }

    #[test]
    fn an_order_is_moved_on_once_however_often_it_is_picked() {
        let work = workload();
        let order = Uuid::from_u128(42);
        // Until an order is placed, only placements and restocks.
        let mut placed = None;
        for _ in 0..50 {
            let cmd = work.next();
            assert!(matches!(cmd.kind, Kind::Place | Kind::Restock), "{cmd:?}");
            if cmd.kind == Kind::Place && placed.is_none() {
                assert_eq!(cmd.url, "http://w/v1/orders");
                assert_eq!(cmd.body["lines"].as_array().map(|l| !l.is_empty()), Some(true));
                work.learn(&cmd, &answer(201, Some(order)));
                placed = Some(cmd);
                break;
            }
        }
        assert!(placed.is_some());
        // Pays and ships are sent without their answers: each at most once.
        let (mut pays, mut ships) = (0, 0);
        for _ in 0..500 {
            let cmd = work.next();
            if cmd.target.map(|(_, o)| o) == Some(order) {
                match cmd.kind {
                    Kind::Pay => pays += 1,
                    Kind::Ship | Kind::Cancel => ships += 1,
                    other => panic!("{other:?} on a recent order"),
                }
            }
        }
        assert_eq!(pays, 1);
        assert!(ships <= 1, "{ships}");
    }

    #[test]
    fn a_refused_move_retires_the_order() {
        let work = workload();
        let order = Uuid::from_u128(42);
        let place = Command {
            kind: Kind::Place,
            url: String::new(),
            token: Arc::from("c1"),
            body: Value::Null,
            customer: 0,
            target: None,
        };
        work.learn(&place, &answer(201, Some(order)));
        let pay = loop {
            let cmd = work.next();
            if cmd.kind == Kind::Pay {
                break cmd;
            }
        };
        assert_eq!(pay.url, format!("http://w/v1/orders/{order}/pay"));
        assert_eq!(&*pay.token, "c1");
        work.learn(&pay, &answer(409, None));
        let state = work.state.lock().unwrap().1.get(0).map(|r| r.state);
        assert_eq!(state, Some(OrderState::Done));
    }

    #[test]
    fn answers_are_classed_by_status() {
        assert_eq!(class_of(Some(201)), Class::Ok);
        assert_eq!(class_of(Some(409)), Class::Refused);
        assert_eq!(class_of(Some(503)), Class::Failed);
        assert_eq!(class_of(None), Class::Transport);
    }

    #[test]
    fn answer_times_land_in_their_buckets_and_give_quantiles() {
        assert_eq!(latency_bucket(0.5), 0);
        assert_eq!(latency_bucket(1.0), 0);
        assert_eq!(latency_bucket(4.0), 3);
        assert_eq!(latency_bucket(1e9), LATENCY_BOUNDS_MS.len());
        let tally = Tally::default();
        for _ in 0..99 {
            tally.record(&answer(201, None), Duration::from_micros(1500));
        }
        tally.record(&answer(409, None), Duration::from_millis(40));
        tally.record(&Err(anyhow::anyhow!("reset")), Duration::from_secs(30));
        let c = tally.snapshot().since(&Counts::default());
        assert_eq!((c.ok, c.refused, c.transport, c.answered()), (99, 1, 1, 100));
        let p50 = c.latency_ms(0.5).unwrap();
        assert!((1.0..=2.0).contains(&p50), "{p50}");
        assert_eq!(cumulative(&[1, 2, 3]), vec![(0.001, 1.0), (0.002, 3.0), (0.003, 6.0)]);
        let codes = tally.codes.lock().unwrap().clone();
        assert_eq!(codes.get("409 ?"), Some(&1));
        assert_eq!(codes.get("no answer: reset"), Some(&1));
    }

    #[test]
    fn a_minutes_counts_are_the_difference_of_two_snapshots() {
        let a = Counts {
            asked: 10,
            sent: 9,
            missed: 1,
            ok: 8,
            refused: 1,
            failed: 0,
            transport: 0,
            latency: vec![5, 4],
        };
        let mut b = a.clone();
        b.asked = 25;
        b.ok = 20;
        b.latency = vec![9, 4, 1];
        let d = b.since(&a);
        assert_eq!((d.asked, d.ok, d.sent), (15, 12, 0));
        assert_eq!(d.latency, vec![4, 0, 1]);
    }

    #[test]
    fn the_schedule_is_fixed_and_the_rate_halves_the_calibrated_one() {
        assert_eq!(due_after(150, 150.0), Duration::from_secs(1));
        assert_eq!(due_after(0, 150.0), Duration::ZERO);
        assert_eq!(soak_rate(Some(40), Some(300.0)), 40);
        assert_eq!(soak_rate(None, Some(301.0)), 151);
        assert_eq!(soak_rate(None, Some(0.4)), 1);
        assert_eq!(soak_rate(None, None), 1);
    }

    #[test]
    fn cpu_shares_are_per_second_and_the_rest_of_the_machine_is_what_is_left() {
        assert_eq!(cpu_share(Some(1.0), Some(4.0), 60.0), Some(0.05));
        assert_eq!(cpu_share(None, Some(4.0), 60.0), None);
        // 2 cores 25% idle: 1.5 cores busy, 0.5 + 0.2 + 0.1 of them ours.
        let named = [("a".to_owned(), 0.5), ("b".to_owned(), 0.2)];
        let other = other_cpu_share(0.25, 2, &named, Some(0.1)).unwrap();
        assert!((other - 0.7).abs() < 1e-9, "{other}");
        assert_eq!(other_cpu_share(0.25, 2, &named, None), None);
    }

    fn minute(missed: u64, failed: u64, bench: f64, idle: f64) -> Minute {
        Minute {
            minute: 1,
            asked: 100,
            sent: 100 - missed,
            missed,
            commands_answered: 100 - missed,
            answered_2xx: 100 - missed,
            answered_4xx: 0,
            failed_5xx: failed,
            failed_transport: 0,
            command_latency_p50_ms: None,
            command_latency_p99_ms: None,
            relay_commit_to_confirm_p50_ms: None,
            relay_commit_to_confirm_p99_ms: None,
            read_event_lag_p50_ms: None,
            read_event_lag_p99_ms: None,
            rss_kib: Vec::new(),
            cpu_share: Vec::new(),
            bench_cpu_share: Some(bench),
            machine_cpu_idle: idle,
            other_cpu_share: None,
            outbox_table_bytes: 0,
            outbox_index_bytes: 0,
            outbox_live_rows: 0,
            outbox_dead_rows: 0,
            autovacuum_runs: 0,
            unsent_rows: 0,
        }
    }

    #[test]
    fn every_row_of_the_reports_tables_has_its_headers_columns() {
        let mut m = minute(0, 0, 0.05, 0.5);
        m.rss_kib = vec![("write-api".into(), 1024), ("read-api".into(), 2048)];
        m.cpu_share = vec![("write-api".into(), 0.1), ("postgres".into(), 0.3)];
        let report = SoakReport {
            date: "2026-12-04".into(),
            host: "vm".into(),
            machine: machine::Machine::default(),
            started_at: String::new(),
            duration_s: 120,
            cpu_idle_before: 0.99,
            setup: vec!["a setup".into()],
            postgres_settings: vec!["autovacuum = on".into()],
            calibration: None,
            rate_asked: 150,
            rate_source: "given".into(),
            max_in_flight: MAX_IN_FLIGHT,
            minutes: vec![m.clone(), m],
            answers_by_code: BTreeMap::from([("409 invalid_transition".to_owned(), 2)]),
            verdicts: verdicts(&[], &[], true),
            statements: vec![StatementCost {
                database: "ordering".into(),
                calls: 4,
                plan_ms: 1.0,
                exec_ms: 3.0,
                rows: 4,
                query: "SELECT a | b".into(),
            }],
            notes: vec!["a note".into()],
            logs: "/tmp/logs".into(),
        };
        let md = markdown(&report);
        let mut columns = None;
        for line in md.lines() {
            if !line.starts_with('|') {
                columns = None;
                continue;
            }
            // An escaped pipe is a cell's text, not a column.
            let n = line.replace("\\|", "").matches('|').count();
            assert_eq!(*columns.get_or_insert(n), n, "{line}");
        }
        assert!(md.contains("RSS MiB (write-api, read-api) | CPU % of a core (write-api, postgres)"));
        assert!(md.contains("| 1.0, 2.0 | 10, 30 |"), "{md}");
        assert!(
            md.contains("| ordering | 4 | 1 | 3 | 1.000 | 4 | `SELECT a \\| b` |"),
            "{md}"
        );
    }

    #[test]
    fn the_load_and_the_generator_are_judged() {
        let good = [minute(0, 0, 0.05, 0.5), minute(0, 0, 0.06, 0.4)];
        assert!(load_verdict(&good).starts_with("kept up: all 200"));
        assert!(generator_verdict(&good).starts_with("not the bottleneck: bench used at most 6%"));
        assert!(machine_verdict(&good).starts_with("spare CPU every minute (at least 40% idle)"));
        let bad = [minute(0, 0, 0.05, 0.5), minute(7, 2, 0.6, 0.02)];
        assert!(load_verdict(&bad).starts_with("FELL BEHIND: 7 of 200"));
        assert!(generator_verdict(&bad).starts_with("SUSPECT: bench used up to 60%"));
        assert!(machine_verdict(&bad).starts_with("SATURATED in 1 of 2 minutes (at least 2% idle)"));
    }
}
