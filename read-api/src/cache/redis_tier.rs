//! The Redis tier: one node or a cluster, every call bounded by `REDIS_TIMEOUT_MS` and
//! guarded by the shared circuit breaker, every write a compare-and-set (a Lua script) on
//! the version or the customer's revision.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use ordering_platform::breaker::{Breaker, BreakerState};

use crate::error::ErrorChain;

/// Stores a view unless the key holds one as new (the version leads the encoded entry).
const SET_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1";

/// Stores one answer in a customer's hash, unless the hash is at a newer revision; an older
/// revision empties it first.
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

/// Empties a customer's hash and stamps it with a newer revision.
const HASH_BUMP: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev'))
if cur and cur >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'rev', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1";

/// How long Redis is left alone after a failure.
const REDIS_PAUSE: Duration = Duration::from_millis(500);

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

enum Client {
    Single(ConnectionManager),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
    },
}

/// Why a Redis URL can not be used.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RedisUrlError(#[from] redis::RedisError);

/// Why the cache's keys could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("Redis failed")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected answer from Redis")]
    Answer(#[from] redis::ParsingError),
    /// The cluster described its slots in a way this client does not read.
    #[error("CLUSTER SLOTS: {0}")]
    ClusterSlots(String),
}

impl Client {
    fn open(url: &str, timeout: Duration) -> Result<Self, RedisUrlError> {
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
                    .build()?;
                Ok(Self::Cluster {
                    client: Box::new(client),
                    conn: tokio::sync::OnceCell::new(),
                })
            }
            None => {
                let client = redis::Client::open(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                // Lazy: the service starts (and serves from PostgreSQL) while Redis is down.
                Ok(Self::Single(ConnectionManager::new_lazy_with_config(client, config)?))
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

/// Redis as the cache uses it: `None`/`false` from a call means Redis was paused, failed or
/// too slow, and the caller goes on without it.
pub(super) struct RedisTier {
    client: Client,
    ttl_secs: u64,
    timeout: Duration,
    /// Opened by one failure: Redis is left alone for [`REDIS_PAUSE`], then probed.
    breaker: Breaker,
    ok: AtomicBool,
    errors: metrics::Counter,
    set_if_newer: redis::Script,
    hash_fill: redis::Script,
    hash_bump: redis::Script,
}

impl RedisTier {
    /// Redis at `url` (one node or a cluster); entries expire after `ttl`.
    pub(super) fn open(url: &str, ttl: Duration, timeout: Duration) -> Result<Self, RedisUrlError> {
        Ok(Self {
            client: Client::open(url, timeout)?,
            ttl_secs: ttl.as_secs().max(1),
            timeout,
            breaker: Breaker::new("read_cache_breaker_state", "redis", 1, REDIS_PAUSE),
            ok: AtomicBool::new(true),
            errors: metrics::counter!("read_cache_redis_errors_total"),
            set_if_newer: redis::Script::new(SET_IF_NEWER),
            hash_fill: redis::Script::new(HASH_FILL),
            hash_bump: redis::Script::new(HASH_BUMP),
        })
    }

    /// Whether Redis is used, probed or paused now.
    pub(super) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs `f` against Redis, bounded by the timeout; `None` if Redis is paused, failed or
    /// too slow (then it is paused).
    async fn run<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.breaker.allow().ok()?;
        let run = async {
            let conn = self.client.conn().await?;
            f(conn).await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                if !self.ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis answers again: cache back in use");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&ErrorChain(&e));
                None
            }
            Err(_) => {
                self.failed(&"no answer within REDIS_TIMEOUT_MS");
                None
            }
        }
    }

    fn failed(&self, why: &dyn fmt::Display) {
        self.errors.increment(1);
        self.breaker.failure();
        if self.ok.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %why, "Redis unavailable: answering from PostgreSQL");
        }
    }

    /// Pings Redis, past the breaker (for readiness): `Err` names the problem.
    pub(super) async fn ping(&self) -> Result<(), String> {
        let run = async {
            let mut conn = self.client.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(1), run).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("Redis: {e}; serving from PostgreSQL")),
            Err(_) => Err("Redis: no answer within 1 s; serving from PostgreSQL".to_owned()),
        }
    }

    /// `GET key`: `None` if Redis could not answer, `Some(None)` if the key is absent.
    pub(super) async fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await
    }

    /// Stores an encoded view at `version` unless the key holds one as new; `false` if Redis
    /// could not answer.
    pub(super) async fn set_if_newer(&self, key: &str, version: i64, value: &[u8]) -> bool {
        let script = &self.set_if_newer;
        let ttl = self.ttl_secs;
        self.run(|mut c| async move {
            script
                .key(key)
                .arg(version)
                .arg(value)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// The revision a customer's hash is stamped with and its `field`.
    pub(super) async fn hash_get(&self, key: &str, field: &str) -> Option<(Option<i64>, Option<Vec<u8>>)> {
        self.run(|mut c| async move {
            redis::cmd("HMGET")
                .arg(key)
                .arg("rev")
                .arg(field)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Stores `field` of a customer's hash computed at `revision` (see [`HASH_FILL`]).
    pub(super) async fn hash_fill(&self, key: &str, revision: i64, field: &str, body: &[u8]) {
        let script = &self.hash_fill;
        let ttl = self.ttl_secs;
        self.run(|mut c| async move {
            script
                .key(key)
                .arg(revision)
                .arg(field)
                .arg(body)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// Moves a customer's hash to `revision` (see [`HASH_BUMP`]); `false` if Redis could not
    /// answer.
    pub(super) async fn hash_bump(&self, key: &str, revision: i64) -> bool {
        let script = &self.hash_bump;
        let ttl = self.ttl_secs;
        self.run(|mut c| async move { script.key(key).arg(revision).arg(ttl).invoke_async::<i64>(&mut c).await })
            .await
            .is_some()
    }

    /// `GET key` past the breaker (tests).
    pub(super) async fn get_unguarded(&self, key: &str) -> Option<Vec<u8>> {
        let mut conn = self.client.conn().await.ok()?;
        redis::cmd("GET").arg(key).query_async(&mut conn).await.ok()?
    }

    /// Deletes every key matching `pattern`, on every primary, past the breaker. Returns how
    /// many were deleted; `Err` if Redis could not be reached.
    pub(super) async fn delete_matching(&self, pattern: &str) -> Result<u64, DropError> {
        let mut conn = self.client.conn().await?;
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
                scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
                let (next, keys): (u64, Vec<String>) = match (&mut conn, &route) {
                    (Conn::Cluster(c), Some(route)) => {
                        let v = c.route_command(scan, route.clone()).await?;
                        redis::from_redis_value(v)?
                    }
                    _ => scan.query_async(&mut conn).await?,
                };
                for k in keys {
                    let n: u64 = redis::cmd("DEL").arg(&k).query_async(&mut conn).await?;
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
}

/// One route per primary of the cluster: to the first slot of a range it serves (per
/// `CLUSTER SLOTS`, which every Redis Cluster version answers).
async fn primary_routes(conn: &mut redis::cluster_async::ClusterConnection) -> Result<Vec<RoutingInfo>, DropError> {
    let mut slots = redis::cmd("CLUSTER");
    slots.arg("SLOTS");
    let raw = conn
        .route_command(slots, RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary))
        .await?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(raw)?;
    let mut seen = std::collections::HashSet::new();
    let mut routes = Vec::new();
    for range in ranges {
        let (Some(start), Some(primary)) = (range.first(), range.get(2)) else {
            return Err(DropError::ClusterSlots("a range without a primary".to_owned()));
        };
        let start: u16 = redis::from_redis_value(start.clone())?;
        let primary: Vec<Value> = redis::from_redis_value(primary.clone())?;
        let addr: (String, u16) = match (primary.first(), primary.get(1)) {
            (Some(host), Some(port)) => (
                redis::from_redis_value(host.clone())?,
                redis::from_redis_value(port.clone())?,
            ),
            _ => return Err(DropError::ClusterSlots("a primary without an address".to_owned())),
        };
        let slot = Slot::new(start).ok_or_else(|| DropError::ClusterSlots(format!("no slot {start}")))?;
        if seen.insert(addr) {
            routes.push(RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_slot(slot, SlotAddr::Master),
            )));
        }
    }
    Ok(routes)
}
