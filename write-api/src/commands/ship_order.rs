//! `POST /v1/orders/{id}/ship`: mark a paid order shipped (admin).

use axum::extract::State;
use diesel_async::AsyncPgConnection;
use ordering_platform::http::json::JsonBody;
use ordering_platform::http::path::PathId;
use ordering_platform::problem::Problem;
use ordering_schema::events::{OrderData, now};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, change_order_status, execute, parse_id};
use crate::app::AppState;
use crate::error::ApiError;
use crate::http::meta::CommandMeta;
use crate::http::reply::Reply;

/// Body of `POST /v1/orders/{id}/ship`: empty.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipOrderRequest {}

struct ShipOrder(Uuid);

impl Command for ShipOrder {
    const COUNTER: Option<&'static str> = Some(crate::catalog::ORDERS_SHIPPED);

    async fn run(self, conn: &mut AsyncPgConnection, meta: &CommandMeta) -> Result<Reply, ApiError> {
        change_order_status(conn, meta, self.0, |o| o.ship(now())).await
    }
}

/// Ships an order.
#[utoipa::path(
    post, operation_id = "ship_order", path = "/v1/orders/{id}/ship", tag = "orders",
    request_body(content = ShipOrderRequest, example = json!({})),
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    // The answers every command can give (400, 401, 403, 404 and 412 on an id, 413, 415, 422,
    // 500, 503) are added to the document by `router::document_problems`.
    responses(
        (status = 200, body = OrderData),
        (status = 409, description = "invalid_transition", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn handler(
    State(app): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: JsonBody<ShipOrderRequest>,
) -> Result<Reply, ApiError> {
    meta.caller.require_admin()?;
    let id = parse_id(&id, "order")?;
    execute(&app, &meta, &body.json, ShipOrder(id)).await
}
