//! Read-your-writes: a request with a consistency token waits for the views (woken by
//! notifications), times out with 503 `not_yet_consistent`, and a thousand waiting requests
//! cost nothing.

use ordering_tests::metrics_text::sample;
use std::time::{Duration, Instant};

use ordering_schema::events::{AggregateType, OrderStatus};
use ordering_tests::read_app::{ReadApp, ReadOptions, next_order, order, order_event, product, product_event};
use ordering_tests::write_app::{answer, customer_token, issue_consistency_token};
use uuid::Uuid;

/// A token naming products only (anyone may wait for those).
fn token(marks: &[(AggregateType, Uuid, i64)]) -> String {
    issue_consistency_token(Uuid::now_v7(), marks)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_waits_for_every_view_it_names_then_answers() {
    let app = ReadApp::start().await;
    let customer = Uuid::now_v7();
    let p = product("W-1", "Wait", "w", 500, 5);
    let o = order(customer, &[(&p, 1)], ordering_schema::events::now());
    let t = issue_consistency_token(
        customer,
        &[(AggregateType::Order, o.id, 1), (AggregateType::Product, p.id, 1)],
    );
    let bearer = customer_token(customer);
    // Ask before the events exist; publish them a little later.
    let reads = {
        let order_read = app
            .get(&format!("/v1/orders/{}", o.id))
            .bearer_auth(&bearer)
            .header("X-Consistency-Token", &t);
        let list_read = app
            .get(&format!("/v1/customers/{customer}/orders"))
            .bearer_auth(&bearer)
            .header("X-Consistency-Token", &t);
        let summary_read = app
            .get(&format!("/v1/customers/{customer}/summary"))
            .bearer_auth(&bearer)
            .header("X-Consistency-Token", &t);
        let product_read = app
            .get(&format!("/v1/products/{}", p.id))
            .header("X-Consistency-Token", &t);
        tokio::spawn(async move {
            tokio::join!(
                answer(order_read),
                answer(list_read),
                answer(summary_read),
                answer(product_read)
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    app.publish(&product_event(&p)).await;
    app.publish(&order_event(&o)).await;
    let (order_view, list, summary, product_view) = reads.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woken late: {:?}",
        started.elapsed()
    );
    assert_eq!(order_view.status, 200, "{}", order_view.text);
    assert_eq!(order_view.body["version"], 1);
    assert_eq!(list.body["items"][0]["id"], o.id.to_string());
    assert_eq!(summary.body["order_count"], 1);
    assert_eq!(product_view.body["version"], 1);

    // Later versions: the read after a token never shows the older state, even when cached.
    let paid = next_order(&o, OrderStatus::Paid);
    let _ = answer(
        app.get(&format!("/v1/customers/{customer}/summary"))
            .bearer_auth(&bearer),
    )
    .await;
    app.publish(&order_event(&paid)).await;
    let t2 = issue_consistency_token(customer, &[(AggregateType::Order, o.id, 2)]);
    let s = answer(
        app.get(&format!("/v1/customers/{customer}/summary"))
            .bearer_auth(&bearer)
            .header("X-Consistency-Token", &t2),
    )
    .await;
    assert_eq!(s.body["spent_cents"]["EUR"], 500, "{}", s.text);
    let v = answer(
        app.get(&format!("/v1/orders/{}", o.id))
            .bearer_auth(&bearer)
            .header("X-Consistency-Token", &t2),
    )
    .await;
    assert_eq!(v.body["status"], "paid");
    let metrics = app.metrics().await;
    assert!(sample(&metrics, "read_consistency_waits_total", &[]).is_some_and(|n| n > 0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_the_views_do_not_reach_in_time_is_503_and_a_malformed_one_400() {
    let app = ReadApp::start_with(ReadOptions {
        consistency_wait: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let id = Uuid::now_v7();
    let started = Instant::now();
    let a = answer(
        app.get(&format!("/v1/products/{id}"))
            .header("X-Consistency-Token", token(&[(AggregateType::Product, id, 1)])),
    )
    .await;
    a.assert_problem(503, "not_yet_consistent");
    assert!(a.header("retry-after").is_some());
    assert!(started.elapsed() >= Duration::from_millis(300) && started.elapsed() < Duration::from_secs(2));
    answer(
        app.get(&format!("/v1/products/{id}"))
            .header("X-Consistency-Token", "garbage"),
    )
    .await
    .assert_problem(400, "invalid_header");
    answer(
        app.get("/v1/products/not-a-uuid")
            .header("X-Consistency-Token", "c2.!!"),
    )
    .await
    .assert_problem(400, "invalid_header");
    assert!(sample(&app.metrics().await, "read_consistency_timeouts_total", &[]).is_some_and(|n| n > 0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_waiting_requests_cost_nothing_and_all_wake() {
    let app = ReadApp::start_with(ReadOptions {
        consistency_wait: Duration::from_secs(40),
        request_timeout: Duration::from_secs(60),
        max_waiters: 1000,
        ..Default::default()
    })
    .await;
    let p = product("T-1", "Thousand", "t", 1, 1);
    let t = token(&[(AggregateType::Product, p.id, 1)]);
    let client = reqwest::Client::builder().pool_max_idle_per_host(1100).build().unwrap();
    let url = app.url(&format!("/v1/products/{}", p.id));
    let mut waiting = Vec::new();
    for _ in 0..1000 {
        let req = client.get(&url).header("X-Consistency-Token", &t);
        waiting.push(tokio::spawn(async move { answer(req).await }));
    }
    let hub = app.state().hub.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while hub.waiting() < 1000 {
        assert!(Instant::now() < deadline, "only {} requests waiting", hub.waiting());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While they wait, the service answers other requests promptly and the database is idle.
    // PostgreSQL's backends report their commits lazily: an idle one flushes its counts up to
    // 10 s (PGSTAT_IDLE_INTERVAL) after its last transaction. The reads the requests made as
    // they arrived are counted only once that has passed, or they would land in the window.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = app
        .query_json("SELECT sum(xact_commit)::bigint AS n FROM pg_stat_database WHERE datname = current_database()")
        .await;
    let started = Instant::now();
    assert_eq!(answer(app.get("/health/live")).await.status, 200);
    // Held up behind the waiters would be 40 s; 2 s leaves a loaded machine room.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = app
        .query_json("SELECT sum(xact_commit)::bigint AS n FROM pg_stat_database WHERE datname = current_database()")
        .await;
    let queries = after[0]["n"].as_i64().unwrap() - before[0]["n"].as_i64().unwrap();
    assert!(
        queries < 20,
        "waiting requests polled the database: {queries} transactions in 0.5 s"
    );
    let started = Instant::now();
    app.publish(&product_event(&p)).await;
    for w in waiting {
        let a = w.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waking took {:?}",
        started.elapsed()
    );
    // Each waiter deregisters as its request ends; give the last of them a moment under load.
    let deadline = Instant::now() + Duration::from_secs(2);
    while hub.waiting() > 0 {
        assert!(Instant::now() < deadline, "{} waiters left behind", hub.waiting());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
