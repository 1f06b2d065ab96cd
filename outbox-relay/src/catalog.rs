//! Every metric the relay exports, with its `# HELP` text; registered at start by [`install`].
//!
//! The backlog gauges (`relay_pending_rows`, `relay_lag_seconds`, `relay_dead_letters`) are
//! table-wide figures. Each relay instance would read the same numbers, so that `sum()` over
//! instances stays right only the holder of partition 0 (the *reporter*,
//! `relay_backlog_reporter` 1) publishes them; every other instance reports 0. The partition
//! lease decides it, so there is exactly one reporter while partition 0 is leased, and at most
//! a lease TTL without one after its holder dies (the gauges then read 0 until the next
//! holder's first report, two seconds at most after it claims the partition).

use ordering_platform::meters::{self, Metric};

/// The relay's own metrics.
pub const RELAY: &[Metric] = &[
    Metric::counter(
        "relay_rows_published_total",
        "Outbox rows published and confirmed by the broker.",
    ),
    Metric::counter(
        "relay_retries_total",
        "Failures retried, by dependency (postgres, rabbitmq).",
    )
    .series(&[&[("dependency", "postgres")], &[("dependency", "rabbitmq")]]),
    Metric::counter(
        "relay_broker_reconnects_total",
        "Connections to the broker opened again after one was lost or given up.",
    ),
    Metric::counter("relay_dead_lettered_total", "Outbox rows moved to the dead letters."),
    Metric::counter(
        "relay_cleaned_rows_total",
        "Sent outbox rows deleted one by one past OUTBOX_RETENTION (a plain outbox, or the default partition).",
    ),
    Metric::counter(
        "relay_day_partitions_created_total",
        "Day partitions of a partitioned outbox created (ahead of their day, or to take rows of the default partition).",
    ),
    Metric::counter(
        "relay_day_partitions_dropped_total",
        "Day partitions of a partitioned outbox dropped past OUTBOX_RETENTION.",
    ),
    Metric::gauge(
        "relay_day_partitions_overdue",
        "Day partitions past OUTBOX_RETENTION kept at the last cleanup because some of their rows are unsent.",
    ),
    Metric::gauge(
        "relay_pending_rows",
        "Unsent outbox rows, table-wide (reported by the backlog reporter only, 0 elsewhere).",
    ),
    Metric::gauge(
        "relay_lag_seconds",
        "Age of the oldest unsent outbox row, table-wide (reported by the backlog reporter only, 0 elsewhere).",
    )
    .unit(metrics::Unit::Seconds),
    Metric::gauge(
        "relay_dead_letters",
        "Rows in the relay's dead letters now, table-wide (reported by the backlog reporter only, 0 elsewhere).",
    ),
    Metric::gauge(
        "relay_backlog_reporter",
        "1 on the instance that reports the table-wide backlog gauges (the holder of partition 0), else 0.",
    ),
    Metric::gauge("relay_partitions_held", "Partitions this instance leases."),
    Metric::gauge(
        "relay_breaker_state",
        "Circuit breaker of a dependency (postgres, rabbitmq): 0 closed, 1 half-open, 2 open.",
    )
    .series(&[]),
    Metric::seconds("relay_publish_seconds", "Time to hand one message to the broker."),
    Metric::seconds(
        "relay_confirm_seconds",
        "Time from publishing a message to the broker's confirm.",
    ),
    Metric::seconds(
        "relay_commit_to_confirm_seconds",
        "Time from the outbox row's creation (its transaction's start) to the broker's confirm.",
    ),
];

/// Describes the relay's metrics and registers them at zero.
pub fn install() {
    meters::install(
        "outbox-relay",
        env!("CARGO_PKG_VERSION"),
        &[meters::HTTP, meters::POOL, meters::BUILD, RELAY],
    );
}
