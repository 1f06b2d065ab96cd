//! `POST /v1/orders`: place an order, reserving stock for every line in the same transaction.

use axum::extract::State;
use axum::http::StatusCode;
use diesel_async::AsyncPgConnection;
use ordering_platform::auth::Role;
use ordering_platform::http::json::JsonBody;
use ordering_platform::problem::Problem;
use ordering_schema::events::{OrderData, now};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, execute, order_reply, refuse_precondition_on_create};
use crate::app::AppState;
use crate::domain::{Order, OrderLineRequest, PlaceOrder};
use crate::error::ApiError;
use crate::http::meta::CommandMeta;
use crate::http::reply::Reply;
use crate::store::{orders, outbox, products};

/// Body of `POST /v1/orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// The customer; a customer's token may only name itself (and may leave it out).
    pub customer_id: Option<Uuid>,
    /// 1 to 100 lines, no product twice.
    pub lines: Vec<OrderLineInput>,
}

/// One line of a new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineInput {
    pub product_id: Uuid,
    /// 1 to 10,000.
    pub quantity: i64,
}

struct PlaceOrderCommand(PlaceOrder);

impl Command for PlaceOrderCommand {
    const COUNTER: Option<&'static str> = Some(crate::catalog::ORDERS_PLACED);

    async fn run(self, conn: &mut AsyncPgConnection, meta: &CommandMeta) -> Result<Reply, ApiError> {
        refuse_precondition_on_create(meta.if_match, "order")?;
        let request = self.0;
        // Locked in ascending id order: concurrent orders over the same products queue up
        // instead of deadlocking.
        let ids = request.product_ids();
        let mut locked = products::lock_many(conn, &ids).await?;
        if locked.len() != ids.len() {
            return Err(ApiError::NotFound("product"));
        }
        let (order, events) = Order::place(Uuid::now_v7(), request, &mut locked, now())?;
        for product in &locked {
            products::save(conn, product).await?;
        }
        orders::insert(conn, &order).await?;
        outbox::append(conn, &events, &meta.trace_headers).await?;
        order_reply(StatusCode::CREATED, &order, &events, meta)
    }
}

/// Places an order.
#[utoipa::path(
    post, operation_id = "place_order", path = "/v1/orders", tag = "orders",
    request_body(content = PlaceOrderRequest, example = json!({"lines": [{"product_id": "0193a6f0-5c2e-7d41-9a8b-3f1e2d4c5b6a", "quantity": 2}]})),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters")),
    // The answers every command can give (400, 401, 403, 404 and 412 on an id, 413, 415, 422,
    // 500, 503) are added to the document by `router::document_problems`.
    responses(
        (status = 201, description = "Placed", body = OrderData),
        (status = 403, description = "a customer placing for another customer", body = Problem),
        (status = 404, description = "unknown product", body = Problem),
        (status = 409, description = "insufficient_stock", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn handler(
    State(app): State<AppState>,
    meta: CommandMeta,
    body: JsonBody<PlaceOrderRequest>,
) -> Result<Reply, ApiError> {
    let r = body.value;
    let customer_id = match (meta.caller.role, r.customer_id) {
        (Role::Customer, Some(id)) if id != meta.caller.subject => {
            return Err(ApiError::Forbidden("a customer may place orders only for itself"));
        }
        (Role::Customer, _) => meta.caller.subject,
        (Role::Admin, Some(id)) => id,
        (Role::Admin, None) => {
            return Err(
                crate::domain::DomainError::field("customer_id", "is required when an admin places an order").into(),
            );
        }
    };
    let lines = r
        .lines
        .into_iter()
        .map(|l| OrderLineRequest {
            product_id: l.product_id,
            quantity: l.quantity,
        })
        .collect();
    let request = PlaceOrder::validate(customer_id, lines)?;
    execute(&app, &meta, &body.json, PlaceOrderCommand(request)).await
}
