//! read-api integration tests: projector, views, cache, consistency waits, rebuild and bad input
//! (real PostgreSQL, RabbitMQ and Redis).
//!
//! One test binary per area, not one per file: each binary links the whole dependency set, so
//! fewer binaries build faster and take a fraction of the disk.

mod admin;
mod bad_input;
mod cache;
mod cluster;
mod consistency;
mod dlq_cli;
mod metrics;
mod money;
mod projector;
mod rebuild;
mod search;
mod stalls;
mod views;
