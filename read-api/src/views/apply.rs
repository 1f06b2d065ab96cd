//! How events change the view tables, and how the changes are announced.
//!
//! Events are applied set-wise: one statement upserts a whole batch of product (or order)
//! changes, each guarded by the stored version, and reports per event whether it applied.
//! The guard is what makes delivery "exactly once in effect": a row moves from version `v`
//! to `v + 1` only; a duplicate or an older event matches no row, and an event from the
//! future (a gap) is reported, not applied. One statement can change a row once, so the
//! events of one aggregate go to successive statements ([`crate::projector::apply_all`]
//! makes those rounds); the caller decides the transaction around them and announces what
//! committed ([`announce`]).
//!
//! Every row a statement writes draws a fresh `applied` number (the column's default, from
//! `rv_applied_seq`): that is how a rebuild tells the rows applied while it ran from older
//! ones ([`crate::rebuild`]).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ordering_platform::db::Statement;
use ordering_schema::events::{OrderData, ProductData};
use uuid::Uuid;

use super::Tables;
use super::search::search_text;
use super::served::{OrderListItem, OrderView, product_view};

/// The channel applied changes are announced on: a payload is one or more announcements
/// separated by spaces, each `p:<id>:<version>` or `o:<id>:<version>` (the highest version
/// each aggregate reached in the announcing transaction), or `rebuilt` after a rebuild
/// swapped the tables in.
pub const NOTIFY_CHANNEL: &str = "rv_applied";

/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more: longer lists are split.
const MAX_PAYLOAD: usize = 7900;

/// What applying one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The view moved to the event's version; `doc` is the view now stored, `revision` the
    /// customer's revision after the statement (order events).
    Applied { doc: String, revision: Option<i64> },
    /// The view already reflects this version or a later one: nothing changed.
    Duplicate,
    /// The view is at `have`, short of the version before the event's: hold the event back.
    Gap { have: i64 },
}

/// How strictly versions must follow each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuity {
    /// A view starts at version 1 and moves by 1 (the live projector).
    Strict,
    /// A view may start at any version and skip forward (rebuild `--from-available`, when
    /// retention dropped the head of the stream).
    FromAvailable,
}

/// One row per input event: the stored doc if it applied, else the version the view had.
#[derive(QueryableByName)]
struct AppliedRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    doc: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    have: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    revision: Option<i64>,
}

/// One product change: the state `data` at version `sequence`.
pub struct ProductChange<'a> {
    pub data: &'a ProductData,
    pub sequence: i64,
}

/// One order change: the state `data` at version `sequence`, reached by an event at `at`.
pub struct OrderChange<'a> {
    pub data: &'a OrderData,
    pub sequence: i64,
    pub at: DateTime<Utc>,
}

/// Per input id (in input order), what its row in `rows` says happened.
fn outcomes(ids: &[Uuid], versions: &[i64], rows: Vec<AppliedRow>) -> Vec<Outcome> {
    let mut by_id: std::collections::HashMap<Uuid, AppliedRow> = rows.into_iter().map(|r| (r.id, r)).collect();
    ids.iter()
        .zip(versions)
        .map(|(id, version)| match by_id.remove(id) {
            Some(AppliedRow {
                doc: Some(doc),
                revision,
                ..
            }) => Outcome::Applied { doc, revision },
            Some(AppliedRow { have: Some(have), .. }) if have >= *version => Outcome::Duplicate,
            Some(AppliedRow { have, .. }) => Outcome::Gap {
                have: have.unwrap_or(0),
            },
            None => Outcome::Gap { have: 0 },
        })
        .collect()
}

/// Applies `changes` (of distinct products) to the product view in one statement; the
/// outcomes are in input order.
pub async fn apply_products(
    conn: &mut AsyncPgConnection,
    tables: &Tables,
    changes: &[ProductChange<'_>],
    continuity: Continuity,
) -> diesel::QueryResult<Vec<Outcome>> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let t = &tables.products;
    // The main query reads the table as it was before the statement (`cur`): for an event
    // that did not apply, that is the version it found.
    let sql = format!(
        "WITH input AS (
           SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
                                $7::jsonb[])
                      AS i(id, version, name, price_cents, stock, search, doc)),
         up AS (
           INSERT INTO {t} AS t (id, version, name, price_cents, stock, search, doc)
           SELECT i.id, i.version, i.name, i.price_cents, i.stock, i.search, i.doc FROM input i
            WHERE i.version = 1 OR $8 OR EXISTS (SELECT 1 FROM {t} e WHERE e.id = i.id)
           ON CONFLICT (id) DO UPDATE SET version = excluded.version, name = excluded.name,
              price_cents = excluded.price_cents, stock = excluded.stock,
              search = excluded.search, doc = excluded.doc, applied = DEFAULT
            WHERE t.version = excluded.version - 1 OR ($8 AND t.version < excluded.version)
           RETURNING t.id, t.doc::text AS doc)
         SELECT i.id, up.doc, cur.version AS have, NULL::bigint AS revision
           FROM input i LEFT JOIN up ON up.id = i.id LEFT JOIN {t} cur ON cur.id = i.id"
    );
    let n = changes.len();
    let (mut ids, mut versions, mut names, mut prices, mut stocks, mut searches, mut docs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for c in changes {
        let p = c.data;
        let doc = to_json(&product_view(p, c.sequence))?;
        ids.push(p.id);
        versions.push(c.sequence);
        names.push(p.name.as_str());
        prices.push(p.price_cents);
        stocks.push(p.stock);
        searches.push(search_text(p));
        docs.push(doc);
    }
    let rows: Vec<AppliedRow> = diesel::sql_query(sql)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<BigInt>, _>(&versions)
        .bind::<Array<Text>, _>(&names)
        .bind::<Array<BigInt>, _>(&prices)
        .bind::<Array<BigInt>, _>(&stocks)
        .bind::<Array<Text>, _>(&searches)
        .bind::<Array<Jsonb>, _>(&docs)
        .bind::<Bool, _>(continuity == Continuity::FromAvailable)
        .load(conn)
        .await?;
    Ok(outcomes(&ids, &versions, rows))
}

/// A served type as the JSON stored for it.
fn to_json(served: &impl serde::Serialize) -> diesel::QueryResult<serde_json::Value> {
    serde_json::to_value(served).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
}

/// Applies `changes` (of distinct orders) to the order view in one statement, and bumps each
/// customer's revision by the number of their orders that changed; the outcomes are in input
/// order, each applied one with its customer's revision after the statement.
pub async fn apply_orders(
    conn: &mut AsyncPgConnection,
    tables: &Tables,
    changes: &[OrderChange<'_>],
    continuity: Continuity,
) -> diesel::QueryResult<Vec<Outcome>> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let t = &tables.orders;
    let c = &tables.customers;
    // Customers are bumped in id order, so two transactions touching the same customers
    // lock them in the same order.
    let sql = format!(
        "WITH input AS (
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::bigint[], $6::text[],
                                $7::timestamptz[], $8::jsonb[], $9::jsonb[])
                      AS i(id, customer_id, version, status, total_cents, currency, created_at, doc, item)),
         up AS (
           INSERT INTO {t} AS t (id, customer_id, version, status, total_cents, currency, created_at, doc, item)
           SELECT i.id, i.customer_id, i.version, i.status, i.total_cents, i.currency, i.created_at, i.doc, i.item
             FROM input i
            WHERE i.version = 1 OR $10 OR EXISTS (SELECT 1 FROM {t} e WHERE e.id = i.id)
           ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status,
              total_cents = excluded.total_cents, currency = excluded.currency,
              created_at = excluded.created_at, item = excluded.item,
              doc = jsonb_set(excluded.doc, '{{history}}', (t.doc -> 'history') || (excluded.doc -> 'history')),
              applied = DEFAULT
            WHERE t.version = excluded.version - 1 OR ($10 AND t.version < excluded.version)
           RETURNING t.id, t.customer_id, t.doc::text AS doc),
         cust AS (
           INSERT INTO {c} AS c (customer_id, revision)
           SELECT customer_id, count(*) FROM up GROUP BY customer_id ORDER BY customer_id
           ON CONFLICT (customer_id) DO UPDATE SET revision = c.revision + excluded.revision, applied = DEFAULT
           RETURNING c.customer_id, c.revision)
         SELECT i.id, up.doc, cur.version AS have, cust.revision
           FROM input i LEFT JOIN up ON up.id = i.id LEFT JOIN {t} cur ON cur.id = i.id
           LEFT JOIN cust ON cust.customer_id = up.customer_id"
    );
    let n = changes.len();
    let mut ids = Vec::with_capacity(n);
    let mut customers = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut totals = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut docs = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    for ch in changes {
        let o = ch.data;
        let doc = to_json(&OrderView::after_event(o, ch.sequence, ch.at))?;
        ids.push(o.id);
        customers.push(o.customer_id);
        versions.push(ch.sequence);
        statuses.push(o.status.as_str());
        totals.push(o.total_cents);
        currencies.push(o.currency.as_str());
        created.push(o.created_at);
        docs.push(doc);
        items.push(to_json(&OrderListItem::from(o))?);
    }
    let rows: Vec<AppliedRow> = diesel::sql_query(sql)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<SqlUuid>, _>(&customers)
        .bind::<Array<BigInt>, _>(&versions)
        .bind::<Array<Text>, _>(&statuses)
        .bind::<Array<BigInt>, _>(&totals)
        .bind::<Array<Text>, _>(&currencies)
        .bind::<Array<Timestamptz>, _>(&created)
        .bind::<Array<Jsonb>, _>(&docs)
        .bind::<Array<Jsonb>, _>(&items)
        .bind::<Bool, _>(continuity == Continuity::FromAvailable)
        .load(conn)
        .await?;
    Ok(outcomes(&ids, &versions, rows))
}

/// Announces `entries` (each `p:<id>:<version>` or `o:<id>:<version>`) on
/// [`NOTIFY_CHANNEL`], in as few notifications as the payload limit allows. Inside the
/// applying transaction, so they are delivered if and only if it commits.
pub async fn announce(conn: &mut AsyncPgConnection, entries: &[String]) -> diesel::QueryResult<()> {
    let mut payloads: Vec<String> = Vec::new();
    for e in entries {
        match payloads.last_mut() {
            Some(p) if p.len() + 1 + e.len() <= MAX_PAYLOAD => {
                p.push(' ');
                p.push_str(e);
            }
            _ => payloads.push(e.clone()),
        }
    }
    if payloads.is_empty() {
        return Ok(());
    }
    // Kept prepared (it touches no table): it runs in every applying transaction.
    static NOTIFY: LazyLock<Statement> = LazyLock::new(|| {
        Statement::new("SELECT count(*) AS n FROM (SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p) n")
    });
    NOTIFY
        .bind::<Text, _>(NOTIFY_CHANNEL)
        .bind::<Array<Text>, _>(&payloads)
        .execute(conn)
        .await?;
    Ok(())
}
