//! Every route of the read-api, in one place, and the OpenAPI document generated from the
//! handlers' annotations and types.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use ordering_platform::http::layers::{self, HttpLimits};
use ordering_platform::http::openapi::{self, BearerAuth};
use ordering_platform::http::ops::{self, DependencyState, ReadinessCheck};
use ordering_platform::problem::{FieldProblem, Problem};
use utoipa::OpenApi;
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
    let mut doc = api().into_openapi();
    document_problems(&mut doc);
    doc
}

/// Error answers any query can give whatever its handler: a malformed header (token,
/// `X-Consistency-Token`), authentication, an internal error, and the views being unavailable
/// or not yet consistent with the given token; for an `{id}`, an unknown id.
fn document_problems(doc: &mut utoipa::openapi::OpenApi) {
    openapi::document_problems(
        doc,
        &[
            ("400", "a malformed header (X-Consistency-Token, If-None-Match)"),
            ("401", "missing, expired or badly signed token"),
            ("500", "internal error: answered with an error id only"),
            (
                "503",
                "the views are unavailable, the request timed out, they do not reflect the X-Consistency-Token yet, or too many requests wait for theirs; retry",
            ),
        ],
        &[("404", "no such view, or another customer's")],
    );
}

/// The whole HTTP application: queries, `/openapi.json`, `/docs`, ops endpoints, the admin
/// page (off with `None`), middleware.
pub fn router(state: AppState, limits: HttpLimits, admin: Option<crate::admin::AdminState>) -> Router {
    let (queries, mut doc) = api().split_for_parts();
    document_problems(&mut doc);
    let readiness = readiness(&state);
    let app = queries
        .merge(openapi::routes(&doc))
        .with_state(state)
        .merge(ops::router(readiness))
        .merge(crate::admin::router(admin));
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
            if let Some((report, dead_letter_queue)) = &state.gap_report {
                deps.insert(
                    "projector",
                    DependencyState::from_result(false, report.detail(dead_letter_queue).map_or(Ok(()), Err)),
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
