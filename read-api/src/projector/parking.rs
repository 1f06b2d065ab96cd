//! Parked events: events from the future, kept in PostgreSQL (`rv_parked`) instead of in the
//! broker's prefetch window. The only module that speaks SQL to `rv_parked`.
//!
//! Why nothing is stranded, with any number of instances consuming the same queue: every
//! transaction that applies, parks or drains events of an aggregate first takes that
//! aggregate's advisory transaction lock ([`lock`], all keys of a transaction in one
//! statement, in ascending order, so two transactions never wait on each other in a cycle).
//! Under READ COMMITTED each later statement sees whatever committed before the lock was
//! granted. So of two transactions, one applying version `v` and one receiving `v + 1`, the
//! second to get the lock sees the first's work: either `v` is applied and `v + 1` applies
//! directly, or `v + 1` is parked and the transaction applying `v` drains it ([`successors`]).
//! A periodic sweep ([`ready_keys`]) applies whatever is parked behind an applied version
//! anyway (e.g. after a rebuild swapped in views that already have the predecessor).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Binary, Bool, Double, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ordering_platform::db::Statement;
use ordering_schema::events::AggregateType;
use uuid::Uuid;

use super::Key;
use crate::views::Tables;

/// An event as parked.
#[derive(Clone, Debug, QueryableByName)]
pub struct Parked {
    #[diesel(sql_type = Text)]
    pub aggregate: String,
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = BigInt)]
    pub sequence: i64,
    #[diesel(sql_type = Text)]
    pub routing_key: String,
    #[diesel(sql_type = Binary)]
    pub body: Vec<u8>,
    #[diesel(sql_type = Timestamptz)]
    pub parked_at: DateTime<Utc>,
    /// The version its view has (0 for none).
    #[diesel(sql_type = BigInt)]
    pub have: i64,
}

/// An event to park.
pub struct ToPark<'a> {
    pub key: Key,
    pub sequence: i64,
    pub routing_key: &'a str,
    pub body: &'a [u8],
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    aggregate: String,
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    gaps: i64,
}

fn split(keys: &[Key]) -> (Vec<&'static str>, Vec<Uuid>) {
    keys.iter().map(|(a, id)| (a.as_str(), *id)).unzip()
}

fn to_keys(rows: Vec<KeyRow>) -> Vec<Key> {
    rows.into_iter()
        .filter_map(|r| AggregateType::parse(&r.aggregate).map(|a| (a, r.id)))
        .collect()
}

/// The version of the parked row's view (`p` is `rv_parked`), for the live tables.
fn view_version() -> String {
    let t = Tables::live();
    format!(
        "COALESCE(CASE p.aggregate WHEN 'product' THEN (SELECT version FROM {} v WHERE v.id = p.id)
                                   WHEN 'order' THEN (SELECT version FROM {} v WHERE v.id = p.id) END, 0)",
        t.products, t.orders
    )
}

/// Takes the advisory transaction locks of `keys`, in ascending order of lock key. First
/// statement of every transaction that applies, parks or drains events.
pub async fn lock(conn: &mut AsyncPgConnection, keys: &[Key]) -> diesel::QueryResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let (aggregates, ids) = split(keys);
    // Kept prepared (it touches no table, so its plan never goes stale): it opens every
    // applying transaction, and planning it cost more than running it.
    // A subquery with ORDER BY is not flattened: the locks are taken in its order.
    static LOCK: LazyLock<Statement> = LazyLock::new(|| {
        Statement::new(
            "SELECT count(pg_advisory_xact_lock(k)) AS n FROM (
               SELECT DISTINCT hashtextextended(a || ':' || i::text, 0) AS k
                 FROM unnest($1::text[], $2::uuid[]) AS t(a, i) ORDER BY k) s",
        )
    });
    LOCK.bind::<Array<Text>, _>(&aggregates)
        .bind::<Array<SqlUuid>, _>(&ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether any event is parked at all.
async fn any_parked(conn: &mut AsyncPgConnection) -> diesel::QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Any {
        #[diesel(sql_type = Bool)]
        any: bool,
    }
    // Prepared: its plan (the first row of the table, or none) suits the table at any size.
    static ANY: LazyLock<Statement> =
        LazyLock::new(|| Statement::new("SELECT EXISTS (SELECT 1 FROM rv_parked) AS any"));
    Ok(ANY.unbound().get_result::<Any>(conn).await?.any)
}

/// Parks `events` (a copy already parked stays as it is).
pub async fn park(conn: &mut AsyncPgConnection, events: &[ToPark<'_>]) -> diesel::QueryResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let aggregates: Vec<&str> = events.iter().map(|e| e.key.0.as_str()).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.key.1).collect();
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    let routing_keys: Vec<&str> = events.iter().map(|e| e.routing_key).collect();
    let bodies: Vec<&[u8]> = events.iter().map(|e| e.body).collect();
    diesel::sql_query(
        "INSERT INTO rv_parked (aggregate, id, sequence, routing_key, body)
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::text[], $5::bytea[])
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<Text>, _>(&aggregates)
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<BigInt>, _>(&sequences)
    .bind::<Array<Text>, _>(&routing_keys)
    .bind::<Array<Binary>, _>(&bodies)
    .execute(conn)
    .await?;
    Ok(())
}

/// The parked events of `keys` that can be applied now (the next version of their view) or
/// are already reflected by it (to be removed), by aggregate and version.
pub async fn successors(conn: &mut AsyncPgConnection, keys: &[Key]) -> diesel::QueryResult<Vec<Parked>> {
    // Usually nothing is parked, and then this is all a batch asks: the join below is
    // planned at each run (its plan depends on how much is parked), and in a soak at 190
    // commands/s planning it was the read side's dearest statement. Under the batch's locks
    // the look sees every park of these keys committed before them (see the module).
    if keys.is_empty() || !any_parked(conn).await? {
        return Ok(Vec::new());
    }
    let (aggregates, ids) = split(keys);
    let version = view_version();
    diesel::sql_query(format!(
        "SELECT * FROM (
           SELECT p.aggregate, p.id, p.sequence, p.routing_key, p.body, p.parked_at, {version} AS have
             FROM rv_parked p JOIN unnest($1::text[], $2::uuid[]) AS k(a, i) ON p.aggregate = k.a AND p.id = k.i) s
          WHERE sequence <= have + 1
          ORDER BY aggregate, id, sequence"
    ))
    .bind::<Array<Text>, _>(&aggregates)
    .bind::<Array<SqlUuid>, _>(&ids)
    .load(conn)
    .await
}

/// Removes parked events.
pub async fn remove(conn: &mut AsyncPgConnection, events: &[&Parked]) -> diesel::QueryResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let aggregates: Vec<&str> = events.iter().map(|e| e.aggregate.as_str()).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    diesel::sql_query(
        "DELETE FROM rv_parked p USING unnest($1::text[], $2::uuid[], $3::bigint[]) AS k(a, i, s)
          WHERE p.aggregate = k.a AND p.id = k.i AND p.sequence = k.s",
    )
    .bind::<Array<Text>, _>(&aggregates)
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<BigInt>, _>(&sequences)
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` aggregates with a parked event that can be applied now.
pub async fn ready_keys(conn: &mut AsyncPgConnection, limit: i64) -> diesel::QueryResult<Vec<Key>> {
    let version = view_version();
    let rows: Vec<KeyRow> = diesel::sql_query(format!(
        "SELECT DISTINCT p.aggregate, p.id FROM rv_parked p WHERE p.sequence <= {version} + 1 LIMIT $1"
    ))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(to_keys(rows))
}

/// Up to `limit` aggregates with an event parked longer than `timeout_secs` (found through
/// the `parked_at` index, so the sweep does not read the whole parking).
pub async fn expired_keys(
    conn: &mut AsyncPgConnection,
    timeout_secs: f64,
    limit: i64,
) -> diesel::QueryResult<Vec<Key>> {
    let rows: Vec<KeyRow> = diesel::sql_query(
        "SELECT DISTINCT aggregate, id FROM (
           SELECT aggregate, id FROM rv_parked WHERE parked_at < now() - make_interval(secs => $1)
            ORDER BY parked_at LIMIT $2) oldest",
    )
    .bind::<Double, _>(timeout_secs)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(to_keys(rows))
}

/// Every parked event of those of `keys` that still have one parked longer than
/// `timeout_secs` (call under their locks), by aggregate and version.
pub async fn of_expired(
    conn: &mut AsyncPgConnection,
    keys: &[Key],
    timeout_secs: f64,
) -> diesel::QueryResult<Vec<Parked>> {
    let (aggregates, ids) = split(keys);
    let version = view_version();
    diesel::sql_query(format!(
        "SELECT p.aggregate, p.id, p.sequence, p.routing_key, p.body, p.parked_at, {version} AS have
           FROM rv_parked p JOIN unnest($1::text[], $2::uuid[]) AS k(a, i) ON p.aggregate = k.a AND p.id = k.i
          WHERE EXISTS (SELECT 1 FROM rv_parked o WHERE o.aggregate = p.aggregate AND o.id = p.id
                           AND o.parked_at < now() - make_interval(secs => $3))
          ORDER BY p.aggregate, p.id, p.sequence"
    ))
    .bind::<Array<Text>, _>(&aggregates)
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Double, _>(timeout_secs)
    .load(conn)
    .await
}

/// How many events are parked, and behind how many gaps (aggregates with a parked event).
pub async fn count(conn: &mut AsyncPgConnection) -> diesel::QueryResult<(i64, i64)> {
    let c: Count = diesel::sql_query("SELECT count(*) AS n, count(DISTINCT (aggregate, id)) AS gaps FROM rv_parked")
        .get_result(conn)
        .await?;
    Ok((c.n, c.gaps))
}

/// One aggregate's parked events, as the admin page shows them.
#[derive(Clone, Debug, QueryableByName)]
pub struct Gap {
    #[diesel(sql_type = Text)]
    pub aggregate: String,
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The version its view has (0 for none): the missing event is `have + 1`.
    #[diesel(sql_type = BigInt)]
    pub have: i64,
    #[diesel(sql_type = BigInt)]
    pub first: i64,
    #[diesel(sql_type = BigInt)]
    pub last: i64,
    #[diesel(sql_type = BigInt)]
    pub events: i64,
    /// When its oldest parked event was parked: the gap times out `GAP_TIMEOUT` after.
    #[diesel(sql_type = Timestamptz)]
    pub since: DateTime<Utc>,
}

/// The `limit` oldest gaps (aggregates with parked events), oldest first.
pub async fn gaps(conn: &mut AsyncPgConnection, limit: i64) -> diesel::QueryResult<Vec<Gap>> {
    let version = view_version();
    diesel::sql_query(format!(
        "SELECT p.aggregate, p.id, {version} AS have, min(p.sequence) AS first, max(p.sequence) AS last,
                count(*) AS events, min(p.parked_at) AS since
           FROM rv_parked p GROUP BY p.aggregate, p.id ORDER BY since, p.aggregate, p.id LIMIT $1"
    ))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}
