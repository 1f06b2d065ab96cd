//! The metrics catalog: every metric a service exports is listed once, with its type, unit and
//! `# HELP` text, in a table of [`Metric`]s ([`HTTP`], [`POOL`] and [`BUILD`] here, the
//! service's own next to its code). [`install`] describes them all at start and registers
//! every counter and histogram series whose labels are known in advance at zero, so a
//! `rate()` alert sees a series from the first scrape instead of only after the first event.
//!
//! Figures that are read rather than counted (process CPU and memory, the connection pool)
//! are sampled when `/metrics` is scraped ([`sample`]).

use std::sync::{Mutex, OnceLock};

use metrics::{Label, Unit};

use crate::db::PgPool;

/// A metric's Prometheus type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The series that exist from the start, one label set each (`&[&[]]`: one series without
    /// labels). Empty for a metric whose label values are only known at run time (a route).
    pub series: &'static [&'static [(&'static str, &'static str)]],
}

impl Metric {
    const fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            kind,
            unit: None,
            help,
            series: &[&[]],
        }
    }

    /// A counter without labels (name it `…_total`).
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Counter, help)
    }

    /// A gauge without labels.
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Gauge, help)
    }

    /// A histogram of seconds without labels (name it `…_seconds`).
    pub const fn seconds(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Histogram, help).unit(Unit::Seconds)
    }

    /// With a unit (shown to tools reading the description; the name already says it).
    pub const fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }

    /// With these series registered at start instead of one without labels.
    pub const fn series(mut self, series: &'static [&'static [(&'static str, &'static str)]]) -> Self {
        self.series = series;
        self
    }
}

/// The HTTP metrics of every service (the middleware of [`crate::http::layers`] records them).
/// Their routes are known only as requests come, so their series appear with the first
/// request of each route, method and status.
pub const HTTP: &[Metric] = &[
    Metric::counter(
        "http_requests_total",
        "HTTP requests answered, by method, route template and status code.",
    )
    .series(&[]),
    Metric::seconds(
        "http_request_duration_seconds",
        "Time to answer an HTTP request, by method, route template and status class (2xx, 4xx, 5xx).",
    )
    .series(&[]),
];

/// The PostgreSQL connection pool, sampled at scrape time ([`watch_pool`]).
pub const POOL: &[Metric] = &[
    Metric::gauge(
        "db_pool_connections_max",
        "Most PostgreSQL connections the pool may open.",
    ),
    Metric::gauge(
        "db_pool_connections_open",
        "PostgreSQL connections open in the pool (idle or in use).",
    ),
    Metric::gauge(
        "db_pool_connections_in_use",
        "PostgreSQL connections checked out of the pool.",
    ),
    Metric::gauge(
        "db_pool_waiters",
        "Tasks waiting for a PostgreSQL connection from the pool.",
    ),
];

/// What is running.
pub const BUILD: &[Metric] = &[Metric::gauge(
    "build_info",
    "Always 1; its labels say which service and version is running.",
)
.series(&[])];

/// Describes every metric of `catalogs`, registers their known series at zero, sets
/// `build_info{service,version}` and describes the process metrics. Call once per service at
/// start (again is harmless: tests build several apps in one process).
pub fn install(service: &'static str, version: &'static str, catalogs: &[&[Metric]]) {
    let _ = crate::http::ops::metrics_handle();
    for m in catalogs.iter().flat_map(|c| c.iter()) {
        describe(m);
        for labels in m.series {
            let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
            match m.kind {
                // Getting a handle registers the series; its value starts at zero.
                Kind::Counter => drop(metrics::counter!(m.name, labels)),
                Kind::Gauge => drop(metrics::gauge!(m.name, labels)),
                Kind::Histogram => drop(metrics::histogram!(m.name, labels)),
            }
        }
    }
    metrics::gauge!("build_info", "service" => service, "version" => version).set(1.0);
    process().describe();
}

fn describe(m: &Metric) {
    match (m.kind, m.unit) {
        (Kind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, m.help),
        (Kind::Counter, None) => metrics::describe_counter!(m.name, m.help),
        (Kind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, m.help),
        (Kind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
        (Kind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, m.help),
        (Kind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
    }
}

fn process() -> &'static metrics_process::Collector {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// The pool sampled at each scrape.
fn watched() -> &'static Mutex<Option<PgPool>> {
    static POOL: OnceLock<Mutex<Option<PgPool>>> = OnceLock::new();
    POOL.get_or_init(Mutex::default)
}

/// Reports `pool`'s size, use and waiters ([`POOL`]) at every scrape. A service has one pool;
/// in a test process holding several apps the last one watched is reported.
pub fn watch_pool(pool: PgPool) {
    *watched().lock().unwrap_or_else(|e| e.into_inner()) = Some(pool);
}

/// Updates the figures read at scrape time: process CPU, memory, threads and file
/// descriptors, and the watched pool.
pub fn sample() {
    process().collect();
    if let Some(pool) = watched().lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let s = pool.status();
        metrics::gauge!("db_pool_connections_max").set(s.max_size as f64);
        metrics::gauge!("db_pool_connections_open").set(s.size as f64);
        metrics::gauge!("db_pool_connections_in_use").set(s.size.saturating_sub(s.available) as f64);
        metrics::gauge!("db_pool_waiters").set(s.waiting as f64);
    }
}
