//! `POST /v1/orders/{id}/cancel`: cancel a placed or paid order and give its stock back.

use axum::extract::State;
use axum::http::StatusCode;
use diesel_async::AsyncPgConnection;
use ordering_platform::http::json::JsonBody;
use ordering_platform::http::path::PathId;
use ordering_platform::problem::Problem;
use ordering_schema::events::{OrderData, now};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, execute, lock_visible_order, order_reply, parse_id};
use crate::app::AppState;
use crate::error::ApiError;
use crate::http::meta::CommandMeta;
use crate::http::reply::Reply;
use crate::store::{orders, outbox, products};

/// Body of `POST /v1/orders/{id}/cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderRequest {
    /// At most 500 characters.
    pub reason: Option<String>,
}

struct CancelOrder {
    id: Uuid,
    reason: Option<String>,
}

impl Command for CancelOrder {
    const COUNTER: Option<&'static str> = Some(crate::catalog::ORDERS_CANCELLED);

    async fn run(self, conn: &mut AsyncPgConnection, meta: &CommandMeta) -> Result<Reply, ApiError> {
        // Lock order: the order first, then its products in ascending id order, the same
        // order every command uses, so no two transactions wait on each other in a cycle.
        let mut order = lock_visible_order(conn, meta, self.id).await?;
        let mut ids: Vec<Uuid> = order.state().lines.iter().map(|l| l.product_id).collect();
        ids.sort();
        let mut locked = products::lock_many(conn, &ids).await?;
        let events = order.cancel(self.reason.as_deref(), &mut locked, now())?;
        for product in &locked {
            products::save(conn, product).await?;
        }
        orders::save(conn, &order).await?;
        outbox::append(conn, &events, &meta.trace_headers).await?;
        order_reply(StatusCode::OK, &order, &events, meta)
    }
}

/// Cancels an order (its customer or an admin).
#[utoipa::path(
    post, operation_id = "cancel_order", path = "/v1/orders/{id}/cancel", tag = "orders",
    request_body(content = CancelOrderRequest, example = json!({"reason": "changed my mind"})),
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
    body: JsonBody<CancelOrderRequest>,
) -> Result<Reply, ApiError> {
    let id = parse_id(&id, "order")?;
    execute(
        &app,
        &meta,
        &body.json,
        CancelOrder {
            id,
            reason: body.value.reason,
        },
    )
    .await
}
