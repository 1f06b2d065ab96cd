//! The cache of views: an in-process tier in front of Redis, both keyed by view and guarded
//! by version, with single flight on misses.
//!
//! Why each piece exists:
//! - **Version guard.** Every write into either tier is a compare-and-set on the version
//!   (a Lua script in Redis), so a slow reader filling the cache with what it read before an
//!   update can never overwrite the projector's newer entry.
//! - **In-process tier** (`local`). A request that needs a Redis round trip tops out near
//!   half of what the HTTP stack alone can serve (on a 2-core machine, about 46k against 100k
//!   requests/s); entries kept in memory are invalidated by the same notifications that drive
//!   read-your-writes, and an invalidation
//!   leaves a *floor* (the announced version), so an older entry can not be put back afterwards.
//! - **Single flight** (`views`). Concurrent misses of one key share one Redis read and at
//!   most one PostgreSQL read.
//! - **Redis is optional** (`redis_tier`, `pending`). Every call is bounded by
//!   `REDIS_TIMEOUT_MS`; a failure opens the shared circuit breaker
//!   ([`ordering_platform::breaker`]): Redis is skipped for a short pause, then one probe goes
//!   through (so a dead Redis costs nothing per request), and writes the projector could not
//!   make are retried in the background until Redis answers again, so a Redis that comes back
//!   holds nothing older than the views.
//!
//! Customer lists and summaries (`customers`) live in one Redis hash per customer, stamped
//! with the customer's revision.

mod customers;
mod entry;
mod local;
mod pending;
mod redis_tier;
mod views;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderValue;
use ordering_platform::breaker::BreakerState;
use ordering_schema::events::AggregateType;
use uuid::Uuid;

use crate::error::StoreError;
pub use entry::{Entry, etag_of_version};
pub use redis_tier::{DropError, RedisUrlError};

use local::LocalTier;
use pending::PendingWrites;
use redis_tier::RedisTier;
use views::Flight;

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The in-process tier or Redis.
    Hit,
    /// PostgreSQL.
    Miss,
}

impl Source {
    /// The `X-Cache` header value.
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        })
    }
}

/// Why a view could not be read (PostgreSQL failed; Redis failures never surface). Cloned
/// to every request that waited on the same miss, hence the `Arc`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the view")]
    Store(#[source] Arc<StoreError>),
    #[error("cache lock poisoned")]
    LockPoisoned,
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

struct Inner {
    redis: RedisTier,
    prefix: String,
    local: LocalTier,
    flights: Mutex<HashMap<String, Flight>>,
    pending: PendingWrites,
    hits_local: Tally,
    hits_redis: Tally,
    misses: Tally,
}

/// A counter exported as a metric and also kept here, for the admin page's hit ratio (the
/// `metrics` facade cannot be read back).
struct Tally {
    metric: metrics::Counter,
    count: AtomicU64,
}

impl Tally {
    fn new(metric: metrics::Counter) -> Self {
        Self {
            metric,
            count: AtomicU64::new(0),
        }
    }

    fn increment(&self) {
        self.metric.increment(1);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// What this instance's cache did since it started (the admin page).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheStats {
    pub local_hits: u64,
    pub redis_hits: u64,
    pub misses: u64,
    /// Whether Redis is used now, probed, or paused after a failure.
    pub redis: BreakerState,
}

impl CacheStats {
    /// Hits over all lookups, `None` before the first.
    pub fn hit_ratio(&self) -> Option<f64> {
        let hits = self.local_hits + self.redis_hits;
        let all = hits + self.misses;
        (all > 0).then(|| hits as f64 / all as f64)
    }
}

/// The two-tier cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// The tag of an aggregate in its views' Redis keys. Part of the key format: changing it
/// orphans every entry running caches hold.
fn key_tag(aggregate: AggregateType) -> &'static str {
    match aggregate {
        AggregateType::Product => "p",
        AggregateType::Order => "o",
    }
}

impl Cache {
    /// A cache over Redis at `url` (one node or a cluster), with keys under `prefix`.
    pub fn new(
        url: &str,
        prefix: &str,
        ttl: Duration,
        local_ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, RedisUrlError> {
        let inner = Inner {
            redis: RedisTier::open(url, ttl, timeout)?,
            prefix: prefix.to_owned(),
            local: LocalTier::new(local_ttl),
            flights: Mutex::new(HashMap::new()),
            pending: PendingWrites::default(),
            hits_local: Tally::new(metrics::counter!("read_cache_hits_total", "tier" => "local")),
            hits_redis: Tally::new(metrics::counter!("read_cache_hits_total", "tier" => "redis")),
            misses: Tally::new(metrics::counter!("read_cache_misses_total")),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The Redis key of a view.
    pub fn view_key(&self, aggregate: AggregateType, id: Uuid) -> String {
        format!("{}{}:{id}", self.inner.prefix, key_tag(aggregate))
    }

    /// The key prefix (every key this cache writes starts with it).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Pings Redis (for readiness): `Err` names the problem.
    pub async fn ping(&self) -> Result<(), String> {
        self.inner.redis.ping().await
    }

    /// Hits, misses and Redis's state since this cache was made.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            local_hits: self.inner.hits_local.get(),
            redis_hits: self.inner.hits_redis.get(),
            misses: self.inner.misses.get(),
            redis: self.inner.redis.breaker_state(),
        }
    }

    /// Forgets the whole in-process tier (after a rebuild, or when notifications may have
    /// been missed).
    pub fn clear_local(&self) {
        self.inner.local.clear();
    }

    /// Deletes every key under the prefix (after a rebuild replaced the views they cached).
    /// Returns how many were deleted; `Err` if Redis could not be reached.
    pub async fn drop_all(&self) -> Result<u64, DropError> {
        self.clear_local();
        self.inner
            .redis
            .delete_matching(&format!("{}*", self.inner.prefix))
            .await
    }
}
