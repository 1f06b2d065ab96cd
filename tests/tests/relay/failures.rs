//! The relay under failures: instances killed with `kill -9`, broker and database connections
//! cut and restored through a chaos proxy. Nothing may be lost, and per aggregate the first
//! delivery of each sequence must come in sequence order.

use std::time::Duration;

use ordering_tests::relay::broker::TestExchange;
use ordering_tests::relay::chaos_proxy::ChaosProxy;
use ordering_tests::relay::outbox::{insert_events, unsent};
use ordering_tests::relay::process::{RelayEnv, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;
use rand::Rng;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_one_of_two_relays_loses_nothing_and_keeps_order() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    // A small window and batch so that kills land while many confirms are outstanding.
    let env = RelayEnv::new(db.url(), &ex.name)
        .set("RELAY_WINDOW", "32")
        .set("RELAY_BATCH", "200");
    let stable = spawn_relay(&env);
    stable.wait_ready_status(200, WAIT).await;
    let mut victim = spawn_relay(&env);
    let url = db.url().to_owned();
    let writing = tokio_util::sync::CancellationToken::new();
    let stop_writing = writing.clone();
    // Waves of one event for each of 50 aggregates, sequences in order, until told to stop.
    let writer = tokio::spawn(async move {
        let mut conn = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url)
            .await
            .expect("connect");
        let mut ids = Vec::new();
        let mut wave = 1;
        while !stop_writing.is_cancelled() || wave <= 60 {
            ids.extend(insert_events(&mut conn, "outbox", "k-", 50, wave, 1, 300).await);
            wave += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        ids
    });
    let mut kills = 0;
    for _ in 0..3 {
        // Kill only while the victim holds partitions, at a random moment.
        wait_until("both relays to hold partitions", WAIT, || async {
            owners(&db).await == 2
        })
        .await;
        let wait = rand::rng().random_range(0..500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        victim.kill9();
        kills += 1;
        victim = spawn_relay(&env);
        // The dead instance's leases count as held until they expire (RELAY_LEASE_TTL).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    writing.cancel();
    let ids = writer.await.unwrap();
    wait_until("every event", WAIT, || async { got.event_ids().len() == ids.len() }).await;
    got.check_order().unwrap();
    let all = got.event_ids();
    assert!(ids.iter().all(|id| all.contains(id)));
    wait_until("all rows marked sent", WAIT, || async {
        unsent(&mut db.conn().await, "outbox").await == 0
    })
    .await;
    eprintln!(
        "{} events, {kills} kills, {} deliveries ({} duplicates)",
        ids.len(),
        got.len(),
        got.len() - ids.len()
    );
}

/// Distinct instances holding unexpired leases.
async fn owners(db: &TestDatabase) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = db.conn().await;
    diesel_async::RunQueryDsl::get_result::<N>(
        diesel::sql_query(
            "SELECT count(DISTINCT owner) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL AND expires_at > now()",
        ),
        &mut c,
    )
    .await
    .map(|n| n.n)
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_connection_cut_heals_and_readiness_reports_it() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let proxy = ChaosProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let env = RelayEnv::new(db.url(), &ex.name).set("AMQP_URL", &proxy.url(ordering_tests::relay::broker::AMQP_URL));
    let relay = spawn_relay(&env);
    relay.wait_ready_status(200, WAIT).await;
    let mut conn = db.conn().await;
    let mut ids = insert_events(&mut conn, "outbox", "b-", 50, 1, 10, 300).await;
    wait_until("some deliveries", WAIT, || async { !got.is_empty() }).await;
    proxy.cut();
    relay.wait_ready_status(503, WAIT).await;
    ids.extend(insert_events(&mut conn, "outbox", "b-", 50, 11, 10, 300).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    relay.wait_ready_status(200, WAIT).await;
    wait_until("every event", WAIT, || async { got.event_ids().len() == ids.len() }).await;
    got.check_order().unwrap();
    assert!(relay.metrics().await.contains("relay_retries_total"));
}

#[tokio::test(flavor = "multi_thread")]
async fn database_connection_cut_heals_and_readiness_reports_it() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let proxy = ChaosProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let relay = spawn_relay(&RelayEnv::new(&proxy.url(db.url()), &ex.name));
    relay.wait_ready_status(200, WAIT).await;
    let mut conn = db.conn().await;
    let mut ids = insert_events(&mut conn, "outbox", "d-", 50, 1, 10, 300).await;
    wait_until("some deliveries", WAIT, || async { !got.is_empty() }).await;
    proxy.cut();
    relay.wait_ready_status(503, WAIT).await;
    // Written while the relay cannot see the database.
    ids.extend(insert_events(&mut conn, "outbox", "d-", 50, 11, 10, 300).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    relay.wait_ready_status(200, WAIT).await;
    wait_until("every event", WAIT, || async { got.event_ids().len() == ids.len() }).await;
    got.check_order().unwrap();
    wait_until("all rows marked sent", WAIT, || async {
        unsent(&mut db.conn().await, "outbox").await == 0
    })
    .await;
}
