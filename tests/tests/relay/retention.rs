//! Retention: a plain outbox loses its sent rows past retention row by row; the ordering
//! service's outbox, partitioned by day, gets its days made ahead and dropped whole, never
//! losing an unsent row; the migration to that outbox keeps every row and its sending state.

use std::time::Duration;

use chrono::{Days, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ordering_tests::relay::broker::TestExchange;
use ordering_tests::relay::outbox::{create_plain_outbox, insert_events};
use ordering_tests::relay::process::{RelayEnv, spawn_relay};
use ordering_tests::relay::wait_until;
use ordering_tests::test_db::TestDatabase;
use outbox_relay::retention::{self, Outcome, day_table};
use outbox_relay::schema::TableNames;
use outbox_relay::store::Store;

const WAIT: Duration = Duration::from_secs(30);
const WEEK: Duration = Duration::from_secs(7 * 86_400);

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(conn).await.expect(sql).n
}

async fn store(db: &TestDatabase, table: &str) -> Store {
    let names = TableNames::parse(table).unwrap();
    outbox_relay::schema::migrate(db.url(), &names, 16).await.unwrap();
    Store::new(ordering_platform::db::pool(db.url(), 2, None), names, 16)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_outbox_loses_only_sent_rows_past_retention() {
    let db = TestDatabase::empty().await;
    let mut conn = db.conn().await;
    create_plain_outbox(&mut conn, "plain_outbox").await;
    let store = store(&db, "plain_outbox").await;
    insert_events(&mut conn, "plain_outbox", "old-sent-", 30, 1, 1, 10).await;
    insert_events(&mut conn, "plain_outbox", "old-unsent-", 5, 1, 1, 10).await;
    insert_events(&mut conn, "plain_outbox", "new-sent-", 5, 1, 1, 10).await;
    conn.batch_execute(
        "UPDATE plain_outbox SET created_at = now() - interval '8 days' WHERE aggregate_id LIKE 'old-%';
         UPDATE plain_outbox SET sent_at = now() WHERE aggregate_id LIKE '%-sent-%';",
    )
    .await
    .unwrap();
    // Batches of 7: several statements, none of them large.
    let out = retention::run(&store, WEEK, 7).await.unwrap();
    assert_eq!(
        out,
        Outcome {
            deleted: 30,
            ..Outcome::default()
        }
    );
    assert_eq!(db.count("plain_outbox").await, 10);
    let left = "SELECT count(*) AS n FROM plain_outbox WHERE aggregate_id LIKE 'old-sent-%'";
    assert_eq!(count(&mut conn, left).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_runs_on_its_cron_schedule() {
    let db = TestDatabase::empty().await;
    let ex = TestExchange::new().await;
    let mut conn = db.conn().await;
    create_plain_outbox(&mut conn, "plain_outbox").await;
    insert_events(&mut conn, "plain_outbox", "c-", 10, 1, 2, 10).await;
    conn.batch_execute("UPDATE plain_outbox SET created_at = now() - interval '2 hours'")
        .await
        .unwrap();
    let env = RelayEnv::new(db.url(), &ex.name)
        .set("OUTBOX_TABLE", "plain_outbox")
        .set("OUTBOX_CLEANUP_CRON", "* * * * * *")
        .set("OUTBOX_RETENTION", "1h");
    let _relay = spawn_relay(&env);
    // Published, marked sent, then deleted by the next cleanup run.
    wait_until("sent rows past retention to be deleted", WAIT, || async {
        db.count("plain_outbox").await == 0
    })
    .await;
    // Rows within retention stay, even once sent.
    let ids = insert_events(&mut conn, "plain_outbox", "c-", 10, 3, 1, 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db.count("plain_outbox").await, ids.len() as i64);
}

/// The partition each row of `aggregate_id LIKE prefix%` sits in.
async fn partitions_of(conn: &mut AsyncPgConnection, prefix: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = Text)]
        p: String,
    }
    diesel::sql_query("SELECT DISTINCT tableoid::regclass::text AS p FROM outbox WHERE aggregate_id LIKE $1 || '%'")
        .bind::<Text, _>(prefix)
        .load::<P>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.p)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_partitioned_outbox_is_kept_by_days_and_never_loses_an_unsent_row() {
    let db = TestDatabase::new().await;
    let names = TableNames::parse("outbox").unwrap();
    let store = store(&db, "outbox").await;
    let mut conn = db.conn().await;
    let today = Utc::now().date_naive();
    let day = |back: u64| today - Days::new(back);
    // Rows written before any day partition exists land in the default partition.
    insert_events(&mut conn, "outbox", "today-", 3, 1, 1, 10).await;
    insert_events(&mut conn, "outbox", "yesterday-", 4, 1, 1, 10).await;
    insert_events(&mut conn, "outbox", "old-sent-", 5, 1, 1, 10).await;
    insert_events(&mut conn, "outbox", "old-unsent-", 1, 1, 1, 10).await;
    conn.batch_execute(
        "UPDATE outbox SET created_at = now() - interval '1 day' WHERE aggregate_id LIKE 'yesterday-%';
         UPDATE outbox SET created_at = now() - interval '9 days' WHERE aggregate_id LIKE 'old-%';
         UPDATE outbox SET sent_at = now() WHERE aggregate_id LIKE 'old-sent-%';",
    )
    .await
    .unwrap();
    assert_eq!(partitions_of(&mut conn, "").await, vec!["outbox_default".to_owned()]);

    // Today, the days ahead, and yesterday (which has rows) are made; today's and yesterday's
    // rows move in; the default partition's sent rows past retention are deleted.
    let out = retention::run(&store, WEEK, 100).await.unwrap();
    assert_eq!(
        out,
        Outcome {
            created: retention::DAYS_AHEAD + 2,
            deleted: 5,
            ..Outcome::default()
        }
    );
    assert_eq!(partitions_of(&mut conn, "today-").await, vec![day_table(&names, today)]);
    assert_eq!(
        partitions_of(&mut conn, "yesterday-").await,
        vec![day_table(&names, day(1))]
    );
    assert_eq!(
        partitions_of(&mut conn, "old-unsent-").await,
        vec!["outbox_default".to_owned()]
    );
    let days = retention::days(&mut conn, &names).await.unwrap();
    assert_eq!(std::slice::from_ref(&day(1)), &days[..1]);
    assert_eq!(days[days.len() - 1], today + Days::new(retention::DAYS_AHEAD));
    // A second run has nothing to do.
    assert_eq!(retention::run(&store, WEEK, 100).await.unwrap(), Outcome::default());

    // Two days past retention, as the cleanup would have made them then: one whose rows are
    // all sent, one holding the unsent row (moved out of the default partition into its day).
    let default = Some("public.outbox_default");
    assert!(retention::create_day(&mut conn, &names, default, day(9)).await.unwrap());
    assert!(
        retention::create_day(&mut conn, &names, default, day(10))
            .await
            .unwrap()
    );
    assert_eq!(
        partitions_of(&mut conn, "old-unsent-").await,
        vec![day_table(&names, day(9))]
    );
    insert_events(&mut conn, "outbox", "older-", 6, 1, 1, 10).await;
    conn.batch_execute(
        "UPDATE outbox SET created_at = now() - interval '10 days', sent_at = now() WHERE aggregate_id LIKE 'older-%'",
    )
    .await
    .unwrap();
    assert_eq!(
        partitions_of(&mut conn, "older-").await,
        vec![day_table(&names, day(10))]
    );

    // The sent day goes whole; the day with an unsent row stays, however old.
    let out = retention::run(&store, WEEK, 100).await.unwrap();
    assert_eq!(
        out,
        Outcome {
            dropped: 1,
            overdue: 1,
            ..Outcome::default()
        }
    );
    assert!(!retention::days(&mut conn, &names).await.unwrap().contains(&day(10)));
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox WHERE aggregate_id LIKE 'older-%'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox WHERE aggregate_id LIKE 'old-unsent-%'"
        )
        .await,
        1
    );
    // Once that row is sent, its day goes too.
    conn.batch_execute("UPDATE outbox SET sent_at = now() WHERE aggregate_id LIKE 'old-unsent-%'")
        .await
        .unwrap();
    let out = retention::run(&store, WEEK, 100).await.unwrap();
    assert_eq!(
        out,
        Outcome {
            dropped: 1,
            ..Outcome::default()
        }
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM outbox").await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_publishes_from_day_partitions_and_marks_rows_in_them() {
    let db = TestDatabase::new().await;
    let mut ex = TestExchange::new().await;
    let got = ex.consume().await;
    let env = RelayEnv::new(db.url(), &ex.name);
    let relay = spawn_relay(&env);
    relay.wait_ready_status(200, WAIT).await;
    let mut conn = db.conn().await;
    // The relay made today's partition when it started: rows go there, not to the default.
    let ids = insert_events(&mut conn, "outbox", "p-", 20, 1, 5, 10).await;
    let today = day_table(&TableNames::parse("outbox").unwrap(), Utc::now().date_naive());
    wait_until("every row published", WAIT, || async {
        got.event_ids().len() == ids.len()
    })
    .await;
    got.check_order().unwrap();
    wait_until("every row marked sent", WAIT, || async {
        count(
            &mut db.conn().await,
            "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL",
        )
        .await
            == 0
    })
    .await;
    let in_today = format!("SELECT count(*) AS n FROM {today}");
    assert_eq!(count(&mut conn, &in_today).await, ids.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_migration_to_day_partitions_keeps_every_row_and_its_sending_state() {
    use diesel_migrations::MigrationHarness;
    let db = TestDatabase::empty().await;
    let url = db.url().to_owned();
    // The first migration alone: the plain outbox this project had before.
    tokio::task::spawn_blocking(move || {
        let mut c = <diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url).unwrap();
        c.run_next_migration(ordering_schema::migrate::WRITE_SIDE).unwrap();
    })
    .await
    .unwrap();
    let names = TableNames::parse("outbox").unwrap();
    outbox_relay::schema::migrate(db.url(), &names, 16).await.unwrap();
    let mut conn = db.conn().await;
    insert_events(&mut conn, "outbox", "m-", 10, 1, 3, 10).await;
    conn.batch_execute(
        "UPDATE outbox SET created_at = now() - (id || ' hours')::interval;
         UPDATE outbox SET sent_at = now() WHERE id % 3 = 0;
         UPDATE outbox SET attempts = 2, last_error = 'nack' WHERE id = 1;",
    )
    .await
    .unwrap();
    let before = db
        .query_json("SELECT to_jsonb(o) AS row FROM outbox o ORDER BY id")
        .await;

    ordering_schema::migrate::run_pending(
        db.url(),
        ordering_schema::migrate::WRITE_SIDE,
        ordering_schema::migrate::WRITE_SIDE_LOCK,
    )
    .await
    .unwrap();
    let after = db
        .query_json("SELECT to_jsonb(o) AS row FROM outbox o ORDER BY id")
        .await;
    assert_eq!(before, after);
    // Each day the rows span got its partition; none is left in the default.
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM outbox_default").await, 0);
    assert!(!retention::days(&mut conn, &names).await.unwrap().is_empty());
    // The relay's objects are back on the new table: its schema check passes, new rows notify
    // and take ids after the old ones.
    outbox_relay::schema::check(&mut conn, &names).await.unwrap();
    conn.batch_execute("LISTEN outbox_relay").await.unwrap();
    let ids = insert_events(&mut conn, "outbox", "n-", 1, 1, 1, 10).await;
    assert_eq!(ids.len(), 1);
    assert_eq!(count(&mut conn, "SELECT max(id) AS n FROM outbox").await, 31);
    let unsent_index = "SELECT count(*) AS n FROM pg_indexes WHERE indexname = 'outbox_relay_unsent'";
    assert_eq!(count(&mut conn, unsent_index).await, 1);
    let trigger =
        "SELECT count(*) AS n FROM pg_trigger WHERE tgname = 'outbox_relay_notify' AND tgrelid = 'outbox'::regclass";
    assert_eq!(count(&mut conn, trigger).await, 1);
}
