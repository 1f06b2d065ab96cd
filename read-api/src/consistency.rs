//! Read-your-writes: waiting until the views reflect a command, woken by notifications.
//!
//! The projector announces applied changes with `pg_notify` in the transaction that makes
//! them (one notification per batch, naming the version each aggregate reached); every
//! read-api instance LISTENs on one dedicated connection and fans the announcements out
//! in-process ([`Hub`]). A waiting request registers *before* it first checks the views,
//! so no announcement can slip between its check and its sleep; it then sleeps on a
//! [`tokio::sync::Notify`] and re-checks only when an announcement reaches the version it
//! needs (an announcement only triggers a re-read; the re-read decides). A thousand waiting
//! requests are a thousand idle futures: a re-read borrows a pooled connection and returns it
//! before sleeping, so no waiter holds one. Waiting has its own capacity
//! (`CONSISTENCY_MAX_WAITERS`, below the request limit so waiters can never take every request
//! slot): a request that finds it full is refused at once (503 `too_many_waiters`). If the
//! listening connection drops, announcements may have been missed: every waiter is woken to
//! re-check and the in-process cache is cleared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordering_platform::db::PgPool;
use ordering_platform::listen::{ListenEvent, Listener};
use ordering_schema::consistency::VersionMark;
use ordering_schema::events::AggregateType;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::announcement::{self, Announcement, NOTIFY_CHANNEL};
use crate::cache::Cache;
use crate::error::StoreError;
use crate::views;

type Key = (AggregateType, Uuid);

struct Waiter {
    id: u64,
    needed: i64,
    notify: Arc<Notify>,
}

/// The in-process fan-out of announcements to waiting requests.
#[derive(Clone)]
pub struct Hub {
    waiters: Arc<Mutex<HashMap<Key, Vec<Waiter>>>>,
    next_id: Arc<AtomicU64>,
    listening: Arc<AtomicBool>,
    /// One permit per request that may be in [`Hub::wait_for`] at once.
    slots: Arc<Semaphore>,
}

/// A request's registration; dropping it unregisters.
pub struct Registration {
    hub: Hub,
    id: u64,
    keys: Vec<Key>,
    notify: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut w) = self.hub.waiters.lock() {
            for k in &self.keys {
                if let Some(list) = w.get_mut(k) {
                    list.retain(|x| x.id != self.id);
                    if list.is_empty() {
                        w.remove(k);
                    }
                }
            }
        }
    }
}

/// Why a wait ended without the views reflecting the command.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the views did not reflect the command in time")]
    Timeout,
    #[error("too many requests are waiting for the views")]
    TooManyWaiters,
    #[error("reading view versions")]
    Database(#[from] StoreError),
}

impl Hub {
    /// A hub letting at most `max_waiters` requests wait at once.
    pub fn new(max_waiters: usize) -> Self {
        Self {
            waiters: Arc::default(),
            next_id: Arc::default(),
            listening: Arc::default(),
            slots: Arc::new(Semaphore::new(max_waiters)),
        }
    }

    /// Registers interest in `marks`.
    pub fn register(&self, marks: &[VersionMark]) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let keys: Vec<Key> = marks.iter().map(|m| (m.aggregate, m.id)).collect();
        if let Ok(mut w) = self.waiters.lock() {
            for m in marks {
                w.entry((m.aggregate, m.id)).or_default().push(Waiter {
                    id,
                    needed: m.version,
                    notify: notify.clone(),
                });
            }
        }
        Registration {
            hub: self.clone(),
            id,
            keys,
            notify,
        }
    }

    /// `aggregate` `id` reached `version`: wake the requests waiting for it.
    pub fn announce(&self, aggregate: AggregateType, id: Uuid, version: i64) {
        if let Ok(w) = self.waiters.lock()
            && let Some(list) = w.get(&(aggregate, id))
        {
            for x in list.iter().filter(|x| x.needed <= version) {
                x.notify.notify_one();
            }
        }
    }

    /// Wakes every waiting request (announcements may have been missed).
    pub fn wake_all(&self) {
        if let Ok(w) = self.waiters.lock() {
            for x in w.values().flatten() {
                x.notify.notify_one();
            }
        }
    }

    /// Requests waiting right now.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().map(|w| w.values().map(Vec::len).sum()).unwrap_or(0)
    }

    /// Whether the LISTEN connection is up.
    pub fn listening(&self) -> bool {
        AtomicBool::load(&self.listening, Ordering::Relaxed)
    }

    /// Waits until every mark is reflected by the views, at most `limit`; refused at once when
    /// the hub's capacity is taken.
    pub async fn wait_for(&self, pool: &PgPool, marks: &[VersionMark], limit: Duration) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + limit;
        let Ok(_slot) = self.slots.try_acquire() else {
            metrics::counter!("read_consistency_refused_total").increment(1);
            return Err(WaitError::TooManyWaiters);
        };
        let reg = self.register(marks);
        let mut remaining: Vec<VersionMark> = marks.to_vec();
        let mut waited = false;
        loop {
            remaining = unmet(pool, &remaining).await?;
            if remaining.is_empty() {
                return Ok(());
            }
            if !waited {
                waited = true;
                metrics::counter!("read_consistency_waits_total").increment(1);
            }
            tokio::select! {
                () = reg.notify.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    metrics::counter!("read_consistency_timeouts_total").increment(1);
                    return Err(WaitError::Timeout);
                }
            }
        }
    }
}

/// The marks the views do not reflect yet.
async fn unmet(pool: &PgPool, marks: &[VersionMark]) -> Result<Vec<VersionMark>, StoreError> {
    let mut conn = pool.get().await?;
    let mut out = Vec::new();
    for (aggregate, table) in [
        (AggregateType::Product, "rv_products"),
        (AggregateType::Order, "rv_orders"),
    ] {
        let ids: Vec<Uuid> = marks
            .iter()
            .filter(|m| m.aggregate == aggregate)
            .map(|m| m.id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let have: HashMap<Uuid, i64> = views::versions(&mut conn, table, &ids).await?.into_iter().collect();
        out.extend(
            marks
                .iter()
                .filter(|m| m.aggregate == aggregate && have.get(&m.id).is_none_or(|v| *v < m.version))
                .copied(),
        );
    }
    Ok(out)
}

/// Applies one announcement to the hub and the in-process cache.
pub fn dispatch(hub: &Hub, cache: &Cache, a: Announcement) {
    match a {
        Announcement::Applied { aggregate, id, version } => {
            cache.invalidate_local(aggregate, id, version);
            hub.announce(aggregate, id, version);
        }
        Announcement::Rebuilt => {
            cache.clear_local();
            hub.wake_all();
        }
    }
}

/// LISTENs for announcements until `stop`, reconnecting with backoff (the platform's loop).
/// Whenever the connection is (re)made or lost, announcements may have been missed: the
/// in-process cache is cleared and every waiter re-checks.
pub async fn listen(url: String, hub: Hub, cache: Cache, stop: CancellationToken) {
    Listener::new(url, NOTIFY_CHANNEL)
        .run(stop, |event| match event {
            ListenEvent::Listening | ListenEvent::NotListening => {
                hub.listening
                    .store(matches!(event, ListenEvent::Listening), Ordering::Relaxed);
                cache.clear_local();
                hub.wake_all();
            }
            ListenEvent::Notification(n) => dispatch_notification(&hub, &cache, &n.payload),
        })
        .await;
}

/// Dispatches the announcements one notification carries.
fn dispatch_notification(hub: &Hub, cache: &Cache, payload: &str) {
    let mut any = false;
    for a in announcement::parse_all(payload) {
        any = true;
        dispatch(hub, cache, a);
    }
    if !any {
        tracing::debug!(%payload, "ignoring an unknown announcement");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn announcements_wake_only_satisfied_waiters() {
        let hub = Hub::new(8);
        let id = Uuid::now_v7();
        let reg = hub.register(&[VersionMark {
            aggregate: AggregateType::Order,
            id,
            version: 3,
        }]);
        hub.announce(AggregateType::Order, id, 2);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), reg.notify.notified())
                .await
                .is_err()
        );
        hub.announce(AggregateType::Order, id, 3);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), reg.notify.notified())
                .await
                .is_ok()
        );
        assert_eq!(hub.waiting(), 1);
        drop(reg);
        assert_eq!(hub.waiting(), 0);
    }

    #[tokio::test]
    async fn a_full_hub_refuses_at_once() {
        let hub = Hub::new(0);
        let pool = ordering_platform::db::pool("postgres://nobody@127.0.0.1:1/none", 1, None);
        let mark = VersionMark {
            aggregate: AggregateType::Product,
            id: Uuid::now_v7(),
            version: 1,
        };
        assert!(matches!(
            hub.wait_for(&pool, &[mark], Duration::from_secs(5)).await,
            Err(WaitError::TooManyWaiters)
        ));
    }
}
