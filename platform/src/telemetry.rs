//! Structured logs and traces.
//!
//! Logs: `RUST_LOG` filters, `LOG_FORMAT=json|pretty` picks the shape (pretty on a terminal,
//! JSON otherwise, so logs shipped from a container are machine-readable). A JSON line written
//! inside a traced span carries its `trace_id` and `span_id`.
//!
//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the
//! resource's `service.name` from `OTEL_SERVICE_NAME` (default: the binary's name). The
//! sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`) and the batch processor
//! (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`)
//! are read by the SDK as the OpenTelemetry specification names them. Unset, no OpenTelemetry
//! layer is installed at all: spans cost what they cost without it. `OTEL_SDK_DISABLED=true`
//! turns tracing off even with an endpoint.
//!
//! Only the services' own spans are exported (the targets of this workspace's crates, at
//! `info` and above), whatever `RUST_LOG` says: the log filter decides what is printed, not
//! what is traced.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing::span::Record;
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::{self, SettingError};

/// The crates whose spans are exported.
const TRACED_CRATES: [&str; 5] = [
    "ordering_platform",
    "write_api",
    "outbox_relay",
    "read_api",
    "ordering_schema",
];

/// Keeps the trace exporter alive; dropping it exports the spans still buffered (bounded by
/// the SDK's export timeout). Hold it for the whole of `main`.
#[must_use = "dropping the guard shuts tracing down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Shutting down blocks until the last batch is sent; on a thread of its own it
            // cannot stall (or, in a current-thread runtime, deadlock) an async runtime.
            let _ = std::thread::spawn(move || {
                if let Err(e) = provider.shutdown() {
                    eprintln!("trace export shutdown failed: {e}");
                }
            })
            .join();
        }
    }
}

/// Installs the global tracing subscriber, and the OpenTelemetry exporter if an OTLP endpoint
/// is set, and reads the access log's level (`ACCESS_LOG_LEVEL`). Call once, first thing in
/// `main`; `service` is the default `service.name`.
pub fn init(service: &'static str) -> Result<Telemetry, SettingError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|e| SettingError::new("RUST_LOG", e.to_string()))?;
    let json = match settings::raw("LOG_FORMAT").as_deref() {
        None => !std::io::stdout().is_terminal(),
        Some("json") => true,
        Some("pretty") => false,
        Some(other) => {
            return Err(SettingError::new(
                "LOG_FORMAT",
                format!("{other:?} is not json or pretty"),
            ));
        }
    };
    crate::http::access_log::init()?;
    let provider = tracer_provider(service)?;
    let otel = provider.as_ref().map(|p| {
        let traced = TRACED_CRATES
            .iter()
            .fold(Targets::new(), |t, c| t.with_target(*c, LevelFilter::INFO));
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(traced)
    });
    let dispatch = DispatchCell::default();
    let fmt = if json {
        json_logs(std::io::stdout, dispatch.clone()).with_filter(filter).boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_filter(filter)
            .boxed()
    };
    tracing_subscriber::registry().with(otel).with(fmt).init();
    dispatch.set_to_current();
    Ok(Telemetry { provider })
}

/// JSON log lines, one object each, with the event's fields at the top level, the current
/// span's fields under `span`, and `trace_id`/`span_id` when the span is traced.
fn json_logs<S, W>(writer: W, dispatch: DispatchCell) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .fmt_fields(AppendingJsonFields::default())
        .map_event_format(|inner| WithSpan { inner, dispatch })
}

/// A span's fields as one JSON object, as `tracing-subscriber` writes them, except that fields
/// recorded after the span was created are appended to the object's text. `JsonFields` parses
/// the object and writes it again on every `Span::record`: a request's span records its trace
/// id and its status that way, and the two parses cost a cached read more CPU than the rest of
/// its span. A field recorded twice appears twice in the object; JSON readers, the line
/// formatter's included, keep the last.
#[derive(Debug, Default)]
struct AppendingJsonFields(JsonFields);

impl<'w> FormatFields<'w> for AppendingJsonFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &Record<'_>) -> std::fmt::Result {
        let mut added = String::new();
        self.0.format_fields(Writer::new(&mut added), fields)?;
        let Some(added) = added.strip_prefix('{').and_then(|a| a.strip_suffix('}')) else {
            return Err(std::fmt::Error);
        };
        if added.is_empty() {
            return Ok(());
        }
        let text = &mut current.fields;
        if text.is_empty() || text == "{}" {
            *text = format!("{{{added}}}");
        } else if text.ends_with('}') {
            text.pop();
            text.push(',');
            text.push_str(added);
            text.push('}');
        } else {
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

/// The SDK's provider exporting to the configured OTLP endpoint, if one is set.
fn tracer_provider(service: &'static str) -> Result<Option<SdkTracerProvider>, SettingError> {
    let endpoint =
        settings::raw("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| settings::raw("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = settings::parsed("OTEL_SDK_DISABLED", false)?;
    if endpoint.is_none() || disabled {
        return Ok(None);
    }
    // The exporter reads the endpoint (appending `/v1/traces` to the generic one), headers and
    // timeout from the environment itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| SettingError::new("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(settings::string("OTEL_SERVICE_NAME", service))
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The dispatcher a log format belongs to, set once it is installed. While an event is being
/// formatted, `tracing` hides the current dispatcher (`get_default` gives a no-op one, against
/// re-entrance), so the format keeps its own (weak, as the dispatcher owns the format).
#[derive(Clone, Default)]
struct DispatchCell(Arc<OnceLock<WeakDispatch>>);

impl DispatchCell {
    /// Remembers the current dispatcher (call right after installing it).
    fn set_to_current(&self) {
        tracing::dispatcher::get_default(|d| {
            let _ = self.0.set(d.downgrade());
        });
    }

    /// The trace and span ids of the OpenTelemetry span `id`, if it has a valid context.
    fn trace_ids(&self, id: &tracing::span::Id) -> Option<(String, String)> {
        let dispatch = self.0.get()?.upgrade()?;
        trace_ids(id, &dispatch)
    }
}

/// The trace and span ids of the OpenTelemetry span `id` of `dispatch`, if it has a valid
/// context.
fn trace_ids(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The JSON line of the inner format (written without its span), with the current span's
/// fields and name under `span`, and `trace_id` and `span_id` of that span when it is traced.
///
/// The span's fields are kept as JSON text ([`AppendingJsonFields`]) and are copied into the
/// line as they are: `tracing-subscriber`'s own `with_current_span` parses them into a map and
/// writes them out again for every line, which was most of the cost of an access-log line.
struct WithSpan<F> {
    inner: F,
    dispatch: DispatchCell,
}

impl<S, N, F> FormatEvent<S, N> for WithSpan<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(span) = ctx.parent_span() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object and a newline: the span goes in before its `}`.
        let Some(object) = line.trim_end().strip_suffix('}') else {
            return writer.write_str(&line);
        };
        let extensions = span.extensions();
        let fields = extensions
            .get::<FormattedFields<N>>()
            .and_then(|f| f.fields.trim().strip_prefix('{')?.strip_suffix('}'))
            .unwrap_or("");
        let name = serde_json::to_string(span.name()).map_err(|_| std::fmt::Error)?;
        let comma = if fields.is_empty() { "" } else { "," };
        write!(writer, r#"{object},"span":{{{fields}{comma}"name":{name}}}"#)?;
        if let Some((trace_id, span_id)) = self.dispatch.trace_ids(&span.id()) {
            write!(writer, r#","trace_id":"{trace_id}","span_id":"{span_id}""#)?;
        }
        writeln!(writer, "}}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;
        fn make_writer(&'w self) -> Lines {
            self.clone()
        }
    }

    fn logged(lines: &Lines) -> Vec<serde_json::Value> {
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The JSON lines `log` writes through the services' format, without OpenTelemetry.
    fn json_lines_without_opentelemetry(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let lines = Lines::default();
        let dispatch = DispatchCell::default();
        let subscriber = tracing_subscriber::registry().with(json_logs(lines.clone(), dispatch.clone()));
        tracing::subscriber::with_default(subscriber, || {
            dispatch.set_to_current();
            log();
        });
        logged(&lines)
    }

    #[test]
    fn json_lines_in_a_traced_span_carry_its_ids() {
        // A provider without an exporter still makes valid, sampled span contexts.
        let provider = SdkTracerProvider::builder().build();
        let dispatch = DispatchCell::default();
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_logs(lines.clone(), dispatch.clone()));
        tracing::subscriber::with_default(subscriber, || {
            dispatch.set_to_current();
            let span = tracing::info_span!("work", job = 7);
            let (trace_id, span_id) = {
                let cx = tracing_opentelemetry::OpenTelemetrySpanExt::context(&span);
                let sc = cx.span().span_context().clone();
                (sc.trace_id().to_string(), sc.span_id().to_string())
            };
            span.in_scope(|| tracing::info!(n = 1, "inside"));
            tracing::info!("outside");
            let out = logged(&lines);
            assert_eq!(out.len(), 2, "{out:?}");
            assert_eq!(out[0]["message"], "inside");
            assert_eq!(out[0]["n"], 1);
            assert_eq!(out[0]["span"]["job"], 7);
            assert_eq!(out[0]["trace_id"], trace_id.as_str());
            assert_eq!(out[0]["span_id"], span_id.as_str());
            assert_eq!(out[0]["span"]["name"], "work");
            assert_eq!(out[1]["message"], "outside");
            assert!(out[1].get("trace_id").is_none(), "{}", out[1]);
            assert!(out[1].get("span").is_none(), "{}", out[1]);
        });
    }

    #[test]
    fn fields_recorded_later_join_the_span_fields() {
        let out = json_lines_without_opentelemetry(|| {
            let empty = tracing::info_span!("bare", later = tracing::field::Empty);
            empty.record("later", "x\"y");
            empty.in_scope(|| tracing::info!("first"));
            let span = tracing::info_span!(
                "request",
                route = "/v1/products/{id}",
                status = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            );
            span.record("trace_id", "abc");
            span.record("status", 200);
            span.record("status", 404);
            span.in_scope(|| tracing::info!("second"));
        });
        assert_eq!(out[0]["span"]["later"], "x\"y", "{}", out[0]);
        assert_eq!(out[1]["span"]["route"], "/v1/products/{id}", "{}", out[1]);
        assert_eq!(out[1]["span"]["trace_id"], "abc", "{}", out[1]);
        // Recorded twice: the last value is the one read.
        assert_eq!(out[1]["span"]["status"], 404, "{}", out[1]);
    }

    #[test]
    fn json_lines_are_unchanged_without_opentelemetry() {
        let out = json_lines_without_opentelemetry(|| {
            tracing::info_span!("request", trace_id = "abc").in_scope(|| tracing::info!("inside"));
            tracing::info_span!("fieldless").in_scope(|| tracing::info!(n = 2, "bare"));
        });
        assert_eq!(out[0]["span"]["trace_id"], "abc");
        assert_eq!(out[0]["span"]["name"], "request");
        assert!(out[0].get("span_id").is_none(), "{}", out[0]);
        assert_eq!(out[1]["span"], serde_json::json!({"name": "fieldless"}), "{}", out[1]);
        assert_eq!(out[1]["n"], 2, "{}", out[1]);
    }
}
