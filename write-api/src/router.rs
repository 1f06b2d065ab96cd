//! Every route of the write-api, in one place, and the OpenAPI document generated from the
//! handlers' annotations and types.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use ordering_platform::http::json::BODY_LIMIT;
use ordering_platform::http::layers::{self, HttpLimits};
use ordering_platform::http::openapi::{self, BearerAuth};
use ordering_platform::http::ops::{self, DependencyState, ReadinessCheck};
use ordering_platform::problem::{FieldProblem, Problem};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::commands::{adjust_stock, cancel_order, create_product, pay_order, place_order, ship_order, update_product};

#[derive(OpenApi)]
#[openapi(
    info(title = "ordering write-api", description = "Catalog and order commands. Each command changes its aggregates and writes their events to the outbox in one transaction."),
    components(schemas(Problem, FieldProblem)),
    modifiers(&BearerAuth),
    // Every command needs a token: declared once so Swagger UI's "Authorize" applies to all.
    security(("bearer" = [])),
    tags((name = "catalog"), (name = "orders"))
)]
struct ApiDoc;

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
    let mut doc = api().into_openapi();
    document_problems(&mut doc);
    doc
}

/// Error answers any command can give whatever its handler: malformed headers or JSON,
/// authentication, body framing, validation, an internal error, a timeout or an unavailable
/// database; for commands on an `{id}`, an unknown id and a failed `If-Match`.
fn document_problems(doc: &mut utoipa::openapi::OpenApi) {
    openapi::document_problems(
        doc,
        &[
            ("400", "malformed JSON or a malformed If-Match / Idempotency-Key header"),
            ("401", "missing, expired or badly signed token"),
            ("403", "the caller may not do this"),
            ("413", "body over 64 KiB"),
            ("415", "body not sent as application/json"),
            ("422", "invalid fields, or an Idempotency-Key reused with another body"),
            ("500", "internal error: answered with an error id only"),
            ("503", "the database is unavailable or the request timed out; retry"),
        ],
        &[
            ("404", "no such aggregate"),
            ("412", "If-Match does not match the version"),
        ],
    );
}

/// The whole HTTP application: commands, `/openapi.json`, `/docs`, ops endpoints, middleware.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    crate::catalog::install();
    ordering_platform::meters::watch_pool(state.pool.clone());
    let (commands, mut doc) = api().split_for_parts();
    document_problems(&mut doc);
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
        .merge(openapi::routes(&doc))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
        .merge(ops::router(readiness));
    layers::wrap(app, limits)
}
