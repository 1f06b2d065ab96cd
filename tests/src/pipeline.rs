//! The whole pipeline as child processes, for the end-to-end fault tests (`tests/tests/e2e/`):
//! write-api, two outbox-relays and read-api on free ports, each test with its own write and
//! read databases, exchange / stream / projector queue (`test.<uuid>...`) and Redis prefix, and
//! a [`ChaosProxy`] in front of PostgreSQL, RabbitMQ and Redis that a test cuts, slows and
//! restores. A [`Load`] drives commands over HTTP and remembers every committed answer; the
//! final [`Pipeline::check`] proves the contract's promises (nothing lost, nothing invented,
//! per-aggregate order, the views equal the write side).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::process::ServiceProcess;
use crate::relay::broker::{AMQP_URL, Deliveries, TestExchange};
use crate::relay::chaos_proxy::ChaosProxy;
use crate::test_db::TestDatabase;
use crate::write_app::{SECRET, admin_token, customer_token};

/// The Redis the tests use.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// How a pipeline is set up.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Number of outbox-relay instances.
    pub relays: usize,
    /// Start the read-api at once (a test may start it later with [`Pipeline::start_read_api`]).
    pub read_api: bool,
    /// Extra settings per service (override the defaults).
    pub write_env: Vec<(String, String)>,
    pub relay_env: Vec<(String, String)>,
    pub read_env: Vec<(String, String)>,
    /// The broker's nodes (a cluster's AMQP URLs), listed in `AMQP_URL` as they are, with no
    /// proxy; empty (the default): the local broker, behind the [`Pipeline::amqp`] proxy.
    pub amqp_nodes: Vec<String>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            relays: 2,
            read_api: true,
            write_env: Vec::new(),
            relay_env: Vec::new(),
            read_env: Vec::new(),
            amqp_nodes: Vec::new(),
        }
    }
}

/// A running pipeline. Dropping it kills the services and deletes its databases, broker
/// objects and Redis keys.
pub struct Pipeline {
    pub id: String,
    /// The exchange (`test.<uuid>`); the stream is `<exchange>.log`, the projector's queue
    /// `<exchange>.projector`.
    pub exchange: String,
    pub write_db: TestDatabase,
    pub read_db: TestDatabase,
    pub pg: ChaosProxy,
    /// In front of the local broker (none when the pipeline runs on a cluster's nodes).
    amqp_proxy: Option<ChaosProxy>,
    /// `AMQP_URL` of the services when it names a cluster's nodes (else empty).
    amqp_nodes: Vec<String>,
    pub redis: ChaosProxy,
    pub write_api: ServiceProcess,
    pub relays: Vec<ServiceProcess>,
    pub read_api: Option<ServiceProcess>,
    /// Every delivery to a queue of the test's own bound to the exchange with `#` (on the local
    /// broker; on a cluster it stays empty and [`Pipeline::check`] replays the stream instead,
    /// which survives the loss of a node).
    pub recorder: Deliveries,
    pub client: reqwest::Client,
    write_env: HashMap<String, String>,
    relay_env: HashMap<String, String>,
    read_env: HashMap<String, String>,
    redis_prefix: String,
    _broker: Option<TestExchange>,
}

/// How long a service may take to become ready.
pub const READY: Duration = Duration::from_secs(60);

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

fn resolve(host_port: &str) -> SocketAddr {
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        .unwrap_or_else(|| panic!("resolve {host_port}"))
}

/// A proxy in front of `url`'s server, and `url` rewritten to go through it.
async fn proxy_for(url: &str) -> (ChaosProxy, impl Fn(&str) -> String + use<>) {
    let hp = host_port(url);
    let proxy = ChaosProxy::start(resolve(&hp)).await;
    let addr = proxy.addr().to_string();
    let rewrite = move |u: &str| u.replacen(&host_port(u), &addr, 1);
    (proxy, rewrite)
}

fn env_of(pairs: &[(&str, String)], extra: &[(String, String)]) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    m.extend(extra.iter().cloned());
    m
}

impl Pipeline {
    /// Starts everything with `opts`, waiting until every service is ready.
    pub async fn start(opts: PipelineOptions) -> Self {
        let t0 = Instant::now();
        // Build (or find up to date) every binary before timing anything.
        for b in ["write-api", "outbox-relay", "read-api"] {
            crate::process::binary(b);
        }
        let built = t0.elapsed();
        let id = Uuid::new_v4().simple().to_string();
        let exchange = format!("test.{id}");
        let write_db = TestDatabase::new().await;
        let read_db = TestDatabase::empty().await;
        let (pg, pg_url) = proxy_for(write_db.url()).await;
        let (redis, redis_url) = proxy_for(REDIS_URL).await;
        let redis_prefix = format!("test:{id}:");
        // The projector's queue and a recording queue exist before anything is published.
        let (amqp_proxy, services_amqp_url, broker, recorder) = if opts.amqp_nodes.is_empty() {
            let (proxy, amqp_url) = proxy_for(AMQP_URL).await;
            let mut broker = TestExchange::named(&exchange).await;
            let recorder = broker.consume().await;
            (Some(proxy), amqp_url(AMQP_URL), Some(broker), recorder)
        } else {
            (None, opts.amqp_nodes.join(","), None, Deliveries::default())
        };
        let broker_url = if opts.amqp_nodes.is_empty() {
            AMQP_URL.to_owned()
        } else {
            services_amqp_url.clone()
        };
        declare_projector_topology(&broker_url, &exchange).await;
        let log = || std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
        let write_env = env_of(
            &[
                ("DATABASE_URL", pg_url(write_db.url())),
                ("JWT_SECRET", SECRET.to_owned()),
                ("REQUEST_TIMEOUT", "5s".to_owned()),
                ("RUST_LOG", log()),
                ("LOG_FORMAT", "pretty".to_owned()),
            ],
            &opts.write_env,
        );
        let relay_env = env_of(
            &[
                ("DATABASE_URL", pg_url(write_db.url())),
                ("AMQP_URL", services_amqp_url.clone()),
                ("OUTBOX_EXCHANGE", exchange.clone()),
                ("RELAY_POLL_INTERVAL", "200ms".to_owned()),
                ("RELAY_LEASE_TTL", "2s".to_owned()),
                ("RELAY_BREAKER_FAILURES", "3".to_owned()),
                ("RELAY_BREAKER_COOLDOWN", "1s".to_owned()),
                ("RELAY_CONFIRM_TIMEOUT", "5s".to_owned()),
                ("EVENT_LOG_MAX_AGE", "1h".to_owned()),
                ("RUST_LOG", log()),
                ("LOG_FORMAT", "pretty".to_owned()),
            ],
            &opts.relay_env,
        );
        let read_env = env_of(
            &[
                ("DATABASE_URL", pg_url(read_db.url())),
                ("READ_DATABASE_URL", pg_url(read_db.url())),
                ("AMQP_URL", services_amqp_url.clone()),
                ("REDIS_URL", redis_url(REDIS_URL)),
                ("REDIS_KEY_PREFIX", redis_prefix.clone()),
                ("EVENTS_EXCHANGE", exchange.clone()),
                ("EVENT_LOG_STREAM", format!("{exchange}.log")),
                ("PROJECTOR_QUEUE", format!("{exchange}.projector")),
                ("JWT_SECRET", SECRET.to_owned()),
                ("CACHE_TTL", "120s".to_owned()),
                ("RUST_LOG", log()),
                ("LOG_FORMAT", "pretty".to_owned()),
            ],
            &opts.read_env,
        );
        let write_api = ServiceProcess::spawn("write-api", &[], "WRITE_API_ADDR", &write_env);
        write_api.wait_ready_status(200, READY).await;
        let relays: Vec<_> = (0..opts.relays)
            .map(|_| ServiceProcess::spawn("outbox-relay", &[], "RELAY_ADDR", &relay_env))
            .collect();
        for r in &relays {
            r.wait_ready_status(200, READY).await;
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(32)
            .build()
            .expect("client");
        let mut p = Self {
            id,
            exchange,
            write_db,
            read_db,
            pg,
            amqp_proxy,
            amqp_nodes: opts.amqp_nodes.clone(),
            redis,
            write_api,
            relays,
            read_api: None,
            recorder,
            client,
            write_env,
            relay_env,
            read_env,
            redis_prefix,
            _broker: broker,
        };
        if opts.read_api {
            p.start_read_api().await;
        }
        println!(
            "[pipeline {}] binaries checked in {built:.1?}, started in {:.1?}",
            p.exchange,
            t0.elapsed() - built
        );
        p
    }

    /// Starts (or restarts) the read-api and waits until it is ready.
    pub async fn start_read_api(&mut self) {
        if let Some(mut old) = self.read_api.take() {
            old.kill9();
        }
        let r = ServiceProcess::spawn("read-api", &[], "READ_API_ADDR", &self.read_env);
        r.wait_ready_status(200, READY).await;
        self.read_api = Some(r);
    }

    /// Another read-api on this pipeline's settings plus `extra` (e.g. `PROJECTOR=off` for a
    /// query replica: same read database, Redis prefix and consistency secret), ready when
    /// returned. The caller owns it (killed when dropped).
    pub async fn spawn_read_api(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = self.read_env.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let r = ServiceProcess::spawn("read-api", &[], "READ_API_ADDR", &env);
        r.wait_ready_status(200, READY).await;
        r
    }

    /// Runs `read-api <args>` (e.g. `rebuild`) to its end with the read-api's settings.
    pub fn run_read_api(&self, args: &[&str]) -> std::process::Output {
        crate::process::run_for_output("read-api", args, &self.read_env)
    }

    /// `kill -9` of the read-api.
    pub fn kill_read_api(&mut self) {
        if let Some(mut r) = self.read_api.take() {
            r.kill9();
        }
    }

    /// `kill -9` of relay `i` and a new one in its place (not waiting for it to be ready).
    pub fn restart_relay(&mut self, i: usize) {
        self.relays[i].kill9();
        self.relays[i] = ServiceProcess::spawn("outbox-relay", &[], "RELAY_ADDR", &self.relay_env);
    }

    /// `kill -9` of the write-api and a new one in its place, waiting until it is ready.
    pub async fn restart_write_api(&mut self) {
        self.write_api.kill9();
        self.write_api = ServiceProcess::spawn("write-api", &[], "WRITE_API_ADDR", &self.write_env);
        self.write_api.wait_ready_status(200, READY).await;
    }

    /// The proxy in front of the local broker (panics for a pipeline on a cluster's nodes).
    pub fn amqp(&self) -> &ChaosProxy {
        self.amqp_proxy
            .as_ref()
            .expect("a pipeline on the local broker has an AMQP proxy")
    }

    /// What a consumer of all events got: the recording queue's deliveries on the local
    /// broker; on a cluster, the stream `<exchange>.log` replayed from its first offset.
    pub async fn recorded(&self) -> Deliveries {
        if self.amqp_nodes.is_empty() {
            return self.recorder.clone();
        }
        let nodes = ordering_platform::amqp::AmqpNodes::parse(&self.amqp_nodes.join(",")).expect("AMQP nodes");
        let conn = nodes.connect("test stream replay").await.expect("a node").connection;
        let got =
            crate::relay::broker::read_stream(&conn, &format!("{}.log", self.exchange), Duration::from_secs(2)).await;
        let _ = conn.close(200, "read".into()).await;
        got
    }

    /// The read-api (panics when it is not running).
    pub fn read(&self) -> &ServiceProcess {
        self.read_api.as_ref().expect("read-api is running")
    }

    /// A command driver for this pipeline's write-api (and read-api for read-your-writes).
    pub fn driver(&self) -> Driver {
        Driver {
            client: self.client.clone(),
            write: self.write_api.url(""),
            ledger: Arc::new(Mutex::new(Ledger::default())),
        }
    }

    /// `GET` on the read-api with an admin token; status and JSON body.
    pub async fn read_get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(self.read().url(path))
            .bearer_auth(admin_token())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on read-api: {e}"));
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Outbox rows not yet confirmed by the broker.
    pub async fn unsent(&self) -> i64 {
        let mut conn = self.write_db.conn().await;
        crate::relay::outbox::unsent(&mut conn, "outbox").await
    }

    /// Waits until every outbox row is sent; returns how long that took.
    pub async fn wait_drained(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let n = self.unsent().await;
            if n == 0 {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "{n} outbox rows still unsent after {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The final check of the contract's promises. Waits (up to `limit`) for the relays to
    /// publish everything and the views to catch up, then asserts:
    /// - the write side is whole: per aggregate, the outbox holds sequences 1..=version once;
    /// - nothing lost / invented: the recording consumer got every outbox event, and nothing else;
    /// - per-aggregate order: first deliveries come in sequence order (no gaps);
    /// - the views equal the write side (products, orders with a legal `history`, customers'
    ///   summaries and lists), so no refused command appears and no event applied twice;
    /// - every committed answer the driver remembers is reflected (its version is ≤ the
    ///   write side's, and read-your-writes with its consistency token answers 200).
    pub async fn check(&self, driver: &Driver, limit: Duration) -> CheckReport {
        let start = Instant::now();
        let drain = self.wait_drained(limit).await;
        let truth = WriteSide::load(&self.write_db).await;
        // The write side is whole.
        let mut expected_events = 0usize;
        for (agg, version) in truth.versions() {
            let seqs = truth.outbox_sequences.get(&agg).cloned().unwrap_or_default();
            let want: Vec<i64> = (1..=version).collect();
            assert_eq!(seqs, want, "outbox sequences of aggregate {agg} (version {version})");
            expected_events += seqs.len();
        }
        assert_eq!(
            truth.outbox_ids.len(),
            expected_events,
            "outbox rows that belong to no aggregate"
        );
        assert_eq!(truth.orders_without_lines, 0, "orders without lines (half-written)");
        // Nothing lost, nothing invented, in order.
        let ids: HashSet<Uuid> = truth.outbox_ids.iter().copied().collect();
        let deadline = Instant::now() + limit;
        let mut recorded;
        loop {
            recorded = self.recorded().await;
            let got = recorded.event_ids();
            if ids.is_subset(&got) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "recorder missed {} of {} committed events",
                ids.difference(&got).count(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = recorded.event_ids();
        let invented: Vec<_> = got.difference(&ids).collect();
        assert!(
            invented.is_empty(),
            "events published that were never committed: {invented:?}"
        );
        recorded.check_order().expect("per-aggregate order of first deliveries");
        let deliveries = recorded.len();
        // The views catch up and equal the write side.
        let mut mismatches;
        loop {
            mismatches = self.compare_views(&truth).await;
            if mismatches.is_empty() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            mismatches.is_empty(),
            "{} view(s) differ from the write side after {limit:?}, e.g.:\n{}",
            mismatches.len(),
            mismatches.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
        let views_caught_up = start.elapsed();
        // Every remembered committed answer is part of the write side, and readable with its token.
        let ledger = driver.ledger.lock().expect("ledger").clone();
        for (id, v) in ledger.products.iter().chain(ledger.orders.iter()) {
            let have = truth
                .version_of(id)
                .unwrap_or_else(|| panic!("committed aggregate {id} is missing"));
            let remembered = v["version"].as_i64().unwrap_or_default();
            assert!(
                remembered <= have,
                "committed version {remembered} of {id} > write side's {have}"
            );
        }
        if let Some((path, token)) = ledger.last_token.clone() {
            let res = self
                .client
                .get(self.read().url(&path))
                .bearer_auth(admin_token())
                .header("X-Consistency-Token", token)
                .send()
                .await
                .expect("read your writes");
            assert_eq!(res.status(), 200, "read-your-writes of {path}");
        }
        let metrics = self.read_metrics().await;
        CheckReport {
            committed_events: ids.len(),
            deliveries,
            duplicate_deliveries: deliveries - got.len(),
            drain,
            views_caught_up,
            products: truth.products.len(),
            orders: truth.orders.len(),
            projector_applied: metric_sum(&metrics, "read_events_applied_total"),
            projector_duplicates_ignored: metric_sum(&metrics, "read_events_duplicates_ignored_total"),
        }
    }

    /// Differences between the views and `truth` (empty when they agree).
    pub async fn compare_views(&self, truth: &WriteSide) -> Vec<String> {
        let mut requests: Vec<(String, Value)> = Vec::new();
        for p in truth.products.values() {
            requests.push((format!("/v1/products/{}", p.id), json!({"kind": "product", "want": p})));
        }
        for o in truth.orders.values() {
            requests.push((format!("/v1/orders/{}", o.id), json!({"kind": "order", "want": o})));
        }
        for (c, s) in truth.summaries() {
            requests.push((
                format!("/v1/customers/{c}/summary"),
                json!({"kind": "summary", "want": s}),
            ));
        }
        for (c, n) in truth.order_counts() {
            requests.push((
                format!("/v1/customers/{c}/orders?limit=100"),
                json!({"kind": "list", "want": n}),
            ));
        }
        let results: Vec<Option<String>> = futures::stream::iter(requests)
            .map(|(path, spec)| async move {
                let (status, body) = match self
                    .client
                    .get(self.read().url(&path))
                    .bearer_auth(admin_token())
                    .send()
                    .await
                {
                    Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
                    Err(e) => return Some(format!("{path}: {e}")),
                };
                if status != 200 {
                    return Some(format!("{path}: status {status}: {body}"));
                }
                let want = &spec["want"];
                match spec["kind"].as_str() {
                    Some("product") => {
                        for k in ["stock", "version", "price_cents", "name", "sku", "currency"] {
                            if body[k] != want[k] {
                                return Some(format!("{path}: {k} {} != write side's {}", body[k], want[k]));
                            }
                        }
                        None
                    }
                    Some("order") => {
                        for k in ["status", "version", "total_cents", "currency", "customer_id"] {
                            if body[k] != want[k] {
                                return Some(format!("{path}: {k} {} != write side's {}", body[k], want[k]));
                            }
                        }
                        let history: Vec<&str> = body["history"]
                            .as_array()
                            .map(|h| h.iter().filter_map(|e| e["status"].as_str()).collect())
                            .unwrap_or_default();
                        let legal: &[&[&str]] = &[
                            &["placed"],
                            &["placed", "paid"],
                            &["placed", "paid", "shipped"],
                            &["placed", "cancelled"],
                            &["placed", "paid", "cancelled"],
                        ];
                        if !legal.contains(&history.as_slice()) || history.last() != want["status"].as_str().as_ref() {
                            return Some(format!("{path}: history {history:?} for status {}", want["status"]));
                        }
                        None
                    }
                    Some("summary") => {
                        for k in ["order_count", "open_order_count", "spent_cents"] {
                            if body[k] != want[k] {
                                return Some(format!("{path}: {k} {} != write side's {}", body[k], want[k]));
                            }
                        }
                        None
                    }
                    Some("list") => {
                        let n = body["items"].as_array().map_or(0, Vec::len);
                        let want_n = want.as_u64().unwrap_or_default().min(100) as usize;
                        (n != want_n).then(|| format!("{path}: {n} orders listed, write side has {want_n}"))
                    }
                    _ => None,
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }

    /// The read-api's `/metrics` text ("" when it does not answer).
    pub async fn read_metrics(&self) -> String {
        let Some(r) = self.read_api.as_ref() else {
            return String::new();
        };
        match self.client.get(r.url("/metrics")).send().await {
            Ok(res) => res.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

/// Sum of every sample of metric `name` in a Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Declares the read-api's topology (the exchange, its projector queue and dead letters) as
/// the read-api does, so events published before it first starts wait in its queue.
async fn declare_projector_topology(amqp_url: &str, exchange: &str) {
    let nodes = ordering_platform::amqp::AmqpNodes::parse(amqp_url).expect("AMQP URL");
    let conn = nodes.connect("test").await.expect("connect to RabbitMQ").connection;
    let ch = conn.create_channel().await.expect("channel");
    read_api::projector::declare(
        &conn,
        &ch,
        &read_api::projector::Topology {
            amqp_url: nodes.clone(),
            replication_factor: ordering_platform::amqp::DEFAULT_REPLICATION_FACTOR,
            exchange: exchange.to_owned(),
            queue: format!("{exchange}.projector"),
            prefetch: 1,
            workers: 1,
        },
    )
    .await
    .expect("declare projector topology");
    let _ = conn.close(200, "declared".into()).await;
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for r in &mut self.relays {
            r.kill9();
        }
        if let Some(r) = &mut self.read_api {
            r.kill9();
        }
        self.write_api.kill9();
        let exchange = self.exchange.clone();
        let prefix = self.redis_prefix.clone();
        // A cluster's objects go with the cluster.
        let local_broker = self.amqp_nodes.is_empty();
        // The TestExchange (dropped after this) deletes the exchange, its stream and the
        // recording queue; here the read-api's queues and dead-letter exchange, and Redis keys.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let q = format!("{exchange}.projector");
                if local_broker {
                    crate::relay::broker::delete(format!("{q}.dlx"), vec![q.clone(), format!("{q}.dead")]).await;
                }
                crate::read_app::delete_keys(REDIS_URL, &prefix).await;
            });
        })
        .join();
    }
}

/// What [`Pipeline::check`] measured.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub committed_events: usize,
    pub deliveries: usize,
    pub duplicate_deliveries: usize,
    /// From the start of the check until the outbox was drained.
    pub drain: Duration,
    /// From the start of the check until the views equalled the write side.
    pub views_caught_up: Duration,
    pub products: usize,
    pub orders: usize,
    pub projector_applied: f64,
    pub projector_duplicates_ignored: f64,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events committed {}, delivered {} ({} duplicate deliveries), outbox drained in {:.1?}, views equal \
             the write side after {:.1?} ({} products, {} orders); projector (current process): applied {}, \
             duplicates ignored {}",
            self.committed_events,
            self.deliveries,
            self.duplicate_deliveries,
            self.drain,
            self.views_caught_up,
            self.products,
            self.orders,
            self.projector_applied,
            self.projector_duplicates_ignored
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The write side as it is in PostgreSQL: the truth the views must equal.

#[derive(QueryableByName, Clone, Debug, serde::Serialize)]
pub struct ProductRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub sku: String,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub price_cents: i64,
    #[diesel(sql_type = Text)]
    pub currency: String,
    #[diesel(sql_type = BigInt)]
    pub stock: i64,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
}

#[derive(QueryableByName, Clone, Debug, serde::Serialize)]
pub struct OrderRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub customer_id: Uuid,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Text)]
    pub currency: String,
    #[diesel(sql_type = BigInt)]
    pub total_cents: i64,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
}

#[derive(QueryableByName)]
struct OutboxRow {
    #[diesel(sql_type = SqlUuid)]
    event_id: Uuid,
    #[diesel(sql_type = Text)]
    aggregate_id: String,
    #[diesel(sql_type = BigInt)]
    sequence: i64,
}

/// Products, orders and outbox of the write database.
pub struct WriteSide {
    pub products: BTreeMap<Uuid, ProductRow>,
    pub orders: BTreeMap<Uuid, OrderRow>,
    pub outbox_ids: Vec<Uuid>,
    /// Per aggregate id, its outbox sequences in ascending order.
    pub outbox_sequences: HashMap<String, Vec<i64>>,
    /// Orders that have no line (a half-written order).
    pub orders_without_lines: i64,
}

impl WriteSide {
    pub async fn load(db: &TestDatabase) -> Self {
        let mut conn = db.conn().await;
        let products: Vec<ProductRow> = diesel::sql_query(
            "SELECT id, sku, name, price_cents, currency::text AS currency, stock, version FROM products",
        )
        .load(&mut conn)
        .await
        .expect("read products");
        let orders: Vec<OrderRow> = diesel::sql_query(
            "SELECT id, customer_id, status, currency::text AS currency, total_cents, version FROM orders",
        )
        .load(&mut conn)
        .await
        .expect("read orders");
        let outbox: Vec<OutboxRow> =
            diesel::sql_query("SELECT event_id, aggregate_id, sequence FROM outbox ORDER BY aggregate_id, sequence")
                .load(&mut conn)
                .await
                .expect("read outbox");
        let mut outbox_sequences: HashMap<String, Vec<i64>> = HashMap::new();
        for r in &outbox {
            outbox_sequences
                .entry(r.aggregate_id.clone())
                .or_default()
                .push(r.sequence);
        }
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let bare: N = diesel::sql_query(
            "SELECT count(*) AS n FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.id)",
        )
        .get_result(&mut conn)
        .await
        .expect("count orders without lines");
        Self {
            orders_without_lines: bare.n,
            products: products.into_iter().map(|p| (p.id, p)).collect(),
            orders: orders.into_iter().map(|o| (o.id, o)).collect(),
            outbox_ids: outbox.iter().map(|r| r.event_id).collect(),
            outbox_sequences,
        }
    }

    /// Every aggregate's id and version.
    pub fn versions(&self) -> Vec<(String, i64)> {
        self.products
            .values()
            .map(|p| (p.id.to_string(), p.version))
            .chain(self.orders.values().map(|o| (o.id.to_string(), o.version)))
            .collect()
    }

    pub fn version_of(&self, id: &Uuid) -> Option<i64> {
        self.products
            .get(id)
            .map(|p| p.version)
            .or_else(|| self.orders.get(id).map(|o| o.version))
    }

    /// Each customer's expected summary.
    pub fn summaries(&self) -> BTreeMap<Uuid, Value> {
        let mut out: BTreeMap<Uuid, (i64, i64, BTreeMap<String, i64>)> = BTreeMap::new();
        for o in self.orders.values() {
            let e = out.entry(o.customer_id).or_default();
            e.0 += 1;
            if matches!(o.status.as_str(), "placed" | "paid") {
                e.1 += 1;
            }
            if matches!(o.status.as_str(), "paid" | "shipped") {
                *e.2.entry(o.currency.clone()).or_default() += o.total_cents;
            }
        }
        out.into_iter()
            .map(|(c, (n, open, spent))| {
                (
                    c,
                    json!({"order_count": n, "open_order_count": open, "spent_cents": spent}),
                )
            })
            .collect()
    }

    /// Each customer's number of orders.
    pub fn order_counts(&self) -> BTreeMap<Uuid, usize> {
        let mut out = BTreeMap::new();
        for o in self.orders.values() {
            *out.entry(o.customer_id).or_default() += 1;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The command driver.

/// How the write-api answered the commands a driver sent.
#[derive(Clone, Debug, Default)]
pub struct Outcomes {
    /// 2xx: committed.
    pub committed: u64,
    /// 4xx refusals by `code` (e.g. `insufficient_stock`).
    pub refused: BTreeMap<String, u64>,
    /// 503 answers (dependency down / request timeout).
    pub unavailable: u64,
    /// Other 5xx answers (never expected), with a sample body.
    pub server_errors: Vec<String>,
    /// No answer at all (connection refused / reset, client timeout).
    pub transport_errors: u64,
    /// The slowest answer.
    pub slowest: Duration,
}

/// Everything the driver remembers.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Last committed answer per product (highest version seen).
    pub products: BTreeMap<Uuid, Value>,
    /// Last committed answer per order (highest version seen).
    pub orders: BTreeMap<Uuid, Value>,
    pub customers: Vec<Uuid>,
    pub outcomes: Outcomes,
    /// The read-api path and consistency token of the latest committed command.
    pub last_token: Option<(String, String)>,
}

/// Sends commands to the write-api and records their answers. Cheap to clone (shared ledger).
#[derive(Clone)]
pub struct Driver {
    client: reqwest::Client,
    write: String,
    pub ledger: Arc<Mutex<Ledger>>,
}

/// One answer of the write-api.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub elapsed: Duration,
}

impl Driver {
    /// Points the driver at another write-api (after a restart).
    pub fn retarget(&mut self, write: &ServiceProcess) {
        self.write = write.url("");
    }

    /// Sends one command and records its outcome; `None` when nothing answered.
    pub async fn send(&self, method: reqwest::Method, path: &str, token: &str, body: Value) -> Option<Reply> {
        let started = Instant::now();
        let res = self
            .client
            .request(method, format!("{}{path}", self.write))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        let mut ledger = self.ledger.lock().expect("ledger");
        let Ok(res) = res else {
            ledger.outcomes.transport_errors += 1;
            return None;
        };
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let consistency = res
            .headers()
            .get("x-consistency-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        drop(ledger);
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        let elapsed = started.elapsed();
        let mut ledger = self.ledger.lock().expect("ledger");
        ledger.outcomes.slowest = ledger.outcomes.slowest.max(elapsed);
        match status {
            200..=299 => {
                ledger.outcomes.committed += 1;
                let id = body["id"].as_str().and_then(|s| s.parse::<Uuid>().ok());
                if let Some(id) = id {
                    let is_order = body.get("status").is_some();
                    let map = if is_order {
                        &mut ledger.orders
                    } else {
                        &mut ledger.products
                    };
                    let newer = map
                        .get(&id)
                        .is_none_or(|old| old["version"].as_i64() < body["version"].as_i64());
                    if newer {
                        map.insert(id, body.clone());
                    }
                    if let Some(t) = consistency {
                        let kind = if is_order { "orders" } else { "products" };
                        ledger.last_token = Some((format!("/v1/{kind}/{id}"), t));
                    }
                }
            }
            503 => ledger.outcomes.unavailable += 1,
            500..=599 => ledger.outcomes.server_errors.push(format!("{status} {path}: {body}")),
            _ => {
                let code = body["code"].as_str().unwrap_or("?").to_owned();
                *ledger.outcomes.refused.entry(code).or_default() += 1;
            }
        }
        Some(Reply {
            status,
            content_type,
            body,
            elapsed,
        })
    }

    /// Creates `n` products (EUR, `stock` each) and `customers` customers; panics on failure.
    pub async fn seed(&self, n: usize, stock: i64, customers: usize) {
        for i in 0..n {
            let sku = format!("e2e-{}-{i}", &Uuid::new_v4().simple().to_string()[..8]);
            let body = json!({"sku": sku, "name": format!("product {i}"), "description": "e2e",
                              "price_cents": 100 + i as i64 * 7, "currency": "EUR", "stock": stock});
            let r = self
                .send(reqwest::Method::POST, "/v1/products", &admin_token(), body)
                .await
                .expect("create product");
            assert_eq!(r.status, 201, "create product: {:?}", r.body);
        }
        let mut ledger = self.ledger.lock().expect("ledger");
        ledger.customers.extend((0..customers).map(|_| Uuid::now_v7()));
    }

    /// One random command: place (45%), pay (20%), ship (8%), cancel (12%) or a stock
    /// adjustment (15%). Returns the answer, if any.
    pub async fn random_command(&self) -> Option<Reply> {
        let (products, orders, customers) = {
            let l = self.ledger.lock().expect("ledger");
            (
                l.products.keys().copied().collect::<Vec<_>>(),
                l.orders
                    .iter()
                    .map(|(id, v)| {
                        (
                            *id,
                            v["status"].as_str().unwrap_or("").to_owned(),
                            v["customer_id"].clone(),
                        )
                    })
                    .collect::<Vec<_>>(),
                l.customers.clone(),
            )
        };
        assert!(!products.is_empty() && !customers.is_empty(), "seed the driver first");
        let (roll, pick) = {
            let mut rng = rand::rng();
            (rng.random_range(0..100u32), rng.random_range(0..usize::MAX))
        };
        let with_status = |wanted: &[&str]| {
            let c: Vec<_> = orders.iter().filter(|o| wanted.contains(&o.1.as_str())).collect();
            (!c.is_empty()).then(|| c[pick % c.len()].clone())
        };
        let customer_of = |v: &Value| v.as_str().and_then(|s| s.parse::<Uuid>().ok()).unwrap_or_default();
        match roll {
            0..45 => {
                let customer = customers[pick % customers.len()];
                let (lines, heavy) = {
                    let mut rng = rand::rng();
                    let n = rng.random_range(1..=3usize.min(products.len()));
                    let start = rng.random_range(0..products.len());
                    let lines: Vec<Value> = (0..n)
                        .map(|k| {
                            json!({"product_id": products[(start + k) % products.len()],
                                   "quantity": rng.random_range(1..=5)})
                        })
                        .collect();
                    (lines, rng.random_range(0..20) == 0)
                };
                // Now and then an order that cannot be served (409 insufficient_stock).
                let lines = if heavy {
                    vec![json!({"product_id": products[pick % products.len()], "quantity": 10_000})]
                } else {
                    lines
                };
                self.send(
                    reqwest::Method::POST,
                    "/v1/orders",
                    &customer_token(customer),
                    json!({"customer_id": customer, "lines": lines}),
                )
                .await
            }
            45..65 => {
                let (id, _, c) = with_status(&["placed"])?;
                self.send(
                    reqwest::Method::POST,
                    &format!("/v1/orders/{id}/pay"),
                    &customer_token(customer_of(&c)),
                    json!({"payment_reference": format!("pay-{pick}")}),
                )
                .await
            }
            65..73 => {
                let (id, _, _) = with_status(&["paid"])?;
                self.send(
                    reqwest::Method::POST,
                    &format!("/v1/orders/{id}/ship"),
                    &admin_token(),
                    json!({}),
                )
                .await
            }
            73..85 => {
                let (id, _, c) = with_status(&["placed", "paid", "shipped"])?;
                self.send(
                    reqwest::Method::POST,
                    &format!("/v1/orders/{id}/cancel"),
                    &customer_token(customer_of(&c)),
                    json!({"reason": "changed my mind"}),
                )
                .await
            }
            _ => {
                let id = products[pick % products.len()];
                let delta = {
                    let mut rng = rand::rng();
                    if rng.random_range(0..10) == 0 {
                        -1_000_000
                    } else {
                        rng.random_range(1..=40)
                    }
                };
                self.send(
                    reqwest::Method::POST,
                    &format!("/v1/products/{id}/stock-adjustments"),
                    &admin_token(),
                    json!({"delta": delta, "reason": "e2e"}),
                )
                .await
            }
        }
    }

    /// A copy of the outcomes so far.
    pub fn outcomes(&self) -> Outcomes {
        self.ledger.lock().expect("ledger").outcomes.clone()
    }
}

/// Commands sent continuously by `workers` tasks until stopped.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    /// Starts `workers` tasks each sending a random command every `pause`.
    pub fn start(driver: &Driver, workers: usize, pause: Duration) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = (0..workers)
            .map(|_| {
                let d = driver.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut sent = 0;
                    while !stop.is_cancelled() {
                        if d.random_command().await.is_some() {
                            sent += 1;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    sent
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the workers; returns the number of commands that got an answer.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        let mut n = 0;
        for t in self.tasks {
            n += t.await.expect("load task");
        }
        n
    }
}

// ---------------------------------------------------------------------------------------------
// A load generator's HTTP client.

/// One keep-alive HTTP client for a load generator (`bench soak`), shared by all its tasks: the
/// connections are pooled and reused, so a command costs a request, not a TCP handshake, and the
/// generator stays cheap next to the services it measures. Cheap to clone (one pool).
#[derive(Clone)]
pub struct JsonClient {
    client: reqwest::Client,
}

/// As much of a command's answer as a load generator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub status: u16,
    /// The `id` in the body of a success (the order or product it created or changed).
    pub id: Option<Uuid>,
    /// The `code` of a refusal's problem+json body (`insufficient_stock`, `invalid_transition`).
    pub code: Option<String>,
}

impl JsonClient {
    /// A client keeping up to `idle_per_host` idle connections to each host and giving up on a
    /// request after `timeout`.
    pub fn new(idle_per_host: usize, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(idle_per_host)
            .build()?;
        Ok(Self { client })
    }

    /// `POST url` with `body` as JSON and a bearer `token`; `Err` when nothing answered.
    pub async fn post(&self, url: &str, token: &str, body: &Value) -> anyhow::Result<Posted> {
        #[derive(Default, serde::Deserialize)]
        struct Fields {
            id: Option<Uuid>,
            code: Option<String>,
        }
        let res = self.client.post(url).bearer_auth(token).json(body).send().await?;
        let status = res.status().as_u16();
        // Read to the end: only a fully read answer gives its connection back to the pool.
        let bytes = res.bytes().await?;
        let fields: Fields = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(Posted {
            status,
            id: fields.id,
            code: fields.code,
        })
    }

    /// The body of `GET url` (a `/metrics` page); `Err` unless it answered 2xx.
    pub async fn get_text(&self, url: &str) -> anyhow::Result<String> {
        Ok(self.client.get(url).send().await?.error_for_status()?.text().await?)
    }
}

// ---------------------------------------------------------------------------------------------
// Process memory.

/// The pid of the child process started with `{var}={addr}` in its environment.
pub fn pid_of(var: &str, addr: SocketAddr) -> Option<u32> {
    let needle = format!("{var}={addr}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// `VmHWM` (peak resident set) and `VmRSS` of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
