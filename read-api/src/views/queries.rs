//! What the endpoints read: single views, the product list with its filters, a customer's
//! orders and summary, and the stored versions the consistency waits compare against.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ordering_schema::events::{AggregateType, OrderStatus};
use uuid::Uuid;

use super::search::like_pattern;
use super::served::CustomerSummary;

fn not_found_as_none<T>(e: diesel::result::Error) -> diesel::QueryResult<Option<T>> {
    match e {
        diesel::result::Error::NotFound => Ok(None),
        e => Err(e),
    }
}

/// A single view as stored: its version, its owner (orders) and the JSON served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredView {
    pub version: i64,
    pub owner: Option<Uuid>,
    pub doc: String,
}

#[derive(QueryableByName)]
struct DocRow {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    owner: Option<Uuid>,
    #[diesel(sql_type = Text)]
    doc: String,
}

/// The single view of `aggregate` `id`, if any: a product, or an order with its customer as
/// owner.
pub async fn single(
    conn: &mut AsyncPgConnection,
    aggregate: AggregateType,
    id: Uuid,
) -> diesel::QueryResult<Option<StoredView>> {
    let sql = match aggregate {
        AggregateType::Product => {
            "SELECT version, NULL::uuid AS owner, doc::text AS doc FROM rv_products WHERE id = $1"
        }
        AggregateType::Order => "SELECT version, customer_id AS owner, doc::text AS doc FROM rv_orders WHERE id = $1",
    };
    let row: Option<DocRow> = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .map(Some)
        .or_else(not_found_as_none)?;
    Ok(row.map(|r| StoredView {
        version: r.version,
        owner: r.owner,
        doc: r.doc,
    }))
}

#[derive(QueryableByName)]
struct IdVersion {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    version: i64,
}

/// The versions of the views `ids` of `table` (`rv_products` or `rv_orders`) that exist.
pub async fn versions(
    conn: &mut AsyncPgConnection,
    table: &str,
    ids: &[Uuid],
) -> diesel::QueryResult<Vec<(Uuid, i64)>> {
    let rows: Vec<IdVersion> = diesel::sql_query(format!("SELECT id, version FROM {table} WHERE id = ANY($1)"))
        .bind::<Array<SqlUuid>, _>(ids)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.version)).collect())
}

/// Sort orders of the product list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProductSort {
    #[serde(rename = "name")]
    Name,
    #[serde(rename = "price")]
    Price,
    #[serde(rename = "-price")]
    PriceDesc,
}

/// Where a page of products starts: after this (sort key, id).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProductKey {
    Name(String),
    Price(i64),
}

/// The product list's filters.
#[derive(Clone, Debug, Default)]
pub struct ProductFilter {
    pub terms: Vec<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
}

/// One row of a product page: the view and its keys.
pub struct ProductRow {
    pub doc: String,
    pub name: String,
    pub price_cents: i64,
    pub id: Uuid,
}

#[derive(QueryableByName)]
struct ProductListRow {
    #[diesel(sql_type = Text)]
    doc: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    price_cents: i64,
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Up to `limit` products matching `filter` in `sort` order, after `after` (keyset).
pub async fn products(
    conn: &mut AsyncPgConnection,
    filter: &ProductFilter,
    sort: ProductSort,
    after: Option<(ProductKey, Uuid)>,
    limit: i64,
) -> diesel::QueryResult<Vec<ProductRow>> {
    let mut sql = String::from("SELECT doc::text AS doc, name, price_cents, id FROM rv_products WHERE true");
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    for _ in &filter.terms {
        sql.push_str(&format!(" AND search LIKE ${} ESCAPE '\\'", next()));
    }
    if filter.min_price.is_some() {
        sql.push_str(&format!(" AND price_cents >= ${}", next()));
    }
    if filter.max_price.is_some() {
        sql.push_str(&format!(" AND price_cents <= ${}", next()));
    }
    match filter.in_stock {
        Some(true) => sql.push_str(" AND stock > 0"),
        Some(false) => sql.push_str(" AND stock = 0"),
        None => {}
    }
    if after.is_some() {
        let (a, b) = (next(), next());
        sql.push_str(&match sort {
            ProductSort::Name => format!(" AND (name, id) > (${a}, ${b})"),
            ProductSort::Price => format!(" AND (price_cents, id) > (${a}, ${b})"),
            ProductSort::PriceDesc => format!(" AND (price_cents, id) < (${a}, ${b})"),
        });
    }
    sql.push_str(match sort {
        ProductSort::Name => " ORDER BY name, id",
        ProductSort::Price => " ORDER BY price_cents, id",
        ProductSort::PriceDesc => " ORDER BY price_cents DESC, id DESC",
    });
    sql.push_str(&format!(" LIMIT ${}", next()));
    let mut q = diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>();
    for t in &filter.terms {
        q = q.bind::<Text, _>(like_pattern(t));
    }
    if let Some(v) = filter.min_price {
        q = q.bind::<BigInt, _>(v);
    }
    if let Some(v) = filter.max_price {
        q = q.bind::<BigInt, _>(v);
    }
    if let Some((key, id)) = after {
        q = match key {
            ProductKey::Name(s) => q.bind::<Text, _>(s),
            ProductKey::Price(p) => q.bind::<BigInt, _>(p),
        };
        q = q.bind::<SqlUuid, _>(id);
    }
    q = q.bind::<BigInt, _>(limit);
    let rows: Vec<ProductListRow> = q.load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| ProductRow {
            doc: r.doc,
            name: r.name,
            price_cents: r.price_cents,
            id: r.id,
        })
        .collect())
}

#[derive(QueryableByName)]
struct Revision {
    #[diesel(sql_type = BigInt)]
    revision: i64,
}

/// The customer's revision: how many order events of theirs the views reflect (0: none).
pub async fn customer_revision(conn: &mut AsyncPgConnection, customer: Uuid) -> diesel::QueryResult<i64> {
    let row: Option<Revision> = diesel::sql_query("SELECT revision FROM rv_customers WHERE customer_id = $1")
        .bind::<SqlUuid, _>(customer)
        .get_result(conn)
        .await
        .map(Some)
        .or_else(not_found_as_none)?;
    Ok(row.map_or(0, |r| r.revision))
}

/// One row of a customer's order list.
pub struct OrderListRow {
    pub item: String,
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(QueryableByName)]
struct OrderListDbRow {
    #[diesel(sql_type = Text)]
    item: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Up to `limit` orders of `customer`, newest first, after `after` (keyset).
pub async fn customer_orders(
    conn: &mut AsyncPgConnection,
    customer: Uuid,
    status: Option<OrderStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> diesel::QueryResult<Vec<OrderListRow>> {
    let mut sql = String::from("SELECT item::text AS item, created_at, id FROM rv_orders WHERE customer_id = $1");
    let mut n = 1;
    if status.is_some() {
        n += 1;
        sql.push_str(&format!(" AND status = ${n}"));
    }
    if after.is_some() {
        sql.push_str(&format!(" AND (created_at, id) < (${}, ${})", n + 1, n + 2));
        n += 2;
    }
    sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${}", n + 1));
    let mut q = diesel::sql_query(sql)
        .into_boxed::<diesel::pg::Pg>()
        .bind::<SqlUuid, _>(customer);
    if let Some(s) = status {
        q = q.bind::<Text, _>(s.as_str());
    }
    if let Some((at, id)) = after {
        q = q.bind::<Timestamptz, _>(at).bind::<SqlUuid, _>(id);
    }
    let rows: Vec<OrderListDbRow> = q.bind::<BigInt, _>(limit).load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| OrderListRow {
            item: r.item,
            created_at: r.created_at,
            id: r.id,
        })
        .collect())
}

#[derive(QueryableByName)]
struct SummaryRow {
    #[diesel(sql_type = BigInt)]
    order_count: i64,
    #[diesel(sql_type = BigInt)]
    open_order_count: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_order_at: Option<DateTime<Utc>>,
    /// A JSON object: per currency, the sum as a decimal string.
    #[diesel(sql_type = Text)]
    spent: String,
}

/// The customer's summary.
pub async fn customer_summary(conn: &mut AsyncPgConnection, customer: Uuid) -> diesel::QueryResult<CustomerSummary> {
    // Summed in `numeric` (what `sum(bigint)` gives) and passed on as text: a `bigint` cast
    // overflows, and a JSON number of that size would be read back as a float.
    let row: SummaryRow = diesel::sql_query(
        "SELECT count(*) AS order_count,
                count(*) FILTER (WHERE status IN ('placed', 'paid')) AS open_order_count,
                max(created_at) AS last_order_at,
                coalesce((SELECT jsonb_object_agg(currency, total::text)
                            FROM (SELECT currency, sum(total_cents) AS total FROM rv_orders
                                   WHERE customer_id = $1 AND status IN ('paid', 'shipped')
                                   GROUP BY currency) s), '{}'::jsonb)::text AS spent
           FROM rv_orders WHERE customer_id = $1",
    )
    .bind::<SqlUuid, _>(customer)
    .get_result(conn)
    .await?;
    let spent: BTreeMap<String, String> =
        serde_json::from_str(&row.spent).map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
    let spent_cents = spent
        .into_iter()
        .map(|(currency, total)| Ok((currency, total.parse::<i128>()?)))
        .collect::<Result<_, std::num::ParseIntError>>()
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
    Ok(CustomerSummary {
        customer_id: customer,
        order_count: row.order_count,
        open_order_count: row.open_order_count,
        spent_cents,
        last_order_at: row.last_order_at,
    })
}
