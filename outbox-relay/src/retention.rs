//! Keeping the outbox to `OUTBOX_RETENTION`, whichever shape its table has.
//!
//! - **A plain table** (the contract's, as a sidecar finds it): sent rows past retention are
//!   deleted `OUTBOX_CLEANUP_BATCH` rows per statement, oldest ids first.
//! - **A table partitioned by range on `created_at`** (the ordering service's own outbox, see
//!   its migration): the relay keeps it in UTC day partitions named `<table>_pYYYYMMDD`. It
//!   creates today and the [`DAYS_AHEAD`] days after it, and drops a day once the whole day is
//!   past retention and no row of it is unsent. History then
//!   leaves as a dropped table, never as millions of deleted rows (dead tuples, vacuum, index
//!   churn), and today's rows sit in a small partition however long the history: that is what
//!   keeps the relay's cost flat as the table ages (`bench growth`). Rows are kept between the
//!   retention and the retention plus one day.
//!
//! A row whose day has no partition lands in the default partition (the relay was not
//! running, or the row's `created_at` came from elsewhere). When the relay creates that day it
//! moves those rows into it; rows of days already past retention are deleted row by row as in
//! a plain table. Partitions not named by this scheme are never created, moved or dropped.
//!
//! Every change holds the outbox's advisory lock (the one its schema steps take), so relays
//! running together never race to create or drop the same day, and the locks on the outbox
//! are taken with a short `lock_timeout`: a change that would wait behind a long transaction
//! gives up and is tried again on the next run instead of queueing the writers behind it.

use std::collections::BTreeSet;

use chrono::{DateTime, Days, NaiveDate, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::schema::TableNames;
use crate::store::{self, Store, StoreError};

/// Days created ahead of today: the cleanup may miss its runs for that long before a day's rows
/// fall into the default partition.
pub const DAYS_AHEAD: u64 = 3;

/// How long a change waits for a lock on the outbox before giving up until the next run.
const LOCK_TIMEOUT: &str = "500ms";

/// How the outbox is kept to its retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Sent rows are deleted row by row (a plain table, or one partitioned some other way).
    Rows,
    /// Day partitions, created ahead and dropped whole.
    Days {
        /// The default partition, if the table has one, as written in SQL.
        default: Option<String>,
    },
}

/// What one run changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Day partitions created.
    pub created: u64,
    /// Day partitions dropped.
    pub dropped: u64,
    /// Day partitions past retention kept because a row of theirs is unsent (a dead letter, or
    /// a backlog older than the retention).
    pub overdue: u64,
    /// Rows deleted one by one.
    pub deleted: u64,
}

/// Reads the outbox's layout from the catalog.
pub async fn layout(conn: &mut AsyncPgConnection, names: &TableNames) -> Result<Layout, StoreError> {
    #[derive(QueryableByName)]
    struct Shape {
        #[diesel(sql_type = Nullable<Text>)]
        key: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        default_partition: Option<String>,
    }
    let shape: Shape = diesel::sql_query(
        "SELECT CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS key, \
           (SELECT quote_ident(n.nspname) || '.' || quote_ident(d.relname) \
              FROM pg_partitioned_table pt JOIN pg_class d ON d.oid = pt.partdefid \
              JOIN pg_namespace n ON n.oid = d.relnamespace WHERE pt.partrelid = c.oid) AS default_partition \
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind::<Text, _>(names.table())
    .get_result(conn)
    .await?;
    Ok(match shape.key.as_deref() {
        Some("RANGE (created_at)") => Layout::Days {
            default: shape.default_partition,
        },
        _ => Layout::Rows,
    })
}

/// The UTC day a partition named `<table>_pYYYYMMDD` holds, if `relname` is one.
pub fn day_of(names: &TableNames, relname: &str) -> Option<NaiveDate> {
    let digits = relname.strip_prefix(&day_prefix(names))?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// The name of the partition of `day`, as written in SQL.
pub fn day_table(names: &TableNames, day: NaiveDate) -> String {
    names.sibling(&format!("{}{}", day_prefix(names), day.format("%Y%m%d")))
}

fn day_prefix(names: &TableNames) -> String {
    format!("{}_p", names.base())
}

/// The first day still within retention: the day holding the cutoff. (Settings bound the
/// retention, so the cutoff is a real date.)
fn first_day(now: DateTime<Utc>, retention: std::time::Duration) -> NaiveDate {
    chrono::Duration::from_std(retention)
        .ok()
        .and_then(|r| now.checked_sub_signed(r))
        .map_or(NaiveDate::MIN, |cutoff| cutoff.date_naive())
}

/// The day partitions the outbox has now.
pub async fn days(conn: &mut AsyncPgConnection, names: &TableNames) -> Result<Vec<NaiveDate>, StoreError> {
    #[derive(QueryableByName)]
    struct Child {
        #[diesel(sql_type = Text)]
        relname: String,
    }
    let children: Vec<Child> = diesel::sql_query(
        "SELECT c.relname::text AS relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = to_regclass($1)",
    )
    .bind::<Text, _>(names.table())
    .load(conn)
    .await?;
    let mut days: Vec<NaiveDate> = children.iter().filter_map(|c| day_of(names, &c.relname)).collect();
    days.sort();
    Ok(days)
}

/// Creates the partitions missing for today and the [`DAYS_AHEAD`] days after it, and for
/// each day within retention that has rows in the default partition (moving them in);
/// returns how many it created. Does nothing to a table kept row by row.
pub async fn prepare(
    conn: &mut AsyncPgConnection,
    names: &TableNames,
    retention: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let Layout::Days { default } = layout(conn, names).await? else {
        return Ok(0);
    };
    make_days(conn, names, default.as_deref(), retention, now).await
}

/// [`prepare`] for a table already known to be kept by days, `default` its default partition.
async fn make_days(
    conn: &mut AsyncPgConnection,
    names: &TableNames,
    default: Option<&str>,
    retention: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let today = now.date_naive();
    let mut wanted: BTreeSet<NaiveDate> = (0..=DAYS_AHEAD).map(|d| today + Days::new(d)).collect();
    if let Some(default) = default {
        wanted.extend(days_held(conn, default, first_day(now, retention)).await?);
    }
    let have = days(conn, names).await?;
    let mut created = 0;
    for day in wanted.into_iter().filter(|d| !have.contains(d)) {
        if create_day(conn, names, default, day).await? {
            created += 1;
        }
    }
    Ok(created)
}

/// The days, from `first` on, of the rows in the default partition `default`.
async fn days_held(
    conn: &mut AsyncPgConnection,
    default: &str,
    first: NaiveDate,
) -> Result<Vec<NaiveDate>, StoreError> {
    #[derive(QueryableByName)]
    struct Day {
        #[diesel(sql_type = Text)]
        day: String,
    }
    let rows: Vec<Day> = diesel::sql_query(format!(
        "SELECT DISTINCT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day FROM {default} \
         WHERE created_at >= $1::timestamptz"
    ))
    .bind::<Text, _>(bound(first))
    .load(conn)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|d| NaiveDate::parse_from_str(&d.day, "%Y-%m-%d").ok())
        .collect())
}

/// Creates the partition of `day`, moving into it the rows of that day the default partition
/// holds; returns false if another relay made it first.
pub async fn create_day(
    conn: &mut AsyncPgConnection,
    names: &TableNames,
    default: Option<&str>,
    day: NaiveDate,
) -> Result<bool, StoreError> {
    let t = names.table();
    let part = day_table(names, day);
    let (from, to) = (bound(day), bound(day + Days::new(1)));
    let key = names.lock_key();
    let default = default.map(str::to_owned);
    conn.transaction::<_, StoreError, _>(async move |c| {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({key})")).execute(c).await?;
        if exists(c, &part).await? {
            return Ok(false);
        }
        c.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
             CREATE TABLE {part} (LIKE {t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        ))
        .await?;
        if let Some(default) = default {
            // Inserts into the default wait for this transaction: none can slip into the
            // day between the move and the attach (which would then fail).
            let cols = columns(c, &t).await?;
            c.batch_execute(&format!(
                "LOCK TABLE {default} IN SHARE ROW EXCLUSIVE MODE; \
                 WITH moved AS (DELETE FROM {default} WHERE created_at >= '{from}' AND created_at < '{to}' RETURNING {cols}) \
                 INSERT INTO {part} ({cols}) SELECT {cols} FROM moved"
            ))
            .await?;
        }
        c.batch_execute(&format!(
            "ALTER TABLE {t} ATTACH PARTITION {part} FOR VALUES FROM ('{from}') TO ('{to}')"
        ))
        .await?;
        Ok(true)
    })
    .await
}

/// What became of a day past retention.
enum Expired {
    Dropped,
    /// Kept: some of its rows are unsent.
    Overdue,
    /// Another relay dropped it first.
    Gone,
}

/// Drops the partition of `day` unless a row of it is unsent.
async fn drop_day(conn: &mut AsyncPgConnection, names: &TableNames, day: NaiveDate) -> Result<Expired, StoreError> {
    let part = day_table(names, day);
    let key = names.lock_key();
    conn.transaction::<_, StoreError, _>(async move |c| {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({key})"))
            .execute(c)
            .await?;
        if !exists(c, &part).await? {
            return Ok(Expired::Gone);
        }
        // Locked first, so no row can be added or unmarked between the check and the drop.
        c.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE"
        ))
        .await?;
        #[derive(QueryableByName)]
        struct Unsent {
            #[diesel(sql_type = Bool)]
            unsent: bool,
        }
        let u: Unsent = diesel::sql_query(format!(
            "SELECT EXISTS (SELECT 1 FROM {part} WHERE sent_at IS NULL) AS unsent"
        ))
        .get_result(c)
        .await?;
        if u.unsent {
            return Ok(Expired::Overdue);
        }
        c.batch_execute(&format!("DROP TABLE {part}")).await?;
        Ok(Expired::Dropped)
    })
    .await
}

/// One run of the cleanup: for a table kept by days, creates the coming days, drops the days
/// past retention and deletes the default partition's rows past retention; for any other
/// table, deletes its sent rows past retention. `batch` rows per `DELETE`.
pub async fn run(store: &Store, retention: std::time::Duration, batch: i64) -> Result<Outcome, StoreError> {
    let names = store.names().clone();
    let now = Utc::now();
    let mut c = store.conn().await?;
    let mut out = Outcome::default();
    match layout(&mut c, &names).await? {
        Layout::Rows => {
            drop(c);
            out.deleted = store::cleanup(store, &names.table(), retention, batch).await?;
        }
        Layout::Days { default } => {
            // The layout is known: no second look at the catalog.
            out.created = make_days(&mut c, &names, default.as_deref(), retention, now).await?;
            let first = first_day(now, retention);
            for day in days(&mut c, &names).await? {
                // A day is dropped only once all of it is past retention.
                if day >= first {
                    continue;
                }
                match drop_day(&mut c, &names, day).await? {
                    Expired::Dropped => out.dropped += 1,
                    Expired::Overdue => out.overdue += 1,
                    Expired::Gone => {}
                }
            }
            drop(c);
            if let Some(default) = default {
                out.deleted = store::cleanup(store, &default, retention, batch).await?;
            }
        }
    }
    Ok(out)
}

/// A day's first instant, as a timestamptz literal.
fn bound(day: NaiveDate) -> String {
    format!("{} 00:00:00+00", day.format("%Y-%m-%d"))
}

async fn exists(conn: &mut AsyncPgConnection, relation: &str) -> Result<bool, StoreError> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Bool)]
        found: bool,
    }
    let f: Found = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS found")
        .bind::<Text, _>(relation)
        .get_result(conn)
        .await?;
    Ok(f.found)
}

/// The columns of `table` in order, quoted: rows are moved by name, never by position (a
/// partition's columns need not be in its parent's order).
async fn columns(conn: &mut AsyncPgConnection, table: &str) -> Result<String, StoreError> {
    #[derive(QueryableByName)]
    struct Cols {
        #[diesel(sql_type = Text)]
        cols: String,
    }
    let c: Cols = diesel::sql_query(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) AS cols FROM pg_attribute \
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
    )
    .bind::<Text, _>(table)
    .get_result(conn)
    .await?;
    Ok(c.cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_names_round_trip() {
        let n = TableNames::parse("billing.events_outbox").unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        assert_eq!(day_table(&n, day), "billing.events_outbox_p20261205");
        assert_eq!(day_of(&n, "events_outbox_p20261205"), Some(day));
        for other in [
            "events_outbox_default",
            "events_outbox_p2026120",
            "events_outbox_p20261305",
            "outbox_p20261205",
        ] {
            assert_eq!(day_of(&n, other), None, "{other}");
        }
    }

    #[test]
    fn the_first_day_holds_the_cutoff() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T01:00:00Z").unwrap().to_utc();
        let week = std::time::Duration::from_secs(7 * 86_400);
        assert_eq!(first_day(now, week), NaiveDate::from_ymd_opt(2026, 11, 28).unwrap());
        let hour = std::time::Duration::from_secs(3_600);
        assert_eq!(first_day(now, hour), NaiveDate::from_ymd_opt(2026, 12, 5).unwrap());
        assert_eq!(
            first_day(now, std::time::Duration::from_secs(7_200)),
            NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
        );
    }
}
