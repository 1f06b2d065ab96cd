//! `PATCH /v1/products/{id}`: change a product's name, description or price (admin).

use axum::extract::State;
use diesel_async::AsyncPgConnection;
use ordering_platform::http::json::JsonBody;
use ordering_platform::http::path::PathId;
use ordering_schema::events::{ProductData, now};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, change_product, execute, parse_id};
use crate::app::AppState;
use crate::domain::ProductChanges;
use crate::error::ApiError;
use crate::http::meta::CommandMeta;
use crate::http::reply::Reply;

/// Body of `PATCH /v1/products/{id}`: at least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
}

struct UpdateProduct {
    id: Uuid,
    changes: ProductChanges,
}

impl Command for UpdateProduct {
    async fn run(self, conn: &mut AsyncPgConnection, meta: &CommandMeta) -> Result<Reply, ApiError> {
        let changes = self.changes;
        change_product(conn, meta, self.id, |p| p.update(changes, now())).await
    }
}

/// Updates a product.
#[utoipa::path(
    patch, operation_id = "update_product", path = "/v1/products/{id}", tag = "catalog",
    request_body(content = UpdateProductRequest, example = json!({"name": "Widget (blue)", "price_cents": 1400})),
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, description = "\"<version>\" or *"),
        ("Idempotency-Key" = Option<String>, Header),
    ),
    // The answers every command can give (400, 401, 403, 404 and 412 on an id, 413, 415, 422,
    // 500, 503) are added to the document by `router::document_problems`.
    responses(
        (status = 200, body = ProductData),
    ),
    security(("bearer" = []))
)]
pub async fn handler(
    State(app): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: JsonBody<UpdateProductRequest>,
) -> Result<Reply, ApiError> {
    meta.caller.require_admin()?;
    let id = parse_id(&id, "product")?;
    let r = body.value;
    let changes = ProductChanges {
        name: r.name,
        description: r.description,
        price_cents: r.price_cents,
    };
    execute(&app, &meta, &body.json, UpdateProduct { id, changes }).await
}
