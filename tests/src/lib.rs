//! Test support for the ordering pipeline: real PostgreSQL, RabbitMQ and Redis, isolated per
//! test (a database cloned from a migrated template, unique exchange/queue names, a Redis key
//! prefix), and helpers to run the services in-process or as child processes.

pub mod api_docs;
pub mod browser;
pub mod pipeline;
pub mod process;
pub mod read_app;
pub mod relay;
pub mod test_db;
pub mod write_app;
