//! W3C Trace Context across processes: the `traceparent` and `tracestate` a span continues
//! (from HTTP request headers, an outbox row's headers, AMQP message headers) and the ones it
//! hands on (into the outbox row, into the message).
//!
//! With OpenTelemetry on ([`crate::telemetry`]), every span named here has a valid context, and
//! what is handed on is that span's: the next process's span becomes its child. With it off,
//! spans have no context, nothing is injected, and what came in is handed on unchanged (a
//! caller's `traceparent` still reaches the message, as the contract promises).

use axum::http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor state along a trace.
pub const TRACESTATE: &str = "tracestate";

/// The two trace context headers, as read from any carrier.
struct Pair<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Pair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The remote context named by a `traceparent` and `tracestate` (empty if the `traceparent`
/// is missing or malformed: a malformed one is ignored, as W3C Trace Context asks).
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    TraceContextPropagator::new().extract(&Pair {
        traceparent,
        tracestate,
    })
}

/// The remote context of HTTP request headers.
pub fn extract_http(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// The remote context of JSON headers (an outbox row's).
pub fn extract_json(headers: &serde_json::Map<String, serde_json::Value>) -> Context {
    let get = |k| headers.get(k).and_then(serde_json::Value::as_str);
    extract(get(TRACEPARENT), get(TRACESTATE))
}

/// Makes `span` a child of `parent` when `parent` names a remote span; otherwise `span` stays
/// a root (or the child of the current span). Call before the span is first entered.
pub fn continue_from(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer, where there is nothing to continue.
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s `traceparent` (and `tracestate`, if any) into `headers`, replacing what
/// was there; returns `false`, leaving `headers` alone, when `span` is not traced.
pub fn inject_json(span: &tracing::Span, headers: &mut serde_json::Map<String, serde_json::Value>) -> bool {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return false;
    }
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&cx, &mut JsonInjector(headers));
    true
}

struct JsonInjector<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Injector for JsonInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), serde_json::Value::String(value));
    }
}

/// The W3C trace id of `span`, if it is traced.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Ends `span` with an error status saying `why` (a no-op when it is not traced).
pub fn fail(span: &tracing::Span, why: impl Into<String>) {
    span.set_status(Status::error(why.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_extracted_with_its_state() {
        let mut h = serde_json::Map::new();
        h.insert(
            TRACEPARENT.into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        h.insert(TRACESTATE.into(), "vendor=x".into());
        let cx = extract_json(&h);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "vendor=x");
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            let cx = extract(Some(bad), None);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn without_opentelemetry_nothing_is_injected() {
        let mut h = serde_json::Map::new();
        h.insert(TRACEPARENT.into(), "kept".into());
        assert!(!inject_json(&tracing::info_span!("untraced"), &mut h));
        assert_eq!(h.get(TRACEPARENT).and_then(|v| v.as_str()), Some("kept"));
    }
}
