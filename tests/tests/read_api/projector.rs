//! The projector's promises: each event changes a view exactly once (duplicates and older
//! events change nothing, gaps are parked until they close), poison goes to the
//! dead-letter queue without blocking anything, unknown events are acknowledged and counted.

use std::time::Duration;

use ordering_schema::events::{CloudEvent, EventKind, OrderStatus};
use ordering_tests::metrics_text::sample;
use ordering_tests::pipeline::metric_sum;
use ordering_tests::read_app::{ReadApp, next_order, next_product, order, order_event, product, product_event};
use ordering_tests::write_app::{answer, customer_token};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_and_older_events_change_nothing_and_gaps_wait_for_their_predecessor() {
    let app = ReadApp::start().await;
    let v1 = product("D-1", "Dup", "d", 100, 1);
    let v2 = next_product(&v1, |p| p.name = "Dup two".into());
    let v3 = next_product(&v2, |p| p.stock = 3);
    let v4 = next_product(&v3, |p| p.price_cents = 400);
    app.publish(&product_event(&v1)).await;
    app.publish(&product_event(&v2)).await;
    app.wait_version("rv_products", v1.id, 2).await;
    // Duplicate and older: no change.
    app.publish(&product_event(&v2)).await;
    app.publish(&product_event(&v1)).await;
    // A gap: v4 before v3. Every counter is there at 0 from the start: what counts is that
    // these moved, which also says the projector has handled the three events.
    app.publish(&product_event(&v4)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.metrics().await;
        let gaps = metric_sum(&metrics, "read_events_gaps_held_total");
        let duplicates = metric_sum(&metrics, "read_events_duplicates_ignored_total");
        if gaps > 0.0 && duplicates > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gap ({gaps}) or duplicates ({duplicates}) not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.stored_version("rv_products", v1.id).await,
        Some(2),
        "a gapped event was applied early"
    );
    // The missing event arrives: both apply, in order.
    app.publish(&product_event(&v3)).await;
    app.wait_version("rv_products", v1.id, 4).await;
    let view = answer(app.get(&format!("/v1/products/{}", v1.id))).await;
    assert_eq!(
        (
            view.body["version"].as_i64(),
            view.body["stock"].as_i64(),
            view.body["price_cents"].as_i64()
        ),
        (Some(4), Some(3), Some(400))
    );
    assert_eq!(view.body["name"], "Dup two");

    // The same for orders, whose history must not grow on duplicates.
    let customer = Uuid::now_v7();
    let placed = order(customer, &[(&v1, 1)], ordering_schema::events::now());
    let paid = next_order(&placed, OrderStatus::Paid);
    let shipped = next_order(&paid, OrderStatus::Shipped);
    app.publish(&order_event(&placed)).await;
    app.publish(&order_event(&shipped)).await; // gap
    app.publish(&order_event(&placed)).await; // duplicate
    app.wait_version("rv_orders", placed.id, 1).await;
    // Time for the gapped event to be (wrongly) applied.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.stored_version("rv_orders", placed.id).await, Some(1));
    app.publish(&order_event(&paid)).await;
    app.publish(&order_event(&paid)).await;
    app.wait_version("rv_orders", placed.id, 3).await;
    let o = answer(
        app.get(&format!("/v1/orders/{}", placed.id))
            .bearer_auth(customer_token(customer)),
    )
    .await;
    let history: Vec<&str> = o.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["placed", "paid", "shipped"]);
    let s = answer(
        app.get(&format!("/v1/customers/{customer}/summary"))
            .bearer_auth(customer_token(customer)),
    )
    .await;
    assert_eq!(s.body["order_count"], 1);
    assert_eq!(s.body["spent_cents"]["EUR"], 100);
    // Every delivery was settled: nothing is left unacknowledged in the queue.
    let revision = app
        .query_json(&format!(
            "SELECT revision FROM rv_customers WHERE customer_id = '{customer}'"
        ))
        .await;
    assert_eq!(revision[0]["revision"], 3, "one revision per applied order event");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_goes_to_the_dead_letter_queue_and_unknown_events_are_acknowledged() {
    let app = ReadApp::start().await;
    app.publish_raw("product.created", b"{this is not json").await;
    let mut wrong_shape = serde_json::to_value(product_event(&product("X-1", "X", "x", 1, 1))).unwrap();
    wrong_shape["data"] = serde_json::json!({"id": 42});
    app.publish_raw("product.created", &serde_json::to_vec(&wrong_shape).unwrap())
        .await;
    // An event type from the future: acknowledged and counted, not dead-lettered.
    let p = product("F-1", "F", "f", 1, 1);
    let mut future =
        serde_json::to_value(CloudEvent::new(EventKind::ProductCreated, p.id, 1, p.created_at, &p)).unwrap();
    future["type"] = "ordering.product.discontinued.v1".into();
    app.publish_raw("product.discontinued", &serde_json::to_vec(&future).unwrap())
        .await;
    let mut invoice = future.clone();
    invoice["aggregatetype"] = "invoice".into();
    invoice["type"] = "ordering.invoice.sent.v1".into();
    app.publish_raw("invoice.sent", &serde_json::to_vec(&invoice).unwrap())
        .await;
    // The queue is not blocked: a good event behind them is applied.
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while dead.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "dead letters: {}", dead.len());
        dead.extend(app.dead_letters().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0], b"{this is not json");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "read_events_unknown_total"),
        2.0,
        "unknown events not counted"
    );
    assert_eq!(
        sample(&metrics, "read_events_dead_lettered_total", &[("reason", "poison")]),
        Some(2.0),
        "dead letters not counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_aggregates_in_parallel_each_in_order() {
    let app = ReadApp::start().await;
    let mut last = Vec::new();
    for i in 0..40 {
        let mut p = product(&format!("P-{i}"), "p", "p", 10, 0);
        app.publish(&product_event(&p)).await;
        for _ in 0..4 {
            p = next_product(&p, |p| p.stock += 1);
            app.publish(&product_event(&p)).await;
        }
        last.push(p);
    }
    for p in &last {
        app.wait_version("rv_products", p.id, 5).await;
    }
    let rows = app
        .query_json("SELECT count(*) AS n FROM rv_products WHERE version = 5 AND stock = 4")
        .await;
    assert_eq!(rows[0]["n"], 40);
}
