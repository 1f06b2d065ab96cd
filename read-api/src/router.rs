//! Every route of the read-api, in one place, and the OpenAPI document generated from the
//! handlers' annotations and types.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::routing::get;
use axum::{Json, Router};
use ordering_platform::http::layers::{self, HttpLimits};
use ordering_platform::http::ops::{self, DependencyState, ReadinessCheck};
use ordering_platform::problem::{FieldProblem, Problem};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::http::{customers, orders, products};

#[derive(OpenApi)]
#[openapi(
    info(title = "ordering read-api", description = "Denormalised views of the catalog and orders, kept up to date from the events and cached. Send X-Consistency-Token from a write-api answer to read your own writes."),
    components(schemas(Problem, FieldProblem)),
    modifiers(&BearerAuth),
    tags((name = "catalog"), (name = "orders"), (name = "customers"))
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

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(products::list_products))
        .routes(routes!(products::get_product))
        .routes(routes!(orders::get_order))
        .routes(routes!(customers::list_orders))
        .routes(routes!(customers::summary))
}

/// The OpenAPI document of the read-api.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The whole HTTP application: queries, `/openapi.json`, ops endpoints, middleware.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let (queries, doc) = api().split_for_parts();
    let doc = Arc::new(doc);
    let readiness = readiness(&state);
    let app = queries
        .route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .with_state(state)
        .merge(ops::router(readiness));
    layers::wrap(app, limits)
}

/// PostgreSQL is required; Redis, the broker and the LISTEN connection only degrade the
/// service (it still answers correctly), so they are reported but keep it ready.
fn readiness(state: &AppState) -> ReadinessCheck {
    let state = state.clone();
    Arc::new(move || {
        let state = state.clone();
        Box::pin(async move {
            let mut deps = BTreeMap::new();
            let (pg, redis) = tokio::join!(ordering_platform::db::ping(&state.pool), state.cache.ping());
            deps.insert("postgres", DependencyState::from_result(true, pg));
            deps.insert("redis", DependencyState::from_result(false, redis));
            if let Some(flag) = &state.broker_connected {
                let up = flag.load(Ordering::Relaxed);
                deps.insert(
                    "rabbitmq",
                    DependencyState::from_result(
                        false,
                        if up {
                            Ok(())
                        } else {
                            Err("projector not connected: views may lag".to_owned())
                        },
                    ),
                );
            }
            deps.insert(
                "notifications",
                DependencyState::from_result(
                    false,
                    if state.hub.listening() {
                        Ok(())
                    } else {
                        Err("LISTEN connection down: consistency waits and cache invalidation degraded".to_owned())
                    },
                ),
            );
            deps
        })
    })
}
