//! The cache of views: an in-process tier in front of Redis, both keyed by view and guarded
//! by version, with single flight on misses.
//!
//! Why each piece exists:
//! - **Version guard.** Every write into either tier is a compare-and-set on the version
//!   (a Lua script in Redis), so a slow reader filling the cache with what it read before an
//!   update can never overwrite the projector's newer entry.
//! - **In-process tier.** A request that needs a Redis round trip tops out near half of what
//!   the HTTP stack alone can serve (LIMITS.md); entries kept in memory are invalidated by the
//!   same notifications that drive read-your-writes, and an invalidation leaves a *floor*
//!   (the announced version), so an older entry can not be put back afterwards.
//! - **Single flight.** Concurrent misses of one key share one Redis read and at most one
//!   PostgreSQL read.
//! - **Redis is optional.** Every call is bounded by `REDIS_TIMEOUT_MS`; a failure opens the
//!   shared circuit breaker ([`ordering_platform::breaker`]): Redis is skipped for a short pause,
//!   then one probe goes through (so a dead Redis costs nothing per request), and writes the
//!   projector could not make are retried in the background until Redis answers again, so a
//!   Redis that comes back holds nothing older than the views.
//!
//! Customer lists and summaries live in one Redis hash per customer, stamped with the
//! customer's revision (bumped by every order event of theirs in the same statement as the
//! view change): a fill for an older revision is refused and a newer revision empties the hash.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use uuid::Uuid;

use ordering_platform::breaker::Breaker;

use crate::views::StoredView;

/// The kinds of single views cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Product,
    Order,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Self::Product => "p",
            Self::Order => "o",
        }
    }
}

/// A cached view, ready to send.
#[derive(Clone, Debug)]
pub struct Entry {
    pub version: i64,
    /// The customer an order belongs to.
    pub owner: Option<Uuid>,
    pub body: Bytes,
    /// `"<version>"`.
    pub etag: HeaderValue,
}

impl Entry {
    /// The entry of a view read from PostgreSQL.
    pub fn from_view(v: StoredView) -> Self {
        Self {
            version: v.version,
            owner: v.owner,
            body: Bytes::from(v.doc),
            etag: etag_of_version(v.version),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let owner = self.owner.map(|o| o.to_string()).unwrap_or_default();
        let mut out = format!("{}|{}|", self.version, owner).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let mut parts = raw.splitn(3, |b| *b == b'|');
        let version: i64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let owner = parts.next()?;
        let owner = if owner.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(std::str::from_utf8(owner).ok()?).ok()?)
        };
        let body = Bytes::copy_from_slice(parts.next()?);
        Some(Self {
            version,
            owner,
            body,
            etag: etag_of_version(version),
        })
    }
}

/// `"<version>"` as a header value.
pub fn etag_of_version(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

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

/// Why a view could not be read (PostgreSQL failed; Redis failures never surface).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub Arc<str>);

type Flight = Shared<BoxFuture<'static, Result<(Option<Entry>, Source), LoadError>>>;

const SET_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1";

const HASH_FILL: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev'))
local rev = tonumber(ARGV[1])
if cur and cur > rev then return 0 end
if (not cur) or cur < rev then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'rev', ARGV[1])
end
if redis.call('HLEN', KEYS[1]) > 256 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1";

const HASH_BUMP: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev'))
if cur and cur >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'rev', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1";

/// A connection to one Redis node or to a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

enum Redis {
    Single(ConnectionManager),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
    },
}

/// Why a Redis URL can not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedisUrlError(String);

impl Redis {
    fn open(url: &str, timeout: Duration) -> Result<Self, RedisUrlError> {
        let bad = |e: redis::RedisError| RedisUrlError(e.to_string());
        let cluster_nodes: Option<Vec<String>> = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            Some(rest.split(',').map(|n| format!("redis://{}", n.trim())).collect())
        } else if url.contains(',') {
            Some(url.split(',').map(|n| n.trim().to_owned()).collect())
        } else {
            None
        };
        match cluster_nodes {
            Some(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(timeout.max(Duration::from_millis(200)))
                    .response_timeout(timeout)
                    .build()
                    .map_err(bad)?;
                Ok(Self::Cluster {
                    client: Box::new(client),
                    conn: tokio::sync::OnceCell::new(),
                })
            }
            None => {
                let client = redis::Client::open(url).map_err(bad)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                // Lazy: the service starts (and serves from PostgreSQL) while Redis is down.
                Ok(Self::Single(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?,
                ))
            }
        }
    }

    async fn conn(&self) -> redis::RedisResult<Conn> {
        match self {
            Self::Single(m) => Ok(Conn::Single(m.clone())),
            Self::Cluster { client, conn } => {
                let c = conn.get_or_try_init(|| client.get_async_connection()).await?;
                Ok(Conn::Cluster(c.clone()))
            }
        }
    }
}

/// A write the projector could not make in Redis, retried until Redis answers.
#[derive(Clone, Debug)]
enum Pending {
    SetView { key: String, version: i64, value: Vec<u8> },
    Bump { key: String, revision: i64 },
}

struct LocalSlot {
    entry: Option<Entry>,
    /// No entry older than this may be stored (set by invalidations).
    floor: i64,
    expires: Instant,
}

/// One shard of the in-process tier.
struct Shard {
    slots: HashMap<(Kind, Uuid), LocalSlot>,
    /// When the shard was last emptied (floors included): a fill whose read started before
    /// that may be older than a floor it can no longer see, so it is not stored.
    cleared: Instant,
}

const SHARDS: usize = 32;
const SHARD_CAPACITY: usize = 8192;

struct Inner {
    redis: Redis,
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
    local_ttl: Duration,
    /// Opened by one failure: Redis is left alone for [`REDIS_PAUSE`], then probed.
    breaker: Breaker,
    redis_ok: AtomicBool,
    local: Vec<Mutex<Shard>>,
    flights: Mutex<HashMap<String, Flight>>,
    pending: Mutex<Vec<Pending>>,
    set_if_newer: redis::Script,
    hash_fill: redis::Script,
    hash_bump: redis::Script,
    hits_local: metrics::Counter,
    hits_redis: metrics::Counter,
    misses: metrics::Counter,
    redis_errors: metrics::Counter,
}

/// The two-tier cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// How long Redis is left alone after a failure.
const REDIS_PAUSE: Duration = Duration::from_millis(500);
/// Pending writes kept at most while Redis is down (older ones expire by TTL anyway).
const MAX_PENDING: usize = 100_000;

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
            redis: Redis::open(url, timeout)?,
            prefix: prefix.to_owned(),
            ttl_secs: ttl.as_secs().max(1),
            timeout,
            local_ttl,
            breaker: Breaker::new("read_cache_breaker_state", "redis", 1, REDIS_PAUSE),
            redis_ok: AtomicBool::new(true),
            local: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        slots: HashMap::new(),
                        cleared: Instant::now(),
                    })
                })
                .collect(),
            flights: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            set_if_newer: redis::Script::new(SET_IF_NEWER),
            hash_fill: redis::Script::new(HASH_FILL),
            hash_bump: redis::Script::new(HASH_BUMP),
            hits_local: metrics::counter!("read_cache_hits_total", "tier" => "local"),
            hits_redis: metrics::counter!("read_cache_hits_total", "tier" => "redis"),
            misses: metrics::counter!("read_cache_misses_total"),
            redis_errors: metrics::counter!("read_cache_redis_errors_total"),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The Redis key of a view.
    pub fn view_key(&self, kind: Kind, id: Uuid) -> String {
        format!("{}{}:{id}", self.inner.prefix, kind.tag())
    }

    /// The Redis key of a customer's lists and summary.
    pub fn customer_key(&self, customer: Uuid) -> String {
        format!("{}c:{customer}", self.inner.prefix)
    }

    /// The key prefix (every key this cache writes starts with it).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    // ---- Redis plumbing -------------------------------------------------------------

    /// Runs `f` against Redis, bounded by the timeout; `None` if Redis is paused, failed or
    /// too slow (then it is paused).
    async fn with_redis<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.inner.breaker.allow().ok()?;
        let run = async {
            let conn = self.inner.redis.conn().await?;
            f(conn).await
        };
        match tokio::time::timeout(self.inner.timeout, run).await {
            Ok(Ok(v)) => {
                self.inner.breaker.success();
                if !self.inner.redis_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis answers again: cache back in use");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.redis_failed(&e.to_string());
                None
            }
            Err(_) => {
                self.redis_failed("no answer within REDIS_TIMEOUT_MS");
                None
            }
        }
    }

    fn redis_failed(&self, why: &str) {
        self.inner.redis_errors.increment(1);
        self.inner.breaker.failure();
        if self.inner.redis_ok.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = why, "Redis unavailable: answering from PostgreSQL");
        }
    }

    /// Pings Redis (for readiness): `Err` names the problem.
    pub async fn ping(&self) -> Result<(), String> {
        let run = async {
            let mut conn = self.inner.redis.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(1), run).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("Redis: {e}; serving from PostgreSQL")),
            Err(_) => Err("Redis: no answer within 1 s; serving from PostgreSQL".to_owned()),
        }
    }

    // ---- the in-process tier ------------------------------------------------------------

    fn shard(&self, kind: Kind, id: Uuid) -> &Mutex<Shard> {
        let h = id.as_u128() as usize ^ (kind as usize);
        &self.inner.local[h % SHARDS]
    }

    fn local_get(&self, kind: Kind, id: Uuid) -> (Option<Entry>, i64) {
        let Ok(shard) = self.shard(kind, id).lock() else {
            return (None, 0);
        };
        match shard.slots.get(&(kind, id)) {
            Some(slot) if slot.expires > Instant::now() => (slot.entry.clone(), slot.floor),
            _ => (None, 0),
        }
    }

    /// Makes room in a full shard before `key` is added: expired slots go first (their
    /// floors no longer count), then all.
    fn make_room(shard: &mut Shard, key: (Kind, Uuid), now: Instant) {
        if shard.slots.len() >= SHARD_CAPACITY && !shard.slots.contains_key(&key) {
            shard.slots.retain(|_, s| s.expires > now);
            if shard.slots.len() >= SHARD_CAPACITY {
                shard.slots.clear();
                shard.cleared = now;
            }
        }
    }

    /// Stores `entry`, read at or after `read_since`, unless an entry as new or a floor above
    /// it is there, or the shard was emptied since.
    fn local_put(&self, kind: Kind, id: Uuid, entry: &Entry, read_since: Instant) {
        let Ok(mut shard) = self.shard(kind, id).lock() else {
            return;
        };
        if read_since < shard.cleared {
            return;
        }
        let now = Instant::now();
        Self::make_room(&mut shard, (kind, id), now);
        let expires = now + self.inner.local_ttl;
        match shard.slots.get_mut(&(kind, id)) {
            Some(slot) if slot.expires > now => {
                let newer = slot.entry.as_ref().is_none_or(|e| e.version < entry.version);
                if entry.version >= slot.floor && newer {
                    slot.entry = Some(entry.clone());
                    slot.floor = entry.version;
                    slot.expires = expires;
                }
            }
            _ => {
                shard.slots.insert(
                    (kind, id),
                    LocalSlot {
                        entry: Some(entry.clone()),
                        floor: entry.version,
                        expires,
                    },
                );
            }
        }
    }

    /// A change to `version` was announced: drop older in-process entries and refuse to store
    /// them again.
    pub fn invalidate_local(&self, kind: Kind, id: Uuid, version: i64) {
        let Ok(mut shard) = self.shard(kind, id).lock() else {
            return;
        };
        let now = Instant::now();
        // Bounded like the entries: a floor dropped with a full shard is covered by the
        // shard's `cleared` time (fills that read before it are refused).
        Self::make_room(&mut shard, (kind, id), now);
        let expires = now + self.inner.local_ttl;
        let slot = shard.slots.entry((kind, id)).or_insert(LocalSlot {
            entry: None,
            floor: 0,
            expires,
        });
        if slot.entry.as_ref().is_some_and(|e| e.version < version) {
            slot.entry = None;
        }
        if slot.floor < version {
            slot.floor = version;
        }
        slot.expires = expires;
    }

    /// Forgets the whole in-process tier (after a rebuild, or when notifications may have
    /// been missed).
    pub fn clear_local(&self) {
        for shard in &self.inner.local {
            if let Ok(mut s) = shard.lock() {
                s.slots.clear();
                s.cleared = Instant::now();
            }
        }
    }

    // ---- single views -----------------------------------------------------------------

    /// The view `kind`/`id` at `min_version` or later: from the in-process tier, Redis, or
    /// `load` (PostgreSQL), filling the tiers on the way back. `Ok((None, _))`: no such view.
    pub async fn view<L, Fut>(
        &self,
        kind: Kind,
        id: Uuid,
        min_version: i64,
        load: L,
    ) -> Result<(Option<Entry>, Source), LoadError>
    where
        L: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Option<StoredView>, LoadError>> + Send + 'static,
    {
        let (local, floor) = self.local_get(kind, id);
        if let Some(e) = local
            && e.version >= min_version
        {
            self.inner.hits_local.increment(1);
            return Ok((Some(e), Source::Hit));
        }
        // Boxed: the hot path above keeps the caller's future small.
        Box::pin(self.view_from_tiers(kind, id, min_version, floor, load)).await
    }

    /// [`Self::view`] past the in-process tier: Redis, then PostgreSQL, single flight.
    async fn view_from_tiers<L, Fut>(
        &self,
        kind: Kind,
        id: Uuid,
        min_version: i64,
        floor: i64,
        load: L,
    ) -> Result<(Option<Entry>, Source), LoadError>
    where
        L: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Option<StoredView>, LoadError>> + Send + 'static,
    {
        let key = self.view_key(kind, id);
        let need = min_version.max(floor);
        let flight = {
            let Ok(mut flights) = self.inner.flights.lock() else {
                return Err(LoadError("cache lock poisoned".into()));
            };
            match flights.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let me = self.clone();
                    let k = key.clone();
                    let load = load.clone();
                    let f = async move {
                        let out = me.fetch(kind, id, &k, need, load).await;
                        if let Ok(mut flights) = me.inner.flights.lock() {
                            flights.remove(&k);
                        }
                        out
                    }
                    .boxed()
                    .shared();
                    flights.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let out = flight.await?;
        match &out.0 {
            // A flight started for a lower requirement may bring an older version than this
            // request needs: read PostgreSQL directly then.
            Some(e) if e.version < min_version => self.fetch(kind, id, &key, min_version, load).await,
            _ => Ok(out),
        }
    }

    async fn fetch<L, Fut>(
        &self,
        kind: Kind,
        id: Uuid,
        key: &str,
        need: i64,
        load: L,
    ) -> Result<(Option<Entry>, Source), LoadError>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<StoredView>, LoadError>>,
    {
        let since = Instant::now();
        let raw: Option<Option<Vec<u8>>> = self
            .with_redis(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await;
        if let Some(Some(raw)) = raw
            && let Some(e) = Entry::decode(&raw)
            && e.version >= need
        {
            self.inner.hits_redis.increment(1);
            self.local_put(kind, id, &e, since);
            return Ok((Some(e), Source::Hit));
        }
        self.inner.misses.increment(1);
        let Some(view) = load().await? else {
            return Ok((None, Source::Miss));
        };
        let entry = Entry::from_view(view);
        self.local_put(kind, id, &entry, since);
        self.redis_set_view(key, &entry).await;
        Ok((Some(entry), Source::Miss))
    }

    async fn redis_set_view(&self, key: &str, entry: &Entry) -> bool {
        let value = entry.encode();
        let script = &self.inner.set_if_newer;
        let ttl = self.inner.ttl_secs;
        self.with_redis(|mut c| async move {
            script
                .key(key)
                .arg(entry.version)
                .arg(value)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// The projector committed `view` of `kind`/`id`: store it in both tiers (never over a
    /// newer one). A Redis failure is remembered and retried.
    pub async fn publish_view(&self, kind: Kind, id: Uuid, view: StoredView) {
        let entry = Entry::from_view(view);
        self.local_put(kind, id, &entry, Instant::now());
        let key = self.view_key(kind, id);
        if !self.redis_set_view(&key, &entry).await {
            self.remember(Pending::SetView {
                key,
                version: entry.version,
                value: entry.encode(),
            });
        }
    }

    /// [`Self::publish_view`] for many views at once: the Redis writes are all in flight
    /// together (one round trip's wait, not one per view).
    pub async fn publish_views(&self, views: Vec<(Kind, Uuid, StoredView)>) {
        let writes = views
            .into_iter()
            .map(|(kind, id, view)| self.publish_view(kind, id, view));
        futures::future::join_all(writes).await;
    }

    // ---- customer lists and summary -----------------------------------------------------

    /// The customer's cached answer `field` (a list query or `summary`), as of the revision the
    /// hash is stamped with.
    pub async fn customer_get(&self, customer: Uuid, field: &str) -> Option<(i64, Bytes)> {
        let key = self.customer_key(customer);
        let got: Option<(Option<i64>, Option<Vec<u8>>)> = self
            .with_redis(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("rev")
                    .arg(field)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match got {
            Some((Some(rev), Some(body))) => {
                self.inner.hits_redis.increment(1);
                Some((rev, Bytes::from(body)))
            }
            _ => {
                self.inner.misses.increment(1);
                None
            }
        }
    }

    /// Stores the customer's answer `field` computed at `revision` (refused if the hash is at
    /// a newer revision).
    pub async fn customer_fill(&self, customer: Uuid, revision: i64, field: &str, body: &[u8]) {
        let key = self.customer_key(customer);
        let script = &self.inner.hash_fill;
        let ttl = self.inner.ttl_secs;
        self.with_redis(|mut c| async move {
            script
                .key(&key)
                .arg(revision)
                .arg(field)
                .arg(body)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// The projector committed an order event of `customer`, who is now at `revision`.
    pub async fn publish_customer(&self, customer: Uuid, revision: i64) {
        let key = self.customer_key(customer);
        if !self.bump(&key, revision).await {
            self.remember(Pending::Bump { key, revision });
        }
    }

    /// [`Self::publish_customer`] for many customers at once, all in flight together.
    pub async fn publish_customers(&self, customers: Vec<(Uuid, i64)>) {
        let writes = customers
            .into_iter()
            .map(|(customer, revision)| self.publish_customer(customer, revision));
        futures::future::join_all(writes).await;
    }

    async fn bump(&self, key: &str, revision: i64) -> bool {
        let script = &self.inner.hash_bump;
        let ttl = self.inner.ttl_secs;
        self.with_redis(|mut c| async move { script.key(key).arg(revision).arg(ttl).invoke_async::<i64>(&mut c).await })
            .await
            .is_some()
    }

    // ---- retries and maintenance ----------------------------------------------------------

    fn remember(&self, op: Pending) {
        if let Ok(mut p) = self.inner.pending.lock() {
            if p.len() < MAX_PENDING {
                p.push(op);
            } else {
                tracing::warn!("too many cache writes waiting for Redis; relying on TTLs");
            }
        }
    }

    /// Writes waiting for Redis.
    pub fn pending_writes(&self) -> usize {
        self.inner.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Retries the remembered writes every 250 ms, for as long as the service runs.
    pub async fn retry_pending(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let ops: Vec<Pending> = match self.inner.pending.lock() {
                Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
                _ => continue,
            };
            let mut left = Vec::new();
            for op in ops {
                let done = match &op {
                    Pending::SetView { key, version, value } => {
                        let script = &self.inner.set_if_newer;
                        let ttl = self.inner.ttl_secs;
                        self.with_redis(|mut c| async move {
                            script
                                .key(key)
                                .arg(*version)
                                .arg(value.as_slice())
                                .arg(ttl)
                                .invoke_async::<i64>(&mut c)
                                .await
                        })
                        .await
                        .is_some()
                    }
                    Pending::Bump { key, revision } => self.bump(key, *revision).await,
                };
                if !done {
                    left.push(op);
                }
            }
            if !left.is_empty()
                && let Ok(mut p) = self.inner.pending.lock()
            {
                left.append(&mut p);
                *p = left;
            }
        }
    }

    /// Deletes every key under the prefix (after a rebuild replaced the views they cached).
    /// Returns how many were deleted; `Err` if Redis could not be reached.
    pub async fn drop_all(&self) -> Result<u64, String> {
        self.clear_local();
        let pattern = format!("{}*", self.inner.prefix);
        let mut conn = self.inner.redis.conn().await.map_err(|e| e.to_string())?;
        // SCAN walks the keyspace of one node only, and a cluster client sends a keyless
        // command to any node (each call possibly another, where the cursor means nothing):
        // left to it, a rebuild would drop one node's keys while the others go on serving
        // views of the replaced tables until their TTL. So each primary is scanned on its own,
        // reached through a slot it serves.
        let routes: Vec<Option<RoutingInfo>> = match &mut conn {
            Conn::Single(_) => vec![None],
            Conn::Cluster(c) => primary_routes(c).await?.into_iter().map(Some).collect(),
        };
        let mut deleted = 0u64;
        for route in routes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
                let (next, keys): (u64, Vec<String>) = match (&mut conn, &route) {
                    (Conn::Cluster(c), Some(route)) => {
                        let v = c.route_command(scan, route.clone()).await.map_err(|e| e.to_string())?;
                        redis::from_redis_value(v).map_err(|e| e.to_string())?
                    }
                    _ => scan.query_async(&mut conn).await.map_err(|e| e.to_string())?,
                };
                for k in keys {
                    let n: u64 = redis::cmd("DEL")
                        .arg(&k)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    deleted += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }

    /// The raw Redis value of a view key (tests).
    pub async fn raw_view(&self, kind: Kind, id: Uuid) -> Option<(i64, Bytes)> {
        let key = self.view_key(kind, id);
        let mut conn = self.inner.redis.conn().await.ok()?;
        let raw: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.ok()?;
        raw.and_then(|r| Entry::decode(&r)).map(|e| (e.version, e.body))
    }
}

/// One route per primary of the cluster: to the first slot of a range it serves (per
/// `CLUSTER SLOTS`, which every Redis Cluster version answers).
async fn primary_routes(conn: &mut redis::cluster_async::ClusterConnection) -> Result<Vec<RoutingInfo>, String> {
    let mut slots = redis::cmd("CLUSTER");
    slots.arg("SLOTS");
    let raw = conn
        .route_command(slots, RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary))
        .await
        .map_err(|e| e.to_string())?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(raw).map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    let mut routes = Vec::new();
    for range in ranges {
        let (Some(start), Some(primary)) = (range.first(), range.get(2)) else {
            return Err("CLUSTER SLOTS: a range without a primary".to_owned());
        };
        let start: u16 = redis::from_redis_value(start.clone()).map_err(|e| e.to_string())?;
        let primary: Vec<Value> = redis::from_redis_value(primary.clone()).map_err(|e| e.to_string())?;
        let addr: (String, u16) = match (primary.first(), primary.get(1)) {
            (Some(host), Some(port)) => (
                redis::from_redis_value(host.clone()).map_err(|e| e.to_string())?,
                redis::from_redis_value(port.clone()).map_err(|e| e.to_string())?,
            ),
            _ => return Err("CLUSTER SLOTS: a primary without an address".to_owned()),
        };
        let slot = Slot::new(start).ok_or_else(|| format!("CLUSTER SLOTS: no slot {start}"))?;
        if seen.insert(addr) {
            routes.push(RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_slot(slot, SlotAddr::Master),
            )));
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let owner = Uuid::now_v7();
        let e = Entry {
            version: 7,
            owner: Some(owner),
            body: Bytes::from_static(b"{\"a\":\"x|y\"}"),
            etag: etag_of_version(7),
        };
        let d = Entry::decode(&e.encode()).unwrap();
        assert_eq!((d.version, d.owner, d.body.clone()), (7, Some(owner), e.body.clone()));
        assert_eq!(d.etag, "\"7\"");
        let anon = Entry { owner: None, ..e };
        assert_eq!(Entry::decode(&anon.encode()).unwrap().owner, None);
        assert!(Entry::decode(b"garbage").is_none());
    }
}
