//! A command's answer as data: what is sent, and what an `Idempotency-Key` replays.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ordering_platform::problem::PROBLEM_JSON;
use ordering_schema::consistency::VersionMark;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::http::meta::CommandMeta;

/// The `X-Consistency-Token` header.
pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("x-consistency-token");

/// A finished answer: status, headers and JSON body. Stored as is for idempotent replays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Reply {
    /// The answer of a successful command of `meta`'s caller on an aggregate now at `version`,
    /// whose changes are covered by `marks`: the consistency token names them, signed and bound
    /// to `owner`, the customer whose order the command changed (see
    /// [`CommandMeta::consistency_token`]).
    pub fn success(
        status: StatusCode,
        body: &impl Serialize,
        version: i64,
        location: Option<String>,
        owner: Option<Uuid>,
        marks: Vec<VersionMark>,
        meta: &CommandMeta,
    ) -> Result<Self, ApiError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ApiError::Problem(ordering_platform::problem::Problem::internal(&e)))?;
        let mut headers = vec![
            (header::CONTENT_TYPE.to_string(), "application/json".to_owned()),
            (header::ETAG.to_string(), format!("\"{version}\"")),
            (CONSISTENCY_TOKEN.to_string(), meta.consistency_token(owner, marks)),
        ];
        if let Some(location) = location {
            headers.push((header::LOCATION.to_string(), location));
        }
        Ok(Self {
            status: status.as_u16(),
            headers,
            body,
        })
    }

    /// The answer for a client error.
    pub fn refusal(error: &ApiError) -> Self {
        let problem = error.to_problem();
        Self {
            status: problem.status,
            headers: vec![(header::CONTENT_TYPE.to_string(), PROBLEM_JSON.to_owned())],
            body: serde_json::to_value(&problem).unwrap_or_default(),
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, self.body.to_string()).into_response();
        for (name, value) in self.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                res.headers_mut().insert(n, v);
            }
        }
        res
    }
}
