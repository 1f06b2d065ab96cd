//! `GET /v1/customers/{customer_id}/orders` and `.../summary`: the customer's own data (or
//! an admin's view of it).
//!
//! Both are cached in the customer's Redis hash, stamped with the customer's revision. A
//! request with a consistency token reads PostgreSQL after its wait (the hash may still be
//! one invalidation behind) and refreshes the cache on the way.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ordering_platform::auth::Caller;
use ordering_platform::http::path::PathId;
use ordering_platform::problem::Problem;
use ordering_schema::events::OrderStatus;
use uuid::Uuid;

use super::schemas::{CustomerSummary, OrderPage};
use super::{
    answer, await_consistency, consistency_marks, etag_of_body, limit_param, page_body, path_id, query_params,
};
use crate::app::AppState;
use crate::cache::Source;
use crate::error::{ReadError, field};
use crate::views;

/// The customer in the path, if the caller may see their data.
fn customer_of(caller: &Caller, raw: &str) -> Result<Uuid, ReadError> {
    let id = path_id(raw, "customer")?;
    if caller.is_admin() || caller.subject == id {
        Ok(id)
    } else {
        Err(ReadError::NotFound("customer"))
    }
}

/// Query parameters of the order list.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OrderListParams {
    /// Only orders in this status.
    status: Option<OrderStatus>,
    /// 1 to 100, default 20.
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Lists a customer's orders, newest first (keyset cursors).
#[utoipa::path(
    get, path = "/v1/customers/{customer_id}/orders", tag = "customers",
    params(("customer_id" = uuid::Uuid, Path, description = "the customer's id (anything but a UUID is 404)"), OrderListParams, ("X-Consistency-Token" = Option<String>, Header), ("If-None-Match" = Option<String>, Header)),
    responses(
        (status = 200, body = OrderPage, headers(("ETag" = String), ("X-Cache" = String))),
        (status = 304), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn list_orders(
    State(app): State<AppState>,
    caller: Caller,
    PathId(customer): PathId,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ReadError> {
    let marks = consistency_marks(&app, &headers, Some(&caller))?;
    let customer = customer_of(&caller, &customer)?;
    let q = query_params(raw.as_deref(), &["status", "limit", "cursor"])?;
    let mut errors = Vec::new();
    let limit = limit_param(&q, &mut errors);
    let status = match q.get("status") {
        None => None,
        Some(s) => match OrderStatus::parse(s) {
            Some(s) => Some(s),
            None => {
                errors.push(field("status", "must be placed, paid, shipped or cancelled"));
                None
            }
        },
    };
    let scope = format!("orders|{customer}|{status:?}");
    let after = match q.get("cursor") {
        None => None,
        Some(c) => match app.cursors.decode::<(i64, Uuid)>(c, &scope) {
            Some((micros, id)) => match DateTime::<Utc>::from_timestamp_micros(micros) {
                Some(at) => Some((at, id)),
                None => {
                    errors.push(field("cursor", "not a cursor issued for this query"));
                    None
                }
            },
            None => {
                errors.push(field("cursor", "not a cursor issued for this query"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ReadError::Validation(errors));
    }
    await_consistency(&app, marks.as_deref()).await?;
    let cache_field = format!(
        "orders|{}|{limit}|{}",
        status.map_or("", |s| s.as_str()),
        q.get("cursor").map_or("", String::as_str)
    );
    if marks.is_none()
        && let Some((_, body)) = app.cache.customer_get(customer, &cache_field).await
    {
        let etag = etag_of_body(&body);
        return Ok(answer(&headers, body, etag, Source::Hit));
    }
    let mut conn = app.pool.get().await?;
    // The revision first: the rows read after it are at least that fresh, so the cache can
    // never label older rows with a newer revision.
    let revision = views::customer_revision(&mut conn, customer).await?;
    let mut rows = views::customer_orders(&mut conn, customer, status, after, limit + 1).await?;
    drop(conn);
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(20));
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(
            app.cursors
                .encode(&(last.created_at.timestamp_micros(), last.id), &scope),
        ),
        _ => None,
    };
    let body = page_body(rows.iter().map(|r| r.item.as_str()), next);
    app.cache.customer_fill(customer, revision, &cache_field, &body).await;
    let etag = etag_of_body(&body);
    Ok(answer(&headers, body, etag, Source::Miss))
}

/// A customer's summary: order counts, money spent per currency, last order time.
#[utoipa::path(
    get, operation_id = "customer_summary", path = "/v1/customers/{customer_id}/summary", tag = "customers",
    params(("customer_id" = uuid::Uuid, Path, description = "the customer's id (anything but a UUID is 404)"), ("X-Consistency-Token" = Option<String>, Header), ("If-None-Match" = Option<String>, Header)),
    responses(
        (status = 200, body = CustomerSummary, headers(("ETag" = String), ("X-Cache" = String))),
        (status = 304), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn summary(
    State(app): State<AppState>,
    caller: Caller,
    PathId(customer): PathId,
    headers: HeaderMap,
) -> Result<Response, ReadError> {
    let marks = consistency_marks(&app, &headers, Some(&caller))?;
    let customer = customer_of(&caller, &customer)?;
    await_consistency(&app, marks.as_deref()).await?;
    if marks.is_none()
        && let Some((_, body)) = app.cache.customer_get(customer, "summary").await
    {
        let etag = etag_of_body(&body);
        return Ok(answer(&headers, body, etag, Source::Hit));
    }
    let mut conn = app.pool.get().await?;
    let revision = views::customer_revision(&mut conn, customer).await?;
    let summary = views::customer_summary(&mut conn, customer).await?;
    drop(conn);
    let body = Bytes::from(serde_json::to_vec(&summary).unwrap_or_default());
    app.cache.customer_fill(customer, revision, "summary", &body).await;
    let etag = etag_of_body(&body);
    Ok(answer(&headers, body, etag, Source::Miss))
}
