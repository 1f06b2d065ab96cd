//! `GET /v1/orders/{id}`: the order view, for its customer or an admin.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use ordering_platform::auth::Caller;
use ordering_platform::http::path::PathId;
use ordering_platform::problem::Problem;

use super::schemas::OrderView;
use super::{answer, consistent_view};
use crate::app::AppState;
use crate::error::ReadError;
use ordering_schema::events::AggregateType;

/// Reads one order view with its status history.
#[utoipa::path(
    get, path = "/v1/orders/{id}", tag = "orders",
    params(
        ("id" = uuid::Uuid, Path, description = "the order's id (anything but a UUID is 404)"),
        ("X-Consistency-Token" = Option<String>, Header),
        ("If-None-Match" = Option<String>, Header),
    ),
    responses(
        (status = 200, body = OrderView, headers(("ETag" = String), ("X-Cache" = String))),
        (status = 304), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem, description = "no such order, or another customer's"),
        (status = 503, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn get_order(
    State(app): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, ReadError> {
    let (entry, source) = consistent_view(&app, &headers, Some(&caller), AggregateType::Order, &id).await?;
    // Another customer's order does not exist, as far as this caller can tell.
    if !caller.is_admin() && entry.owner != Some(caller.subject) {
        return Err(ReadError::NotFound("order"));
    }
    Ok(answer(&headers, entry.body, entry.etag, source))
}
