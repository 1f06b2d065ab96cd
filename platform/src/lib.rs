//! Runtime plumbing shared by the ordering services, so each concept lives in one place:
//!
//! - [`amqp`]: the RabbitMQ nodes of `AMQP_URL`, connecting to one that answers, replicated queues;
//! - [`cli`]: command-line parsing, `--help`'s settings listing and the exit codes;
//! - [`settings`]: typed environment settings; a bad one stops the service with exit status 2
//!   and one line naming it;
//! - [`telemetry`]: structured `tracing` logs (`RUST_LOG`, `LOG_FORMAT`) and OpenTelemetry
//!   traces over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`);
//! - [`trace_context`]: W3C `traceparent`/`tracestate` in and out of HTTP headers, outbox rows
//!   and messages;
//! - [`problem`]: RFC 9457 problem bodies, with internal errors logged under an id and never
//!   leaked;
//! - [`auth`]: HS256 bearer tokens and the caller's role;
//! - [`http`]: middleware (request ids, trace ids, metrics, timeouts, limits), the JSON body
//!   extractor that maps every malformed body to its 4xx, `/health/*` and `/metrics`, and
//!   serving with graceful shutdown;
//! - [`meters`]: the catalog of metrics (HELP, type, unit; counters at zero from the start),
//!   build, process and pool metrics;
//! - [`db`]: the PostgreSQL pool, with bounded waits, and statements connections keep prepared;
//! - [`breaker`]: the circuit breaker guarding a dependency (the relay's PostgreSQL and
//!   RabbitMQ, the read-api's Redis);
//! - [`backoff`]: the one retry schedule (jittered exponential, endless);
//! - [`listen`]: the LISTEN loop woken by PostgreSQL notifications, reconnecting with backoff;
//! - [`shutdown`]: the SIGTERM / Ctrl-C signal.

pub mod amqp;
pub mod auth;
pub mod backoff;
pub mod breaker;
pub mod cli;
pub mod db;
pub mod http;
pub mod listen;
pub mod meters;
pub mod problem;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod terminal;
pub mod trace_context;
