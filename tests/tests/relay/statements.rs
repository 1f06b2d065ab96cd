//! The fetch, which the relay runs for every batch, is prepared once by each connection and
//! then only executed, and its cached plan walks the unsent rows in id order even though it
//! was made while the tables were small. The mark is planned at each run (its kept plan was
//! ruinous with a week of history; see `Store::new`).

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ordering_tests::relay::outbox::insert_events;
use ordering_tests::test_db::TestDatabase;
use outbox_relay::schema::TableNames;
use outbox_relay::store::{Confirmed, OutboxRow, Store};

const PARTITIONS: i32 = 16;

#[derive(QueryableByName)]
struct Prepared {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    statement: String,
    #[diesel(sql_type = BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = BigInt)]
    custom_plans: i64,
}

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// A database with the relay's schema, and a store on one connection (so every statement of a
/// test runs on the connection whose cache it inspects).
async fn migrated() -> (TestDatabase, Store) {
    let db = TestDatabase::new().await;
    let names = TableNames::parse("outbox").unwrap();
    outbox_relay::schema::migrate(db.url(), &names, PARTITIONS)
        .await
        .unwrap();
    let store = Store::new(ordering_platform::db::pool(db.url(), 1, None), names, PARTITIONS);
    (db, store)
}

/// `rows` as confirmed under leases of `fence`.
fn confirmed(rows: &[OutboxRow], fence: i64) -> Vec<Confirmed> {
    rows.iter()
        .map(|r| Confirmed {
            id: r.id,
            partition: r.partition,
            fence,
            created_at: r.created_at,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fetch_is_prepared_once_and_keeps_its_index_walk() {
    let (db, store) = migrated().await;
    insert_events(&mut db.conn().await, "outbox", "prep-", 40, 1, 5, 10).await;

    let all: Vec<i32> = (0..PARTITIONS).collect();
    let mut fetched = Vec::new();
    for _ in 0..7 {
        fetched = store.fetch(&all, 50, &[]).await.unwrap();
        assert_eq!(fetched.len(), 50);
    }
    // No lease is held, so nothing is marked; the statement runs all the same.
    let confirmed = confirmed(&fetched, 0);
    for _ in 0..7 {
        assert_eq!(store.mark_sent(&confirmed, uuid::Uuid::new_v4()).await.unwrap(), 0);
    }

    let mut conn = store.conn().await.unwrap();
    let prepared: Vec<Prepared> = diesel::sql_query(
        "SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE statement LIKE 'SELECT o.id%' OR statement LIKE 'UPDATE outbox o%'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let kept =
        |prefix: &str| -> Vec<&Prepared> { prepared.iter().filter(|p| p.statement.starts_with(prefix)).collect() };
    let fetch = kept("SELECT o.id");
    assert_eq!(
        fetch
            .iter()
            .map(|p| p.generic_plans + p.custom_plans)
            .collect::<Vec<_>>(),
        [7],
        "one fetch statement, run 7 times"
    );
    assert!(kept("UPDATE outbox o").is_empty(), "the mark is planned at each run");
    // After five custom plans PostgreSQL settles on a generic one: planned once, per connection,
    // and kept while the tables grow.
    assert!(fetch[0].generic_plans >= 1, "the fetch never got a cached plan");

    // The plan it now runs: ordered by the unsent index (not the key, which also holds every
    // sent row) and stopped at the limit, never a sort of the whole backlog.
    conn.batch_execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let plan: Vec<PlanLine> = diesel::sql_query(format!(
        "EXPLAIN (COSTS OFF) EXECUTE {}('{{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}}', '{{}}', 50)",
        fetch[0].name
    ))
    .load(&mut conn)
    .await
    .unwrap();
    conn.batch_execute("COMMIT").await.unwrap();
    let plan: Vec<&str> = plan.iter().map(|l| l.line.trim_start()).collect();
    assert!(
        plan.iter().any(|l| l.starts_with("->  Index Scan using outbox_")),
        "{plan:#?}"
    );
    let walks = |node: &str| plan.iter().any(|l| l.trim_start_matches("->  ").starts_with(node));
    assert!(
        !walks("Sort")
            && !walks("Bitmap")
            && !walks("Seq Scan on outbox")
            && !plan.iter().any(|l| l.contains("_pkey on outbox")),
        "{plan:#?}"
    );
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The mark names the span of its rows' `created_at` so that the planner leaves out the other
/// days; a batch whose rows span days (and the default partition) is still marked whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_mark_spanning_days_marks_every_row_of_each() {
    let (db, store) = migrated().await;
    let mut c = db.conn().await;
    ordering_tests::relay::outbox::make_past_days(&mut c, "outbox", 3).await;
    // Today, yesterday, two days ago, and 30 days ago (no partition: the default one).
    c.batch_execute(
        "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, sequence, event_type, payload, created_at) \
         SELECT gen_random_uuid(), 'order', 'span-' || d, 1, 'order.placed', '{}', now() - d * interval '1 day' \
         FROM unnest(ARRAY[0, 1, 2, 30]) AS d; \
         UPDATE outbox_relay_leases SET owner = '00000000-0000-0000-0000-0000000000aa', fence = 1, \
           expires_at = now() + interval '1 hour'",
    )
    .await
    .unwrap();
    let all: Vec<i32> = (0..PARTITIONS).collect();
    let rows = store.fetch(&all, 50, &[]).await.unwrap();
    assert_eq!(rows.len(), 4);
    let confirmed = confirmed(&rows, 1);
    let owner = uuid::Uuid::from_u128(0xaa);
    // The newest and the oldest alone, then all four: every row is inside its own batch's span.
    assert_eq!(store.mark_sent(&confirmed[..1], owner).await.unwrap(), 1);
    assert_eq!(store.mark_sent(&confirmed[3..], owner).await.unwrap(), 1);
    assert_eq!(store.mark_sent(&confirmed, owner).await.unwrap(), 2);
    let unsent: Count = diesel::sql_query("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")
        .get_result(&mut c)
        .await
        .unwrap();
    assert_eq!(unsent.n, 0);
}
