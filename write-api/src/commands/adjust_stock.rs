//! `POST /v1/products/{id}/stock-adjustments`: add or remove stock (admin).

use axum::extract::State;
use diesel_async::AsyncPgConnection;
use ordering_platform::http::json::JsonBody;
use ordering_platform::http::path::PathId;
use ordering_platform::problem::Problem;
use ordering_schema::events::{ProductData, now};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, change_product, execute, parse_id};
use crate::app::AppState;
use crate::error::ApiError;
use crate::http::meta::CommandMeta;
use crate::http::reply::Reply;

/// Body of a stock adjustment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStockRequest {
    /// Non-zero, within ±10^9; stock may not go below 0.
    pub delta: i64,
    /// At most 500 characters.
    pub reason: Option<String>,
}

struct AdjustStock {
    id: Uuid,
    delta: i64,
    reason: Option<String>,
}

impl Command for AdjustStock {
    async fn run(self, conn: &mut AsyncPgConnection, meta: &CommandMeta) -> Result<Reply, ApiError> {
        let (delta, reason) = (self.delta, self.reason);
        change_product(conn, meta, self.id, |p| {
            p.adjust_stock(delta, reason.as_deref(), now()).map(Some)
        })
        .await
    }
}

/// Adjusts a product's stock.
#[utoipa::path(
    post, operation_id = "adjust_stock", path = "/v1/products/{id}/stock-adjustments", tag = "catalog",
    request_body(content = AdjustStockRequest, example = json!({"delta": 25, "reason": "delivery from the supplier"})),
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    // The answers every command can give (400, 401, 403, 404 and 412 on an id, 413, 415, 422,
    // 500, 503) are added to the document by `router::document_problems`.
    responses(
        (status = 200, body = ProductData),
        (status = 409, description = "insufficient_stock", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn handler(
    State(app): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: JsonBody<AdjustStockRequest>,
) -> Result<Reply, ApiError> {
    meta.caller.require_admin()?;
    let id = parse_id(&id, "product")?;
    let r = body.value;
    execute(
        &app,
        &meta,
        &body.json,
        AdjustStock {
            id,
            delta: r.delta,
            reason: r.reason,
        },
    )
    .await
}
