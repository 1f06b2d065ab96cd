//! Every metric the read-api exports, with its `# HELP` text; registered at start by
//! [`install`].
//!
//! Per-instance figures (counters, the projection lag, the cache) add up with `sum()` over
//! instances. Two gauges are shared figures that every instance reads the same:
//! `read_events_parked`/`read_gaps_open` (the parking table) and `read_dead_letters` (the
//! `<queue>.dead` queue); aggregate those with `max()`, not `sum()`.

use ordering_platform::meters::{self, Metric};

/// The read-api's own metrics.
pub const READ: &[Metric] = &[
    Metric::counter(
        "read_events_applied_total",
        "Events applied to the views, by aggregate (product, order).",
    )
    .series(&[&[("aggregate", "product")], &[("aggregate", "order")]]),
    Metric::counter(
        "read_events_duplicates_ignored_total",
        "Duplicate or older deliveries ignored.",
    ),
    Metric::counter(
        "read_events_unknown_total",
        "Events of an unknown type, acknowledged and ignored.",
    ),
    Metric::counter(
        "read_events_gaps_held_total",
        "Events parked behind a missing predecessor.",
    ),
    Metric::counter(
        "read_events_dead_lettered_total",
        "Messages sent to <queue>.dead, by reason (poison, refused, gap_timeout).",
    )
    .series(&[
        &[("reason", "poison")],
        &[("reason", "refused")],
        &[("reason", "gap_timeout")],
    ]),
    Metric::gauge(
        "read_events_parked",
        "Events parked now, all instances (a shared figure: aggregate with max()).",
    ),
    Metric::gauge(
        "read_gaps_open",
        "Aggregates with parked events now, all instances (a shared figure: aggregate with max()).",
    ),
    Metric::gauge(
        "read_gaps_timed_out",
        "Gaps that recently outlived GAP_TIMEOUT (0 once the report is old).",
    ),
    Metric::gauge(
        "read_dead_letters",
        "Messages in <queue>.dead now (a shared figure: aggregate with max()).",
    ),
    Metric::gauge(
        "read_projection_lag_seconds",
        "Age (from its time) of the newest event of the last applied batch.",
    )
    .unit(metrics::Unit::Seconds),
    Metric::seconds(
        "read_event_lag_seconds",
        "Time from an event's time to its being applied to the views, per event.",
    ),
    Metric::counter(
        "read_cache_hits_total",
        "View cache hits, by tier (local in-process, redis).",
    )
    .series(&[&[("tier", "local")], &[("tier", "redis")]]),
    Metric::counter("read_cache_misses_total", "View cache misses (read from PostgreSQL)."),
    Metric::gauge(
        "read_cache_breaker_state",
        "Redis use: 0 on, 1 probing, 2 paused after a failure.",
    )
    .series(&[]),
    Metric::counter("read_cache_redis_errors_total", "Failed or timed-out Redis calls."),
    Metric::counter(
        "read_consistency_waits_total",
        "Requests that waited for a consistency token.",
    ),
    Metric::counter(
        "read_consistency_timeouts_total",
        "Waits for a consistency token that ended in 503 not_yet_consistent.",
    ),
    Metric::counter(
        "read_consistency_refused_total",
        "Requests refused 503 too_many_waiters.",
    ),
];

/// Describes the read-api's metrics and registers them at zero.
pub fn install() {
    meters::install(
        "read-api",
        env!("CARGO_PKG_VERSION"),
        &[meters::HTTP, meters::POOL, meters::BUILD, READ],
    );
}
