//! A read-api running in-process on a free port, with everything of its own: an empty
//! database for its views, a test exchange / projector queue / stream (`test.<uuid>...`), and
//! a Redis key prefix. Tests drive it by publishing CloudEvents to the exchange, so the
//! projector sees exactly what a test means it to see. Everything is deleted on drop.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use ordering_platform::auth::{Authenticator, ExpectedClaims};
use ordering_platform::http::admin::AdminGate;
use ordering_platform::http::layers::HttpLimits;
use ordering_schema::events::{CloudEvent, EventKind, OrderData, OrderLineData, OrderStatus, ProductData};
use read_api::{Service, Settings};
use serde::Serialize;
use uuid::Uuid;

use crate::relay::broker::AMQP_URL;
use crate::test_db::TestDatabase;
use crate::write_app::SECRET;

/// The shared Redis the tests use unless they start their own.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The broker the tests use, as the services take it.
pub fn local_broker() -> ordering_platform::amqp::AmqpNodes {
    ordering_platform::amqp::AmqpNodes::parse(AMQP_URL).expect("AMQP_URL")
}

/// How a test read-api is set up.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub redis_url: String,
    pub consistency_wait: Duration,
    /// `CONSISTENCY_MAX_WAITERS`.
    pub max_waiters: usize,
    /// Declare `<exchange>.log` bound with `#` (as the relay does), for rebuild tests.
    pub stream: bool,
    pub workers: usize,
    /// `GAP_TIMEOUT`.
    pub gap_timeout: Duration,
    /// `JWT_SECRET` set for the admin page (the tests' secret); `false` turns the page off.
    pub admin: bool,
    /// The service's `AMQP_URL` (e.g. through a chaos proxy); the tests' broker when `None`.
    /// The test itself publishes and reads the dead letters on the tests' broker directly.
    pub amqp_url: Option<String>,
    /// `REQUEST_TIMEOUT`: a test whose requests wait long for consistency raises it.
    pub request_timeout: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            redis_url: REDIS_URL.to_owned(),
            consistency_wait: Duration::from_millis(3000),
            max_waiters: read_api::settings::DEFAULT_MAX_WAITERS,
            stream: false,
            workers: 4,
            gap_timeout: read_api::settings::DEFAULT_GAP_TIMEOUT,
            admin: true,
            amqp_url: None,
            request_timeout: HttpLimits::default().request_timeout,
        }
    }
}

/// A running read-api and what a test needs to talk to it.
pub struct ReadApp {
    pub db: TestDatabase,
    pub settings: Settings,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub service: Option<Service>,
    publisher: Channel,
    amqp: Connection,
    server: tokio::task::JoinHandle<()>,
}

impl ReadApp {
    /// A read-api with default options.
    pub async fn start() -> Self {
        Self::start_with(ReadOptions::default()).await
    }

    /// A read-api with `opts`.
    pub async fn start_with(opts: ReadOptions) -> Self {
        let db = TestDatabase::empty().await;
        let name = format!("test.{}", Uuid::new_v4().simple());
        let settings = Settings {
            database_url: db.url().to_owned(),
            pool_size: 16,
            amqp_url: opts.amqp_url.as_deref().map_or_else(local_broker, |url| {
                ordering_platform::amqp::AmqpNodes::parse(url).expect("the test's AMQP_URL")
            }),
            replication_factor: ordering_platform::amqp::DEFAULT_REPLICATION_FACTOR,
            redis_url: opts.redis_url.clone(),
            redis_key_prefix: format!("{name}:"),
            // Not the default 100 ms: on a loaded machine a Redis call may take longer, and the
            // tests that expect no Redis failure would see one. A dead Redis refuses at once.
            redis_timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(120),
            local_cache_ttl: Duration::from_secs(5),
            addr: "127.0.0.1:0".parse().expect("addr"),
            auth: Authenticator::hs256(SECRET.as_bytes()),
            cursor_secret: SECRET.as_bytes().to_vec(),
            consistency_wait: opts.consistency_wait,
            consistency_key: crate::write_app::consistency_key(),
            max_waiters: opts.max_waiters,
            exchange: name.clone(),
            queue: format!("{name}.projector"),
            stream: format!("{name}.log"),
            prefetch: 256,
            workers: opts.workers,
            gap_timeout: opts.gap_timeout,
            projector: true,
            limits: HttpLimits {
                request_timeout: opts.request_timeout,
                ..HttpLimits::default()
            },
            admin: opts
                .admin
                .then(|| AdminGate::new(SECRET.as_bytes(), &ExpectedClaims::default())),
        };
        let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let publisher = amqp.create_channel().await.expect("channel");
        // The exchange first (as the relay would), so events published before the projector
        // has bound its queue are not lost... they would be, so tests wait for the binding below.
        read_api::projector::declare(
            &amqp,
            &publisher,
            &read_api::projector::Topology {
                amqp_url: local_broker(),
                replication_factor: settings.replication_factor,
                exchange: settings.exchange.clone(),
                queue: settings.queue.clone(),
                prefetch: settings.prefetch,
                workers: settings.workers,
            },
        )
        .await
        .expect("declare topology");
        if opts.stream {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
            publisher
                .queue_declare(
                    settings.stream.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await
                .expect("declare stream");
            publisher
                .queue_bind(
                    settings.stream.as_str().into(),
                    settings.exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind stream");
        }
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let service = Service::start(&settings).await.expect("start read-api");
        let app = service.router(&settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        let me = Self {
            db,
            settings,
            addr,
            client,
            service: Some(service),
            publisher,
            amqp,
            server,
        };
        me.wait_until_running().await;
        me
    }

    /// Until the projector consumes and the consistency hub LISTENs (readiness needs both).
    async fn wait_until_running(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !self
            .service
            .as_ref()
            .and_then(|s| s.projector.as_ref())
            .is_some_and(|p| p.connected())
        {
            assert!(tokio::time::Instant::now() < deadline, "projector did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while !self.state().hub.listening() {
            assert!(tokio::time::Instant::now() < deadline, "the hub is not listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The app state (cache, hub, pool) of the running service.
    pub fn state(&self) -> &read_api::AppState {
        &self.service.as_ref().expect("running").state
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A GET of `path`.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    /// Publishes `event` to the test exchange with its routing key (waits for the confirm).
    pub async fn publish<D: Serialize>(&self, event: &CloudEvent<D>) {
        let kind = event.kind().expect("a known kind");
        let body = serde_json::to_vec(event).expect("serialize event");
        self.publish_raw(kind.routing_key(), &body).await;
    }

    /// Publishes `body` as is.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publish_to(&self.settings.exchange, routing_key, body).await;
    }

    /// Publishes `body` to `exchange` with `routing_key` and waits for the confirm.
    async fn publish_to(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ordering_schema::events::MESSAGE_CONTENT_TYPE.into());
        self.publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// How many messages the dead-letter queue holds (a passive declare: reads, takes nothing).
    pub async fn dead_letter_count(&self) -> u32 {
        let ch = self.amqp.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                format!("{}.dead", self.settings.queue).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the dead-letter queue exists");
        let _ = ch.close(200, "bye".into()).await;
        q.message_count()
    }

    /// Waits (up to 10 s) until the dead-letter queue holds at least `n` messages.
    pub async fn wait_for_dead_letters(&self, n: u32) {
        for _ in 0..200 {
            if self.dead_letter_count().await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} dead letters, want {n}", self.dead_letter_count().await);
    }

    /// Publishes `body` straight into the dead-letter queue, as if the projector had given up on
    /// it (through the default exchange; no `x-death`).
    pub async fn publish_dead_letter(&self, body: &[u8]) {
        let queue = format!("{}.dead", self.settings.queue);
        self.publish_to("", &queue, body).await;
    }

    /// Messages in the dead-letter queue (consumes them).
    pub async fn dead_letters(&self) -> Vec<Vec<u8>> {
        self.dead_letters_with("")
            .await
            .into_iter()
            .map(|(body, _)| body)
            .collect()
    }

    /// Messages in the dead-letter queue (consumes them), each with the value of its header
    /// `header` if it has one.
    pub async fn dead_letters_with(&self, header: &str) -> Vec<(Vec<u8>, Option<String>)> {
        let q = format!("{}.dead", self.settings.queue);
        let mut out = Vec::new();
        while let Ok(Some(m)) = self
            .publisher
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            let value = m
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(header).cloned())
                .and_then(|v| match v {
                    AMQPValue::LongString(s) => Some(s.to_string()),
                    _ => None,
                });
            out.push((m.delivery.data.clone(), value));
        }
        out
    }

    /// The stored version of a view row (`rv_products` / `rv_orders`), if any.
    pub async fn stored_version(&self, table: &str, id: Uuid) -> Option<i64> {
        let rows = self
            .query_json(&format!("SELECT version FROM {table} WHERE id = '{id}'"))
            .await;
        rows.first().and_then(|r| r["version"].as_i64())
    }

    /// Waits until the view row of `id` in `table` is at `version` (or later).
    pub async fn wait_version(&self, table: &str, id: Uuid, version: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.stored_version(table, id).await.is_some_and(|v| v >= version) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{table} {id} did not reach version {version}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `sql` (a SELECT) on the views' database; rows as JSON objects.
    pub async fn query_json(&self, sql: &str) -> Vec<serde_json::Value> {
        self.db.query_json(sql).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Stops the service gracefully (the HTTP server is aborted).
    pub async fn stop(&mut self) {
        self.server.abort();
        if let Some(s) = self.service.take() {
            s.shutdown().await;
        }
    }
}

impl Drop for ReadApp {
    fn drop(&mut self) {
        self.server.abort();
        // The projector is stopped before its queues are deleted: left running, it would
        // see its consumer cancelled, reconnect and declare them again.
        let service = self.service.take();
        let exchange = self.settings.exchange.clone();
        let queues = vec![
            self.settings.queue.clone(),
            format!("{}.dead", self.settings.queue),
            self.settings.stream.clone(),
        ];
        let dlx = format!("{}.dlx", self.settings.queue);
        let prefix = self.settings.redis_key_prefix.clone();
        let redis_url = self.settings.redis_url.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Some(service) = service {
                    let _ = tokio::time::timeout(Duration::from_secs(5), service.shutdown()).await;
                }
                crate::relay::broker::delete(dlx, Vec::new()).await;
                crate::relay::broker::delete(exchange, queues).await;
                delete_keys(&redis_url, &prefix).await;
            });
        })
        .join();
        let _ = &self.amqp;
    }
}

/// Deletes every Redis key under `prefix` (best effort).
pub async fn delete_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else { return };
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
    else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
}

// ---------------------------------------------------------------------------------------
// Event builders.

/// A product's state.
pub fn product(sku: &str, name: &str, description: &str, price_cents: i64, stock: i64) -> ProductData {
    let now = ordering_schema::events::now();
    ProductData {
        id: Uuid::now_v7(),
        sku: sku.to_owned(),
        name: name.to_owned(),
        description: description.to_owned(),
        price_cents,
        currency: "EUR".to_owned(),
        stock,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// The event that brought `p` to `p.version` (`created` at 1, `updated` later).
pub fn product_event(p: &ProductData) -> CloudEvent<ProductData> {
    let kind = if p.version == 1 {
        EventKind::ProductCreated
    } else {
        EventKind::ProductUpdated
    };
    CloudEvent::new(kind, p.id, p.version, p.updated_at, p.clone())
}

/// `p` one version later with `change` applied.
pub fn next_product(p: &ProductData, change: impl FnOnce(&mut ProductData)) -> ProductData {
    let mut n = p.clone();
    n.version += 1;
    n.updated_at = ordering_schema::events::now();
    change(&mut n);
    n
}

/// A placed order of `customer` with `lines` of (product, quantity).
pub fn order(customer: Uuid, lines: &[(&ProductData, i64)], created_at: DateTime<Utc>) -> OrderData {
    let lines: Vec<OrderLineData> = lines
        .iter()
        .map(|(p, q)| OrderLineData {
            product_id: p.id,
            sku: p.sku.clone(),
            name: p.name.clone(),
            unit_price_cents: p.price_cents,
            quantity: *q,
            line_total_cents: p.price_cents * q,
        })
        .collect();
    let total = lines.iter().map(|l| l.line_total_cents).sum();
    OrderData {
        id: Uuid::now_v7(),
        customer_id: customer,
        status: OrderStatus::Placed,
        lines,
        total_cents: total,
        currency: "EUR".to_owned(),
        version: 1,
        created_at,
        updated_at: created_at,
    }
}

/// The event that brought `o` to `o.version` (its status names the kind).
pub fn order_event(o: &OrderData) -> CloudEvent<OrderData> {
    let kind = match o.status {
        OrderStatus::Placed => EventKind::OrderPlaced,
        OrderStatus::Paid => EventKind::OrderPaid,
        OrderStatus::Shipped => EventKind::OrderShipped,
        OrderStatus::Cancelled => EventKind::OrderCancelled,
    };
    CloudEvent::new(kind, o.id, o.version, o.updated_at, o.clone())
}

/// `o` moved to `status`, one version later.
pub fn next_order(o: &OrderData, status: OrderStatus) -> OrderData {
    let mut n = o.clone();
    n.version += 1;
    n.status = status;
    n.updated_at = ordering_schema::events::now();
    n
}

/// A second read-api instance over the same views, Redis prefix and database, without a
/// projector (a read replica): it learns about changes only through notifications and Redis.
pub struct Replica {
    pub addr: SocketAddr,
    pub service: Service,
    server: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ReadApp {
    /// Starts a replica of this read-api.
    pub async fn replica(&self) -> Replica {
        let mut settings = self.settings.clone();
        settings.projector = false;
        let service = Service::start(&settings).await.expect("start replica");
        let app = service.router(&settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        // Let its LISTEN connection come up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !service.state.hub.listening() {
            assert!(tokio::time::Instant::now() < deadline, "replica is not listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Replica { addr, service, server }
    }
}

/// Starts a private `redis-server` on `port` that keeps nothing on disk, with `extra`
/// arguments (cluster mode, say); its output is discarded.
pub fn redis_server(port: u16, extra: &[&str]) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server")
}
