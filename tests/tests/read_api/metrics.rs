//! The read-api's `/metrics`: every metric described, counters there at zero from the start
//! (each dead-letter reason included), the dead-letter queue's depth and the event lag.

use std::time::Duration;

use ordering_tests::metrics_text::{not_at_zero, sample, undescribed};
use ordering_tests::read_app::{ReadApp, product, product_event};

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_is_described_and_counters_start_at_zero() {
    let app = ReadApp::start().await;
    let m = app.metrics().await;
    assert_eq!(undescribed(&m), Vec::<String>::new(), "{m}");
    assert_eq!(not_at_zero(&m, read_api::catalog::READ), Vec::<String>::new(), "{m}");
    for reason in ["poison", "refused", "gap_timeout"] {
        assert_eq!(
            sample(&m, "read_events_dead_lettered_total", &[("reason", reason)]),
            Some(0.0),
            "{m}"
        );
    }
    assert_eq!(sample(&m, "read_event_lag_seconds_count", &[]), Some(0.0), "{m}");
    assert_eq!(sample(&m, "build_info", &[("service", "read-api")]), Some(1.0), "{m}");
    assert!(sample(&m, "process_cpu_seconds_total", &[]).is_some(), "{m}");
    assert!(
        sample(&m, "db_pool_connections_max", &[]).is_some_and(|v| v > 0.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_in_the_queue_and_the_event_lag_are_measured() {
    let app = ReadApp::start().await;
    app.publish_raw("product.created", b"{poison").await;
    let p = product("LAG-1", "Lag", "l", 1, 1);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = app.metrics().await;
        if sample(&m, "read_dead_letters", &[]) == Some(1.0) {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "read_dead_letters never 1:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sample(&m, "read_event_lag_seconds_count", &[]), Some(1.0), "{m}");
    let lag = sample(&m, "read_event_lag_seconds_sum", &[]).expect("lag sum");
    assert!((0.0..60.0).contains(&lag), "{lag}");
}
