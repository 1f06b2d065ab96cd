//! Every SQL statement the relay runs against the outbox and its own tables.

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ordering_platform::db::{PgConn, PgPool, Statement};
use serde::Serialize;

use crate::schema::TableNames;

/// A database failure, from the pool or from a statement.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no database connection: {0}")]
    Pool(String),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
}

/// One unsent outbox row, as read for publishing.
#[derive(Clone, Debug, QueryableByName)]
pub struct OutboxRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = SqlUuid)]
    pub event_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    pub aggregate_type: String,
    #[diesel(sql_type = Text)]
    pub aggregate_id: String,
    #[diesel(sql_type = BigInt)]
    pub sequence: i64,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// The payload as PostgreSQL renders the stored jsonb: published byte for byte.
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Text)]
    pub headers: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    /// When the row was written (its transaction's start, by the database's clock).
    #[diesel(sql_type = Timestamptz)]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A row confirmed by the broker, waiting to be marked sent under the lease it was sent with.
#[derive(Clone, Copy, Debug)]
pub struct Confirmed {
    pub id: i64,
    pub partition: i32,
    pub fence: i64,
    /// The row's `created_at`: on an outbox partitioned by day it names the one partition the
    /// mark has to look in.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A dead-lettered row, as `outbox-relay dlq list` shows it.
#[derive(Clone, Debug, PartialEq, QueryableByName, Serialize)]
pub struct DeadLetter {
    #[diesel(sql_type = BigInt)]
    pub outbox_id: i64,
    #[diesel(sql_type = SqlUuid)]
    pub event_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    pub aggregate_type: String,
    #[diesel(sql_type = Text)]
    pub aggregate_id: String,
    #[diesel(sql_type = BigInt)]
    pub sequence: i64,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Text)]
    pub last_error: String,
    #[diesel(sql_type = Timestamptz)]
    pub dead_at: chrono::DateTime<chrono::Utc>,
}

/// One page of dead letters, oldest first, and how many there are in all.
#[derive(Clone, Debug)]
pub struct DeadLetterPage {
    pub letters: Vec<DeadLetter>,
    pub total: i64,
}

/// A dead letter with its outbox row, as `outbox-relay dlq show` prints it. The row's fields
/// are `None` only if someone deleted it from the outbox by hand.
#[derive(Clone, Debug, PartialEq, QueryableByName, Serialize)]
pub struct DeadLetterDetail {
    #[diesel(embed)]
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// When the outbox row was written.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub headers: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub payload: Option<serde_json::Value>,
}

#[derive(QueryableByName)]
struct Counted {
    #[diesel(embed)]
    letter: DeadLetter,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The outbox's backlog, table-wide.
#[derive(Clone, Copy, Debug, QueryableByName)]
pub struct Backlog {
    /// Unsent rows.
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Age of the oldest unsent row, in seconds (0 when none).
    #[diesel(sql_type = Double)]
    pub lag: f64,
    /// Rows in the dead letters.
    #[diesel(sql_type = BigInt)]
    pub dead_letters: i64,
}

/// The outbox's statements, rendered once for its table name. The fetch, run for every batch,
/// is kept prepared by each connection.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    names: TableNames,
    fetch: Statement,
    mark_sql: String,
}

impl Store {
    /// Statements for the outbox `names`, split into `partitions`.
    pub fn new(pool: PgPool, names: TableNames, partitions: i32) -> Self {
        let t = names.table();
        let dl = names.object("dead_letters");
        let leases = names.object("leases");
        let part = TableNames::partition_expr("o", partitions);
        // Every unsent row of the partitions held, oldest first, minus aggregates blocked
        // behind a dead letter. No "published up to" mark: each read starts from the whole
        // unsent set, so a row that committed late is simply found by the next read.
        let fetch = Statement::new(&format!(
            "SELECT o.id, o.event_id, o.aggregate_type, o.aggregate_id, o.sequence, o.event_type, \
             o.payload::text AS payload, o.headers::text AS headers, o.attempts, {part} AS partition, o.created_at \
             FROM {t} o \
             WHERE o.sent_at IS NULL AND {part} = ANY($1) \
               AND o.id NOT IN (SELECT unnest($2::bigint[])) \
               AND NOT EXISTS (SELECT 1 FROM {dl} d WHERE d.aggregate_type = o.aggregate_type AND d.aggregate_id = o.aggregate_id) \
             ORDER BY o.id LIMIT $3"
        ));
        // Fenced: a row is marked only while this instance still holds the lease it was
        // published under; otherwise the new owner sends it again (a duplicate, never a loss).
        // Planned at each run, unlike the fetch: a plan kept for it probes each day partition
        // per row, and PostgreSQL's generic plan for it can walk a whole partition's unsent
        // rows per row marked (seen: 5,000 rows marked in 30 s with a week of history).
        // The batch's oldest and newest `created_at` ($6, $7) let the planner drop the other
        // day partitions before it plans them: planning the join over every partition took
        // ~4 ms with 5 of them (~0.4 ms pruned), where running it for a batch of a few rows,
        // as at low rates, takes under 1 ms.
        let mark_sql = format!(
            "UPDATE {t} o SET sent_at = now(), last_error = NULL \
             FROM unnest($1::bigint[], $2::int[], $3::bigint[], $5::timestamptz[]) AS m(id, p, f, c) \
             JOIN {leases} l ON l.partition = m.p AND l.fence = m.f \
             WHERE o.id = m.id AND o.created_at = m.c AND l.owner = $4 AND o.sent_at IS NULL \
               AND o.created_at BETWEEN $6 AND $7"
        );
        Self {
            pool,
            names,
            fetch,
            mark_sql,
        }
    }

    /// The table names.
    pub fn names(&self) -> &TableNames {
        &self.names
    }

    /// A pooled connection.
    pub async fn conn(&self) -> Result<PgConn, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Pool(e.to_string()))
    }

    /// Up to `limit` unsent rows of `partitions`, oldest first, leaving out `exclude` (rows
    /// confirmed whose mark is still under way).
    pub async fn fetch(&self, partitions: &[i32], limit: i64, exclude: &[i64]) -> Result<Vec<OutboxRow>, StoreError> {
        let mut c = self.conn().await?;
        // The unsent set changes faster than statistics follow: with stale ones the planner
        // picks a bitmap scan and sorts the whole backlog (payloads included) to return the
        // first rows. Walking the partial index in id order and stopping at the limit is
        // always right here, so the other plans are disabled for this statement; and since
        // its plan is kept, they are disabled whenever it is made.
        c.batch_execute(
            "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off",
        )
        .await?;
        let rows = self
            .fetch
            .bind::<Array<Integer>, _>(partitions)
            .bind::<Array<BigInt>, _>(exclude)
            .bind::<BigInt, _>(limit)
            .load(&mut c)
            .await;
        c.batch_execute(if rows.is_ok() { "COMMIT" } else { "ROLLBACK" })
            .await?;
        Ok(rows?)
    }

    /// Marks confirmed rows sent; returns how many were (fewer if a lease was lost meanwhile).
    pub async fn mark_sent(&self, rows: &[Confirmed], owner: uuid::Uuid) -> Result<usize, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let parts: Vec<i32> = rows.iter().map(|r| r.partition).collect();
        let fences: Vec<i64> = rows.iter().map(|r| r.fence).collect();
        let created: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|r| r.created_at).collect();
        // Not empty (checked above).
        let oldest = created.iter().min().copied().unwrap_or_default();
        let newest = created.iter().max().copied().unwrap_or_default();
        let mut c = self.conn().await?;
        Ok(diesel::sql_query(&self.mark_sql)
            .bind::<Array<BigInt>, _>(ids)
            .bind::<Array<Integer>, _>(parts)
            .bind::<Array<BigInt>, _>(fences)
            .bind::<SqlUuid, _>(owner)
            .bind::<Array<Timestamptz>, _>(created)
            .bind::<Timestamptz, _>(oldest)
            .bind::<Timestamptz, _>(newest)
            .execute(&mut c)
            .await?)
    }

    /// Records a failed attempt; returns the attempts so far.
    pub async fn record_failure(&self, id: i64, error: &str) -> Result<i32, StoreError> {
        #[derive(QueryableByName)]
        struct Attempts {
            #[diesel(sql_type = Integer)]
            attempts: i32,
        }
        let mut c = self.conn().await?;
        let rows: Vec<Attempts> = diesel::sql_query(format!(
            "UPDATE {} SET attempts = attempts + 1, last_error = $2 WHERE id = $1 RETURNING attempts",
            self.names.table()
        ))
        .bind::<BigInt, _>(id)
        .bind::<Text, _>(error)
        .load(&mut c)
        .await?;
        Ok(rows.into_iter().next().map_or(0, |r| r.attempts))
    }

    /// Moves a row to the dead letters with its last error. The row stays unsent in the
    /// outbox, and the aggregate's later rows wait behind it until it is replayed or discarded.
    pub async fn dead_letter(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let t = self.names.table();
        let dl = self.names.object("dead_letters");
        diesel::sql_query(format!(
            "WITH r AS (UPDATE {t} SET last_error = $2 WHERE id = $1 AND sent_at IS NULL RETURNING *) \
             INSERT INTO {dl} (outbox_id, event_id, aggregate_type, aggregate_id, sequence, event_type, attempts, last_error) \
             SELECT id, event_id, aggregate_type, aggregate_id, sequence, event_type, attempts, $2 FROM r \
             ON CONFLICT (outbox_id) DO UPDATE SET last_error = EXCLUDED.last_error, dead_at = now()"
        ))
        .bind::<BigInt, _>(id)
        .bind::<Text, _>(error)
        .execute(&mut c)
        .await?;
        Ok(())
    }

    /// Unsent rows, the age of the oldest and the dead letters, in one snapshot.
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        let mut c = self.conn().await?;
        Ok(diesel::sql_query(format!(
            "SELECT count(*) AS pending, \
             greatest(coalesce(extract(epoch FROM now() - min(created_at))::float8, 0), 0) AS lag, \
             (SELECT count(*) FROM {}) AS dead_letters \
             FROM {} WHERE sent_at IS NULL",
            self.names.object("dead_letters"),
            self.names.table()
        ))
        .get_result(&mut c)
        .await?)
    }

    /// Deletes up to `batch` sent rows of `relation` (the outbox, or one of its partitions)
    /// created before `retention` ago; returns how many.
    pub async fn cleanup_batch(
        &self,
        relation: &str,
        retention: std::time::Duration,
        batch: i64,
    ) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        // Oldest ids first: old rows sit at the start of the primary key, so each batch finds
        // its rows without scanning the table.
        Ok(diesel::sql_query(format!(
            "DELETE FROM {relation} WHERE id IN (SELECT id FROM {relation} \
             WHERE sent_at IS NOT NULL AND created_at < now() - make_interval(secs => $1) \
             ORDER BY id LIMIT $2)"
        ))
        .bind::<Double, _>(retention.as_secs_f64())
        .bind::<BigInt, _>(batch)
        .execute(&mut c)
        .await?)
    }
}

/// Deletes every sent row of `relation` past `retention`, `batch` rows per statement; returns
/// how many.
pub async fn cleanup(
    store: &Store,
    relation: &str,
    retention: std::time::Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let n = store.cleanup_batch(relation, retention, batch).await?;
        total += n as u64;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

/// The columns of [`DeadLetter`], from the dead letters aliased `d`.
const DEAD_LETTER_COLUMNS: &str = "d.outbox_id, d.event_id, d.aggregate_type, d.aggregate_id, d.sequence, \
     d.event_type, d.attempts, d.last_error, d.dead_at";

/// The dead-letter commands of the CLI, on one connection.
pub struct DeadLetters<'a> {
    conn: &'a mut AsyncPgConnection,
    names: &'a TableNames,
}

impl<'a> DeadLetters<'a> {
    /// Dead-letter commands for the outbox `names`.
    pub fn new(conn: &'a mut AsyncPgConnection, names: &'a TableNames) -> Self {
        Self { conn, names }
    }

    /// The oldest `limit` dead letters (all of them with `None`) and how many there are.
    pub async fn list(&mut self, limit: Option<i64>) -> Result<DeadLetterPage, StoreError> {
        // The total is counted before the limit applies, in the same statement: one snapshot.
        let rows: Vec<Counted> = diesel::sql_query(format!(
            "SELECT {DEAD_LETTER_COLUMNS}, count(*) OVER () AS total FROM {} d ORDER BY outbox_id LIMIT $1",
            self.names.object("dead_letters")
        ))
        .bind::<Nullable<BigInt>, _>(limit)
        .load(self.conn)
        .await?;
        // Every row carries the same total (`last`, as `first` is diesel's here). No row also
        // means no total; with no offset that can only be 0.
        let total = rows.last().map_or(0, |r| r.total);
        Ok(DeadLetterPage {
            letters: rows.into_iter().map(|r| r.letter).collect(),
            total,
        })
    }

    /// The dead letter `id` with its outbox row's payload, headers and creation time.
    pub async fn show(&mut self, id: i64) -> Result<Option<DeadLetterDetail>, StoreError> {
        let rows: Vec<DeadLetterDetail> = diesel::sql_query(format!(
            "SELECT {DEAD_LETTER_COLUMNS}, o.created_at, o.headers, o.payload \
             FROM {} d LEFT JOIN {} o ON o.id = d.outbox_id WHERE d.outbox_id = $1",
            self.names.object("dead_letters"),
            self.names.table()
        ))
        .bind::<BigInt, _>(id)
        .load(self.conn)
        .await?;
        Ok(rows.into_iter().next())
    }

    /// Sends `id` (or every dead letter) again: its attempts start over and its aggregate
    /// flows again. Returns how many rows were replayed.
    pub async fn replay(&mut self, id: Option<i64>) -> Result<usize, StoreError> {
        self.resolve(id, "attempts = 0, last_error = NULL").await
    }

    /// Gives up on `id`: it is recorded as sent (with its error kept as the reason) and never
    /// published, and its aggregate's later rows flow again.
    pub async fn discard(&mut self, id: i64) -> Result<usize, StoreError> {
        self.resolve(
            Some(id),
            "sent_at = now(), last_error = 'discarded: ' || coalesce(o.last_error, '')",
        )
        .await
    }

    async fn resolve(&mut self, id: Option<i64>, set: &str) -> Result<usize, StoreError> {
        let t = self.names.table();
        let dl = self.names.object("dead_letters");
        let filter = if id.is_some() {
            "WHERE outbox_id = $1"
        } else {
            "WHERE $1::bigint IS NULL"
        };
        let n: Count = diesel::sql_query(format!(
            "WITH d AS (DELETE FROM {dl} {filter} RETURNING outbox_id), \
             u AS (UPDATE {t} o SET {set} FROM d WHERE o.id = d.outbox_id RETURNING o.id) \
             SELECT count(*) AS n FROM u"
        ))
        .bind::<Nullable<BigInt>, _>(id)
        .get_result(self.conn)
        .await?;
        // Wake the running relays now rather than at their next poll.
        diesel::sql_query(format!("SELECT pg_notify('{}', '')", self.names.channel()))
            .execute(self.conn)
            .await?;
        Ok(n.n as usize)
    }
}
