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

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
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

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
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
/// is set. Call once, first thing in `main`; `service` is the default `service.name`.
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
    let provider = tracer_provider(service)?;
    let otel = provider.as_ref().map(|p| {
        let traced = TRACED_CRATES
            .iter()
            .fold(Targets::new(), |t, c| t.with_target(*c, LevelFilter::INFO));
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(traced)
    });
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .map_event_format(WithTraceIds)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    tracing_subscriber::registry().with(otel).with(fmt).init();
    Ok(Telemetry { provider })
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

/// The trace and span ids of the OpenTelemetry span `id`, if it has a valid context.
fn trace_ids(id: &tracing::span::Id) -> Option<(String, String)> {
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The JSON line of the inner format, with `trace_id` and `span_id` of the current span added
/// when it is traced (without OpenTelemetry, the line is unchanged).
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
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
        let Some((trace_id, span_id)) = ctx.parent_span().and_then(|span| trace_ids(&span.id())) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object and a newline: the ids go in before its `}`.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(writer, r#"{object},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#),
            None => writer.write_str(&line),
        }
    }
}
