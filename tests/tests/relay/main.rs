//! outbox-relay integration tests: delivery, ordering, failures, dead letters and their CLI (real PostgreSQL
//! and RabbitMQ).
//!
//! One test binary per area, not one per file: each binary links the whole dependency set, so
//! fewer binaries build faster and take a fraction of the disk.

mod admin;
mod dead_letters;
mod delivery;
mod dlq_cli;
mod failures;
mod fleet;
mod metrics;
mod replication;
mod retention;
mod statements;
mod unroutable;
