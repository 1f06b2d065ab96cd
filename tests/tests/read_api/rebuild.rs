//! `read-api rebuild`: replaying the stream into fresh tables gives exactly what the live
//! projector built, views the stream never had do not survive it, and a stream that lost its
//! head, or a replay the broker stalled, is refused.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ordering_platform::amqp::AmqpNodes;
use ordering_schema::events::OrderStatus;
use ordering_tests::read_app::{
    ReadApp, ReadOptions, next_order, next_product, order, order_event, product, product_event,
};
use ordering_tests::relay::broker::AMQP_URL;
use ordering_tests::relay::chaos_proxy::ChaosProxy;
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
        // The binary's own default: shorter, a slow first delivery on a loaded machine ends the
        // replay before it began.
        idle: Duration::from_secs(2),
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

/// Publishes `event` straight to the projector's queue (the default exchange), bypassing the
/// exchange the stream is bound to: the projector applies it, the stream never has it, as
/// with a message from some other publisher on the broker.
async fn publish_stray<D: serde::Serialize>(app: &ReadApp, event: &ordering_schema::events::CloudEvent<D>) {
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = amqp.create_channel().await.expect("channel");
    ch.basic_publish(
        "".into(),
        app.settings.queue.as_str().into(),
        BasicPublishOptions::default(),
        &serde_json::to_vec(event).expect("serialize"),
        BasicProperties::default().with_content_type(ordering_schema::events::MESSAGE_CONTENT_TYPE.into()),
    )
    .await
    .expect("publish");
    let _ = ch.close(200, "ok".into()).await;
    let _ = amqp.close(200, "ok".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuild_drops_views_the_stream_never_had_and_keeps_what_was_applied_during_it() {
    let app = ReadApp::start_with(ReadOptions {
        stream: true,
        ..Default::default()
    })
    .await;
    let kept = product("KEEP-1", "Kept", "in the stream", 100, 1);
    app.publish(&product_event(&kept)).await;
    let stray = product("STRAY-1", "Stray", "never in the stream", 100, 1);
    publish_stray(&app, &product_event(&stray)).await;
    let stray_customer = Uuid::now_v7();
    let stray_order = order(stray_customer, &[(&stray, 1)], ordering_schema::events::now());
    publish_stray(&app, &order_event(&stray_order)).await;
    app.wait_version("rv_products", kept.id, 1).await;
    app.wait_version("rv_products", stray.id, 1).await;
    app.wait_version("rv_orders", stray_order.id, 1).await;

    // While the rebuild replays, one product arrives through the exchange (so also in the
    // stream) and one straight to the queue: both were applied live during the rebuild.
    let live = product("LIVE-1", "Live", "created during the rebuild", 100, 1);
    let live_stray = product("STRAY-2", "Stray during", "never in the stream", 100, 1);
    let mut opts = options(&app, false);
    opts.idle = Duration::from_millis(1500);
    let during = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while app
            .query_json("SELECT 1 AS x FROM pg_class WHERE relname = 'rv_products_rebuild'")
            .await
            .is_empty()
        {
            assert!(tokio::time::Instant::now() < deadline, "the rebuild did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app.publish(&product_event(&live)).await;
        publish_stray(&app, &product_event(&live_stray)).await;
        app.wait_version("rv_products", live.id, 1).await;
        app.wait_version("rv_products", live_stray.id, 1).await;
    };
    let (report, ()) = tokio::join!(rebuild::run(&opts, Some(&app.state().cache), |_| {}), during);
    report.expect("rebuild");

    assert_eq!(
        app.stored_version("rv_products", stray.id).await,
        None,
        "stray product survived"
    );
    assert_eq!(
        app.stored_version("rv_orders", stray_order.id).await,
        None,
        "stray order survived"
    );
    assert!(
        app.query_json(&format!(
            "SELECT revision FROM rv_customers WHERE customer_id = '{stray_customer}'"
        ))
        .await
        .is_empty(),
        "the stray order's customer survived"
    );
    assert_eq!(answer(app.get(&format!("/v1/products/{}", stray.id))).await.status, 404);
    for p in [&kept, &live, &live_stray] {
        assert_eq!(app.stored_version("rv_products", p.id).await, Some(1), "{} lost", p.sku);
    }

    // The next rebuild drops the stray that arrived during the first one: no stray outlives
    // a rebuild that started after it.
    rebuild::run(&options(&app, false), Some(&app.state().cache), |_| {})
        .await
        .expect("second rebuild");
    assert_eq!(app.stored_version("rv_products", live_stray.id).await, None);
    let ids: Vec<serde_json::Value> = app.query_json("SELECT id FROM rv_products ORDER BY id").await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    for p in [&kept, &live] {
        assert_eq!(app.stored_version("rv_products", p.id).await, Some(1), "{} lost", p.sku);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_the_broker_stalls_is_refused_and_leaves_the_views_alone() {
    let app = ReadApp::start_with(ReadOptions {
        stream: true,
        ..Default::default()
    })
    .await;
    let products: Vec<_> = (0..300)
        .map(|i| product(&format!("STALL-{i}"), "Stalled", "replayed through a slow link", 100, 1))
        .collect();
    for p in &products {
        app.publish(&product_event(p)).await;
    }
    for p in &products {
        app.wait_version("rv_products", p.id, 1).await;
    }
    let live = snapshot(&app).await;

    // The rebuild's broker link delivers each chunk 300 ms late: longer than its idle, so the
    // replay goes quiet long before the end of the stream (300 events of ~600 bytes are many
    // chunks).
    let proxy = ChaosProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    proxy.slow(Duration::from_millis(300));
    let mut opts = options(&app, false);
    opts.amqp_url = AmqpNodes::parse(&proxy.url(AMQP_URL)).unwrap();
    opts.idle = Duration::from_millis(200);
    let err = rebuild::run(&opts, Some(&app.state().cache), |_| {})
        .await
        .expect_err("a stalled replay must not be swapped in");
    let RebuildError::Incomplete { reached, tail, .. } = &err else {
        panic!("{err}");
    };
    assert!(reached < tail && *reached + 1 < 300, "{err}");
    assert!(err.to_string().contains("Run the rebuild again"), "{err}");
    assert_eq!(snapshot(&app).await, live, "the views changed");

    // Through a healthy link the same rebuild goes through.
    proxy.restore();
    opts.idle = Duration::from_secs(2);
    let report = rebuild::run(&opts, Some(&app.state().cache), |_| {})
        .await
        .expect("rebuild");
    assert_eq!(report.applied, 300);
    assert_eq!(snapshot(&app).await, live);
}
