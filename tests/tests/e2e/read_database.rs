//! The read side on a PostgreSQL server of its own (`READ_DATABASE_URL` on a second cluster the
//! test makes with `initdb`), while the write side stays on the machine's server: the pipeline
//! and `read-api rebuild` work; with the read database crashed (`pg_ctl stop -m immediate`,
//! while commands flow) and kept down, views read before answer from
//! the cache, everything else 503 problem+json quickly, writes and the relay go on and readiness
//! names PostgreSQL; when it is back, the views catch up from the events the broker kept,
//! without restarting anything.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ordering_tests::pg_server::PgServer;
use ordering_tests::pipeline::{Driver, Load, Pipeline, PipelineOptions, WriteSide, metric_sum, pid_of};
use ordering_tests::write_app::{admin_token, customer_token};
use serde_json::Value;
use uuid::Uuid;

const CHECK: Duration = Duration::from_secs(60);
/// The read-api's request timeout (`HttpLimits::default()`), plus slack for a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(11);

/// Commands from 3 workers for `secs` seconds; the number answered.
async fn burst(driver: &Driver, secs: u64) -> u64 {
    let load = Load::start(driver, 3, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    load.stop().await
}

/// A stock adjustment of `product` (+1) on the write-api; the path to read it, the answer's
/// consistency token (it names this product alone) and its version.
async fn adjust_stock(p: &Pipeline, product: Uuid) -> (String, String, i64) {
    let res = p
        .client
        .post(p.write_api.url(&format!("/v1/products/{product}/stock-adjustments")))
        .bearer_auth(admin_token())
        .json(&serde_json::json!({"delta": 1}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(res.status(), 200, "stock adjustment");
    let token = res
        .headers()
        .get("x-consistency-token")
        .and_then(|v| v.to_str().ok())
        .expect("a consistency token")
        .to_owned();
    let body: Value = res.json().await.expect("JSON");
    (
        format!("/v1/products/{product}"),
        token,
        body["version"].as_i64().expect("version"),
    )
}

/// One read-api answer.
struct Read {
    status: u16,
    content_type: String,
    cache: String,
    body: Value,
    elapsed: Duration,
}

async fn read(p: &Pipeline, path: &str, consistency_token: Option<&str>) -> Read {
    let started = Instant::now();
    let mut req = p.client.get(p.read().url(path)).bearer_auth(admin_token());
    if let Some(t) = consistency_token {
        req = req.header("X-Consistency-Token", t);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: no answer: {e}"));
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (content_type, cache) = (header("content-type"), header("x-cache"));
    let status = res.status().as_u16();
    Read {
        status,
        content_type,
        cache,
        body: res.json().await.unwrap_or(Value::Null),
        elapsed: started.elapsed(),
    }
}

async fn ready_body(p: &Pipeline) -> (u16, String) {
    let res = p
        .client
        .get(p.read().url("/health/ready"))
        .send()
        .await
        .expect("readiness");
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

/// `SELECT count(*)` of `sql`'s rows on the database at `url`.
async fn count(url: &str, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    let row: N = diesel::sql_query(format!("SELECT count(*) AS n FROM ({sql}) t"))
        .get_result(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_read_database_on_its_own_server_rebuild_outage_and_catch_up() {
    let server = PgServer::start();
    let read_url = server.create_database("ordering_read").await;
    let mut p = Pipeline::start(PipelineOptions {
        read_env: vec![("READ_DATABASE_URL".to_owned(), read_url.clone())],
        ..Default::default()
    })
    .await;
    let read_pid = pid_of("READ_API_ADDR", p.read().addr);
    let driver = p.driver();
    driver.seed(6, 500, 4).await;
    // A customer the load never touches: their cached summary and list stay valid.
    let quiet = Uuid::now_v7();
    let product = *driver
        .ledger
        .lock()
        .expect("ledger")
        .products
        .keys()
        .next()
        .expect("a product");
    let placed = driver
        .send(
            reqwest::Method::POST,
            "/v1/orders",
            &customer_token(quiet),
            serde_json::json!({"customer_id": quiet, "lines": [{"product_id": product, "quantity": 1}]}),
        )
        .await
        .expect("an answer");
    assert_eq!(placed.status, 201, "{}", placed.body);

    // 1. Commands → views on the second server, consistency tokens honoured (checked by `check`).
    let mut commands = burst(&driver, 3).await;
    let first = p.check(&driver, CHECK).await;
    let truth = WriteSide::load(&p.write_db).await;
    assert_eq!(
        count(&read_url, "SELECT 1 FROM rv_products").await,
        truth.products.len() as i64,
        "the views are not on the read database's server"
    );
    assert_eq!(
        count(p.read_db.url(), "SELECT 1 FROM pg_tables WHERE tablename LIKE 'rv\\_%'").await,
        0,
        "views were made on the write side's server"
    );

    // 2. `read-api rebuild` replays the stream into the read database on the second server.
    let rebuild_started = Instant::now();
    let out = p.run_read_api(&["rebuild"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "read-api rebuild: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuild_took = rebuild_started.elapsed();
    let replayed: usize = stdout
        .split("rebuilt: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `rebuilt: N events` line in:\n{stdout}"));
    assert!(
        replayed >= first.committed_events,
        "the rebuild replayed {replayed} events, {} were committed:\n{stdout}",
        first.committed_events
    );
    // The rebuilt views equal the write side; reading them all also fills the cache again
    // (the rebuild dropped it).
    commands += burst(&driver, 1).await;
    let rebuilt = p.check(&driver, CHECK).await;

    // 3. The read database crashes while commands flow (the projector mid-batch). Only the
    // read side is affected.
    let truth = WriteSide::load(&p.write_db).await;
    // A write whose token names one product, read once with it (so the cache holds it).
    let (applied_path, applied_token, applied_version) = adjust_stock(&p, product).await;
    let r = read(&p, &applied_path, Some(&applied_token)).await;
    assert_eq!(r.status, 200, "{applied_path} with its token: {}", r.body);
    let load = Load::start(&driver, 3, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.crash();
    let stopped = Instant::now();
    let committed_at_crash = driver.outcomes().committed;
    p.read().wait_ready_status(503, Duration::from_secs(15)).await;
    let (ready_status, ready_down) = ready_body(&p).await;
    let to_503 = stopped.elapsed();
    // Views read before come from the cache: as read then, or as applied until the crash.
    let mut cached = Vec::new();
    for prod in truth.products.values() {
        cached.push((format!("/v1/products/{}", prod.id), prod.version));
    }
    for o in truth.orders.values().take(20) {
        cached.push((format!("/v1/orders/{}", o.id), o.version));
    }
    // The quiet customer's answers: no event changed them since they were read.
    cached.push((format!("/v1/customers/{quiet}/summary"), 0));
    cached.push((format!("/v1/customers/{quiet}/orders?limit=100"), 0));
    let mut slowest = Duration::ZERO;
    for (path, version) in &cached {
        let r = read(&p, path, None).await;
        slowest = slowest.max(r.elapsed);
        assert_eq!(
            (r.status, r.cache.as_str()),
            (200, "hit"),
            "{path} with the read database down: {}",
            r.body
        );
        let got = r.body["version"].as_i64().unwrap_or_default();
        assert!(got >= *version, "{path}: version {got}, read before: {version}");
    }
    // A token the cached view already satisfies is honoured from the cache.
    let r = read(&p, &applied_path, Some(&applied_token)).await;
    assert_eq!(
        (r.status, r.cache.as_str()),
        (200, "hit"),
        "{applied_path} with its token: {}",
        r.body
    );
    assert!(r.body["version"].as_i64() >= Some(applied_version), "{}", r.body);
    // What the cache can not answer: 503 problem+json, within the request timeout. A write
    // made now is committed but can not be applied: its token can not be honoured.
    let (unapplied_path, unapplied_token, _) = adjust_stock(&p, product).await;
    let mut refused = Vec::new();
    for (path, token) in [
        ("/v1/products?limit=5".to_owned(), None),
        (format!("/v1/products/{}", Uuid::now_v7()), None),
        (unapplied_path, Some(unapplied_token.as_str())),
    ] {
        let r = read(&p, &path, token).await;
        assert_eq!(r.status, 503, "{path} with the read database down: {}", r.body);
        assert!(
            r.content_type.starts_with("application/problem+json") && r.body["code"].is_string(),
            "{path}: {} {}",
            r.content_type,
            r.body
        );
        assert!(r.elapsed < ANSWER_WITHIN, "{path} took {:?}", r.elapsed);
        refused.push(format!("{path} → 503 {} in {:.0?}", r.body["code"], r.elapsed));
    }
    assert!(slowest < ANSWER_WITHIN, "a cached read took {slowest:?}");
    let applied_at_crash = metric_sum(&p.read_metrics().await, "read_events_applied_total");
    // Writes go on, and the relay publishes them (the broker keeps them for the projector).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during_down = load.stop().await;
    let committed_down = driver.outcomes().committed - committed_at_crash;
    let drained_down = p.wait_drained(Duration::from_secs(30)).await;
    let published = WriteSide::load(&p.write_db).await.outbox_ids;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = p.recorder.event_ids();
        if published.iter().all(|id| got.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay stopped publishing while the read database was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = BTreeSet::new();
    for (path, _) in &cached {
        statuses.insert(read(&p, path, None).await.status);
    }
    assert_eq!(statuses, BTreeSet::from([200]), "cached views after more writes");
    let applied_while_down = metric_sum(&p.read_metrics().await, "read_events_applied_total") - applied_at_crash;
    let down_for = stopped.elapsed();

    // 4. It comes back: the same read-api catches up with what the broker kept.
    server.restart();
    let restarted = Instant::now();
    p.read().wait_ready_status(200, Duration::from_secs(30)).await;
    let ready_again = restarted.elapsed();
    commands += burst(&driver, 1).await + during_down;
    let caught_up = p.check(&driver, CHECK).await;
    let metrics = p.read_metrics().await;
    let outcomes = driver.outcomes();
    println!(
        "[e2e read database on its own server, port {}] before: {first}; rebuild: {replayed} events in {rebuild_took:.1?}, \
         then {rebuilt}; read database crashed under load: readiness {ready_status} after {to_503:.1?} ({ready_down}), {} cached \
         reads 200 hit (slowest {slowest:.0?}), {refused:?}; {committed_down} commands committed while down ({during_down} answered in the load), outbox \
         drained {drained_down:.1?} into the broker, {applied_while_down} events applied while down; down for \
         {down_for:.1?}; back: ready {ready_again:.1?} after restart, then {caught_up}; commands answered {commands} \
         (committed {}, refused {:?}, 503 {}, other 5xx {:?}); dead-lettered {}",
        server.port(),
        cached.len(),
        outcomes.committed,
        outcomes.refused,
        outcomes.unavailable,
        outcomes.server_errors,
        metric_sum(&metrics, "read_events_dead_lettered_total"),
    );
    assert_eq!(ready_status, 503, "readiness with the read database down: {ready_down}");
    assert!(
        ready_down.contains("postgres"),
        "readiness does not name PostgreSQL: {ready_down}"
    );
    assert!(
        committed_down > 0,
        "no command committed while the read database was down"
    );
    assert_eq!(applied_while_down, 0.0, "events applied with the read database down");
    assert!(
        outcomes.server_errors.is_empty(),
        "server errors: {:?}",
        outcomes.server_errors
    );
    assert_eq!(
        outcomes.unavailable, 0,
        "the write side answered 503 while only the read side was down"
    );
    assert_eq!(
        metric_sum(&metrics, "read_events_dead_lettered_total"),
        0.0,
        "events were dead-lettered during the outage"
    );
    assert_eq!(
        pid_of("READ_API_ADDR", p.read().addr),
        read_pid,
        "the read-api was restarted"
    );
    p.kill_read_api();
}

/// The harness itself: a cluster of its own that stops (clients are refused), starts again on
/// the same port with its data, and is removed on drop.
#[tokio::test(flavor = "multi_thread")]
async fn pg_server_stops_restarts_with_its_data_and_is_removed_on_drop() {
    let server = PgServer::start();
    let url = server.create_database("kept").await;
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    diesel::sql_query("CREATE TABLE t AS SELECT 42 AS n")
        .execute(&mut conn)
        .await
        .expect("create");
    drop(conn);
    server.stop();
    assert!(!server.is_running());
    assert!(
        AsyncPgConnection::establish(&url).await.is_err(),
        "a stopped server accepted a connection"
    );
    server.restart();
    assert_eq!(count(&url, "SELECT n FROM t").await, 1, "{}", server.log());
    let root = server.dir().to_owned();
    drop(server);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(
        AsyncPgConnection::establish(&url).await.is_err(),
        "a dropped server still answers"
    );
}
