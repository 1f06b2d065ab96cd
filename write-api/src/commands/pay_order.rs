//! `POST /v1/orders/{id}/pay`: record the payment of a placed order.

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

/// Body of `POST /v1/orders/{id}/pay`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayOrderRequest {
    /// 1–200 characters.
    pub payment_reference: String,
}

struct PayOrder {
    id: Uuid,
    payment_reference: String,
}

impl Command for PayOrder {
    const COUNTER: Option<&'static str> = Some(crate::catalog::ORDERS_PAID);

    async fn run(self, conn: &mut AsyncPgConnection, meta: &CommandMeta) -> Result<Reply, ApiError> {
        let reference = self.payment_reference;
        change_order_status(conn, meta, self.id, |o| o.pay(&reference, now())).await
    }
}

/// Pays an order (its customer or an admin).
#[utoipa::path(
    post, operation_id = "pay_order", path = "/v1/orders/{id}/pay", tag = "orders",
    request_body(content = PayOrderRequest, example = json!({"payment_reference": "PAY-2026-0001"})),
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
    body: JsonBody<PayOrderRequest>,
) -> Result<Reply, ApiError> {
    let id = parse_id(&id, "order")?;
    let payment_reference = body.value.payment_reference;
    execute(&app, &meta, &body.json, PayOrder { id, payment_reference }).await
}
