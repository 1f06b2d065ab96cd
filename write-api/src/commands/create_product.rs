//! `POST /v1/products`: add a product to the catalog (admin).

use axum::extract::State;
use axum::http::StatusCode;
use diesel_async::AsyncPgConnection;
use ordering_platform::http::json::JsonBody;
use ordering_platform::problem::Problem;
use ordering_schema::consistency::VersionMark;
use ordering_schema::events::{AggregateType, ProductData, now};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, execute, refuse_precondition_on_create};
use crate::app::AppState;
use crate::domain::{NewProduct, Product};
use crate::error::ApiError;
use crate::http::meta::CommandMeta;
use crate::http::reply::Reply;
use crate::store::{outbox, products};

/// Body of `POST /v1/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    /// 1–64 characters of `[A-Za-z0-9._-]`, unique.
    pub sku: String,
    /// 1–200 characters.
    pub name: String,
    /// At most 2,000 characters.
    pub description: Option<String>,
    /// 0 to 10^12 minor units.
    pub price_cents: i64,
    /// ISO 4217 code: three upper-case letters.
    pub currency: String,
    /// 0 to 10^9.
    pub stock: i64,
}

struct CreateProduct(NewProduct);

impl Command for CreateProduct {
    async fn run(self, conn: &mut AsyncPgConnection, meta: &CommandMeta) -> Result<Reply, ApiError> {
        refuse_precondition_on_create(meta.if_match, "product")?;
        let (product, event) = Product::create(Uuid::now_v7(), self.0, now())?;
        products::insert(conn, &product)
            .await
            .map_err(|e| match ApiError::from(e) {
                ApiError::SkuTaken(_) => ApiError::SkuTaken(product.state().sku.clone()),
                other => other,
            })?;
        outbox::append(conn, &[event], &meta.trace_headers).await?;
        let p = product.state();
        Reply::success(
            StatusCode::CREATED,
            p,
            p.version,
            Some(meta.read_api_url.of(&format!("/v1/products/{}", p.id))),
            None,
            vec![VersionMark {
                aggregate: AggregateType::Product,
                id: p.id,
                version: p.version,
            }],
            meta,
        )
    }
}

/// Creates a product.
#[utoipa::path(
    post, operation_id = "create_product", path = "/v1/products", tag = "catalog",
    request_body(content = CreateProductRequest, example = json!({"sku": "WIDGET-1", "name": "Widget", "description": "A blue widget", "price_cents": 1250, "currency": "EUR", "stock": 100})),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters"),
    ),
    // The answers every command can give (400, 401, 403, 404 and 412 on an id, 413, 415, 422,
    // 500, 503) are added to the document by `router::document_problems`.
    responses(
        (status = 201, description = "Created", body = ProductData),
        (status = 409, description = "sku taken", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn handler(
    State(app): State<AppState>,
    meta: CommandMeta,
    body: JsonBody<CreateProductRequest>,
) -> Result<Reply, ApiError> {
    meta.caller.require_admin()?;
    let r = body.value;
    let input = NewProduct {
        sku: r.sku,
        name: r.name,
        description: r.description,
        price_cents: r.price_cents,
        currency: r.currency,
        stock: r.stock,
    };
    execute(&app, &meta, &body.json, CreateProduct(input)).await
}
