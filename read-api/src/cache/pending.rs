//! Writes the projector could not make in Redis, retried in the background until Redis
//! answers, so a Redis that comes back holds nothing older than the views.

use std::sync::Mutex;
use std::time::Duration;

use super::Cache;

/// Pending writes kept at most while Redis is down (older ones expire by TTL anyway).
const MAX_PENDING: usize = 100_000;

/// A write the projector could not make in Redis.
#[derive(Clone, Debug)]
pub(super) enum Pending {
    SetView { key: String, version: i64, value: Vec<u8> },
    Bump { key: String, revision: i64 },
}

/// The writes waiting for Redis.
#[derive(Default)]
pub(super) struct PendingWrites(Mutex<Vec<Pending>>);

impl PendingWrites {
    /// Keeps `op` for a retry (dropped past [`MAX_PENDING`]).
    pub(super) fn remember(&self, op: Pending) {
        if let Ok(mut p) = self.0.lock() {
            if p.len() < MAX_PENDING {
                p.push(op);
            } else {
                tracing::warn!("too many cache writes waiting for Redis; relying on TTLs");
            }
        }
    }

    fn len(&self) -> usize {
        self.0.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn take(&self) -> Vec<Pending> {
        match self.0.lock() {
            Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
            _ => Vec::new(),
        }
    }

    /// Puts back the writes that failed again, ahead of those remembered meanwhile.
    fn put_back(&self, mut left: Vec<Pending>) {
        if !left.is_empty()
            && let Ok(mut p) = self.0.lock()
        {
            left.append(&mut p);
            *p = left;
        }
    }
}

impl Cache {
    /// Writes waiting for Redis.
    pub fn pending_writes(&self) -> usize {
        self.inner.pending.len()
    }

    /// Retries the remembered writes every 250 ms, for as long as the service runs.
    pub async fn retry_pending(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let ops = self.inner.pending.take();
            if ops.is_empty() {
                continue;
            }
            let mut left = Vec::new();
            for op in ops {
                let done = match &op {
                    Pending::SetView { key, version, value } => {
                        self.inner.redis.set_if_newer(key, *version, value).await
                    }
                    Pending::Bump { key, revision } => self.inner.redis.hash_bump(key, *revision).await,
                };
                if !done {
                    left.push(op);
                }
            }
            self.inner.pending.put_back(left);
        }
    }
}
