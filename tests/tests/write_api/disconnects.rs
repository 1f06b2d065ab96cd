//! A client that gives up while its command is running (a timeout, a closed connection) must
//! not leave the command half-done: no transaction left open in the pool holding row locks or
//! an unfinished `Idempotency-Key`, so the next command, or the client's retry, is answered.

use std::time::Duration;

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use futures::future::join_all;
use ordering_platform::http::layers::HttpLimits;
use ordering_tests::write_app::{WriteApp, admin_token, answer, customer_token};
use serde_json::json;
use uuid::Uuid;

/// How long a follow-up command may take before the test calls it stuck.
const PATIENCE: Duration = Duration::from_secs(3);

/// Holds `FOR UPDATE` on product `id` from a connection of the test until [`release`].
async fn lock_product(app: &WriteApp, id: &str) -> AsyncPgConnection {
    let mut conn = app.db.conn().await;
    conn.batch_execute(&format!("BEGIN; SELECT 1 FROM products WHERE id = '{id}' FOR UPDATE;"))
        .await
        .expect("lock product");
    conn
}

async fn release(conn: &mut AsyncPgConnection) {
    conn.batch_execute("COMMIT").await.expect("release lock");
}

/// Makes the pool hold several connections: three commands wait on the product's lock at once,
/// each on a connection of its own.
async fn warm_pool(app: &WriteApp, pid: &str) {
    let mut lock = lock_product(app, pid).await;
    let path = format!("/v1/products/{pid}/stock-adjustments");
    let tok = admin_token();
    let waiting = join_all((0..3).map(|_| answer(app.post(&path, &tok, &json!({"delta": 1})))));
    let release_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        release(&mut lock).await;
    };
    let (answers, ()) = tokio::join!(waiting, release_later);
    assert!(
        answers.iter().all(|a| a.status == 200),
        "warm-up: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
}

async fn sessions_idle_in_transaction(app: &WriteApp) -> usize {
    app.query_json(&format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = '{}' AND state = 'idle in transaction'",
        app.db.name()
    ))
    .await
    .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_giving_up_mid_command_leaves_no_lock_behind() {
    let app = WriteApp::start_with_pool(4).await;
    let p = app.create_product("GIVE-UP", 100, "EUR", 10).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/products/{pid}/stock-adjustments");
    warm_pool(&app, &pid).await;

    // The command starts, waits for the row lock, and its client stops waiting.
    let mut lock = lock_product(&app, &pid).await;
    let gave_up = app
        .post(&path, &admin_token(), &json!({"delta": 100}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client should have timed out: {gave_up:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    release(&mut lock).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let idle = sessions_idle_in_transaction(&app).await;
    let next = app
        .post(&path, &admin_token(), &json!({"delta": 1}))
        .timeout(PATIENCE)
        .send()
        .await;
    let next = next.unwrap_or_else(|e| {
        panic!("the next command on the product got no answer within {PATIENCE:?} ({idle} pooled connection(s) left idle in transaction): {e}")
    });
    assert_eq!(next.status(), 200);
    // Nothing stays inside a transaction for long.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sessions_idle_in_transaction(&app).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a connection stays idle in transaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // All or nothing: the abandoned +100 either happened entirely or not at all.
    let row = app.product_row(&pid).await;
    let (stock, version) = (row["stock"].as_i64().unwrap(), row["version"].as_i64().unwrap());
    assert!(
        matches!((stock, version), (14, 5) | (114, 6)),
        "stock {stock} at version {version}"
    );
    let events = app.counts().await.outbox;
    assert_eq!(events, version, "one event per version");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_idempotency_key_after_the_client_gave_up_is_answered() {
    let app = WriteApp::start_with_pool(4).await;
    let p = app.create_product("RETRY", 100, "EUR", 10).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    warm_pool(&app, &pid).await;
    let tok = customer_token(Uuid::now_v7());
    let body = json!({"lines": [{"product_id": pid, "quantity": 2}]});

    let mut lock = lock_product(&app, &pid).await;
    let gave_up = app
        .post("/v1/orders", &tok, &body)
        .header("Idempotency-Key", "retry-me")
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client should have timed out: {gave_up:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    release(&mut lock).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let retry = app
        .post("/v1/orders", &tok, &body)
        .header("Idempotency-Key", "retry-me")
        .timeout(PATIENCE)
        .send()
        .await;
    let retry = retry.unwrap_or_else(|e| panic!("the retry got no answer within {PATIENCE:?}: {e}"));
    assert_eq!(retry.status(), 201);
    let c = app.counts().await;
    assert_eq!((c.orders, c.idempotency_keys), (1, 1), "exactly one order for the key");
    assert_eq!(app.product_row(&pid).await["stock"], 13 - 2);
}

/// A command still waiting when its request times out is rolled back, never committed behind
/// the client's back: "503 timeout" means nothing was written, so a retry without an
/// `Idempotency-Key` applies the command once, not twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_outliving_the_request_timeout_is_rolled_back_not_committed_later() {
    let limits = HttpLimits {
        request_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let app = WriteApp::start_with(4, limits).await;
    let p = app.create_product("TIMED-OUT", 100, "EUR", 10).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/products/{pid}/stock-adjustments");
    let outbox_before = app.counts().await.outbox;

    let mut lock = lock_product(&app, &pid).await;
    let timed_out = answer(app.post(&path, &admin_token(), &json!({"delta": 5}))).await;
    timed_out.assert_problem(503, "timeout");
    assert!(timed_out.header("retry-after").is_some(), "a 503 says when to retry");
    // The lock goes away after the client was answered: a command left running would now
    // take it and commit.
    release(&mut lock).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = app.product_row(&pid).await;
    assert_eq!(
        (row["stock"].as_i64(), row["version"].as_i64()),
        (Some(10), Some(1)),
        "{row}"
    );
    assert_eq!(
        app.counts().await.outbox,
        outbox_before,
        "no event for a timed-out command"
    );

    let retried = answer(app.post(&path, &admin_token(), &json!({"delta": 5}))).await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    let row = app.product_row(&pid).await;
    assert_eq!(
        (row["stock"].as_i64(), row["version"].as_i64()),
        (Some(15), Some(2)),
        "{row}"
    );
    assert_eq!(app.counts().await.outbox, outbox_before + 1);
}
