//! The relay's basic promises: every committed row arrives with the contract's message
//! properties, a rolled-back one never does, a late commit is not skipped, a sidecar serves
//! another table and exchange, SIGTERM drains and exits 0, bad settings exit 2.

use std::time::Duration;

use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ordering_tests::relay::broker::TestExchange;
use ordering_tests::relay::outbox::{create_plain_outbox, insert_events, rows, unsent};
use ordering_tests::relay::process::{RelayEnv, relay_command, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn every_committed_row_arrives_with_the_contract_message_properties() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let mut conn = db.conn().await;
    let ids = insert_events(&mut conn, "outbox", "agg-", 20, 1, 10, 500).await;
    let relay = spawn_relay(&RelayEnv::new(db.url(), &ex.name));
    wait_until("all 200 events", WAIT, || async { got.event_ids().len() == ids.len() }).await;
    got.check_order().unwrap();
    let stored = rows(&mut conn, "outbox").await;
    let by_id: std::collections::HashMap<_, _> = got.all().into_iter().map(|r| (r.event_id, r)).collect();
    for row in &stored {
        let r = &by_id[&row.event_id];
        assert_eq!(r.routing_key, row.event_type);
        assert_eq!(r.body, row.payload.as_bytes(), "body is the payload exactly as stored");
        let p = &r.properties;
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(row.event_id.to_string())
        );
        let headers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&row.headers).unwrap();
        let amqp = p.headers().as_ref().expect("headers").inner();
        for (k, v) in headers {
            let sent = amqp.get(k.as_str()).unwrap_or_else(|| panic!("header {k} missing"));
            let lapin::types::AMQPValue::LongString(s) = sent else {
                panic!("header {k} is {sent:?}")
            };
            assert_eq!(s.as_bytes(), v.as_str().unwrap().as_bytes());
        }
        assert!(amqp.contains_key("traceparent"));
    }
    wait_until("rows marked sent", WAIT, || async {
        unsent(&mut db.conn().await, "outbox").await == 0
    })
    .await;
    // The stream is declared and bound: it holds the events too.
    let ch = lapin::Connection::connect(ordering_tests::relay::broker::AMQP_URL, Default::default())
        .await
        .unwrap()
        .create_channel()
        .await
        .unwrap();
    let q = ch
        .queue_declare(
            ex.stream().as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("the stream <exchange>.log exists");
    assert_eq!(q.name().as_str(), ex.stream());
    let metrics = relay.metrics().await;
    for m in [
        "relay_rows_published_total",
        "relay_confirm_seconds",
        "relay_partitions_held",
        "relay_breaker_state",
    ] {
        assert!(metrics.contains(m), "metric {m} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_transaction_publishes_nothing() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let _relay = spawn_relay(&RelayEnv::new(db.url(), &ex.name));
    let mut conn = db.conn().await;
    conn.batch_execute("BEGIN").await.unwrap();
    let rolled_back = insert_events(&mut conn, "outbox", "rb-", 5, 1, 1, 10).await;
    conn.batch_execute("ROLLBACK").await.unwrap();
    let committed = insert_events(&mut conn, "outbox", "ok-", 5, 1, 1, 10).await;
    wait_until("committed events", WAIT, || async {
        got.event_ids().len() >= committed.len()
    })
    .await;
    // Another poll or two: still nothing of the rolled-back transaction.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ids = got.event_ids();
    assert!(
        rolled_back.iter().all(|id| !ids.contains(id)),
        "a rolled-back event was published"
    );
    assert_eq!(ids.len(), committed.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn late_commit_is_published_after_later_rows() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let relay = spawn_relay(&RelayEnv::new(db.url(), &ex.name));
    // Once its schema is set up (adding columns would wait for the open transaction).
    relay.wait_ready_status(200, WAIT).await;
    // This transaction takes its id first and commits last.
    let mut late = db.conn().await;
    late.batch_execute("BEGIN").await.unwrap();
    let late_ids = insert_events(&mut late, "outbox", "late-", 1, 1, 1, 10).await;
    let mut conn = db.conn().await;
    let later = insert_events(&mut conn, "outbox", "early-", 10, 1, 10, 10).await;
    wait_until("the 100 later rows", WAIT, || async {
        got.event_ids().len() >= later.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!got.event_ids().contains(&late_ids[0]));
    late.batch_execute("COMMIT").await.unwrap();
    wait_until("the late row", WAIT, || async {
        got.event_ids().contains(&late_ids[0])
    })
    .await;
    got.check_order().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_serves_another_table_and_exchange() {
    let db = TestDatabase::empty().await;
    let mut conn = db.conn().await;
    conn.batch_execute("CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int PRIMARY KEY);")
        .await
        .unwrap();
    create_plain_outbox(&mut conn, "billing.events_outbox").await;
    let ex = TestExchange::named(&format!("billing.{}", uuid::Uuid::new_v4().simple())).await;
    let mut ex = ex;
    let got = ex.consume().await;
    let env = RelayEnv::new(db.url(), &ex.name).set("OUTBOX_TABLE", "billing.events_outbox");
    let _relay = spawn_relay(&env);
    let ids = insert_events(&mut conn, "billing.events_outbox", "inv-", 5, 1, 4, 10).await;
    wait_until("sidecar events", WAIT, || async { got.event_ids().len() == ids.len() }).await;
    got.check_order().unwrap();
    // Its own objects sit next to the table, named after it; nothing else was touched.
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        n: String,
    }
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_schema || '.' || table_name AS n FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let tables: Vec<String> = tables.into_iter().map(|t| t.n).collect();
    assert_eq!(
        tables,
        [
            "billing.events_outbox",
            "billing.events_outbox_relay_dead_letters",
            "billing.events_outbox_relay_instances",
            "billing.events_outbox_relay_leases",
            "billing.events_outbox_relay_schema",
            "billing.invoices",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_confirms_releases_leases_and_exits_0() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let mut conn = db.conn().await;
    let ids = insert_events(&mut conn, "outbox", "t-", 50, 1, 40, 200).await;
    let mut relay = spawn_relay(&RelayEnv::new(db.url(), &ex.name));
    wait_until("publishing to start", WAIT, || async { !got.is_empty() }).await;
    let status = relay.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let held: N = diesel::sql_query("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(held.n, 0, "leases released on shutdown");
    // Every row marked sent was delivered (confirms were recorded, not invented).
    // A confirmed message is queued; our consumer may get it a moment later.
    let stored = rows(&mut conn, "outbox").await;
    let sent: Vec<_> = stored
        .iter()
        .filter(|r| r.sent_at.is_some())
        .map(|r| r.event_id)
        .collect();
    wait_until("every row marked sent to be delivered", WAIT, || async {
        let delivered = got.event_ids();
        sent.iter().all(|e| delivered.contains(e))
    })
    .await;
    // A new instance finishes the job.
    let _relay = spawn_relay(&RelayEnv::new(db.url(), &ex.name));
    wait_until("the rest", WAIT, || async { got.event_ids().len() == ids.len() }).await;
    got.check_order().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_command_is_idempotent_and_partitions_must_agree() {
    let db = TestDatabase::new().await;
    let env = RelayEnv::new(db.url(), "unused");
    for expected in ["1 step(s) applied", "0 step(s) applied"] {
        let out = relay_command(&env, &["migrate"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(expected));
    }
    assert_eq!(db.count("outbox_relay_leases").await, 16);
    // Another partition count on the same outbox would break per-aggregate order: refused.
    let out = relay_command(&env.clone().set("RELAY_PARTITIONS", "8"), &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RELAY_PARTITIONS"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_setting_exits_2_naming_it() {
    for (k, v) in [
        ("OUTBOX_TABLE", "outbox; drop table x"),
        ("EVENT_LOG_MAX_AGE", "7 days"),
        ("OUTBOX_CLEANUP_CRON", "never"),
        (
            "AMQP_URL",
            "amqp://guest:s3cret@127.0.0.1:5672/%2f,http://guest:s3cret@127.0.0.1:5673/",
        ),
        ("AMQP_URL", "amqp://guest:s3cret@127.0.0.1:5672/%2f,"),
        ("AMQP_REPLICATION_FACTOR", "0"),
    ] {
        let env = RelayEnv::new("postgres://root@127.0.0.1:5432/postgres", "x").set(k, v);
        let out = relay_command(&env, &[]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{k}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(k), "{err}");
        assert!(!err.contains("s3cret"), "a password in the message: {err}");
    }
}
