//! End to end, under failures of the pipeline's dependencies and of the read-api: the broker
//! unreachable, PostgreSQL unreachable, Redis unreachable, PostgreSQL and Redis slowed, the
//! read-api killed mid-projection.
//! Each test ends with the full check of the contract's promises (`Pipeline::check`).

use std::time::{Duration, Instant};

use ordering_tests::pipeline::{Driver, Load, Pipeline, PipelineOptions, metric_sum};
use ordering_tests::write_app::customer_token;
use serde_json::json;

const CHECK: Duration = Duration::from_secs(120);

/// Commands from 3 workers for `secs` seconds; the number answered.
async fn burst(driver: &Driver, secs: u64) -> u64 {
    let load = Load::start(driver, 3, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    load.stop().await
}

async fn ready_body(url: &str) -> (u16, String) {
    let res = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("readiness");
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_broker_unreachable_10s_readiness_503_then_backlog_drains() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let driver = p.driver();
    driver.seed(8, 500, 6).await;
    let load = Load::start(&driver, 4, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.amqp().cut();
    let cut = Instant::now();
    for r in &p.relays {
        r.wait_ready_status(503, Duration::from_secs(10)).await;
    }
    let to_503 = cut.elapsed();
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(cut.elapsed())).await;
    // The read-api keeps serving (degraded) without the broker.
    let (read_status, read_body) = ready_body(&p.read().url("/health/ready")).await;
    assert_eq!(read_status, 200, "read-api readiness with the broker down: {read_body}");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;
    let backlog = p.unsent().await;
    p.amqp().restore();
    let restored = Instant::now();
    for r in &p.relays {
        r.wait_ready_status(200, Duration::from_secs(30)).await;
    }
    let to_200 = restored.elapsed();
    let drained = p.wait_drained(Duration::from_secs(60)).await + restored.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let commands = load.stop().await;
    let outcomes = driver.outcomes();
    let report = p.check(&driver, CHECK).await;
    println!(
        "[e2e broker down 10s] relays 503 after {to_503:.1?}; read-api readiness 9 s into the cut 200 ({read_body}); backlog at restore \
         {backlog} rows; relays 200 again {to_200:.1?} after restore, backlog drained {drained:.1?} after restore; \
         commands answered {commands} (committed {}, refused {:?}, 503 {}); {report}",
        outcomes.committed, outcomes.refused, outcomes.unavailable
    );
    assert!(backlog > 0, "no backlog built up while the broker was down");
    assert!(
        outcomes.server_errors.is_empty(),
        "server errors: {:?}",
        outcomes.server_errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_postgres_unreachable_5s_write_api_answers_503_quickly_and_nothing_half_written() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let driver = p.driver();
    driver.seed(8, 500, 6).await;
    let load = Load::start(&driver, 3, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let product = *driver
        .ledger
        .lock()
        .expect("ledger")
        .products
        .keys()
        .next()
        .expect("a product");
    let customer = driver.ledger.lock().expect("ledger").customers[0];
    p.pg.cut();
    let cut = Instant::now();
    let mut probes = Vec::new();
    while cut.elapsed() < Duration::from_secs(5) {
        let r = driver
            .send(
                reqwest::Method::POST,
                "/v1/orders",
                &customer_token(customer),
                json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}]}),
            )
            .await
            .expect("the write-api answers while PostgreSQL is down");
        probes.push((r.status, r.elapsed));
        if r.status != 201 {
            assert_eq!(r.status, 503, "answer while PostgreSQL is down: {}", r.body);
            assert!(
                r.content_type.starts_with("application/problem+json"),
                "content type {:?}: {}",
                r.content_type,
                r.body
            );
        }
        assert!(r.elapsed < Duration::from_secs(6), "an answer took {:?}", r.elapsed);
    }
    let (write_ready, write_body) = ready_body(&p.write_api.url("/health/ready")).await;
    p.pg.restore();
    let restored = Instant::now();
    p.write_api.wait_ready_status(200, Duration::from_secs(30)).await;
    // The first command that commits after the restore.
    let recovered = loop {
        let r = driver
            .send(
                reqwest::Method::POST,
                "/v1/orders",
                &customer_token(customer),
                json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}]}),
            )
            .await
            .expect("answer");
        if r.status == 201 {
            break restored.elapsed();
        }
        assert!(
            restored.elapsed() < Duration::from_secs(30),
            "no command commits after the restore"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let commands = load.stop().await;
    let outcomes = driver.outcomes();
    let report = p.check(&driver, CHECK).await;
    let during: Vec<_> = probes.iter().filter(|(s, _)| *s == 503).collect();
    let slowest = during.iter().map(|(_, e)| *e).max().unwrap_or_default();
    println!(
        "[e2e postgres down 5s] {} probe commands while down: {} answered 503 problem+json (slowest {slowest:.1?}); \
         write-api readiness while down {write_ready} ({write_body}); first commit {recovered:.1?} after restore; \
         commands answered {commands} (committed {}, refused {:?}, 503 {}, slowest {:.1?}, other 5xx {:?}); {report}",
        probes.len(),
        during.len(),
        outcomes.committed,
        outcomes.refused,
        outcomes.unavailable,
        outcomes.slowest,
        outcomes.server_errors
    );
    assert_eq!(
        write_ready, 503,
        "write-api readiness while PostgreSQL is down: {write_body}"
    );
    assert!(
        !during.is_empty(),
        "no command was answered 503 while PostgreSQL was down: {probes:?}"
    );
    assert!(
        outcomes.server_errors.is_empty(),
        "server errors: {:?}",
        outcomes.server_errors
    );
    assert_eq!(outcomes.transport_errors, 0, "commands without an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_redis_unreachable_reads_answer_from_postgres_then_cache_is_not_stale() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let driver = p.driver();
    driver.seed(6, 500, 4).await;
    // Commands for a while, then everything read once (so Redis holds the views).
    let mut commands = burst(&driver, 3).await;
    println!("[e2e redis down] phase: before the cut");
    let before = p.check(&driver, CHECK).await;
    p.redis.cut();
    let cut = Instant::now();
    let (status, body) = ready_body(&p.read().url("/health/ready")).await;
    // Commands change the views while Redis cannot be told (its entries go stale).
    commands += burst(&driver, 3).await;
    println!("[e2e redis down] phase: Redis unreachable");
    let during = p.check(&driver, CHECK).await;
    let down_for = cut.elapsed();
    p.redis.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    commands += burst(&driver, 2).await;
    println!("[e2e redis down] phase: Redis back");
    let after = p.check(&driver, CHECK).await;
    let metrics = p.read_metrics().await;
    let outcomes = driver.outcomes();
    println!(
        "[e2e redis down] readiness while down {status} ({body}); down for {down_for:.1?}; before: {before}; while \
         down (every read 200 from PostgreSQL): {during}; after restore: {after}; redis errors counted {}; commands \
         answered {commands} (committed {}, refused {:?}, server errors {:?})",
        metric_sum(&metrics, "read_cache_redis_errors_total"),
        outcomes.committed,
        outcomes.refused,
        outcomes.server_errors
    );
    assert_eq!(status, 200, "read-api readiness with Redis down: {body}");
    assert!(
        body.contains("redis"),
        "readiness does not name the degradation: {body}"
    );
    assert!(
        outcomes.server_errors.is_empty(),
        "server errors: {:?}",
        outcomes.server_errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_read_api_killed_mid_projection_applies_each_event_once_in_effect() {
    let mut p = Pipeline::start(PipelineOptions::default()).await;
    let driver = p.driver();
    driver.seed(8, 5000, 6).await;
    // A backlog in the projector's queue while the read-api is down.
    p.kill_read_api();
    let load = Load::start(&driver, 6, Duration::from_millis(1));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let commands = load.stop().await;
    p.wait_drained(Duration::from_secs(60)).await;
    let backlog = p.recorder.event_ids().len();
    p.start_read_api().await;
    let started = Instant::now();
    let mut applied_at_kill = 0.0;
    while started.elapsed() < Duration::from_secs(30) {
        applied_at_kill = metric_sum(&p.read_metrics().await, "read_events_applied_total");
        if applied_at_kill >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.kill_read_api();
    let killed_after = started.elapsed();
    p.start_read_api().await;
    let restarted = Instant::now();
    let outcomes = driver.outcomes();
    let report = p.check(&driver, CHECK).await;
    println!(
        "[e2e read-api killed mid-projection] backlog {backlog} events; killed {killed_after:.1?} after start with \
         {applied_at_kill} applied (mid-projection: {}); views equal again {:.1?} after restart; commands answered \
         {commands} (committed {}); {report}",
        applied_at_kill < backlog as f64,
        restarted.elapsed(),
        outcomes.committed
    );
    assert!(
        applied_at_kill < backlog as f64,
        "the read-api finished the backlog ({backlog}) before it could be killed; make the backlog bigger"
    );
}

/// PostgreSQL and Redis slowed down, not cut (every chunk either way waits 20 ms) for 5 s under
/// load: everything slows, nothing breaks. No 5xx at all, every command answered, nothing lost,
/// and the views equal the write side once the slowness ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_postgres_and_redis_slowed_everything_slows_nothing_breaks() {
    const DELAY: Duration = Duration::from_millis(20);
    let p = Pipeline::start(PipelineOptions::default()).await;
    let driver = p.driver();
    driver.seed(8, 500, 6).await;
    let before = burst(&driver, 2).await;
    p.pg.slow(DELAY);
    p.redis.slow(DELAY);
    let reads = async {
        let started = Instant::now();
        let mut answers = Vec::new();
        while started.elapsed() < Duration::from_secs(4) {
            let t = Instant::now();
            let (status, _) = p.read_get("/v1/products?limit=5").await;
            answers.push((status, t.elapsed()));
        }
        answers
    };
    let (during, reads) = tokio::join!(burst(&driver, 5), reads);
    p.pg.restore();
    p.redis.restore();
    let after = burst(&driver, 2).await;
    let outcomes = driver.outcomes();
    let report = p.check(&driver, CHECK).await;
    let slowest_read = reads.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!(
        "[e2e postgres and redis slowed {DELAY:?} per chunk for 5s] commands answered {before} in 2 s before, {during} \
         in 5 s slowed, {after} in 2 s after (committed {}, refused {:?}, 503 {}, slowest {:.1?}); {} reads while \
         slowed, statuses {:?}, slowest {slowest_read:.1?}; {report}",
        outcomes.committed,
        outcomes.refused,
        outcomes.unavailable,
        outcomes.slowest,
        reads.len(),
        reads.iter().map(|(s, _)| *s).collect::<std::collections::BTreeSet<_>>()
    );
    assert!(during > 0, "no command answered while slowed");
    assert!(
        outcomes.server_errors.is_empty(),
        "server errors: {:?}",
        outcomes.server_errors
    );
    assert_eq!(outcomes.unavailable, 0, "503s while merely slowed");
    assert_eq!(outcomes.transport_errors, 0, "commands without an answer");
    assert!(reads.iter().all(|(s, _)| *s == 200), "reads while slowed: {reads:?}");
}
