//! Filling an outbox with events whose payload a consumer can check (id, subject, sequence).

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// Creates `table` exactly as the contract writes the outbox: one plain table, as a service the
/// relay serves as a sidecar would have it (the ordering service's own outbox is partitioned).
pub async fn create_plain_outbox(conn: &mut AsyncPgConnection, table: &str) {
    conn.batch_execute(&format!(
        "CREATE TABLE {table} (
           id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id uuid NOT NULL UNIQUE,
           aggregate_type text NOT NULL, aggregate_id text NOT NULL, sequence bigint NOT NULL,
           event_type text NOT NULL, payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{{}}',
           created_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .expect("create a plain outbox");
}

/// Inserts `per_aggregate` events for each of `aggregates` aggregates named `<prefix><n>`,
/// sequences 1.. in order, interleaved across aggregates, payloads padded to about `pad`
/// bytes. Returns the event ids.
pub async fn insert_events(
    conn: &mut AsyncPgConnection,
    table: &str,
    prefix: &str,
    aggregates: i32,
    first_sequence: i32,
    per_aggregate: i32,
    pad: i32,
) -> Vec<uuid::Uuid> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        event_id: uuid::Uuid,
    }
    let rows: Vec<Id> = diesel::sql_query(format!(
        "INSERT INTO {table} (event_id, aggregate_type, aggregate_id, sequence, event_type, payload, headers) \
         SELECT e.id, 'order', e.agg, e.seq, 'order.placed', \
           jsonb_build_object('specversion', '1.0', 'id', e.id, 'source', '/test', 'type', 'ordering.order.placed.v1', \
             'subject', e.agg, 'time', now(), 'datacontenttype', 'application/json', 'aggregatetype', 'order', \
             'sequence', e.seq, 'data', jsonb_build_object('pad', repeat('x', $4))), \
           jsonb_build_object('traceparent', '00-' || md5(e.id::text) || '-' || left(md5(e.agg), 16) || '-01', 'x-test', 'yes') \
         FROM (SELECT gen_random_uuid() AS id, $1 || a AS agg, s AS seq \
               FROM generate_series($2, $2 + $3 - 1) s, generate_series(1, $5) a ORDER BY s, a) e \
         RETURNING event_id"
    ))
    .bind::<Text, _>(prefix)
    .bind::<Integer, _>(first_sequence)
    .bind::<Integer, _>(per_aggregate)
    .bind::<Integer, _>(pad)
    .bind::<Integer, _>(aggregates)
    .load(conn)
    .await
    .expect("insert outbox rows");
    rows.into_iter().map(|r| r.event_id).collect()
}

/// Gives `table`, if it is partitioned by day, the partitions of today and of the `back` days
/// before it that it lacks, as the relay's cleanup made them when those days came: the outbox of
/// a service that has run for that long, whatever it holds.
pub async fn make_past_days(conn: &mut AsyncPgConnection, table: &str, back: u64) {
    let names = outbox_relay::schema::TableNames::parse(table).expect("table name");
    let outbox_relay::retention::Layout::Days { default } =
        outbox_relay::retention::layout(conn, &names).await.expect("layout")
    else {
        return;
    };
    let have = outbox_relay::retention::days(conn, &names).await.expect("days");
    let today = chrono::Utc::now().date_naive();
    for n in 0..=back {
        let day = today - chrono::Days::new(n);
        if !have.contains(&day) {
            outbox_relay::retention::create_day(conn, &names, default.as_deref(), day)
                .await
                .expect("create a day partition");
        }
    }
}

/// Puts `rows` rows that were sent long ago into `table`: the history a busy outbox holds until
/// cleanup deletes it, created (and sent 5 ms later) evenly over the last `days` days in id
/// order, as a real outbox's rows are (cleanup walks the primary key from the oldest), over
/// 100,000 aggregates, in statements of 250,000 rows (`progress` gets the rows done so far).
/// Then `VACUUM ANALYZE`, as autovacuum would have by then. An outbox partitioned by day first
/// gets the partitions of those days.
pub async fn insert_sent_history(
    conn: &mut AsyncPgConnection,
    table: &str,
    rows: i64,
    pad: i32,
    days: f64,
    mut progress: impl FnMut(i64),
) {
    const CHUNK: i64 = 250_000;
    // A day-partitioned outbox had each of those days' partitions made as the day came.
    make_past_days(conn, table, days.ceil() as u64).await;
    let mut done = 0;
    while done < rows {
        let n = CHUNK.min(rows - done);
        diesel::sql_query(format!(
            "INSERT INTO {table} (event_id, aggregate_type, aggregate_id, sequence, event_type, payload, headers, created_at, sent_at) \
             SELECT gen_random_uuid(), 'order', 'hist-' || (s % 100000), s, 'order.placed', \
               jsonb_build_object('specversion', '1.0', 'type', 'ordering.order.placed.v1', 'sequence', s, \
                 'data', jsonb_build_object('pad', repeat('x', $1))), '{{}}', t, t + interval '5 ms' \
             FROM (SELECT s, now() - $2 * interval '1 day' * (1 - s::float8 / $5) AS t FROM generate_series($3, $4) s) h"
        ))
        .bind::<Integer, _>(pad)
        .bind::<diesel::sql_types::Double, _>(days)
        .bind::<BigInt, _>(done + 1)
        .bind::<BigInt, _>(done + n)
        .bind::<diesel::sql_types::Double, _>(rows as f64)
        .execute(conn)
        .await
        .expect("insert sent history");
        done += n;
        progress(done);
    }
    conn.batch_execute(&format!("VACUUM ANALYZE {table}"))
        .await
        .expect("vacuum the history");
    // Gigabytes of WAL written in a minute leave PostgreSQL in back-to-back checkpoints for a
    // while after (each one making the next page writes log whole pages): a service whose
    // history came over days has none of that. Measure it settled, not recovering from the load.
    conn.batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint after the history");
}

/// One stored row, as the tests compare it with what arrived.
#[derive(Debug, QueryableByName)]
pub struct StoredRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = SqlUuid)]
    pub event_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Text)]
    pub headers: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every row of `table`.
pub async fn rows(conn: &mut AsyncPgConnection, table: &str) -> Vec<StoredRow> {
    diesel::sql_query(format!(
        "SELECT id, event_id, event_type, payload::text AS payload, headers::text AS headers, sent_at FROM {table} ORDER BY id"
    ))
    .load(conn)
    .await
    .expect("read outbox")
}

/// Rows of `table` not yet marked sent.
pub async fn unsent(conn: &mut AsyncPgConnection, table: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {table} WHERE sent_at IS NULL"))
        .get_result(conn)
        .await
        .expect("count unsent");
    n.n
}

/// Whether every row of `table` is sent. Unlike [`unsent`], which counts the whole unsent set
/// (tens of milliseconds of PostgreSQL's CPU with 100,000 rows), this stops at the first unsent
/// row of the relay's partial index, so a benchmark can poll it while the relay drains without
/// taking CPU from what it measures.
pub async fn all_sent(conn: &mut AsyncPgConnection, table: &str) -> bool {
    #[derive(QueryableByName)]
    struct Done {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        done: bool,
    }
    let d: Done = diesel::sql_query(format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {table} WHERE sent_at IS NULL) AS done"
    ))
    .get_result(conn)
    .await
    .expect("look for an unsent row");
    d.done
}

/// Writers inserting events at a steady rate until stopped, as services under load would:
/// `writers` connections, each inserting `per_statement` events (one for each of as many
/// aggregates) per statement at a fixed pace. Statement n of a writer goes to its group
/// n mod `groups` of aggregates (`w<writer>-g<group>-<k>`), so every aggregate's events are
/// committed in sequence order, 1, 2, ... Each event's commit instant is recorded.
pub struct SteadyWriter {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    committed: Committed,
}

/// Event id → the instant the statement that inserted it returned (its commit).
pub type Committed = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, std::time::Instant>>>;

impl SteadyWriter {
    /// Starts writing about `rate` events/s into `outbox` of `url`, spread over about
    /// `aggregates` aggregates, payloads padded by `pad` bytes.
    pub fn start(url: &str, rate: f64, aggregates: i32, writers: i32, per_statement: i32, pad: i32) -> Self {
        use diesel_async::AsyncConnection;
        let stop = tokio_util::sync::CancellationToken::new();
        let committed = Committed::default();
        let groups = (aggregates / (writers * per_statement)).max(1);
        let period = std::time::Duration::from_secs_f64(f64::from(writers * per_statement) / rate);
        let tasks = (0..writers)
            .map(|w| {
                let (url, committed, stop) = (url.to_owned(), committed.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut c = AsyncPgConnection::establish(&url).await.expect("connect");
                    let mut tick = tokio::time::interval(period);
                    // Behind schedule (a busy machine), catch up: the average rate is the point.
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let mut n = 0;
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            () = stop.cancelled() => return,
                        }
                        let (group, seq) = (n % groups, n / groups + 1);
                        let prefix = format!("w{w}-g{group}-");
                        let ids = insert_events(&mut c, "outbox", &prefix, per_statement, seq, 1, pad).await;
                        let at = std::time::Instant::now();
                        let mut m = committed.lock().expect("committed");
                        for id in ids {
                            m.insert(id, at);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Self { stop, tasks, committed }
    }

    /// Events committed so far.
    pub fn len(&self) -> usize {
        self.committed.lock().expect("committed").len()
    }

    /// Nothing committed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the writers (each after its current statement) and returns every committed event.
    pub async fn stop(self) -> std::collections::HashMap<uuid::Uuid, std::time::Instant> {
        self.stop.cancel();
        for t in self.tasks {
            t.await.expect("a writer panicked");
        }
        std::mem::take(&mut *self.committed.lock().expect("committed"))
    }
}
