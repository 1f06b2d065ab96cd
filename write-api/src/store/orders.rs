//! Orders and their lines in PostgreSQL.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ordering_schema::events::{OrderData, OrderLineData, OrderStatus};
use ordering_schema::schema::{order_lines, orders};
use uuid::Uuid;

use crate::domain::Order;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    status: String,
    currency: String,
    total_cents: i64,
    payment_reference: Option<String>,
    cancel_reason: Option<String>,
    version: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = order_lines, check_for_backend(diesel::pg::Pg))]
struct LineRow {
    order_id: Uuid,
    line_no: i32,
    product_id: Uuid,
    sku: String,
    name: String,
    unit_price_cents: i64,
    quantity: i64,
    line_total_cents: i64,
}

/// Stores a newly placed order with its lines.
pub async fn insert(conn: &mut AsyncPgConnection, order: &Order) -> QueryResult<()> {
    let o = order.state();
    diesel::insert_into(orders::table)
        .values(OrderRow {
            id: o.id,
            customer_id: o.customer_id,
            status: o.status.as_str().to_owned(),
            currency: o.currency.clone(),
            total_cents: o.total_cents,
            payment_reference: order.payment_reference().map(str::to_owned),
            cancel_reason: order.cancel_reason().map(str::to_owned),
            version: o.version,
            created_at: o.created_at,
            updated_at: o.updated_at,
        })
        .execute(conn)
        .await?;
    let lines: Vec<LineRow> = o
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| LineRow {
            order_id: o.id,
            line_no: i as i32,
            product_id: l.product_id,
            sku: l.sku.clone(),
            name: l.name.clone(),
            unit_price_cents: l.unit_price_cents,
            quantity: l.quantity,
            line_total_cents: l.line_total_cents,
        })
        .collect();
    diesel::insert_into(order_lines::table)
        .values(&lines)
        .execute(conn)
        .await?;
    Ok(())
}

/// Loads an order with its lines and locks it until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Order>> {
    let Some(row) = orders::table
        .find(id)
        .select(OrderRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let lines = order_lines::table
        .filter(order_lines::order_id.eq(id))
        .order(order_lines::line_no.asc())
        .select(LineRow::as_select())
        .load(conn)
        .await?;
    let status = OrderStatus::parse(&row.status).ok_or_else(|| {
        diesel::result::Error::DeserializationError(format!("unknown order status {:?}", row.status).into())
    })?;
    let state = OrderData {
        id: row.id,
        customer_id: row.customer_id,
        status,
        lines: lines
            .into_iter()
            .map(|l| OrderLineData {
                product_id: l.product_id,
                sku: l.sku,
                name: l.name,
                unit_price_cents: l.unit_price_cents,
                quantity: l.quantity,
                line_total_cents: l.line_total_cents,
            })
            .collect(),
        total_cents: row.total_cents,
        currency: row.currency,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
    };
    Ok(Some(Order::from_state(state, row.payment_reference, row.cancel_reason)))
}

/// Writes an order's changed status back (lines never change after placing).
pub async fn save(conn: &mut AsyncPgConnection, order: &Order) -> QueryResult<()> {
    let o = order.state();
    let n = diesel::update(orders::table.find(o.id).filter(orders::version.eq(o.version - 1)))
        .set((
            orders::status.eq(o.status.as_str()),
            orders::payment_reference.eq(order.payment_reference()),
            orders::cancel_reason.eq(order.cancel_reason()),
            orders::version.eq(o.version),
            orders::updated_at.eq(o.updated_at),
        ))
        .execute(conn)
        .await?;
    if n == 1 {
        Ok(())
    } else {
        Err(diesel::result::Error::NotFound)
    }
}
