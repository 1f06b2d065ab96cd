//! Nothing a publisher sends stalls the projector: a message PostgreSQL refuses is
//! dead-lettered alone, and events from the future leave the prefetch window (parked in
//! PostgreSQL), are applied when their gap fills, and go to the dead-letter queue when it does
//! not fill within `GAP_TIMEOUT`.

use ordering_tests::metrics_text::sample;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use ordering_schema::events::{AggregateType, ProductData};
use ordering_tests::read_app::{ReadApp, ReadOptions, next_product, order, order_event, product, product_event};
use ordering_tests::relay::broker::AMQP_URL;
use ordering_tests::relay::chaos_proxy::ChaosProxy;
use ordering_tests::relay::wait_until;
use ordering_tests::write_app::answer;
use uuid::Uuid;

/// Waits until the dead-letter queue has given `n` messages (consuming them), each with its
/// dead-letter reason header, if any.
async fn dead_letters(app: &ReadApp, n: usize, within: Duration) -> Vec<(Vec<u8>, Option<String>)> {
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while dead.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} dead letters of {n} after {within:?}",
            dead.len()
        );
        dead.extend(app.dead_letters_with(read_api::projector::REASON_HEADER).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dead
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_postgres_refuses_is_dead_lettered_and_nothing_waits_for_it() {
    let app = ReadApp::start_with(ReadOptions {
        workers: 1,
        ..ReadOptions::default()
    })
    .await;
    // Well-formed, but PostgreSQL refuses a NUL in text: `invalid byte sequence for encoding "UTF8": 0x00`.
    let nul = product("NUL-1", "bad\u{0}name", "d", 100, 1);
    app.publish(&product_event(&nul)).await;
    // Also well-formed, and no parser objects: a timestamp PostgreSQL can not store
    // (`timestamp out of range`), caught only by classifying the database's refusal.
    let ancient = Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(-5000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap(),
    );
    let buyer = Uuid::now_v7();
    let first = product("OK-1", "Fine", "d", 100, 5);
    let refused_order = order(buyer, &[(&first, 1)], ancient);
    app.publish(&order_event(&refused_order)).await;
    // Behind them (one worker, so the same worker): another aggregate, and a good first
    // version of the refused product.
    app.publish(&product_event(&first)).await;
    let fixed = ProductData {
        name: "good name".into(),
        ..nul.clone()
    };
    app.publish(&product_event(&fixed)).await;
    app.publish(&product_event(&next_product(&first, |p| p.stock = 4)))
        .await;
    app.wait_version("rv_products", first.id, 2).await;
    app.wait_version("rv_products", nul.id, 1).await;
    let view = answer(app.get(&format!("/v1/products/{}", nul.id))).await;
    assert_eq!(view.body["name"], "good name");
    assert_eq!(app.stored_version("rv_orders", refused_order.id).await, None);
    let dead = dead_letters(&app, 2, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 2);
    let bodies: Vec<String> = dead
        .iter()
        .map(|(d, _)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(bodies.iter().any(|b| b.contains("bad\\u0000name")), "{bodies:?}");
    assert!(
        bodies.iter().any(|b| b.contains(&refused_order.id.to_string())),
        "{bodies:?}"
    );
    // Each says why: the parse error, and the database's own words.
    let why = |needle: &str| {
        dead.iter()
            .find(|(d, _)| String::from_utf8_lossy(d).contains(needle))
            .and_then(|(_, reason)| reason.clone())
            .unwrap_or_default()
    };
    assert!(
        why("bad\\u0000name").starts_with("poison message: data holds a NUL"),
        "{dead:?}"
    );
    let refused = why(&refused_order.id.to_string());
    assert!(
        refused.starts_with("refused by the database: ") && refused.contains("out of range"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_from_the_future_leave_the_window_apply_when_the_gap_fills_and_time_out_to_the_dead_letters() {
    let gap_timeout = Duration::from_secs(6);
    let app = ReadApp::start_with(ReadOptions {
        gap_timeout,
        ..ReadOptions::default()
    })
    .await;
    // 1,100 second versions of products the views never saw: more than the prefetch window.
    // The 100 whose gaps will fill go last, so that their gap timeout does not run while the
    // other 1,000 are published (each publish awaits its confirm: seconds on a loaded machine).
    let firsts: Vec<_> = (0..1100)
        .map(|i| product(&format!("FUT-{i}"), "Future", "d", 100, 1))
        .collect();
    let seconds: Vec<_> = firsts.iter().map(|p| next_product(p, |p| p.stock = 2)).collect();
    for p in seconds[100..].iter().chain(&seconds[..100]) {
        app.publish(&product_event(p)).await;
    }
    // Normal events behind them are applied promptly.
    let normal = product("NORMAL-1", "Normal", "d", 100, 1);
    app.publish(&product_event(&normal)).await;
    app.publish(&product_event(&next_product(&normal, |p| p.stock = 7)))
        .await;
    app.wait_version("rv_products", normal.id, 2).await;
    // The missing first versions of 100 of them arrive: their parked successors apply.
    for p in &firsts[..100] {
        app.publish(&product_event(p)).await;
    }
    for p in &firsts[..100] {
        app.wait_version("rv_products", p.id, 2).await;
    }
    let view = answer(app.get(&format!("/v1/products/{}", firsts[0].id))).await;
    assert_eq!(view.body["stock"], 2);
    // The 1,000 others never get their predecessor: after GAP_TIMEOUT they are dead letters,
    // reported by readiness (still ready) and the metrics.
    let dead = dead_letters(&app, 1000, gap_timeout + Duration::from_secs(15)).await;
    assert_eq!(dead.len(), 1000);
    let stranded: std::collections::HashSet<Uuid> = seconds[100..].iter().map(|p| p.id).collect();
    for (d, reason) in &dead {
        let reason = reason.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("gap timeout"),
            "dead letter without a reason: {reason:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(d).unwrap();
        let id: Uuid = v["subject"].as_str().unwrap().parse().unwrap();
        assert!(stranded.contains(&id), "{id} was dead-lettered although its gap filled");
    }
    let ready = answer(app.get("/health/ready")).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let detail = ready.body["dependencies"]["projector"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("gap"),
        "readiness does not name the gap: {}",
        ready.text
    );
    assert!(detail.contains("read-api rebuild"), "{}", ready.text);
    // The gauges follow at the next sweep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.metrics().await;
        let timed_out = sample(&metrics, "read_gaps_timed_out", &[]).unwrap_or_default();
        let moved = sample(
            &metrics,
            "read_events_dead_lettered_total",
            &[("reason", "gap_timeout")],
        );
        if timed_out > 0.0 && moved == Some(1000.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed-out gaps not measured: {timed_out} gaps, {moved:?} moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked = app.query_json("SELECT count(*)::bigint AS n FROM rv_parked").await;
    assert_eq!(parked[0]["n"], 0, "dead-lettered events are still parked");
}

/// A sweep moving a timed-out gap to the dead letters publishes inside the transaction that
/// holds the aggregate's lock, which the workers applying that aggregate wait on. A broker that
/// stops answering without closing the connection (half-open) must not hold that lock until
/// the heartbeat gives up: the publish is given up after the broker timeout (5 s) and the lock
/// released, and the dead letter is published once the broker is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_stops_answering_does_not_hold_a_timed_out_gap_s_lock() {
    let proxy = ChaosProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let app = ReadApp::start_with(ReadOptions {
        gap_timeout: Duration::from_secs(2),
        amqp_url: Some(proxy.url(AMQP_URL)),
        ..ReadOptions::default()
    })
    .await;
    let first = product("HALF-OPEN-1", "Half open", "d", 100, 1);
    app.publish(&product_event(&next_product(&first, |p| p.stock = 2)))
        .await;
    wait_until("the event parked", Duration::from_secs(15), || async {
        count(&app, "SELECT count(*)::bigint AS n FROM rv_parked").await > 0
    })
    .await;
    // Every byte either way now waits two minutes: the connection stays open, nothing arrives.
    proxy.slow(Duration::from_secs(120));
    // The gap times out; the sweep takes the aggregate's lock and publishes its dead letter.
    wait_until(
        "the sweep holding an aggregate lock",
        Duration::from_secs(20),
        || async {
            count(
                &app,
                "SELECT count(*)::bigint AS n FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await
                > 0
        },
    )
    .await;
    // A worker applying this product would take the same lock: it gets it, well before the
    // broker's two minutes (and before this lock_timeout).
    let mut conn = app.db.conn().await;
    let taken = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            conn.batch_execute("SET LOCAL lock_timeout = '15s'").await?;
            read_api::projector::parking::lock(conn, &[(AggregateType::Product, first.id)]).await
        })
        .await;
    assert!(
        taken.is_ok(),
        "the sweep held the gap's lock while the broker did not answer: {taken:?}"
    );
    // The broker back (the stalled connection closed, a new one opened): the dead letter goes.
    proxy.cut();
    proxy.restore();
    let dead = dead_letters(&app, 1, Duration::from_secs(40)).await;
    assert!(
        dead.iter()
            .all(|(_, reason)| reason.as_deref().is_some_and(|r| r.starts_with("gap timeout"))),
        "{dead:?}"
    );
    wait_until("the parking emptied", Duration::from_secs(20), || async {
        count(&app, "SELECT count(*)::bigint AS n FROM rv_parked").await == 0
    })
    .await;
}

/// The `n` that `sql` counts.
async fn count(app: &ReadApp, sql: &str) -> i64 {
    app.query_json(sql).await[0]["n"].as_i64().unwrap_or_default()
}

/// Not a regression test of the old code (which held gaps in memory and retried them): it
/// guards the parking against races between instances. Two projecting instances consume one
/// queue, so successive versions of an aggregate go to both; every chain completes and
/// nothing stays parked.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_queue_park_and_drain_without_stranding_anything() {
    let app = ReadApp::start().await;
    let second = read_api::Service::start(&app.settings).await.expect("second instance");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !second.projector.as_ref().is_some_and(|p| p.connected()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second projector did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut heads: Vec<ProductData> = (0..100)
        .map(|i| product(&format!("TWO-{i}"), "Two", "d", 100, 1))
        .collect();
    for p in &heads {
        app.publish(&product_event(p)).await;
    }
    for _ in 2..=6 {
        for p in &mut heads {
            *p = next_product(p, |p| p.stock += 1);
            app.publish(&product_event(p)).await;
        }
    }
    for p in &heads {
        app.wait_version("rv_products", p.id, 6).await;
    }
    let parked = app.query_json("SELECT count(*)::bigint AS n FROM rv_parked").await;
    assert_eq!(parked[0]["n"], 0);
    second.shutdown().await;
}
