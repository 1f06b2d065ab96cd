//! Limits that keep a misbehaving client from exhausting a service:
//!
//! - slow loris: many connections trickling their headers a byte at a time (and idle ones
//!   sending nothing) do not stop normal requests from being served promptly, and the server
//!   closes them after `HEADER_READ_TIMEOUT`;
//! - the request timeout: a request stuck on a database lock is answered 503 problem+json at
//!   the limit and leaves nothing half-written;
//! - bounded concurrency: beyond `max_concurrent_requests` requests wait and time out rather
//!   than pile up (except `/health/*`, which answers at once however busy the service is);
//! - bounded database connections: many concurrent commands use at most the pool's size;
//! - body limit: an oversize body is 413 `payload_too_large`;
//! - bounded consistency waits: a token naming a far-future version or 101 unknown
//!   aggregates is answered 503 `not_yet_consistent` at `CONSISTENCY_WAIT_MS`, not later;
//!   one naming more than 101 is refused at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use ordering_platform::auth::Authenticator;
use ordering_platform::http::HEADER_READ_TIMEOUT;
use ordering_platform::http::layers::HttpLimits;
use ordering_schema::consistency::{ConsistencyToken, MAX_MARKS, VersionMark};
use ordering_schema::events::AggregateType;
use ordering_tests::read_app::{ReadApp, ReadOptions, product, product_event};
use ordering_tests::test_db::TestDatabase;
use ordering_tests::write_app::{SECRET, WriteApp, admin_token, answer, consistency_key};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// A write-api served by `ordering_platform::http::serve` (what the binaries run), with
/// `limits`.
struct Served {
    db: TestDatabase,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(limits: HttpLimits, pool_size: usize) -> Self {
        let db = TestDatabase::new().await;
        let state = write_api::AppState::new(
            db.url(),
            pool_size,
            Authenticator::hs256(SECRET.as_bytes()),
            ordering_tests::write_app::consistency_key(),
            &limits,
        );
        let app = write_api::router(state, limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(ordering_platform::http::serve(listener, app, async move {
            let _ = rx.await;
        }));
        Self {
            db,
            addr,
            stop: Some(tx),
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.server.abort();
    }
}

/// One slow-loris connection: sends a request head one byte every `pace`, never finishing
/// it. Returns how long the server kept the connection open (`None`: still open at `limit`).
async fn slow_loris(addr: SocketAddr, pace: Duration, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!("GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: {}", "a".repeat(10_000));
    let writer = async move {
        for b in head.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await;
        }
        std::future::pending::<()>().await;
    };
    let closed = async move {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a 408 or similar before closing is fine
            }
        }
    };
    tokio::select! {
        () = closed => Some(start.elapsed()),
        () = async { writer.await; std::future::pending::<()>().await } => unreachable!(),
        () = tokio::time::sleep(limit) => None,
    }
}

/// An idle connection that sends nothing at all.
async fn idle(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(_) => Some(start.elapsed()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_loris_clients_neither_starve_the_server_nor_keep_their_connections() {
    let app = Served::start(HttpLimits::default(), 4).await;
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(8);
    let mut slow = Vec::new();
    for _ in 0..150 {
        slow.push(tokio::spawn(slow_loris(app.addr, Duration::from_millis(200), limit)));
    }
    for _ in 0..50 {
        slow.push(tokio::spawn(idle(app.addr, limit)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Normal clients are served promptly all the while.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < HEADER_READ_TIMEOUT - Duration::from_secs(2) {
        let t = Instant::now();
        let res = client.get(app.url("/health/live")).send().await.expect("live");
        assert_eq!(res.status(), 200);
        let res = client
            .post(app.url("/v1/products"))
            .bearer_auth(admin_token())
            .json(&json!({"sku": format!("LORIS-{served}"), "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}))
            .send()
            .await
            .expect("create");
        assert_eq!(res.status(), 201);
        worst = worst.max(t.elapsed());
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worst < Duration::from_secs(1), "a normal request took {worst:?}");
    assert!(served > 20, "only {served} normal requests served");

    // Every slow connection is closed by the server, around the header timeout.
    let mut lifetimes = Vec::new();
    for h in slow {
        lifetimes.push(h.await.expect("task"));
    }
    let open = lifetimes.iter().filter(|l| l.is_none()).count();
    assert_eq!(
        open,
        0,
        "{open} of {} slow connections were never closed",
        lifetimes.len()
    );
    let longest = lifetimes.iter().flatten().max().copied().unwrap_or_default();
    let shortest = lifetimes.iter().flatten().min().copied().unwrap_or_default();
    assert!(
        longest <= HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "a slow connection lived {longest:?}"
    );
    assert!(
        shortest >= HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "a connection was closed early ({shortest:?})"
    );
    eprintln!(
        "slow loris: {} connections closed after {shortest:?}..{longest:?}; {served} normal request pairs, worst {worst:?}",
        lifetimes.len()
    );
}

/// Locks product `id`'s row in a transaction of its own until the returned sender is dropped.
async fn lock_row(db: &TestDatabase, id: &str) -> tokio::sync::oneshot::Sender<()> {
    let mut conn = db.conn().await;
    diesel::sql_query("BEGIN").execute(&mut conn).await.expect("begin");
    diesel::sql_query(format!("SELECT 1 FROM products WHERE id = '{id}' FOR UPDATE"))
        .execute(&mut conn)
        .await
        .expect("lock");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = rx.await;
        let _ = diesel::sql_query("ROLLBACK").execute(&mut conn).await;
    });
    tx
}

#[tokio::test(flavor = "multi_thread")]
async fn request_timeout_and_concurrency_limit_bound_stuck_requests() {
    let limits = HttpLimits {
        request_timeout: Duration::from_millis(800),
        max_concurrent_requests: 2,
    };
    let app = Served::start(limits, 8).await;
    let client = reqwest::Client::new();
    let created = client
        .post(app.url("/v1/products"))
        .bearer_auth(admin_token())
        .json(&json!({"sku": "STUCK", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let pid = created.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let unlock = lock_row(&app.db, &pid).await;
    let patch = |name: &str| {
        client
            .patch(app.url(&format!("/v1/products/{pid}")))
            .bearer_auth(admin_token())
            .json(&json!({ "name": name }))
            .send()
    };
    // Two requests stuck on the lock fill the concurrency limit; a third, that needs no lock,
    // cannot run beside them: it waits for a slot (and is served only once the stuck ones
    // have timed out), so nothing piles up beyond the limit. The stuck commands give up at
    // their budget (640 ms of the 800 ms timeout), rolled back. Health probes are outside the
    // limit: they answer at once.
    let t = Instant::now();
    let (a, b, c, live) = tokio::join!(
        patch("one"),
        patch("two"),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let res = client.get(app.url("/openapi.json")).send().await;
            (res, t.elapsed())
        },
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let asked = Instant::now();
            let res = client.get(app.url("/health/live")).send().await;
            (res, asked.elapsed())
        }
    );
    let (live, live_took) = live;
    assert_eq!(live.expect("live").status(), 200);
    assert!(
        live_took < Duration::from_millis(200),
        "/health/live waited {live_took:?} behind the stuck requests"
    );
    let elapsed = t.elapsed();
    for res in [a, b] {
        let a = ordering_tests::write_app::Answer::read(res.expect("answer")).await;
        a.assert_problem(503, "timeout");
        assert!(a.header("retry-after").is_some());
    }
    let (c, c_done) = c;
    let c = ordering_tests::write_app::Answer::read(c.expect("answer")).await;
    assert!(
        c.status == 200 || (c.status == 503 && c.code() == "timeout"),
        "third request: {} {}",
        c.status,
        c.text
    );
    assert!(
        c_done >= Duration::from_millis(600),
        "a third request ran beside two stuck ones (limit 2): done after {c_done:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(3000),
        "answered after {elapsed:?}"
    );
    drop(unlock);
    // Once the lock is gone, the service answers again, and the two timed-out commands did not
    // commit behind their clients' backs: the product and its events are as before them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = client.get(app.url("/health/live")).send().await.expect("live");
    assert_eq!(live.status(), 200);
    assert_eq!(app.db.count("products").await, 1);
    let version = {
        use diesel::QueryableByName;
        use diesel::sql_types::BigInt;
        #[derive(QueryableByName)]
        struct V {
            #[diesel(sql_type = BigInt)]
            version: i64,
        }
        let mut conn = app.db.conn().await;
        let v: V = diesel::sql_query(format!("SELECT version FROM products WHERE id = '{pid}'"))
            .get_result(&mut conn)
            .await
            .expect("version");
        v.version
    };
    assert_eq!(version, 1, "a timed-out command committed after its 503");
    assert_eq!(app.db.count("outbox").await, 1);
    let done = patch("after").await.expect("patch");
    assert_eq!(app.db.count("outbox").await, version + 1);
    assert_eq!(done.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_commands_use_at_most_the_pools_connections() {
    let app = WriteApp::start_with_pool(2).await;
    let p = app.create_product("POOL", 100, "EUR", 0).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let db_name = app.db.name().to_owned();
    let sampler = {
        let mut conn = app.db.conn().await;
        tokio::spawn(async move {
            use diesel::QueryableByName;
            use diesel::sql_types::BigInt;
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = BigInt)]
                n: i64,
            }
            let mut peak = 0;
            for _ in 0..60 {
                let n: N = diesel::sql_query(format!(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{db_name}' AND pid <> pg_backend_pid()"
                ))
                .get_result(&mut conn)
                .await
                .expect("sample");
                peak = peak.max(n.n);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            peak
        })
    };
    let adjust = |_: usize| {
        answer(app.post(
            &format!("/v1/products/{pid}/stock-adjustments"),
            &admin_token(),
            &json!({"delta": 1}),
        ))
    };
    let answers = futures::future::join_all((0..60).map(adjust)).await;
    assert!(answers.iter().all(|a| a.status == 200), "not all adjustments succeeded");
    let peak = sampler.await.expect("sampler");
    assert!(peak <= 2, "{peak} connections to the database, pool size 2");
    assert_eq!(app.product_row(&pid).await["stock"].as_i64(), Some(60));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_body_is_413_without_writing() {
    let app = WriteApp::start().await;
    for size in [64 * 1024 + 1, 256 * 1024, 1024 * 1024, 8 * 1024 * 1024] {
        let body = format!("{{\"sku\":\"BIG\",\"name\":\"{}\"}}", "n".repeat(size));
        let res = app
            .client
            .post(app.url("/v1/products"))
            .bearer_auth(admin_token())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match res {
            Ok(res) => ordering_tests::write_app::Answer::read(res)
                .await
                .assert_problem(413, "payload_too_large"),
            // The server may answer 413 and close before the client has sent everything: the
            // client then sees the connection reset instead of the answer. Only for big bodies.
            Err(e) => assert!(size > 64 * 1024 + 1, "{size} bytes: {e}"),
        }
    }
    assert_eq!(app.counts().await.products, 0);
}

fn mark(aggregate: AggregateType, version: i64) -> VersionMark {
    VersionMark {
        aggregate,
        id: Uuid::now_v7(),
        version,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consistency_waits_are_bounded_and_oversize_tokens_refused() {
    let wait = Duration::from_millis(600);
    let app = ReadApp::start_with(ReadOptions {
        consistency_wait: wait,
        ..ReadOptions::default()
    })
    .await;
    let p = product("WAIT", "w", "d", 1, 1);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let path = format!("/v1/products/{}", p.id);
    let far = ConsistencyToken {
        subject: Uuid::now_v7(),
        marks: vec![VersionMark {
            aggregate: AggregateType::Product,
            id: p.id,
            version: i64::MAX,
        }],
    };
    let unknown_max = ConsistencyToken {
        subject: Uuid::now_v7(),
        marks: (0..MAX_MARKS).map(|_| mark(AggregateType::Product, 1)).collect(),
    };
    for (what, token) in [("far-future version", far), ("101 unknown aggregates", unknown_max)] {
        let t = Instant::now();
        let a = answer(
            app.get(&path)
                .header("x-consistency-token", consistency_key().sign(&token)),
        )
        .await;
        let took = t.elapsed();
        a.assert_problem(503, "not_yet_consistent");
        assert!(a.header("retry-after").is_some(), "{what}: no Retry-After");
        assert!(
            took >= wait - Duration::from_millis(50) && took < wait + Duration::from_millis(1500),
            "{what}: answered after {took:?} (wait {wait:?})"
        );
    }
    // 200 such requests at once all end at the limit too.
    let t = Instant::now();
    let token = consistency_key().sign(&ConsistencyToken {
        subject: Uuid::now_v7(),
        marks: vec![mark(AggregateType::Product, 9)],
    });
    let many = futures::future::join_all(
        (0..200).map(|_| answer(app.get(&path).header("x-consistency-token", token.clone()))),
    )
    .await;
    assert!(many.iter().all(|a| a.status == 503 && a.code() == "not_yet_consistent"));
    assert!(
        t.elapsed() < wait + Duration::from_secs(3),
        "200 waits took {:?}",
        t.elapsed()
    );
    assert_eq!(app.state().hub.waiting(), 0, "waiters left registered");
    // More than 101 marks: refused without waiting.
    let too_many = ConsistencyToken {
        subject: Uuid::now_v7(),
        marks: (0..MAX_MARKS + 1).map(|_| mark(AggregateType::Product, 1)).collect(),
    };
    let t = Instant::now();
    let a = answer(
        app.get(&path)
            .header("x-consistency-token", consistency_key().sign(&too_many)),
    )
    .await;
    a.assert_problem(400, "invalid_header");
    assert!(t.elapsed() < wait, "an oversize token waited {:?}", t.elapsed());
    // A met token answers at once.
    let met = ConsistencyToken {
        subject: Uuid::now_v7(),
        marks: vec![VersionMark {
            aggregate: AggregateType::Product,
            id: p.id,
            version: 1,
        }],
    };
    let a = answer(
        app.get(&path)
            .header("x-consistency-token", consistency_key().sign(&met)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
}
