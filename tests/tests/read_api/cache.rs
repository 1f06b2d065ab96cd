//! The cache: hit/miss and conditional answers, no older version after an update even under
//! racing fills, and Redis going away and coming back.

use std::process::Child;
use std::time::Duration;

use ordering_schema::events::AggregateType;
use ordering_tests::process::free_addr;
use ordering_tests::read_app::{ReadApp, ReadOptions, next_product, product, product_event, redis_server};
use ordering_tests::write_app::answer;

#[tokio::test(flavor = "multi_thread")]
async fn second_read_is_a_hit_and_if_none_match_gives_304() {
    let app = ReadApp::start().await;
    let p = product("C-1", "Cached", "c", 100, 1);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let path = format!("/v1/products/{}", p.id);
    // The projector writes Redis right after its commit: wait for that write, not only the row.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.state().cache.raw_view(AggregateType::Product, p.id).await.is_none()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The projector primed the cache; forget the in-process tier to see Redis at work.
    app.state().cache.clear_local();
    let first = answer(app.get(&path)).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("x-cache"),
        Some("hit"),
        "the projector put the view in Redis"
    );
    // Drop Redis' copy and the local one: a miss, then hits.
    ordering_tests::read_app::delete_keys(&app.settings.redis_url, &app.settings.redis_key_prefix).await;
    app.state().cache.clear_local();
    let miss = answer(app.get(&path)).await;
    assert_eq!(miss.header("x-cache"), Some("miss"));
    let hit = answer(app.get(&path)).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.body, miss.body);
    let etag = hit.header("etag").unwrap().to_owned();
    assert_eq!(etag, "\"1\"");
    let not_modified = answer(app.get(&path).header("If-None-Match", &etag)).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("\"1\""));
    assert_eq!(
        answer(app.get(&path).header("If-None-Match", "W/\"1\"")).await.status,
        304
    );
    assert_eq!(
        answer(app.get(&path).header("If-None-Match", "\"0\"")).await.status,
        200
    );
    // Lists: ETag from content, 304 too.
    let list = answer(app.get("/v1/products")).await;
    let tag = list.header("etag").unwrap().to_owned();
    assert_eq!(
        answer(app.get("/v1/products").header("If-None-Match", &tag))
            .await
            .status,
        304
    );
    assert_eq!((list.status, list.header("x-cache")), (200, Some("miss")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_never_serves_an_older_version_after_an_update() {
    let app = ReadApp::start().await;
    // A replica learns of changes only through notifications and Redis, so its misses fill
    // the cache with what it read while the projector (in `app`) sets newer versions.
    let replica = app.replica().await;
    let mut p = product("R-1", "Race", "r", 100, 0);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let path = format!("/v1/products/{}", p.id);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Readers hammer the product on both instances while it is updated 30 times; each reader
    // must see versions that never go down.
    let mut readers = Vec::new();
    for r in 0..8 {
        let client = app.client.clone();
        let url = if r % 2 == 0 { app.url(&path) } else { replica.url(&path) };
        let stop = stop.clone();
        let id = p.id;
        readers.push(tokio::spawn(async move {
            let mut last = 0;
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                let version = v["version"].as_i64().unwrap();
                assert!(
                    version >= last,
                    "reader {r} saw version {version} after {last} for {id}"
                );
                last = version;
                reads += 1;
            }
            reads
        }));
    }
    for _ in 0..30 {
        p = next_product(&p, |p| p.stock += 1);
        app.publish(&product_event(&p)).await;
    }
    app.wait_version("rv_products", p.id, 31).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for r in readers {
        total += r.await.unwrap();
    }
    assert!(total > 30, "readers made {total} reads");
    // Once applied, every read (both instances, both tiers, and Redis itself) shows the last
    // version.
    for _ in 0..10 {
        assert_eq!(answer(app.get(&path)).await.body["version"], 31);
        assert_eq!(answer(app.client.get(replica.url(&path))).await.body["version"], 31);
    }
    app.state().cache.clear_local();
    replica.service.state.cache.clear_local();
    assert_eq!(answer(app.get(&path)).await.body["version"], 31);
    assert_eq!(answer(app.client.get(replica.url(&path))).await.body["version"], 31);
    let (redis_version, _) = app
        .state()
        .cache
        .raw_view(AggregateType::Product, p.id)
        .await
        .expect("in Redis");
    assert_eq!(redis_version, 31);
}

async fn wait_redis(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server on {port} did not start");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_answers_from_postgres_and_recovers_without_restart() {
    let port = free_addr().port();
    let mut redis = Killed(redis_server(port, &[]));
    wait_redis(port).await;
    let app = ReadApp::start_with(ReadOptions {
        redis_url: format!("redis://127.0.0.1:{port}/0"),
        ..Default::default()
    })
    .await;
    let p = product("K-1", "Kill", "k", 100, 5);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let path = format!("/v1/products/{}", p.id);
    assert_eq!(answer(app.get(&path)).await.status, 200);

    let _ = redis.0.kill();
    let _ = redis.0.wait();
    // Updates keep flowing while Redis is down.
    let p2 = next_product(&p, |p| p.stock = 4);
    app.publish(&product_event(&p2)).await;
    app.wait_version("rv_products", p.id, 2).await;
    let started = std::time::Instant::now();
    for i in 0..30 {
        if i % 3 == 0 {
            app.state().cache.clear_local();
        }
        let a = answer(app.get(&path)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["version"], 2, "no older version while Redis is down");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead Redis stalled requests: {:?}",
        started.elapsed()
    );
    let ready = answer(app.get("/health/ready")).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["status"], "degraded");
    assert_eq!(ready.body["dependencies"]["redis"]["ok"], false);

    // Redis returns (empty): the cache is used again, and nothing older than the views is in it.
    redis = Killed(redis_server(port, &[]));
    wait_redis(port).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        app.state().cache.clear_local();
        let a = answer(app.get(&path)).await;
        assert_eq!(a.body["version"], 2);
        if a.header("x-cache") == Some("hit") && answer(app.get("/health/ready")).await.body["status"] == "ready" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache was not used again after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (v, _) = app
        .state()
        .cache
        .raw_view(AggregateType::Product, p.id)
        .await
        .expect("cached again");
    assert_eq!(v, 2);
    drop(redis);
}

/// The projector died between committing a batch and writing the cache, so the broker
/// redelivers the batch and its events are now duplicates. The cache must not go on serving
/// the view from before that batch: a duplicate reads the committed view back into the cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_event_refreshes_the_cache_a_crash_left_behind() {
    use read_api::projector::{self, Parsed};
    use read_api::views::{Continuity, Tables};
    let app = ReadApp::start().await;
    let v1 = product("REDELIVERED", "first", "d", 100, 5);
    app.publish(&product_event(&v1)).await;
    app.wait_version("rv_products", v1.id, 1).await;
    let path = format!("/v1/products/{}", v1.id);
    assert_eq!(answer(app.get(&path)).await.body["version"], 1);
    assert_eq!(answer(app.get(&path)).await.header("x-cache"), Some("hit"));

    // What a crash after the commit leaves: version 2 in the views, version 1 in Redis, and a
    // fresh process (an empty in-process tier).
    let v2 = next_product(&v1, |p| p.name = "second".into());
    let body = serde_json::to_vec(&product_event(&v2)).expect("event");
    let Ok(Parsed::Event(event)) = projector::parse(&body) else {
        panic!("the event parses");
    };
    let mut conn = app.state().pool.get().await.expect("connection");
    projector::apply(&mut conn, &Tables::live(), &event, Continuity::Strict)
        .await
        .expect("apply");
    drop(conn);
    let cache = &app.state().cache;
    cache.clear_local();
    let stale = answer(app.get(&path)).await;
    assert_eq!(stale.body["version"], 1, "the stale entry this test is about");

    // The broker redelivers version 2.
    app.publish(&product_event(&v2)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.raw_view(AggregateType::Product, v1.id).await.map(|(v, _)| v) != Some(2) {
        assert!(std::time::Instant::now() < deadline, "Redis still holds version 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = answer(app.get(&path)).await;
    assert_eq!(fresh.body["version"], 2, "{}", fresh.text);
    assert_eq!(fresh.body["name"], "second");
    assert!(app.metrics().await.contains("read_events_duplicates_ignored_total 1"));
}
