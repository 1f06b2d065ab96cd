//! Ids taken from a request's path.
//!
//! A path id that is not a UUID names nothing: the contract answers 404 `not_found`, as for an
//! id that does not exist. axum's own `Path` extractor refuses a segment whose percent-decoding
//! is not UTF-8 (`/v1/products/%ff%fe`) with 400 text/plain "Invalid URL"; [`PathId`] answers
//! that the same way as any other id that is not a UUID.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use crate::problem::Problem;

/// The route's one path parameter, percent-decoded, not yet parsed: the handler parses it
/// (and names what was not found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            // A segment that is not UTF-8 cannot be a UUID.
            Err(PathRejection::FailedToDeserializePathParams(e))
                if matches!(e.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
            {
                Err(Problem::not_found("resource"))
            }
            // Anything else (no parameter, several) is a bug in the router, not the request.
            Err(e) => Err(Problem::internal(&e)),
        }
    }
}
