//! The write-api binary as an operator runs it: bad settings, several instances migrating at
//! once, graceful shutdown on SIGTERM.

use std::collections::HashMap;
use std::time::Duration;

use ordering_tests::process::{ServiceProcess, run_to_exit};
use ordering_tests::test_db::TestDatabase;
use ordering_tests::write_app::{SECRET, admin_token};
use serde_json::json;

fn env(database_url: &str) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), database_url.to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ])
}

#[test]
fn a_bad_setting_stops_the_service_with_status_2_and_one_line_naming_it() {
    let base = env("postgres://root@127.0.0.1:5432/unused");
    let cases: [(&str, Option<&str>); 8] = [
        ("JWT_SECRET", None),
        ("JWT_SECRET", Some("short")),
        ("WRITE_API_ADDR", Some("not-an-address")),
        ("DATABASE_URL", Some("mysql://x")),
        ("DB_POOL_SIZE", Some("many")),
        ("IDEMPOTENCY_TTL", Some("1h")),
        ("JWT_AUDIENCE", Some(" ordering")),
        ("JWT_ISSUER", Some("https://idp.example\t")),
    ];
    for (name, value) in cases {
        let mut e = base.clone();
        match value {
            Some(v) => e.insert(name.to_owned(), v.to_owned()),
            None => e.remove(name),
        };
        let (status, stderr) = run_to_exit("write-api", &[], &e);
        assert_eq!(status.code(), Some(2), "{name}={value:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}={value:?}: want one line, got {stderr:?}");
        assert!(lines[0].contains(name), "{name}={value:?}: {stderr:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_instances_starting_at_once_migrate_exactly_once() {
    let db = TestDatabase::empty().await;
    let e = env(db.url());
    let instances: Vec<ServiceProcess> = (0..3)
        .map(|_| ServiceProcess::spawn("write-api", &[], "WRITE_API_ADDR", &e))
        .collect();
    for i in &instances {
        i.wait_ready_status(200, Duration::from_secs(60)).await;
    }
    assert_eq!(
        db.count("__diesel_schema_migrations").await,
        ordering_schema::migrate::count(&ordering_schema::migrate::WRITE_SIDE) as i64
    );
    // Every instance serves commands on the one schema.
    for (n, i) in instances.iter().enumerate() {
        let res = reqwest::Client::new()
            .post(i.url("/v1/products"))
            .bearer_auth(admin_token())
            .json(&json!({"sku": format!("multi-{n}"), "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 201);
    }
    assert_eq!(db.count("products").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_commands_finish_and_exits_cleanly() {
    let db = TestDatabase::new().await;
    let mut service = ServiceProcess::spawn("write-api", &[], "WRITE_API_ADDR", &env(db.url()));
    service.wait_ready_status(200, Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let token = admin_token();
    let requests: Vec<_> = (0..60)
        .map(|n| {
            let req = client
                .post(service.url("/v1/products"))
                .bearer_auth(&token)
                .json(
                    &json!({"sku": format!("term-{n}"), "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
                )
                .send();
            tokio::spawn(req)
        })
        .collect();
    // SIGTERM once the first command is stored: the server has accepted requests, and most of
    // the 60 are still in flight (a fixed head start could end before any was accepted).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db.count("products").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no command stored in 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    service.sigterm();
    let mut answered = 0;
    for r in requests {
        // A request the server had not accepted before it stopped listening fails to connect;
        // one it accepted must get its full answer.
        if let Ok(res) = r.await.expect("join") {
            assert_eq!(res.status(), 201);
            answered += 1;
        }
    }
    let status = service.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        answered > 0,
        "SIGTERM came before any request was accepted; the test proves nothing"
    );
    assert_eq!(
        db.count("products").await,
        answered,
        "every answered command is stored, and only those"
    );
    assert_eq!(db.count("outbox").await, answered);
}

/// The JSON lines of target `access` a write-api logged while answering one command, run with
/// `ACCESS_LOG_LEVEL=level` (unset for `None`).
async fn access_lines(level: Option<&str>) -> Vec<serde_json::Value> {
    let db = TestDatabase::new().await;
    let mut e = env(db.url());
    e.insert("RUST_LOG".to_owned(), "info".to_owned());
    e.insert("LOG_FORMAT".to_owned(), "json".to_owned());
    if let Some(level) = level {
        e.insert("ACCESS_LOG_LEVEL".to_owned(), level.to_owned());
    }
    let log = std::env::temp_dir().join(format!("access-{}.log", uuid::Uuid::new_v4()));
    let file = std::fs::File::create(&log).expect("log file");
    let mut api = ServiceProcess::spawn_with_stdout("write-api", &[], "WRITE_API_ADDR", &e, file.into());
    api.wait_ready_status(200, Duration::from_secs(60)).await;
    let created = reqwest::Client::new()
        .post(api.url("/v1/products"))
        .bearer_auth(admin_token())
        .header("x-request-id", "access-log-test-1")
        .json(&json!({"sku": "ACC-1", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(created.status(), 201);
    assert!(api.terminate(Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&log).expect("read log");
    let _ = std::fs::remove_file(&log);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "access")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_gets_one_access_log_line_at_info_unless_switched_off() {
    let lines = access_lines(None).await;
    let command: Vec<_> = lines.iter().filter(|l| l["route"] == "/v1/products").collect();
    assert_eq!(command.len(), 1, "{lines:#?}");
    let line = command[0];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["status"], 201, "{line}");
    assert!(line["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{line}");
    assert!(
        line.to_string().contains("access-log-test-1"),
        "no request id in {line}"
    );

    assert!(access_lines(Some("off")).await.is_empty());
    let debug = access_lines(Some("debug")).await;
    assert!(debug.is_empty(), "RUST_LOG=info hides a debug access log: {debug:#?}");

    let mut e = env("postgres://root@127.0.0.1:5432/unused");
    e.insert("ACCESS_LOG_LEVEL".to_owned(), "loud".to_owned());
    let (status, stderr) = run_to_exit("write-api", &[], &e);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ACCESS_LOG_LEVEL"), "{stderr}");
}
