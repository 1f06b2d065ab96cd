//! What both APIs' OpenAPI documents share: the bearer-token scheme, error answers described as
//! they really are (`application/problem+json`, with the statuses any operation can give whatever
//! its handler says), and serving the document with interactive docs over it.
//!
//! Clients and tools such as Schemathesis check answers against the document, so a document that
//! calls errors `application/json`, or leaves out the 401 the auth layer gives, is a broken
//! contract even when every answer is right.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa_swagger_ui::{Config, SwaggerUi};

/// The media type of every error answer (docs/api.md, "Errors").
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Adds the `bearer` security scheme (an HS256 JWT in `Authorization: Bearer`).
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
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

/// An error answer, as `(status, description)`.
pub type ProblemAnswer = (&'static str, &'static str);

/// Makes `doc` say what its operations really answer on failure: every 4xx and 5xx body is
/// `application/problem+json` (the annotations' `body = Problem` would say `application/json`),
/// `common` answers are listed on every operation, and `on_id` answers on every operation whose
/// path holds an `{id}`. Statuses a handler already documents keep their description.
pub fn document_problems(doc: &mut OpenApi, common: &[ProblemAnswer], on_id: &[ProblemAnswer]) {
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

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where the interactive docs (Swagger UI) are served.
pub const UI_PATH: &str = "/docs";

/// `GET /openapi.json` (the document, serialised once) and `GET /docs` (Swagger UI over it).
///
/// Swagger UI's assets are compiled into the binary (`utoipa-swagger-ui`'s `vendored` feature),
/// so the page works where the service cannot reach the internet; the online validator badge is
/// switched off for the same reason. The UI reads the same `/openapi.json` clients use rather
/// than a copy, so what the page shows is what the service promises.
pub fn routes<S: Clone + Send + Sync + 'static>(doc: &OpenApi) -> Router<S> {
    let body = bytes::Bytes::from(serde_json::to_vec(doc).expect("an OpenAPI document always serialises"));
    let document = get(move || {
        let body = body.clone();
        async move { ([(CONTENT_TYPE, "application/json")], body) }
    });
    let ui = SwaggerUi::new(UI_PATH).config(
        Config::new([DOCUMENT_PATH])
            .try_it_out_enabled(true)
            .persist_authorization(true)
            .display_request_duration(true)
            .validator_url("none"),
    );
    Router::new().route(DOCUMENT_PATH, document).merge(ui)
}
