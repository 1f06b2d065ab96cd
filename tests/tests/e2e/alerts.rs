//! The shipped monitoring files against a running pipeline: every metric the alert rules and
//! the Grafana dashboard name is exported, and a real Prometheus with the shipped rules fires
//! the matching alert when a row is dead-lettered and when the relay stops while writes go on.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use ordering_tests::pipeline::{Load, Pipeline, PipelineOptions};
use ordering_tests::prometheus::{Prometheus, dashboard_exprs, metric_names, rule_exprs, shipped_rules, with_for};
use ordering_tests::relay::outbox::insert_events;
use serde_json::Value;

/// Series Prometheus makes itself, not the services.
const SYNTHETIC: &[&str] = &["up"];

#[test]
fn metric_names_skips_functions_labels_and_ranges() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, job) (rate(a_seconds_bucket{route!="/x",le="1"}[5m:30s])))
           / ignoring(tier) group_left max(b_total offset 5m) and absent(c == 1) or up"#,
    );
    let expected: BTreeSet<String> = ["a_seconds", "b_total", "c", "up"].map(String::from).into();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_every_metric_in_the_alert_rules_and_dashboard_is_exported() {
    let p = Pipeline::start(PipelineOptions {
        relays: 1,
        ..PipelineOptions::default()
    })
    .await;
    // HTTP series appear with a route's first request: read each /metrics once before keeping it.
    let services = [&p.write_api, &p.relays[0], p.read()];
    for s in services {
        s.metrics().await;
    }
    let mut exported = String::new();
    for s in services {
        exported.push_str(&s.metrics().await);
    }
    let rules = rule_exprs(&shipped_rules());
    let dashboard = dashboard_exprs();
    assert!(rules.len() >= 11 && dashboard.len() >= 20, "{rules:?} {dashboard:?}");
    let mut missing = BTreeSet::new();
    let mut named = BTreeSet::new();
    for expr in rules.iter().chain(&dashboard) {
        for name in metric_names(expr) {
            if !SYNTHETIC.contains(&name.as_str()) && !exported.contains(&format!("# TYPE {name} ")) {
                missing.insert(format!("{name} (in {expr})"));
            }
            named.insert(name);
        }
    }
    println!(
        "[alerts] {} metric names in {} rule and {} dashboard queries: {named:?}",
        named.len(),
        rules.len(),
        dashboard.len()
    );
    assert!(missing.is_empty(), "named but not exported: {missing:#?}");
}

#[test]
fn dashboard_queries_parse_and_use_the_provisioned_datasource() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/dashboards/ordering.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let datasources = std::fs::read_to_string(root.join("deploy/grafana/provisioning/datasources/prometheus.yml"))
        .expect("datasource provisioning");
    let uid = dashboard["panels"][0]["datasource"]["uid"]
        .as_str()
        .expect("a datasource uid");
    assert!(
        datasources.contains(&format!("uid: {uid}\n")),
        "datasource {uid} is not provisioned"
    );
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id: {panel}"
        );
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{}: no gridPos",
            panel["title"]
        );
        assert!(
            !panel["targets"].as_array().expect("targets").is_empty(),
            "{}",
            panel["title"]
        );
    }
    // promtool parses each query as a recording rule's expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            Value::from(expr.as_str())
        ));
    }
    let file = std::env::temp_dir().join(format!("dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&file, rules).expect("write");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/services installs it)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "a dashboard query does not parse: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_prometheus_fires_alerts_for_a_dead_letter_and_a_stopped_relay() {
    let started = Instant::now();
    let mut p = Pipeline::start(PipelineOptions {
        relays: 1,
        ..PipelineOptions::default()
    })
    .await;
    // The shipped rules with every `for:` at 2s (the shipped minutes would outlast the test;
    // 2 s rides out one scrape that times out on a loaded machine, which at 0s would fire
    // ServiceDown on the healthy pipeline); expressions and thresholds as shipped.
    let prometheus = Prometheus::start(
        &[
            ("write-api", vec![p.write_api.addr]),
            ("outbox-relay", vec![p.relays[0].addr]),
            ("read-api", vec![p.read().addr]),
        ],
        &with_for(&shipped_rules(), "2s"),
    )
    .await;
    // The first scrape lands about 5 s after start: poll for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query("up == 1").await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "not every service scraped: {:?}",
            prometheus.query("up").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let scraped = started.elapsed();
    // Evaluations for longer than the `for:` on a healthy pipeline: nothing fires.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let firing: Vec<Value> = prometheus
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "alerts firing on a healthy pipeline: {firing:?}");

    // A row that cannot be a message (routing key over 255 bytes), committed at once with its
    // bad type so the relay never sees it otherwise: the relay dead-letters it.
    let mut conn = p.write_db.conn().await;
    diesel::sql_query("BEGIN").execute(&mut conn).await.expect("begin");
    let ids = insert_events(&mut conn, "outbox", "alert-", 1, 1, 1, 10).await;
    diesel::sql_query(format!(
        "UPDATE outbox SET event_type = '{}' WHERE event_id = '{}'",
        "x".repeat(300),
        ids[0]
    ))
    .execute(&mut conn)
    .await
    .expect("poison the row");
    diesel::sql_query("COMMIT").execute(&mut conn).await.expect("commit");
    let (_, dead_letter) = prometheus
        .wait_firing("RelayDeadLetters", &[], Duration::from_secs(30))
        .await;

    // The relay stops while writes go on: the relay is down, and nobody reports the backlog.
    let driver = p.driver();
    driver.seed(4, 500, 4).await;
    let load = Load::start(&driver, 2, Duration::from_millis(20));
    p.relays[0].kill9();
    let (_, down) = prometheus
        .wait_firing("ServiceDown", &[("job", "outbox-relay")], Duration::from_secs(30))
        .await;
    let (_, unreported) = prometheus
        .wait_firing("RelayBacklogUnreported", &[], Duration::from_secs(30))
        .await;
    let commands = load.stop().await;
    let unsent = p.unsent().await;
    println!(
        "[alerts] all scraped {scraped:.1?} after start; RelayDeadLetters firing {dead_letter:.1?} after the poison row; \
         ServiceDown{{job=outbox-relay}} {down:.1?} after the kill, RelayBacklogUnreported {unreported:.1?} later; \
         {commands} commands answered meanwhile, {unsent} rows unsent; total {:.1?}",
        started.elapsed()
    );
    assert!(
        commands > 0 && unsent > 0,
        "writes did not go on while the relay was down"
    );
}
