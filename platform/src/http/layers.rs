//! The middleware every service puts around its router, as one service: request id (kept
//! or made, echoed back) → the request's span (the OpenTelemetry server span, continuing the
//! caller's W3C trace context), with request id and trace id → metrics by route and status and
//! the access log line ([`super::access_log`]), and bare errors as problems → panic → problem
//! 500 → request timeout → concurrency limit (which `/health/*` bypasses: a probe answers
//! however many requests are in flight or waiting).
//!
//! Every request goes through all of it, so it is kept cheap. It is one service and one boxed
//! future, not a stack of eight layers each with its own future, clock reads and response-body
//! wrapper (the stack cost a cached read about as much CPU as the rest of the request). Ids
//! come from a thread-local CSPRNG (not a system call per id), the span's fields are only
//! computed when the span is enabled, and the metric handles of each (route, method, status)
//! are looked up once per thread instead of being rebuilt from freshly allocated label strings
//! on every request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::problem::Problem;
use crate::trace_context;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits applied to every request.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A request still running after this is answered 503 and dropped.
    pub request_timeout: Duration,
    /// Requests served at once; more wait in line (bounded by the accept backlog).
    pub max_concurrent_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
        }
    }
}

/// Wraps `router` in the common middleware.
pub fn wrap(router: Router, limits: HttpLimits) -> Router {
    // The recorder must be in place before the first request looks up its metric handles.
    let _ = crate::http::ops::metrics_handle();
    // A router's layer wraps each route (after routing), so the route template is known.
    router.layer(RequestLayer {
        timeout: limits.request_timeout,
        slots: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
    })
}

/// Makes [`RequestService`]s sharing one set of concurrency slots.
#[derive(Clone, Debug)]
struct RequestLayer {
    timeout: Duration,
    slots: Arc<Semaphore>,
}

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            timeout: self.timeout,
            slots: Arc::clone(&self.slots),
        }
    }
}

/// One route's service inside the common middleware (see the module's documentation).
#[derive(Clone, Debug)]
struct RequestService<S> {
    inner: S,
    timeout: Duration,
    slots: Arc<Semaphore>,
}

impl<S> Service<Request> for RequestService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is awaited per request (`oneshot` below), under the timeout and the limit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        let request_id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = random_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let method = req.method().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let span = make_span(&req);
        let answer_span = span.clone();
        // `/health/*` is served at once, so a liveness probe never fails because the service
        // is busy. The semaphore is never closed, so acquiring only fails in theory.
        let slots = (!req.uri().path().starts_with("/health/")).then(|| Arc::clone(&self.slots));
        let inner = self.inner.clone();
        let served = async move {
            let _permit = match &slots {
                Some(slots) => slots.acquire().await.ok(),
                None => None,
            };
            inner.oneshot(req).await
        };
        let timeout = self.timeout;
        let answered = async move {
            let res = match tokio::time::timeout(timeout, AssertUnwindSafe(served).catch_unwind()).await {
                Ok(Ok(Ok(res))) => res,
                Ok(Ok(Err(never))) => match never {},
                Ok(Err(panic)) => panic_to_problem(panic),
                Err(_elapsed) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            };
            let mut res = bare_error_as_problem(res);
            on_response(&res, &answer_span);
            let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let elapsed = start.elapsed();
            record(&method, route, res.status(), elapsed);
            crate::http::access_log::log(&method, route, res.status(), elapsed);
            res.headers_mut().insert(REQUEST_ID, request_id);
            Ok(res)
        };
        Box::pin(answered.instrument(span))
    }
}

/// A random (version 4) UUID from the thread's CSPRNG.
fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// A request id for a request that came without one: a random UUID, as tower-http's
/// `MakeRequestUuid` makes them, without a system call each.
fn random_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = random_uuid().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The target of the spans of probes and scrapes (`/health/*`, `/metrics`): outside the
/// crates whose spans are exported (`telemetry`), so a collector is not flooded with a
/// span per probe, while their log lines still carry a request id.
pub const PROBE_TARGET: &str = "probe";

/// Whether `path` is a probe's or a scrape's.
fn is_probe(path: &str) -> bool {
    path.starts_with("/health/") || path == "/metrics"
}

/// The request's span: the server span of its trace, continuing the caller's `traceparent`
/// and `tracestate` (or a new root). Its `trace_id` field, which every log line of the request
/// carries, is the span's trace id when traced; untraced, the caller's, else a new random one.
/// Probes get the same span under [`PROBE_TARGET`], which is never exported.
fn make_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path(), MatchedPath::as_str);
    // One field list for both targets (a span's target must be a constant).
    macro_rules! request_span {
        ($($target:tt)*) => {
            tracing::info_span!(
                $($target)*
                "request",
                otel.name = format!("{} {route}", req.method()),
                otel.kind = "server",
                http.request.method = %req.method(),
                http.route = route,
                http.response.status_code = tracing::field::Empty,
                method = %req.method(),
                uri = %req.uri().path(),
                request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or(""),
                trace_id = tracing::field::Empty,
            )
        };
    }
    // The field expressions are only evaluated when the span is enabled.
    let span = if is_probe(req.uri().path()) {
        request_span!(target: PROBE_TARGET,)
    } else {
        request_span!()
    };
    if span.is_disabled() {
        return span;
    }
    trace_context::continue_from(&span, trace_context::extract_http(req.headers()));
    let trace_id = trace_context::trace_id(&span).unwrap_or_else(|| {
        req.headers()
            .get(trace_context::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of)
            .map_or_else(|| random_uuid().simple().to_string(), str::to_owned)
    });
    span.record("trace_id", trace_id);
    span
}

/// Records the answer on the request's span; any 4xx or 5xx ends the trace with an error
/// status. OpenTelemetry's HTTP conventions leave a server's 4xx unset, but for these services a
/// refused command (409, 412, 422) is what an operator looks for in a trace.
fn on_response(res: &Response, span: &tracing::Span) {
    if span.is_disabled() {
        return;
    }
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_client_error() || status.is_server_error() {
        trace_context::fail(span, status.to_string());
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    match parts.as_slice() {
        [v, t, p, f] if hex(v, 2) && *v != "ff" && hex(t, 32) && hex(p, 16) && hex(f, 2) => {
            (t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0')).then_some(*t)
        }
        _ => None,
    }
}

/// `http_requests_total` (by status) and `http_request_duration_seconds` (by status class) of
/// one (route, method, status).
struct Handles {
    method: Method,
    status: StatusCode,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

thread_local! {
    /// Per route, the handles of the (method, status) pairs seen on this thread.
    static HANDLES: RefCell<HashMap<Box<str>, Vec<Handles>>> = RefCell::new(HashMap::new());
}

/// Counts a request by method, route and status, and records its duration by method, route
/// and status class.
fn record(method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    HANDLES.with(|cell| {
        let mut handles = cell.borrow_mut();
        if let Some(h) = handles
            .get(route)
            .and_then(|list| list.iter().find(|h| h.status == status && h.method == *method))
        {
            h.requests.increment(1);
            h.duration.record(seconds);
            return;
        }
        let labels = [
            ("method", method.as_str().to_owned()),
            ("route", route.to_owned()),
            ("status", status.as_str().to_owned()),
        ];
        // The histogram by status class: one set of buckets per class, not per code.
        let class = [
            labels[0].clone(),
            labels[1].clone(),
            ("status_class", format!("{}xx", status.as_u16() / 100)),
        ];
        let h = Handles {
            method: method.clone(),
            status,
            requests: metrics::counter!("http_requests_total", &labels),
            duration: metrics::histogram!("http_request_duration_seconds", &class),
        };
        h.requests.increment(1);
        h.duration.record(seconds);
        handles.entry(route.into()).or_default().push(h);
    });
}

/// Errors made by the framework rather than by our handlers (no route, wrong method, the
/// timeout's 503) come with an empty body: give them the problem body every error has.
fn bare_error_as_problem(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || res.headers().contains_key(header::CONTENT_TYPE) {
        return res;
    }
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this resource does not accept that method"),
        StatusCode::SERVICE_UNAVAILABLE => ("timeout", "the request took too long and was abandoned; retry later"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
        _ => ("http_error", "the request could not be served"),
    };
    let mut problem = Problem::new(status, code, detail);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        problem = problem.with_retry_after(1);
    }
    let mut out = problem.into_response();
    if let Some(allow) = res.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

fn panic_to_problem(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    Problem::internal(&format!("handler panicked: {msg}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
    }

    /// A router with a fast route, a panicking one, one that waits for `gate`, and a probe.
    fn app(limits: HttpLimits, gate: Arc<tokio::sync::Notify>) -> Router {
        use axum::routing::get;
        let router = Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route(
                "/panics",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            )
            .route(
                "/waits",
                get(move || {
                    let gate = Arc::clone(&gate);
                    async move {
                        gate.notified().await;
                        "released"
                    }
                }),
            )
            .route("/health/live", get(|| async { "live" }));
        wrap(router, limits)
    }

    async fn get(app: &Router, path: &str, request_id: Option<&str>) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = axum::http::Request::get(path);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        let res = app
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_request_id_is_kept_or_made_and_echoed() {
        let app = app(HttpLimits::default(), Arc::default());
        let (status, headers, _) = get(&app, "/fast", Some("req-7")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("x-request-id").unwrap(), "req-7");
        let (_, a, _) = get(&app, "/fast", None).await;
        let (_, b, _) = get(&app, "/nowhere", None).await;
        let (a, b) = (a.get("x-request-id").unwrap(), b.get("x-request-id").unwrap());
        assert!(uuid::Uuid::parse_str(a.to_str().unwrap()).is_ok(), "{a:?}");
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_panic_is_a_500_problem_and_the_service_keeps_serving() {
        let app = app(HttpLimits::default(), Arc::default());
        let (status, headers, body) = get(&app, "/panics", Some("p-1")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), crate::problem::PROBLEM_JSON);
        assert_eq!(headers.get("x-request-id").unwrap(), "p-1");
        assert!(body.contains("\"status\":500"), "{body}");
        assert_eq!(get(&app, "/fast", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_bare_framework_error_gets_a_problem_body() {
        let app = app(HttpLimits::default(), Arc::default());
        let (status, headers, body) = get(&app, "/nowhere", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), crate::problem::PROBLEM_JSON);
        assert!(body.contains("not_found"), "{body}");
    }

    #[tokio::test]
    async fn a_slow_request_is_a_503_timeout_problem() {
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(150),
            ..HttpLimits::default()
        };
        let app = app(limits, Arc::default());
        let started = Instant::now();
        let (status, headers, body) = get(&app, "/waits", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
        assert!(body.contains("timeout"), "{body}");
    }

    #[tokio::test]
    async fn requests_beyond_the_limit_wait_for_a_slot_and_probes_do_not() {
        let limits = HttpLimits {
            max_concurrent_requests: 1,
            ..HttpLimits::default()
        };
        let gate = Arc::new(tokio::sync::Notify::new());
        let app = app(limits, Arc::clone(&gate));
        let first = tokio::spawn({
            let app = app.clone();
            async move { get(&app, "/waits", None).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = tokio::spawn({
            let app = app.clone();
            async move { get(&app, "/fast", None).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "served beyond the limit");
        assert_eq!(get(&app, "/health/live", None).await.0, StatusCode::OK);
        gate.notify_waiters();
        assert_eq!(first.await.unwrap().0, StatusCode::OK);
        assert_eq!(second.await.unwrap().0, StatusCode::OK);
    }
}
