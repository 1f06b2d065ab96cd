//! Every route of the write-api, in one place, and the OpenAPI document generated from the
//! handlers' annotations and types.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use ordering_platform::http::json::BODY_LIMIT;
use ordering_platform::http::layers::{self, HttpLimits};
use ordering_platform::http::ops::{self, DependencyState, ReadinessCheck};
use ordering_platform::problem::{FieldProblem, Problem};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::commands::{adjust_stock, cancel_order, create_product, pay_order, place_order, ship_order, update_product};

#[derive(OpenApi)]
#[openapi(
    info(title = "ordering write-api", description = "Catalog and order commands. Each command changes its aggregates and writes their events to the outbox in one transaction."),
    components(schemas(Problem, FieldProblem)),
    modifiers(&BearerAuth),
    tags((name = "catalog"), (name = "orders"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The command routes, with their OpenAPI description.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_product::handler))
        .routes(routes!(update_product::handler))
        .routes(routes!(adjust_stock::handler))
        .routes(routes!(place_order::handler))
        .routes(routes!(pay_order::handler))
        .routes(routes!(ship_order::handler))
        .routes(routes!(cancel_order::handler))
}

/// The OpenAPI document of the write-api.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The whole HTTP application: commands, `/openapi.json`, ops endpoints, middleware.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let (commands, doc) = api().split_for_parts();
    let doc = Arc::new(doc);
    let pool = state.pool.clone();
    let readiness: ReadinessCheck = Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            let mut deps = BTreeMap::new();
            deps.insert(
                "postgres",
                DependencyState::from_result(true, ordering_platform::db::ping(&pool).await),
            );
            deps
        })
    });
    let app = commands
        .route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
        .merge(ops::router(readiness));
    layers::wrap(app, limits)
}
