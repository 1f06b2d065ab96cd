//! The wake-up: LISTEN on a dedicated connection (kept out of the pool, since a pooled
//! connection would be handed to others and lose its LISTEN), turning each notification into
//! a permit on a [`Notify`]. A permit is stored when nobody waits, so a notification that
//! arrives while the publisher is busy reading is not lost: the publisher reads again.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Listens on `channel` until `stop`, reconnecting with backoff. Every (re)connection also
/// wakes the publisher, since notifications sent while disconnected are gone, and signals
/// `reachable`, which ends the publisher's database backoff. Reconnects are tried at least
/// every 2 s (one connection attempt is cheap), so that signal comes soon after an outage.
pub async fn listen(
    url: String,
    channel: String,
    wake: Arc<Notify>,
    reachable: Arc<Notify>,
    ping_every: Duration,
    stop: CancellationToken,
) {
    let fresh_backoff = || {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .without_max_times()
            .build()
    };
    let mut backoff = fresh_backoff();
    loop {
        let attempt = async {
            let mut conn = tokio::time::timeout(Duration::from_secs(5), AsyncPgConnection::establish(&url))
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            diesel::sql_query(format!("LISTEN {channel}"))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        };
        let mut conn = tokio::select! {
            r = attempt => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for outbox notifications; the poll still runs");
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! { () = tokio::time::sleep(wait) => continue, () = stop.cancelled() => return }
                }
            },
            () = stop.cancelled() => return,
        };
        tracing::debug!(%channel, "listening for outbox notifications");
        backoff = fresh_backoff();
        wake.notify_one();
        reachable.notify_one();
        loop {
            let next = {
                let mut stream = std::pin::pin!(conn.notifications_stream());
                tokio::select! {
                    n = tokio::time::timeout(ping_every, stream.next()) => n,
                    () = stop.cancelled() => return,
                }
            };
            match next {
                Ok(Some(Ok(_))) => wake.notify_one(),
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "notification connection failed");
                    break;
                }
                Ok(None) => {
                    tracing::warn!("notification connection closed");
                    break;
                }
                Err(_) => {
                    // Quiet for a while: make sure the connection is still there, since a
                    // dead one would otherwise look the same as no news.
                    let ping = diesel::sql_query("SELECT 1").execute(&mut conn);
                    if !matches!(tokio::time::timeout(Duration::from_secs(3), ping).await, Ok(Ok(_))) {
                        tracing::warn!("notification connection does not answer");
                        break;
                    }
                }
            }
        }
    }
}
