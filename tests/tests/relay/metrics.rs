//! The relay's `/metrics`: every metric described, counters and histograms there at zero from
//! the start, and the table-wide backlog gauges counted once when summed over instances.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use ordering_tests::metrics_text::{not_at_zero, sample, undescribed};
use ordering_tests::pipeline::metric_sum;
use ordering_tests::process::{ServiceProcess, free_addr};
use ordering_tests::relay::broker::TestExchange;
use ordering_tests::relay::outbox::insert_events;
use ordering_tests::relay::process::{RelayEnv, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_is_described_and_counters_start_at_zero() {
    let db = TestDatabase::new().await;
    let ex = TestExchange::new().await;
    let relay = spawn_relay(&RelayEnv::new(db.url(), &ex.name));
    relay.wait_ready_status(200, WAIT).await;
    let m = relay.metrics().await;
    assert_eq!(undescribed(&m), Vec::<String>::new(), "{m}");
    // All at zero but one: starting on the day-partitioned outbox, the relay made today's
    // partition and the days ahead.
    let wrong: Vec<String> = not_at_zero(&m, outbox_relay::catalog::RELAY)
        .into_iter()
        .filter(|name| !name.starts_with("relay_day_partitions_created_total"))
        .collect();
    assert_eq!(wrong, Vec::<String>::new(), "{m}");
    assert_eq!(
        sample(&m, "relay_day_partitions_created_total", &[]),
        Some((outbox_relay::retention::DAYS_AHEAD + 1) as f64),
        "{m}"
    );
    for dependency in ["postgres", "rabbitmq"] {
        assert_eq!(
            sample(&m, "relay_retries_total", &[("dependency", dependency)]),
            Some(0.0),
            "{m}"
        );
    }
    for name in [
        "relay_rows_published_total",
        "relay_dead_lettered_total",
        "relay_commit_to_confirm_seconds_count",
    ] {
        assert_eq!(sample(&m, name, &[]), Some(0.0), "{name} in {m}");
    }
    assert_eq!(
        sample(&m, "build_info", &[("service", "outbox-relay")]),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(&m, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0),
        "{m}"
    );
    assert_eq!(sample(&m, "db_pool_connections_max", &[]), Some(8.0), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_to_confirm_is_measured_for_every_published_row() {
    let db = TestDatabase::new().await;
    let ex = TestExchange::new().await;
    let relay = spawn_relay(&RelayEnv::new(db.url(), &ex.name));
    relay.wait_ready_status(200, WAIT).await;
    let mut conn = db.conn().await;
    insert_events(&mut conn, "outbox", "c-", 5, 1, 2, 10).await;
    wait_until("10 rows confirmed", WAIT, || async {
        sample(&relay.metrics().await, "relay_commit_to_confirm_seconds_count", &[]) == Some(10.0)
    })
    .await;
    let m = relay.metrics().await;
    let total = sample(&m, "relay_commit_to_confirm_seconds_sum", &[]).expect("sum");
    assert!(total > 0.0 && total < 10.0 * 60.0, "{total}");
}

/// The text of `relay`'s `/metrics`, or nothing while it does not answer.
async fn scrape(relay: &ServiceProcess) -> String {
    match reqwest::get(relay.url("/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backlog_gauges_summed_over_two_relays_equal_the_table() {
    let db = TestDatabase::new().await;
    // A broker address nobody listens on: nothing is published, so the backlog stays put.
    let env =
        RelayEnv::new(db.url(), "metrics-backlog").set("AMQP_URL", &format!("amqp://guest:guest@{}/%2f", free_addr()));
    let relays = [spawn_relay(&env), spawn_relay(&env)];
    let mut conn = db.conn().await;
    insert_events(&mut conn, "outbox", "b-", 30, 1, 2, 10).await;
    // Both relays created the dead letters table once they answer /metrics.
    wait_until("both relays to hold partitions", WAIT, || async {
        let mut both = true;
        for r in &relays {
            both &= sample(&scrape(r).await, "relay_partitions_held", &[]).is_some_and(|v| v > 0.0);
        }
        both
    })
    .await;
    diesel::sql_query(
        "INSERT INTO outbox_relay_dead_letters \
           (outbox_id, event_id, aggregate_type, aggregate_id, sequence, event_type, attempts, last_error) \
         SELECT id, event_id, aggregate_type, aggregate_id, sequence, event_type, 1, 'test' \
           FROM outbox ORDER BY id LIMIT 2",
    )
    .execute(&mut conn)
    .await
    .expect("dead letters");
    let summed = |texts: &[String], name: &str| texts.iter().map(|t| metric_sum(t, name)).sum::<f64>();
    let deadline = tokio::time::Instant::now() + WAIT;
    let texts = loop {
        let mut texts = Vec::new();
        for r in &relays {
            texts.push(scrape(r).await);
        }
        if summed(&texts, "relay_pending_rows") == 60.0
            && summed(&texts, "relay_dead_letters") == 2.0
            && summed(&texts, "relay_backlog_reporter") == 1.0
            && texts
                .iter()
                .all(|t| sample(t, "relay_partitions_held", &[]).is_some_and(|v| v > 0.0))
        {
            break texts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the summed gauges never equalled the table (60 pending, 2 dead letters, 1 reporter):\n{}",
            texts.join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The lag too: one instance reports it, the other 0.
    let lags: Vec<f64> = texts.iter().map(|t| metric_sum(t, "relay_lag_seconds")).collect();
    assert!(lags.contains(&0.0) && lags.iter().sum::<f64>() > 0.0, "{lags:?}");
}
