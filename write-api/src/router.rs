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
    let mut doc = api().into_openapi();
    document_problems(&mut doc);
    doc
}

/// The media type of every error answer (CONTRACT.md, "Errors").
const PROBLEM_JSON: &str = "application/problem+json";

/// Makes the document say what every command really answers on failure: errors are
/// `application/problem+json` (the annotations' `body = Problem` would say `application/json`),
/// and the answers any command can give whatever its handler (malformed headers or JSON,
/// authentication, body framing, validation, an internal error, a timeout or an unavailable
/// database; for commands on an `{id}`, an unknown id and a failed `If-Match`) are listed on
/// every operation.
fn document_problems(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let common = [
        ("400", "malformed JSON or a malformed If-Match / Idempotency-Key header"),
        ("401", "missing, expired or badly signed token"),
        ("403", "the caller may not do this"),
        ("413", "body over 64 KiB"),
        ("415", "body not sent as application/json"),
        ("422", "invalid fields, or an Idempotency-Key reused with another body"),
        ("500", "internal error: answered with an error id only"),
        ("503", "the database is unavailable or the request timed out; retry"),
    ];
    let on_id = [
        ("404", "no such aggregate"),
        ("412", "If-Match does not match the version"),
    ];
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let responses = &mut op.responses.responses;
            for (status, response) in responses.iter_mut() {
                if (status.starts_with('4') || status.starts_with('5'))
                    && let RefOr::T(response) = response
                    && let Some(content) = response.content.shift_remove("application/json")
                {
                    response.content.insert(PROBLEM_JSON.to_owned(), content);
                }
            }
            let extra = common.iter().chain(on_id.iter().filter(|_| path.contains("{id}")));
            for (status, description) in extra {
                responses.entry((*status).to_owned()).or_insert_with(|| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(*description)
                            .content(
                                PROBLEM_JSON,
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("Problem")))
                                    .build(),
                            )
                            .build(),
                    )
                });
            }
        }
    }
}

/// The whole HTTP application: commands, `/openapi.json`, ops endpoints, middleware.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let (commands, mut doc) = api().split_for_parts();
    document_problems(&mut doc);
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
