//! write-api integration tests: commands, their outbox rows, concurrency, idempotency, auth, bad
//! input, operations and the binary as a process (real PostgreSQL).
//!
//! One test binary per area, not one per file: each binary links the whole dependency set, so
//! fewer binaries build faster and take a fraction of the disk.

mod auth;
mod bad_input;
mod catalog;
mod cli;
mod concurrency;
mod disconnects;
mod idempotency;
mod input_edges;
mod ops;
mod orders;
mod outbox;
mod process;
