//! An exchange that routes a message nowhere (an operator removed the stream's binding and no
//! other queue is bound): the broker confirms the publish and drops the message, so the relay
//! publishes with `mandatory` and counts a returned message as not delivered.

use std::time::Duration;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use ordering_tests::relay::broker::{AMQP_URL, TestExchange};
use ordering_tests::relay::outbox::{insert_events, unsent};
use ordering_tests::relay::process::{RelayEnv, relay_command, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;

const WAIT: Duration = Duration::from_secs(30);

fn dead_letters(env: &RelayEnv) -> String {
    let out = relay_command(env, &["dlq", "list", "--json"])
        .output()
        .expect("run outbox-relay");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn returned_messages_stay_unsent_are_dead_lettered_and_flow_once_routed_again() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let env = RelayEnv::new(db.url(), &ex.name).set("RELAY_MAX_ATTEMPTS", "3");
    let relay = spawn_relay(&env);
    // Ready: connected, the exchange declared and its stream bound.
    relay.wait_ready_status(200, WAIT).await;
    let broker = lapin::Connection::connect(AMQP_URL, Default::default()).await.unwrap();
    let ch = broker.create_channel().await.unwrap();
    ch.queue_unbind(
        ex.stream().as_str().into(),
        ex.name.as_str().into(),
        "#".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let mut conn = db.conn().await;
    let ids = insert_events(&mut conn, "outbox", "u-", 3, 1, 2, 10).await;
    let total = ids.len() as i64;
    // Either the head row of each aggregate is dead-lettered, or (the bug) rows are marked
    // sent although the broker dropped them.
    wait_until("dead letters, or rows marked sent", WAIT, || async {
        dead_letters(&env).lines().count() == 3 || unsent(&mut db.conn().await, "outbox").await < total
    })
    .await;
    assert_eq!(
        unsent(&mut conn, "outbox").await,
        total,
        "rows the broker returned unroutable were marked sent"
    );
    let list = dead_letters(&env);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("returned") && list.contains("\"attempts\":3"), "{list}");
    assert!(relay.metrics().await.contains("relay_retries_total"));

    // The operator binds the stream again; replayed, every event is published in order and
    // marked sent.
    ch.queue_bind(
        ex.stream().as_str().into(),
        ex.name.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let got = ex.consume().await;
    let out = relay_command(&env, &["dlq", "replay", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("every event to arrive", WAIT, || async {
        got.event_ids().len() == ids.len()
    })
    .await;
    wait_until("every row to be marked sent", WAIT, || async {
        unsent(&mut db.conn().await, "outbox").await == 0
    })
    .await;
    got.check_order().unwrap();
    assert!(dead_letters(&env).is_empty());
}
