//! Poison rows go to the dead letters, block only their own aggregate, and come back with
//! `outbox-relay dlq replay` or are given up with `dlq discard`.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use ordering_tests::metrics_text::sample;
use ordering_tests::relay::broker::TestExchange;
use ordering_tests::relay::outbox::{insert_events, rows, unsent};
use ordering_tests::relay::process::{RelayEnv, relay_command, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;

const WAIT: Duration = Duration::from_secs(30);

fn cli(env: &RelayEnv, args: &[&str]) -> String {
    let out = relay_command(env, args).output().expect("run outbox-relay");
    assert!(
        out.status.success(),
        "outbox-relay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_row_is_dead_lettered_blocks_only_its_aggregate_and_replays() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let mut conn = db.conn().await;
    // p-1 and q-1: three events each; the second of p-1 cannot be a message (routing key too long).
    let ids = insert_events(&mut conn, "outbox", "p-", 1, 1, 3, 10).await;
    let q = insert_events(&mut conn, "outbox", "q-", 1, 1, 3, 10).await;
    // r-1: the first event is poison and will be discarded.
    let r = insert_events(&mut conn, "outbox", "r-", 1, 1, 2, 10).await;
    let long = "x".repeat(300);
    for id in [ids[1], r[0]] {
        diesel::sql_query(format!(
            "UPDATE outbox SET event_type = '{long}' WHERE event_id = '{id}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let env = RelayEnv::new(db.url(), &ex.name);
    let relay = spawn_relay(&env);
    wait_until("other aggregates flow", WAIT, || async {
        let got = got.event_ids();
        q.iter().all(|id| got.contains(id)) && got.contains(&ids[0])
    })
    .await;
    // The two poison rows are dead-lettered once their batch's other rows are confirmed.
    wait_until("two dead letters", WAIT, || async {
        cli(&env, &["dlq", "list", "--json"]).lines().count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = got.event_ids();
    assert!(
        !seen.contains(&ids[1]) && !seen.contains(&ids[2]),
        "p-1 waits behind its dead letter"
    );
    assert!(!seen.contains(&r[0]) && !seen.contains(&r[1]));
    let list = cli(&env, &["dlq", "list", "--json"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains(&ids[1].to_string()) && list.contains("routing key"),
        "{list}"
    );
    // Counted right after the dead letter's commit, which the list may see first.
    wait_until("the dead letters counted", WAIT, || async {
        relay.metrics().await.contains("relay_dead_lettered_total 2")
    })
    .await;
    let stored = rows(&mut conn, "outbox").await;
    let outbox_id = |e: uuid::Uuid| stored.iter().find(|r| r.event_id == e).unwrap().id.to_string();

    // Fixed by hand, then replayed: p-1 flows again, in order.
    diesel::sql_query(format!(
        "UPDATE outbox SET event_type = 'order.placed' WHERE event_id = '{}'",
        ids[1]
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    cli(&env, &["dlq", "replay", &outbox_id(ids[1])]);
    // Given up: r-1's first event is never published, its second is.
    cli(&env, &["dlq", "discard", &outbox_id(r[0])]);
    wait_until("replayed and unblocked events", WAIT, || async {
        let got = got.event_ids();
        got.contains(&ids[1]) && got.contains(&ids[2]) && got.contains(&r[1])
    })
    .await;
    assert!(!got.event_ids().contains(&r[0]));
    got.check_order().unwrap_err(); // r-1 starts at sequence 2: the discarded event is a known gap.
    assert_eq!(cli(&env, &["dlq", "list", "--json"]).lines().count(), 0);
    // Order holds for every aggregate but the one whose event was discarded.
    let mut last = std::collections::HashMap::new();
    for d in got.all().iter().filter(|d| d.subject != "r-1") {
        let max = last.entry(d.subject.clone()).or_insert(0);
        assert!(d.sequence <= *max + 1, "{} out of order", d.subject);
        *max = (*max).max(d.sequence);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_nacks_are_retried_until_the_broker_takes_them_never_dead_lettered_nor_reordered() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    // A full queue that rejects publishes, bound to one routing key only: the broker nacks
    // every event of that type and acks the others.
    let full = format!("{}.full", ex.name);
    let conn = lapin::Connection::connect(ordering_tests::relay::broker::AMQP_URL, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(full.as_str().into(), Default::default(), args)
        .await
        .unwrap();
    ch.queue_bind(
        full.as_str().into(),
        ex.name.as_str().into(),
        "order.rejected".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let mut c = db.conn().await;
    let n = insert_events(&mut c, "outbox", "n-", 1, 1, 3, 10).await;
    let others = insert_events(&mut c, "outbox", "o-", 5, 1, 3, 10).await;
    diesel::sql_query(format!(
        "UPDATE outbox SET event_type = 'order.rejected' WHERE event_id = '{}'",
        n[1]
    ))
    .execute(&mut c)
    .await
    .unwrap();
    // A nack says the broker could not take the message now (here a full queue; in a cluster,
    // a queue without a leader): however many attempts that takes, the row is not given up.
    let env = RelayEnv::new(db.url(), &ex.name).set("RELAY_MAX_ATTEMPTS", "2");
    let relay = spawn_relay(&env);
    wait_until("other aggregates and n-1's first event", WAIT, || async {
        let got = got.event_ids();
        others.iter().all(|id| got.contains(id)) && got.contains(&n[0])
    })
    .await;
    let retries = |text: &str| sample(text, "relay_retries_total", &[("dependency", "rabbitmq")]);
    wait_until(
        "the nacked event to be tried more than RELAY_MAX_ATTEMPTS times",
        WAIT,
        || async { retries(&relay.metrics().await).is_some_and(|n| n >= 4.0) },
    )
    .await;
    assert_eq!(
        cli(&env, &["dlq", "list", "--json"]).trim(),
        "",
        "a nacked row was dead-lettered"
    );
    // Nacks that go on reopen the connection (a channel can hold a stale view of a queue).
    let reconnects = |text: &str| sample(text, "relay_broker_reconnects_total", &[]);
    wait_until("the relay to reconnect after nacks in a row", WAIT, || async {
        reconnects(&relay.metrics().await).is_some_and(|n| n >= 1.0)
    })
    .await;
    // The nacked event may have reached the consumer's queue (a nack says nothing about other
    // queues), but nothing after it in its aggregate was published.
    assert!(!got.event_ids().contains(&n[2]));
    // The broker takes it again: the aggregate goes on, in order, with nobody's help.
    ch.queue_delete(full.as_str().into(), Default::default()).await.unwrap();
    wait_until("the rest of n-1", WAIT, || async { got.event_ids().contains(&n[2]) }).await;
    // A delivery comes before its row's mark (the relay marks once the broker confirms).
    wait_until("every row marked sent", WAIT, || async {
        unsent(&mut db.conn().await, "outbox").await == 0
    })
    .await;
    got.check_order().unwrap();
}
