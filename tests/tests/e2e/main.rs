//! End-to-end fault tests: write-api, two relays and read-api as child processes behind cuttable
//! proxies (or on a three-node RabbitMQ cluster of their own: `rabbit_cluster`); .config/nextest.toml
//! runs them one at a time. Also the pipeline's container packaging
//! (Dockerfile, compose.yaml), checked without a Docker engine, and the shipped Prometheus
//! rules and Grafana dashboard against a running pipeline.
//!
//! One test binary per area, not one per file: each binary links the whole dependency set, so
//! fewer binaries build faster and take a fraction of the disk.

mod admin_pages;
mod alerts;
mod backlog;
mod browser;
mod container;
mod faults;
mod quickstart;
mod rabbit_cluster;
mod read_database;
mod read_replicas;
mod relay_kill;
mod tracing;
