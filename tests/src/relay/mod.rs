//! Support for the relay's tests and benchmark: a chaos TCP proxy, the relay binary as a
//! child process, a RabbitMQ test exchange with a recording consumer, outbox fillers, and a
//! database role that may only read.

pub mod admin;
pub mod broker;
pub mod chaos_proxy;
pub mod outbox;
pub mod process;
pub mod reader;

use std::time::Duration;

/// Polls `check` every 50 ms until it returns `true`, failing with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
