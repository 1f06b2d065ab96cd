//! One LISTEN loop for every service that is woken by PostgreSQL notifications (the relay's
//! outbox wake-ups, the read-api's announcements of applied changes).
//!
//! The connection is dedicated, kept out of the pool: a pooled connection would be handed to
//! others and lose its LISTEN. Connecting is bounded by a timeout, since an address that
//! accepts and never answers would otherwise hold the loop forever. A quiet connection is
//! pinged, since a dead one looks the same as no news. Whatever ends a session, the loop
//! reconnects with exponential backoff (reset by every successful connection), and tells its
//! caller: notifications sent while nobody listened are gone, so callers re-read or forget
//! what they cached.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff};
use diesel::pg::PgNotification;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// What the loop tells its caller.
#[derive(Debug)]
pub enum ListenEvent {
    /// A connection is up and LISTENing; anything sent before it was missed.
    Listening,
    /// A notification on the channel.
    Notification(PgNotification),
    /// Not listening: a session ended, or an attempt to start one failed. Notifications may be
    /// missed until the next [`ListenEvent::Listening`].
    NotListening,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("connecting timed out after {0:?}")]
    ConnectTimedOut(Duration),
    #[error("cannot connect: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("LISTEN failed: {0}")]
    Listen(#[from] diesel::result::Error),
}

/// A LISTEN loop on one channel; build it with [`Listener::new`], run it with [`Listener::run`].
#[derive(Debug, Clone)]
pub struct Listener {
    url: String,
    channel: String,
    connect_timeout: Duration,
    ping_every: Duration,
    ping_timeout: Duration,
    min_delay: Duration,
    max_delay: Duration,
}

impl Listener {
    /// Listens on `channel` (an SQL identifier) of the database at `url`. Defaults: connecting
    /// times out after 5 s; a connection quiet for 10 s is pinged and dropped if the ping takes
    /// more than 3 s; reconnects wait from 100 ms up to 5 s (with jitter).
    pub fn new(url: impl Into<String>, channel: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            channel: channel.into(),
            connect_timeout: Duration::from_secs(5),
            ping_every: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(3),
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }

    /// How long connecting and LISTENing may take before the attempt counts as failed.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the connection may stay quiet before it is pinged.
    #[must_use]
    pub fn ping_every(mut self, every: Duration) -> Self {
        self.ping_every = every;
        self
    }

    /// The longest wait between reconnection attempts (before jitter).
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Listens until `stop`, handing every [`ListenEvent`] to `on_event`. The handler runs on
    /// the loop's task: it should only signal or update in-memory state, never wait.
    pub async fn run(self, stop: CancellationToken, mut on_event: impl FnMut(ListenEvent)) {
        let mut backoff = self.backoff();
        loop {
            let connected = tokio::select! {
                r = self.connect() => r,
                () = stop.cancelled() => return,
            };
            match connected {
                Ok(mut conn) => {
                    tracing::debug!(channel = %self.channel, "listening for notifications");
                    backoff = self.backoff();
                    on_event(ListenEvent::Listening);
                    self.session(&mut conn, &stop, &mut on_event).await;
                }
                Err(e) => tracing::warn!(channel = %self.channel, error = %e, "cannot listen for notifications"),
            }
            on_event(ListenEvent::NotListening);
            let wait = backoff.next().unwrap_or(self.max_delay);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn backoff(&self) -> ExponentialBackoff {
        crate::backoff::endless(self.min_delay, self.max_delay).build()
    }

    async fn connect(&self) -> Result<AsyncPgConnection, ListenError> {
        let attempt = async {
            let mut conn = AsyncPgConnection::establish(&self.url).await?;
            diesel::sql_query(format!("LISTEN {}", self.channel))
                .execute(&mut conn)
                .await?;
            Ok(conn)
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| ListenError::ConnectTimedOut(self.connect_timeout))?
    }

    /// Streams notifications until the connection fails or `stop`.
    async fn session(
        &self,
        conn: &mut AsyncPgConnection,
        stop: &CancellationToken,
        on_event: &mut impl FnMut(ListenEvent),
    ) {
        loop {
            let next = {
                let mut stream = std::pin::pin!(conn.notifications_stream());
                tokio::select! {
                    n = tokio::time::timeout(self.ping_every, stream.next()) => n,
                    () = stop.cancelled() => return,
                }
            };
            match next {
                Ok(Some(Ok(n))) => on_event(ListenEvent::Notification(n)),
                Ok(Some(Err(e))) => {
                    tracing::warn!(channel = %self.channel, error = %e, "notification connection failed");
                    return;
                }
                Ok(None) => {
                    tracing::warn!(channel = %self.channel, "notification connection closed");
                    return;
                }
                Err(_) => {
                    let ping = diesel::sql_query("SELECT 1").execute(conn);
                    if !matches!(tokio::time::timeout(self.ping_timeout, ping).await, Ok(Ok(_))) {
                        tracing::warn!(channel = %self.channel, "notification connection does not answer");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn database_url() -> String {
        let server = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned());
        format!("{server}/postgres")
    }

    fn spawn(listener: Listener) -> (mpsc::UnboundedReceiver<ListenEvent>, CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(listener.run(stop.clone(), move |e| {
            let _ = tx.send(e);
        }));
        (rx, stop)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<ListenEvent>) -> ListenEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the loop is running")
    }

    #[tokio::test]
    async fn notifications_reach_the_handler() {
        let channel = format!("listen_test_{}", uuid::Uuid::new_v4().simple());
        let (mut rx, stop) = spawn(Listener::new(database_url(), channel.clone()));
        assert!(matches!(next(&mut rx).await, ListenEvent::Listening));

        let mut conn = AsyncPgConnection::establish(&database_url()).await.unwrap();
        diesel::sql_query(format!("NOTIFY {channel}, 'hello'"))
            .execute(&mut conn)
            .await
            .unwrap();
        match next(&mut rx).await {
            ListenEvent::Notification(n) => {
                assert_eq!(n.channel, channel);
                assert_eq!(n.payload, "hello");
            }
            other => panic!("expected the notification, got {other:?}"),
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_and_is_retried() {
        // Accepts connections (the kernel completes the handshake) and never says a word.
        let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = black_hole.local_addr().unwrap();
        let listener = Listener::new(format!("postgres://root@{addr}/postgres"), "never")
            .connect_timeout(Duration::from_millis(200))
            .max_delay(Duration::from_millis(100));
        let (mut rx, stop) = spawn(listener);
        for _ in 0..2 {
            assert!(matches!(next(&mut rx).await, ListenEvent::NotListening));
        }
        stop.cancel();
    }
}
