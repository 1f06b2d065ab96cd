//! `read-api rebuild`: replaying the stream into fresh tables gives exactly what the live
//! projector built, and a stream that lost its head is refused.

use ordering_schema::events::OrderStatus;
use ordering_tests::read_app::{
    ReadApp, ReadOptions, next_order, next_product, order, order_event, product, product_event,
};
use ordering_tests::write_app::answer;
use read_api::rebuild::{self, Options, RebuildError};
use uuid::Uuid;

async fn snapshot(app: &ReadApp) -> Vec<serde_json::Value> {
    let mut out = app
        .query_json("SELECT id, version, name, price_cents, stock, search, doc FROM rv_products ORDER BY id")
        .await;
    out.extend(app.query_json("SELECT id, customer_id, version, status, total_cents, currency, created_at, doc, item FROM rv_orders ORDER BY id").await);
    out.extend(
        app.query_json("SELECT customer_id, revision FROM rv_customers ORDER BY customer_id")
            .await,
    );
    out
}

fn options(app: &ReadApp, from_available: bool) -> Options {
    Options {
        database_url: app.settings.database_url.clone(),
        amqp_url: app.settings.amqp_url.clone(),
        stream: app.settings.stream.clone(),
        from_available,
        idle: std::time::Duration::from_millis(700),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_equals_the_live_views() {
    let app = ReadApp::start_with(ReadOptions {
        stream: true,
        ..Default::default()
    })
    .await;
    let mut last_order = None;
    for c in 0..3 {
        let customer = Uuid::now_v7();
        let mut p = product(&format!("RB-{c}"), "Rebuilt", "r", 100 + c, 10);
        app.publish(&product_event(&p)).await;
        for _ in 0..3 {
            p = next_product(&p, |p| p.stock -= 1);
            app.publish(&product_event(&p)).await;
            // Duplicates in the stream too: the rebuild must ignore them as the live one does.
            app.publish(&product_event(&p)).await;
        }
        let o = order(customer, &[(&p, 2)], ordering_schema::events::now());
        let paid = next_order(&o, OrderStatus::Paid);
        for e in [&o, &paid] {
            app.publish(&order_event(e)).await;
        }
        app.wait_version("rv_products", p.id, 4).await;
        app.wait_version("rv_orders", o.id, 2).await;
        last_order = Some(paid);
    }
    let live = snapshot(&app).await;
    let mut progress = 0;
    let report = rebuild::run(&options(&app, false), Some(&app.state().cache), |_| progress += 1)
        .await
        .expect("rebuild");
    assert!(progress >= 1, "no progress reported");
    assert_eq!(report.applied, 3 * 4 + 3 * 2);
    assert_eq!(report.duplicates, 9);
    assert_eq!(snapshot(&app).await, live, "rebuilt views differ from the live ones");
    // The service keeps serving from the swapped-in tables, and the projector keeps applying.
    let paid = last_order.unwrap();
    let shipped = next_order(&paid, OrderStatus::Shipped);
    app.publish(&order_event(&shipped)).await;
    app.wait_version("rv_orders", paid.id, 3).await;
    let history = app
        .query_json(&format!(
            "SELECT doc -> 'history' AS h FROM rv_orders WHERE id = '{}'",
            paid.id
        ))
        .await;
    assert_eq!(history[0]["h"].as_array().unwrap().len(), 3);
    assert_eq!(
        answer(app.get("/v1/products")).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_refuses_a_stream_without_the_first_events_unless_told_from_available() {
    let app = ReadApp::start_with(ReadOptions {
        stream: true,
        ..Default::default()
    })
    .await;
    let p1 = product("H-1", "Headless", "h", 1, 1);
    // Version 1 never reached the stream (as if retention dropped it).
    let p2 = next_product(&p1, |p| p.stock = 2);
    app.publish(&product_event(&p2)).await;
    let err = rebuild::run(&options(&app, false), None, |_| {})
        .await
        .expect_err("must refuse");
    assert!(matches!(err, RebuildError::HeadMissing { .. }), "{err}");
    assert!(err.to_string().contains("--from-available"));
    let report = rebuild::run(&options(&app, true), None, |_| {})
        .await
        .expect("from available");
    assert_eq!(report.applied, 1);
    assert_eq!(app.stored_version("rv_products", p1.id).await, Some(2));
}
