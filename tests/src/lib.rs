//! Test support for the ordering pipeline: real PostgreSQL, RabbitMQ and Redis, isolated per
//! test (a database cloned from a migrated template, unique exchange/queue names, a Redis key
//! prefix), and helpers to run the services in-process or as child processes.

pub mod admin_page;
pub mod api_docs;
pub mod browser;
pub mod cpu;
pub mod figures;
pub mod metrics_text;
pub mod otlp;
pub mod pg_server;
pub mod pipeline;
pub mod process;
pub mod prometheus;
pub mod rabbit_cluster;
pub mod read_app;
pub mod relay;
pub mod test_db;
pub mod write_app;

/// Runs `work` to its end on a runtime of its own, in a thread of its own: what a `Drop` that
/// cleans up needs, as it may run inside a runtime (where blocking on another panics) or while
/// unwinding from a failed test.
pub fn run_aside(work: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work);
    })
    .join();
}
