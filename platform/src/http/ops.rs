//! The operational endpoints every service answers: `/health/live`, `/health/ready`, `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

use crate::problem::PROBLEM_JSON;

/// The state of one dependency, as `/health/ready` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct DependencyState {
    pub ok: bool,
    /// A required dependency being down makes the service not ready (503); an optional one
    /// only shows as a degradation.
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl DependencyState {
    pub fn up(required: bool) -> Self {
        Self {
            ok: true,
            required,
            detail: None,
        }
    }
    pub fn down(required: bool, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            required,
            detail: Some(detail.into()),
        }
    }
    pub fn from_result(required: bool, r: Result<(), String>) -> Self {
        match r {
            Ok(()) => Self::up(required),
            Err(e) => Self::down(required, e),
        }
    }
}

/// Checks the service's dependencies, by name.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, BTreeMap<&'static str, DependencyState>> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    ready: ReadinessCheck,
    metrics: PrometheusHandle,
}

/// The ops router of a service.
pub fn router(ready: ReadinessCheck) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(readiness))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState {
            ready,
            metrics: metrics_handle(),
        })
}

async fn live() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "live"}))
}

async fn readiness(State(s): State<OpsState>) -> Response {
    let deps = (s.ready)().await;
    let ready = deps.values().all(|d| d.ok || !d.required);
    let degraded = deps.values().any(|d| !d.ok);
    let status = match (ready, degraded) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    if ready {
        axum::Json(serde_json::json!({"status": status, "dependencies": deps})).into_response()
    } else {
        let down: Vec<&str> = deps
            .iter()
            .filter(|(_, d)| !d.ok && d.required)
            .map(|(n, _)| *n)
            .collect();
        let body = serde_json::json!({
            "type": "urn:ordering:problem:not_ready",
            "title": "Service Unavailable",
            "status": 503,
            "code": "not_ready",
            "detail": format!("not ready: {} unavailable", down.join(", ")),
            "dependencies": deps,
        });
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, PROBLEM_JSON)],
            body.to_string(),
        )
            .into_response()
    }
}

async fn render_metrics(State(s): State<OpsState>) -> impl IntoResponse {
    crate::meters::sample();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Histograms of how long an event takes through the pipeline: a backlog makes them minutes,
/// beyond the 10 s the request buckets end at.
pub const PIPELINE_HISTOGRAMS: &[&str] = &["relay_commit_to_confirm_seconds", "read_event_lag_seconds"];

/// The process-wide Prometheus recorder, installed on first use. Latency histograms share
/// one set of buckets, from 0.5 ms to 10 s, except [`PIPELINE_HISTOGRAMS`] (5 ms to 10 min).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let pipeline = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ];
            let mut builder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("buckets are not empty");
            for name in PIPELINE_HISTOGRAMS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_owned()), &pipeline)
                    .expect("buckets are not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests building several apps in one
            // process); then this handle just renders nothing new, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}
