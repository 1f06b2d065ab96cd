//! Read-side benchmark, in one run on one machine (release mode):
//! - a minimal axum server returning a fixed body of the product view's size (the ceiling);
//! - cached `GET /v1/products/{id}` (in-process tier + Redis), and Redis only (no in-process
//!   tier), as req/s and p99;
//! - the same GET with Redis down (in-process tier on, and off: straight from PostgreSQL);
//! - the projector's events/s: N events published to the exchange while it consumes, timed
//!   until applied (bounded by the publishing); the same N queued first, then drained (its
//!   own ceiling); and a mixed backlog (several versions per aggregate, orders, duplicates,
//!   swapped neighbours) drained and checked.
//!
//! Load comes from `wrk` (64 connections, 2 threads; `apt-get install -y wrk`).
//! Usage: `cargo run --release -p ordering-tests --bin read-bench [seconds] [http|projector]`
//! (both parts unless one is named). `READ_BENCH_LOGS=1` installs the services' log subscriber
//! (`RUST_LOG`, default `info`), as the binaries run, so per-request spans are live.

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use ordering_tests::cpu::{CpuMeter, Group};
use ordering_tests::figures;
use ordering_tests::read_app::{ReadApp, ReadOptions, product, product_event};

struct Figure {
    rps: f64,
    p99_ms: f64,
    /// CPU time (user + system) the servers (this process, without `wrk`) spent per request:
    /// less sensitive than req/s to other load on the machine.
    cpu_us: f64,
    /// CPU time every process together (`wrk`, the servers, Redis, PostgreSQL) spent per
    /// request: on two shared cores, req/s is about the cores divided by this.
    machine_cpu_us: f64,
}

impl Figure {
    /// Hands the figures of run `id` to the report; `raw` is the run it is a share of.
    fn emit(&self, id: &str, label: &str, raw: Option<&str>, secs: u64) {
        let rps = figures::Figure::new(format!("{id}.rps"), label, self.rps, "req/s")
            .with("connections", 64)
            .with("seconds", secs);
        match raw {
            Some(raw) => rps.of(format!("{raw}.rps")),
            None => rps,
        }
        .emit();
        figures::Figure::new(format!("{id}.latency_p99"), format!("{label}, p99"), self.p99_ms, "ms").emit();
        figures::Figure::new(
            format!("{id}.cpu_per_request"),
            format!("{label}, server CPU per request"),
            self.cpu_us,
            "us",
        )
        .emit();
        figures::Figure::new(
            format!("{id}.machine_cpu_per_request"),
            format!("{label}, machine CPU per request (all processes)"),
            self.machine_cpu_us,
            "us",
        )
        .emit();
    }

    /// The run's line: rate, p99 and CPU per request.
    fn summary(&self) -> String {
        format!(
            "{:>9.0} req/s  p99 {:>6.2} ms  CPU/req {:>4.1} us server, {:>4.1} us machine",
            self.rps, self.p99_ms, self.cpu_us, self.machine_cpu_us
        )
    }
}

fn wrk(url: &str, secs: u64) -> anyhow::Result<Figure> {
    let meter = CpuMeter::start(vec![("server", Group::ThisAlone)]);
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .map_err(|e| anyhow::anyhow!("wrk not runnable ({e}); apt-get install -y wrk"))?;
    let used = meter.used();
    let seconds_of = |name: &str| used.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, s)| *s);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected wrk output: {text}"))?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(parse_latency)
        .unwrap_or(f64::NAN);
    if text.contains("Non-2xx") {
        anyhow::bail!("non-2xx answers during the run: {text}");
    }
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(Figure {
        rps,
        p99_ms: p99,
        cpu_us: seconds_of("server") * 1e6 / requests,
        machine_cpu_us: seconds_of("machine") * 1e6 / requests,
    })
}

fn parse_latency(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => n,
    }
}

async fn bare_server(body: Vec<u8>) -> anyhow::Result<std::net::SocketAddr> {
    let body = axum::body::Bytes::from(body);
    let app = axum::Router::new().route(
        "/fixed",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn product_app(opts: ReadOptions, local_tier: bool) -> anyhow::Result<(ReadApp, String, usize)> {
    let mut app = ReadApp::start_with(opts).await;
    if !local_tier {
        // Restart with the in-process tier disabled (entries expire at once).
        app.stop().await;
        let mut settings = app.settings.clone();
        settings.local_cache_ttl = Duration::ZERO;
        let service = read_api::Service::start(&settings).await?;
        let router = service.router(&settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        app.addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        app.service = Some(service);
    }
    let p = product(
        &format!("BENCH-{}", uuid::Uuid::now_v7().simple()),
        "Bench kettle",
        &"a fine kettle ".repeat(40),
        2599,
        10,
    );
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let url = app.url(&format!("/v1/products/{}", p.id));
    let body = reqwest::get(&url).await?.bytes().await?;
    Ok((app, url, body.len()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let only = std::env::args().nth(2);
    // As the binaries run: the global subscriber (RUST_LOG, default info), so every request's
    // span is live.
    let _telemetry = std::env::var_os("READ_BENCH_LOGS")
        .map(|_| ordering_platform::telemetry::init("read-bench"))
        .transpose()?;
    if only.as_deref() != Some("projector") {
        http(secs).await?;
    }
    if only.as_deref() != Some("http") {
        projector().await?;
    }
    Ok(())
}

async fn http(secs: u64) -> anyhow::Result<()> {
    let dead_redis = format!("redis://127.0.0.1:{}/0", {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    });

    let (cached, cached_url, size) = product_app(ReadOptions::default(), true).await?;
    let bare = bare_server(vec![b'x'; size]).await?;
    println!("product view: {size} bytes; wrk -t2 -c64 -d{secs}s");
    let ceiling = wrk(&format!("http://{bare}/fixed"), secs)?;
    println!("minimal axum, fixed body           {}", ceiling.summary());
    ceiling.emit("raw.axum_fixed", "bare axum, fixed body", None, secs);
    let c = wrk(&cached_url, secs)?;
    println!(
        "GET product, cached (local+Redis)  {}  = {:.0}% of minimal axum (target >= 70%)",
        c.summary(),
        100.0 * c.rps / ceiling.rps
    );
    c.emit(
        "read.cached",
        "GET product, cached (local + Redis)",
        Some("raw.axum_fixed"),
        secs,
    );
    drop(cached);

    let (redis_only, url, _) = product_app(ReadOptions::default(), false).await?;
    let r = wrk(&url, secs)?;
    println!(
        "GET product, Redis tier only       {}  = {:.0}% of minimal axum",
        r.summary(),
        100.0 * r.rps / ceiling.rps
    );
    r.emit(
        "read.redis_only",
        "GET product, Redis tier only",
        Some("raw.axum_fixed"),
        secs,
    );
    drop(redis_only);

    let down = ReadOptions {
        redis_url: dead_redis.clone(),
        ..Default::default()
    };
    let (redis_down, url, _) = product_app(down.clone(), true).await?;
    let d = wrk(&url, secs)?;
    println!(
        "GET product, Redis down            {}  = {:.0}% of cached (target >= 30%)",
        d.summary(),
        100.0 * d.rps / c.rps
    );
    d.emit("read.redis_down", "GET product, Redis down", Some("read.cached"), secs);
    drop(redis_down);
    let (pg_only, url, _) = product_app(down, false).await?;
    let g = wrk(&url, secs)?;
    println!(
        "GET product, Redis down, no local  {}  = {:.0}% of cached (every read from PostgreSQL)",
        g.summary(),
        100.0 * g.rps / c.rps
    );
    g.emit(
        "read.postgres_only",
        "GET product, Redis down, no local tier",
        Some("read.cached"),
        secs,
    );
    drop(pg_only);
    Ok(())
}

/// Publishes `events` to `exchange` with a window of 256 outstanding confirms (as the relay
/// does); returns how long it took.
async fn publish_all(exchange: &str, events: &[Vec<u8>]) -> anyhow::Result<Duration> {
    let conn = lapin::Connection::connect(
        ordering_tests::relay::broker::AMQP_URL,
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut confirms = Vec::with_capacity(256);
    for body in events {
        let c = ch
            .basic_publish(
                exchange.into(),
                "product.created".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        confirms.push(c);
        if confirms.len() == 256 {
            for c in confirms.drain(..) {
                c.await?;
            }
        }
    }
    for c in confirms.drain(..) {
        c.await?;
    }
    let took = started.elapsed();
    let _ = conn.close(200, "bye".into()).await;
    Ok(took)
}

async fn wait_for_rows(app: &ReadApp, n: i64) {
    loop {
        let rows = app.query_json("SELECT count(*) AS n FROM rv_products").await;
        if rows[0]["n"].as_i64() == Some(n) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A read-api whose projector runs with the service's default prefetch and workers (the
/// test harness uses its own), or `PROJECTOR_PREFETCH` / `PROJECTOR_WORKERS` if set;
/// `consuming` false: stopped, its queue declared.
async fn projector_app(consuming: bool) -> anyhow::Result<ReadApp> {
    let mut app = ReadApp::start_with(ReadOptions::default()).await;
    app.stop().await;
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    app.settings.prefetch = env("PROJECTOR_PREFETCH").unwrap_or(read_api::settings::DEFAULT_PREFETCH);
    app.settings.workers = env("PROJECTOR_WORKERS").map_or(read_api::settings::DEFAULT_WORKERS, |w: u16| w.into());
    if consuming {
        start_projector(&mut app).await?;
    }
    Ok(app)
}

/// Starts the service (projector and HTTP) of a stopped `app`.
async fn start_projector(app: &mut ReadApp) -> anyhow::Result<()> {
    let service = read_api::Service::start(&app.settings).await?;
    let router = service.router(&app.settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    app.addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    while !service.projector.as_ref().is_some_and(|p| p.connected()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.service = Some(service);
    Ok(())
}

/// The sum of a counter's series in the process-wide registry (all apps of this process).
fn counter(name: &str) -> f64 {
    ordering_platform::http::ops::metrics_handle()
        .render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn events(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            serde_json::to_vec(&product_event(&product(&format!("{tag}-{i}"), "Event", "e", 100, 1)))
                .unwrap_or_default()
        })
        .collect()
}

async fn projector() -> anyhow::Result<()> {
    // Projector throughput: N events to distinct aggregates, published with a window of
    // outstanding confirms, timed until the last is applied...
    let n = 20_000;
    let app = projector_app(true).await?;
    let evs = events(n, "E");
    let started = Instant::now();
    let published = publish_all(&app.settings.exchange, &evs).await?;
    wait_for_rows(&app, n as i64).await;
    let applied = started.elapsed();
    println!(
        "projector, live: {n} events published in {:.2} s ({:.0}/s), all applied after {:.2} s: {:.0} events/s",
        published.as_secs_f64(),
        n as f64 / published.as_secs_f64(),
        applied.as_secs_f64(),
        n as f64 / applied.as_secs_f64()
    );
    figures::Figure::new(
        "read.projector.live",
        "projector, live",
        n as f64 / applied.as_secs_f64(),
        "events/s",
    )
    .with("events", n)
    .with("publish_rate", (n as f64 / published.as_secs_f64()).round())
    .emit();
    drop(app);

    // ...and its own ceiling: the same events queued first, then drained.
    let mut app = projector_app(false).await?;
    let evs = events(n, "B");
    publish_all(&app.settings.exchange, &evs).await?;
    let started = Instant::now();
    start_projector(&mut app).await?;
    wait_for_rows(&app, n as i64).await;
    let drained = started.elapsed();
    println!(
        "projector, backlog: {n} queued events applied in {:.2} s: {:.0} events/s (prefetch {}, {} workers)",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        app.settings.prefetch,
        app.settings.workers
    );
    figures::Figure::new(
        "read.projector.backlog",
        "projector, queued backlog",
        n as f64 / drained.as_secs_f64(),
        "events/s",
    )
    .with("events", n)
    .with("prefetch", app.settings.prefetch)
    .with("workers", app.settings.workers)
    .emit();
    drop(app);
    mixed().await
}

/// A queued backlog of the harder kind, drained and then checked: several versions of each
/// product and order (so batches hold more than one event of an aggregate), orders of a few
/// customers, every tenth event delivered twice, and neighbours swapped now and then (so the
/// later version arrives first: a gap, held until its predecessor comes).
async fn mixed() -> anyhow::Result<()> {
    use ordering_schema::events::OrderStatus;
    use ordering_tests::read_app::{next_order, next_product, order, order_event};
    let (products, versions, orders, customers) = (2_000, 5, 1_000, 100);
    let mut app = projector_app(false).await?;
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut heads = Vec::new();
    for i in 0..products {
        let mut p = product(&format!("M-{i}"), "Mixed", "m", 100, 0);
        heads.push(p.clone());
        bodies.push(serde_json::to_vec(&product_event(&p))?);
        for _ in 1..versions {
            p = next_product(&p, |p| p.stock += 1);
            bodies.push(serde_json::to_vec(&product_event(&p))?);
        }
    }
    let buyers: Vec<uuid::Uuid> = (0..customers).map(|_| uuid::Uuid::now_v7()).collect();
    for i in 0..orders {
        let placed = order(buyers[i % customers], &[(&heads[i % products], 1)], chrono::Utc::now());
        let paid = next_order(&placed, OrderStatus::Paid);
        let shipped = next_order(&paid, OrderStatus::Shipped);
        for o in [&placed, &paid, &shipped] {
            bodies.push(serde_json::to_vec(&order_event(o))?);
        }
    }
    // Interleave the aggregates, then disturb the order.
    let mut queue: Vec<Vec<u8>> = Vec::with_capacity(bodies.len() * 11 / 10);
    let stride = 97;
    for start in 0..stride {
        queue.extend(bodies.iter().skip(start).step_by(stride).cloned());
    }
    for i in (0..queue.len().saturating_sub(1)).step_by(13) {
        queue.swap(i, i + 1);
    }
    let duplicates: Vec<Vec<u8>> = queue.iter().step_by(10).cloned().collect();
    queue.extend(duplicates);
    let total = queue.len();
    publish_all(&app.settings.exchange, &queue).await?;
    let (dups_before, gaps_before) = (
        counter("read_events_duplicates_ignored_total"),
        counter("read_events_gaps_held_total"),
    );
    let started = Instant::now();
    start_projector(&mut app).await?;
    let want_revisions = (orders * 3) as i64;
    let check = "SELECT (SELECT count(*) FROM rv_products WHERE version = 5 AND stock = 4) AS p,
                        (SELECT count(*) FROM rv_orders WHERE version = 3 AND status = 'shipped'
                            AND jsonb_array_length(doc -> 'history') = 3) AS o,
                        (SELECT coalesce(sum(revision), 0)::bigint FROM rv_customers) AS r";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = &app.query_json(check).await[0];
        let done = (row["p"].as_i64(), row["o"].as_i64(), row["r"].as_i64());
        // Exact views prove that no copy was applied twice. Not every copy counts as an ignored
        // duplicate: a copy of an event parked behind a gap is parked over its twin.
        if done == (Some(products as i64), Some(orders as i64), Some(want_revisions)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "mixed backlog not applied correctly: {row}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    // The cache holds the last versions too.
    for p in heads.iter().take(20) {
        let body: serde_json::Value = reqwest::get(app.url(&format!("/v1/products/{}", p.id)))
            .await?
            .json()
            .await?;
        anyhow::ensure!(body["version"] == 5, "cached an older version: {body}");
    }
    println!(
        "projector, mixed backlog: {total} events ({products} products x {versions} versions, {orders} orders x 3, \
         {} duplicates, some swapped) applied and checked in {:.2} s: {:.0} events/s \
         (duplicates ignored {}, gaps held {})",
        total - bodies.len(),
        drained.as_secs_f64(),
        total as f64 / drained.as_secs_f64(),
        counter("read_events_duplicates_ignored_total") - dups_before,
        counter("read_events_gaps_held_total") - gaps_before,
    );
    figures::Figure::new(
        "read.projector.mixed",
        "projector, mixed backlog",
        total as f64 / drained.as_secs_f64(),
        "events/s",
    )
    .with("events", total)
    .emit();
    Ok(())
}
