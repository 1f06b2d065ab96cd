//! The wake-up: the platform's LISTEN loop ([`ordering_platform::listen`]) turning each
//! notification into a permit on a [`Notify`]. A permit is stored when nobody waits, so a
//! notification that arrives while the publisher is busy reading is not lost: the publisher
//! reads again.

use std::sync::Arc;
use std::time::Duration;

use ordering_platform::listen::{ListenEvent, Listener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Listens on `channel` until `stop`, reconnecting with backoff. Every (re)connection also
/// wakes the publisher, since notifications sent while disconnected are gone, and signals
/// `reachable`, which ends the publisher's database backoff. Reconnects are tried at least
/// every 2 s (1 s plus jitter; one connection attempt is cheap), so that signal comes soon
/// after an outage. While not listening, the publisher's poll still runs.
pub async fn listen(
    url: String,
    channel: String,
    wake: Arc<Notify>,
    reachable: Arc<Notify>,
    ping_every: Duration,
    stop: CancellationToken,
) {
    Listener::new(url, channel)
        .ping_every(ping_every)
        .max_delay(Duration::from_secs(1))
        .run(stop, |event| match event {
            ListenEvent::Listening => {
                wake.notify_one();
                reachable.notify_one();
            }
            ListenEvent::Notification(_) => wake.notify_one(),
            ListenEvent::NotListening => {}
        })
        .await;
}
