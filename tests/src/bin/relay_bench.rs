//! Relay benchmark: prints figures, asserts nothing. Run it in release mode:
//! `cargo run --release -p ordering-tests --bin relay-bench`.
//!
//! (a) raw lapin publishing with confirms, a window of 256, ~600 B persistent messages, into
//!     the same topology the relay declares (topic exchange + stream);
//! (b) the relay draining 100,000 pre-inserted rows over 1,000 aggregates, 1 and 2
//!     instances, with the ratio to (a);
//! (c) end-to-end lag, commit → delivered to a consumer, at half the relay's maximum rate.
//!
//! `relay-bench lag RATE...` runs only (c) at the given rates; `relay-bench drain N...` only
//! (a) and (b), with N instances for each N given (e.g. `drain 1 2 4`).
//!
//! With `RELAY_BENCH_HISTORY_ROWS=N` set, each outbox first gets N rows sent over the last 7.5
//! days (the retention is 7) and the relays run their cleanup every 30 s, so drain and lag are
//! measured with a history and a cleanup at work (`bench growth` compares N = 0 with millions).
//!
//! The outbox is the ordering service's own, partitioned by day; with `RELAY_BENCH_OUTBOX=plain`
//! it is the contract's plain table instead, as a service served by the relay as a sidecar has
//! it (its sent rows are deleted row by row, not dropped by the day).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::Double;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ordering_tests::cpu::{CpuMeter, Group, report_per_unit};
use ordering_tests::figures::Figure;
use ordering_tests::process::ServiceProcess;
use ordering_tests::relay::broker::{AMQP_URL, TestExchange};
use ordering_tests::relay::outbox::{
    SteadyWriter, all_sent, create_plain_outbox, insert_events, insert_sent_history, make_past_days,
};
use ordering_tests::relay::process::{RelayEnv, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;

const WINDOW: usize = 256;
const ROWS: i32 = 100_000;
const AGGREGATES: i32 = 1_000;
/// Padding that makes the stored CloudEvents payload about 600 bytes.
const PAD: i32 = 330;
/// Aggregates the lag writers spread their events over, as many as the drain runs use.
const LAG_AGGREGATES: i32 = 1_000;
/// Events per insert statement, each for another aggregate.
const PER_STATEMENT: i32 = 5;
/// Writer connections of the lag run.
const WRITERS: i32 = 4;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    // `relay-bench lag RATE...`: only (c), at the given insert rates (rows/s).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.as_slice(), [cmd, ..] if cmd == "lag") {
        for rate in &args[1..] {
            report_lag(rate.parse()?, LAG_AGGREGATES, "asked").await?;
        }
        return Ok(());
    }
    let payload_len = sample_payload_len().await;
    println!("message size: {payload_len} B persistent, window {WINDOW}");
    // `relay-bench drain N...`: only (a) and (b), with N instances for each N given.
    if matches!(args.as_slice(), [cmd, ..] if cmd == "drain") {
        for n in &args[1..] {
            drain_against_raw(n.parse()?, payload_len).await?;
        }
        return Ok(());
    }
    let one = drain_against_raw(1, payload_len).await?;
    drain_against_raw(2, payload_len).await?;
    // 100 rows/s (the rate the peer is measured at), half the relay's maximum, as asked, and
    // rates between: on two cores the writers, PostgreSQL, the relay, the broker and the
    // consumer share the CPU, so the sweep shows where lag turns from round trips into queueing.
    // The latency targets are read (by `bench`) at the highest of these rates that the writers
    // achieve: past it, the two cores have no CPU to spare.
    for (rate, role) in [
        (100.0, "peer_rate"),
        ((one / 8.0).round(), "sweep"),
        ((one * 3.0 / 16.0).round(), "sweep"),
        ((one / 4.0).round(), "quarter_of_max"),
        ((one / 2.0).round(), "half_of_max"),
    ] {
        report_lag(rate, LAG_AGGREGATES, role).await?;
    }
    // The same half rate on 20 hot aggregates: each may have one message awaiting its confirm
    // (the price of per-aggregate order), so one aggregate's rate is capped by the confirm
    // round trip and lag turns into queueing.
    report_lag((one / 2.0).round(), 20, "hot_aggregates").await?;
    Ok(())
}

/// (a) then (b) with `instances` relays: the machine is shared and runs differ, so the raw
/// limit is measured again right before each relay run and the ratio taken against it.
/// Returns the relays' rate.
async fn drain_against_raw(instances: usize, payload_len: usize) -> anyhow::Result<f64> {
    let (raw, raw_cost) = raw_publish(payload_len).await?;
    println!("(a) raw lapin, confirms, window {WINDOW}: {raw:.0} msgs/s");
    let raw_id = format!("raw.lapin_confirms.before_relays{instances}");
    report_per_unit(&raw_id, "message, raw publishing", &raw_cost, f64::from(ROWS));
    Figure::new(&raw_id, "raw lapin publishing, confirms windowed", raw, "msgs/s")
        .with("window", WINDOW)
        .with("payload_bytes", payload_len)
        .with("queues", "topic exchange + stream")
        .emit();
    let (rate, cost) = drain(instances).await?;
    report_per_unit(
        &format!("relay.drain.relays{instances}"),
        &format!("row, {instances} relay(s) draining"),
        &cost,
        f64::from(ROWS),
    );
    println!(
        "(b) relay, {instances} instance(s), {ROWS} rows: {rate:.0} msgs/s = {:.0}% of raw",
        rate / raw * 100.0
    );
    Figure::new(
        format!("relay.drain.relays{instances}"),
        format!("relay drain, {instances} instance(s)"),
        rate,
        "rows/s",
    )
    .of(raw_id)
    .with("rows", ROWS)
    .with("aggregates", AGGREGATES)
    .with("instances", instances)
    .emit();
    Ok(rate)
}

/// Runs (c) at `rate` over `aggregates` aggregates and prints the figures, with the insert
/// rate the writers achieved; `role` says why this rate was chosen.
async fn report_lag(rate: f64, aggregates: i32, role: &str) -> anyhow::Result<()> {
    let (p50, p99, max, n, idle) = lag(rate, aggregates).await?;
    let achieved = n as f64 / 9.0;
    println!(
        "(c) end-to-end lag at {rate:.0} rows/s asked, {achieved:.0} achieved, over {aggregates} aggregates ({n} events measured, CPU {:.0}% idle): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        idle * 100.0
    );
    for (q, v) in [("p50", p50), ("p99", p99), ("max", max)] {
        Figure::new(
            format!("relay.lag.{q}.rate{rate:.0}.aggregates{aggregates}"),
            format!("commit to delivery, {q}, {rate:.0} rows/s over {aggregates} aggregates"),
            v,
            "ms",
        )
        .with("rate_asked", rate)
        .with("rate_achieved", achieved.round())
        .with("aggregates", aggregates)
        .with("quantile", q)
        .with("events", n)
        .with("cpu_idle", (idle * 100.0).round() / 100.0)
        .with("role", role)
        .emit();
    }
    Ok(())
}

/// A database for one run, its `outbox` of the shape `RELAY_BENCH_OUTBOX` asks for.
async fn bench_database() -> TestDatabase {
    let db = TestDatabase::new().await;
    match std::env::var("RELAY_BENCH_OUTBOX").as_deref() {
        Ok("plain") => {
            let mut c = db.conn().await;
            c.batch_execute("DROP TABLE outbox")
                .await
                .expect("drop the partitioned outbox");
            create_plain_outbox(&mut c, "outbox").await;
        }
        // With or without history, the outbox of a service that has run for the retention
        // (7 days) and more: the same day partitions either way, so a run with history differs
        // from one without only by the rows. (Each fetch plans over every partition, ~40 µs
        // each here: docs/performance.md.)
        Ok("partitioned") | Err(_) => make_past_days(&mut db.conn().await, "outbox", 8).await,
        Ok(other) => panic!("RELAY_BENCH_OUTBOX is {other:?}: plain or partitioned"),
    }
    db
}

async fn sample_payload_len() -> usize {
    let db = bench_database().await;
    let names = outbox_relay::schema::TableNames::parse("outbox").expect("name");
    outbox_relay::schema::migrate(db.url(), &names, 16)
        .await
        .expect("relay schema");
    let mut c = db.conn().await;
    insert_events(&mut c, "outbox", "agg-0000", 1, 1, 1, PAD).await;
    ordering_tests::relay::outbox::rows(&mut c, "outbox").await[0]
        .payload
        .len()
}

/// The groups of processes a publishing run is charged to: `publisher` (the relays or this
/// process), PostgreSQL and RabbitMQ.
fn cost_groups(publisher: Group) -> Vec<(&'static str, Group)> {
    vec![
        ("publisher", publisher),
        ("postgres", Group::Named("postgres".into())),
        ("broker", Group::Named("beam.smp".into())),
    ]
}

/// (a): a plain lapin loop keeping `WINDOW` confirms outstanding; the rate and its CPU cost.
async fn raw_publish(size: usize) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    let ex = TestExchange::new().await;
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let topology = outbox_relay::broker::Topology {
        exchange: ex.name.clone(),
        stream: ex.stream(),
        max_bytes: 5_000_000_000,
        max_age: "7D".into(),
        replication_factor: 1,
    };
    outbox_relay::broker::declare(&conn, &ch, &topology).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; size];
    let meter = CpuMeter::start(cost_groups(Group::This));
    let started = Instant::now();
    // Publish and confirm in one future, up to `WINDOW` of them polled together, as the relay
    // does: lapin resolves a publish once its I/O thread has written the frames, so awaiting
    // each publish before the next would cost a thread wake-up and a write per message, and
    // the limit would be lapin's hand-off rather than the broker's.
    let body = &body;
    let ch = &ch;
    let exchange = ex.name.as_str();
    let mut window = FuturesUnordered::new();
    for i in 0..ROWS {
        if window.len() == WINDOW
            && let Some(confirm) = window.next().await
        {
            let confirm: Result<lapin::Confirmation, lapin::Error> = confirm;
            anyhow::ensure!(confirm?.is_ack());
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/cloudevents+json".into())
            .with_message_id(i.to_string().into());
        window.push(async move {
            ch.basic_publish(
                exchange.into(),
                "order.placed".into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await
        });
    }
    while let Some(confirm) = window.next().await {
        anyhow::ensure!(confirm?.is_ack());
    }
    let rate = f64::from(ROWS) / started.elapsed().as_secs_f64();
    Ok((rate, meter.used()))
}

/// `RELAY_BENCH_HISTORY_ROWS`, if set.
fn history_rows() -> Option<i64> {
    std::env::var("RELAY_BENCH_HISTORY_ROWS").ok()?.parse().ok()
}

/// With a history, the cleanup runs every 30 s (its default is every 5 minutes).
fn with_history_settings(env: RelayEnv) -> RelayEnv {
    match history_rows() {
        Some(_) => env.set("OUTBOX_CLEANUP_CRON", "*/30 * * * * *"),
        None => env,
    }
}

/// Fills the outbox with `RELAY_BENCH_HISTORY_ROWS` sent rows, if set (the relays are running:
/// their schema is in place and they idle, as nothing is unsent).
async fn put_history(db: &TestDatabase) {
    let Some(rows) = history_rows().filter(|n| *n > 0) else {
        return;
    };
    let started = Instant::now();
    let mut c = db.conn().await;
    insert_sent_history(&mut c, "outbox", rows, PAD, 7.5, |done| {
        if done % 2_000_000 == 0 || done == rows {
            eprintln!("history: {done} of {rows} sent rows in {:.0?}", started.elapsed());
        }
    })
    .await;
    println!(
        "history: {rows} sent rows over 7.5 days put in the outbox in {:.0?}",
        started.elapsed()
    );
}

#[derive(QueryableByName)]
struct Span {
    #[diesel(sql_type = Double)]
    secs: f64,
}

/// (b): `instances` relays drain `ROWS` rows committed at once; the rate is measured from
/// the first to the last `sent_at`. Returns it with the CPU the drain cost.
async fn drain(instances: usize) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    let db = bench_database().await;
    let ex = TestExchange::new().await;
    let env = with_history_settings(
        RelayEnv::new(db.url(), &ex.name)
            .set("RUST_LOG", "warn")
            .set("RELAY_WINDOW", &WINDOW.to_string()),
    );
    let relays: Vec<ServiceProcess> = (0..instances).map(|_| spawn_relay(&env)).collect();
    for r in &relays {
        r.wait_ready_status(200, Duration::from_secs(30)).await;
    }
    put_history(&db).await;
    // Let the leases settle so every instance holds its share before the rows appear.
    wait_until("leases shared", Duration::from_secs(30), || async {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = db.conn().await;
        let n: N = diesel::sql_query(
            "SELECT count(DISTINCT owner) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL AND expires_at > now()",
        )
        .get_result(&mut c)
        .await
        .expect("leases");
        let held: N = diesel::sql_query("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL")
            .get_result(&mut c)
            .await
            .expect("leases");
        n.n == instances as i64 && held.n == 16
    })
    .await;
    let mut c = db.conn().await;
    c.batch_execute("BEGIN").await?;
    insert_events(&mut c, "outbox", "agg-", AGGREGATES, 1, ROWS / AGGREGATES, PAD).await;
    c.batch_execute("COMMIT").await?;
    let meter = CpuMeter::start(cost_groups(Group::Pids(
        relays.iter().map(ServiceProcess::pid).collect(),
    )));
    wait_until("the outbox to drain", Duration::from_secs(300), || async {
        all_sent(&mut db.conn().await, "outbox").await
    })
    .await;
    let cost = meter.used();
    let span: Span =
        diesel::sql_query(
            "SELECT extract(epoch FROM max(sent_at) - min(sent_at))::float8 AS secs FROM outbox WHERE aggregate_id LIKE 'agg-%'",
        )
            .get_result(&mut c)
            .await?;
    drop(relays);
    Ok((f64::from(ROWS) / span.secs, cost))
}

/// (c): rows inserted at `rate` per second by 4 writers for 10 s; lag = delivery instant −
/// the instant the inserting statement's commit returned (0 if delivered before that).
/// Returns p50, p99 and max in ms, the events measured, and the machine's idle CPU share while
/// the writers ran.
async fn lag(rate: f64, aggregates: i32) -> anyhow::Result<(f64, f64, f64, usize, f64)> {
    let db = bench_database().await;
    let ex = TestExchange::new().await;
    let env = with_history_settings(RelayEnv::new(db.url(), &ex.name).set("RUST_LOG", "warn"));
    let relay = spawn_relay(&env);
    relay.wait_ready_status(200, Duration::from_secs(30)).await;
    put_history(&db).await;
    let delivered: Arc<Mutex<HashMap<uuid::Uuid, Instant>>> = Arc::default();
    // The consumer.
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let q = format!("{}.lag", ex.name);
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await?;
    ch.queue_bind(
        q.as_str().into(),
        ex.name.as_str().into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "lag".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let sink = delivered.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let at = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            if let Some(id) = v["id"].as_str().and_then(|s| s.parse().ok()) {
                sink.lock().expect("lock").entry(id).or_insert(at);
            }
        }
    });
    let writer = SteadyWriter::start(db.url(), rate, aggregates, WRITERS, PER_STATEMENT, PAD);
    let meter = CpuMeter::start(Vec::new());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let busy = meter.used().last().map_or(0.0, |(_, secs)| *secs);
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let idle = (1.0 - busy / (cores * started.elapsed().as_secs_f64())).clamp(0.0, 1.0);
    let committed = writer.stop().await;
    let total = committed.len();
    wait_until("every event delivered", Duration::from_secs(60), || async {
        delivered.lock().expect("lock").len() >= total
    })
    .await;
    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    let mut h = Histogram::<u64>::new(3)?;
    let delivered = delivered.lock().expect("lock");
    // The first second is warm-up (connections, JIT-free but cold caches): skipped.
    let first = committed.values().min().copied().unwrap_or_else(Instant::now);
    for (id, c) in committed.iter() {
        if c.duration_since(first) < Duration::from_secs(1) {
            continue;
        }
        let d = delivered[id];
        h.record(d.saturating_duration_since(*c).as_micros() as u64)?;
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Ok((
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len() as usize,
        idle,
    ))
}
