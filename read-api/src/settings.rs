//! The read-api's settings, read once from the environment at start.

use std::time::Duration;

use ordering_platform::amqp::AmqpNodes;
use ordering_platform::auth::Authenticator;
use ordering_platform::cli::Setting;
use ordering_platform::http::layers::HttpLimits;
use ordering_platform::settings::{self, SettingError};
use ordering_schema::consistency::ConsistencyKey;

/// `PROJECTOR_PREFETCH` when unset (a worker applies what it has in hand as one batch: a
/// wider window means bigger batches; 1024 drained a backlog ~15% faster than 512).
pub const DEFAULT_PREFETCH: u16 = 1024;
/// `GAP_TIMEOUT` when unset: far longer than two instances take to apply one another's
/// predecessors, short enough that a stranded event is noticed.
pub const DEFAULT_GAP_TIMEOUT: Duration = Duration::from_secs(60);
/// `CONSISTENCY_MAX_WAITERS` when unset: half the default request limit, so requests waiting
/// for the views leave the other half to everything else.
pub const DEFAULT_MAX_WAITERS: usize = 512;
/// `PROJECTOR_WORKERS` when unset.
pub const DEFAULT_WORKERS: usize = 8;

/// Everything the read-api can be told. Each field names the variable that sets it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `READ_DATABASE_URL` (default: `DATABASE_URL`): where the views live.
    pub database_url: String,
    /// `READ_POOL_SIZE`: PostgreSQL connections for requests and the projector.
    pub pool_size: usize,
    /// `AMQP_URL`: the broker's node, or a cluster's nodes separated by commas.
    pub amqp_url: AmqpNodes,
    /// `AMQP_REPLICATION_FACTOR`: nodes holding the projector's queue and its dead letters.
    pub replication_factor: u32,
    /// `REDIS_URL`: `redis://host:port/db` for one node; `redis+cluster://h1:p1,h2:p2` (or a
    /// comma-separated list of `redis://` URLs) for a Redis Cluster.
    pub redis_url: String,
    /// `REDIS_KEY_PREFIX`: prepended to every cache key.
    pub redis_key_prefix: String,
    /// `REDIS_TIMEOUT_MS`: the longest any one Redis call may take before the request goes
    /// to PostgreSQL instead.
    pub redis_timeout: Duration,
    /// `CACHE_TTL`: lifetime of a Redis entry.
    pub cache_ttl: Duration,
    /// `LOCAL_CACHE_TTL`: lifetime of an entry of the in-process tier (it is also invalidated
    /// by notifications; the TTL only bounds staleness if a notification is ever lost).
    pub local_cache_ttl: Duration,
    /// `READ_API_ADDR`: where HTTP is served.
    pub addr: std::net::SocketAddr,
    /// `JWT_SECRET` / `AUTH`.
    pub auth: Authenticator,
    /// `CURSOR_SECRET` (default: `JWT_SECRET`): signs list cursors.
    pub cursor_secret: Vec<u8>,
    /// `CONSISTENCY_WAIT_MS`: how long a request with `X-Consistency-Token` may wait.
    pub consistency_wait: Duration,
    /// `CONSISTENCY_SECRET` (default: `JWT_SECRET`): verifies consistency tokens; the same as
    /// the write-api's.
    pub consistency_key: ConsistencyKey,
    /// `CONSISTENCY_MAX_WAITERS`: requests that may wait for the views at once (more are
    /// answered 503 `too_many_waiters` at once); less than the request limit.
    pub max_waiters: usize,
    /// `EVENTS_EXCHANGE`: the topic exchange the relay publishes to.
    pub exchange: String,
    /// `PROJECTOR_QUEUE`: the projector's own durable quorum queue.
    pub queue: String,
    /// `EVENT_LOG_STREAM` (default `<exchange>.log`): the stream `rebuild` replays.
    pub stream: String,
    /// `PROJECTOR_PREFETCH`: unacknowledged deliveries at most.
    pub prefetch: u16,
    /// `PROJECTOR_WORKERS`: aggregates applied in parallel.
    pub workers: usize,
    /// `GAP_TIMEOUT`: how long events parked behind a missing predecessor wait for it before
    /// the gap is reported and they go to the dead-letter queue.
    pub gap_timeout: Duration,
    /// `PROJECTOR=off` serves HTTP without consuming (for extra read replicas).
    pub projector: bool,
    /// Request timeout and concurrency limit.
    pub limits: HttpLimits,
    /// `JWT_SECRET` (with `JWT_AUDIENCE`, `JWT_ISSUER`): signs in to the admin page `/admin`;
    /// `None` (no secret) turns the page off.
    pub admin: Option<ordering_platform::http::admin::AdminGate>,
}

impl Settings {
    /// Reads every setting; the first bad one is returned, naming itself.
    pub fn from_env() -> Result<Self, SettingError> {
        let database_url = database_url()?;
        let auth = Authenticator::from_env()?;
        let cursor_secret = settings::raw("CURSOR_SECRET")
            .or_else(|| settings::raw("JWT_SECRET"))
            .map(String::into_bytes)
            // With AUTH=off and no secret, a per-process key: cursors then only work against
            // the instance that issued them, which is fine for a local demo.
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_bytes().to_vec());
        let exchange = settings::string("EVENTS_EXCHANGE", ordering_schema::events::DEFAULT_EXCHANGE);
        let stream = settings::string("EVENT_LOG_STREAM", &format!("{exchange}.log"));
        let queue = projector_queue();
        for (name, v) in [
            ("EVENTS_EXCHANGE", &exchange),
            ("EVENT_LOG_STREAM", &stream),
            ("PROJECTOR_QUEUE", &queue),
        ] {
            if v.len() > 200 {
                return Err(SettingError::new(name, "must be at most 200 bytes"));
            }
        }
        let redis_url = settings::string("REDIS_URL", "redis://127.0.0.1:6379/0");
        if !(redis_url.starts_with("redis://")
            || redis_url.starts_with("rediss://")
            || redis_url.starts_with("redis+cluster://"))
        {
            return Err(SettingError::new(
                "REDIS_URL",
                "must start with redis://, rediss:// or redis+cluster://",
            ));
        }
        let workers: usize = settings::parsed("PROJECTOR_WORKERS", DEFAULT_WORKERS)?;
        if workers == 0 || workers > 256 {
            return Err(SettingError::new("PROJECTOR_WORKERS", "must be 1 to 256"));
        }
        let prefetch: u16 = settings::parsed("PROJECTOR_PREFETCH", DEFAULT_PREFETCH)?;
        if prefetch == 0 {
            return Err(SettingError::new("PROJECTOR_PREFETCH", "must be at least 1"));
        }
        let limits = HttpLimits::default();
        let max_waiters: usize = settings::parsed("CONSISTENCY_MAX_WAITERS", DEFAULT_MAX_WAITERS)?;
        if max_waiters == 0 || max_waiters >= limits.max_concurrent_requests {
            return Err(SettingError::new(
                "CONSISTENCY_MAX_WAITERS",
                format!("must be 1 to {}", limits.max_concurrent_requests - 1),
            ));
        }
        let consistency_key = ConsistencyKey::from_settings(
            settings::raw("CONSISTENCY_SECRET").as_deref(),
            settings::raw("JWT_SECRET").as_deref(),
        )
        .map_err(|e| SettingError::new("CONSISTENCY_SECRET", e))?;
        let projector = match settings::string("PROJECTOR", "on").as_str() {
            "on" => true,
            "off" => false,
            other => return Err(SettingError::new("PROJECTOR", format!("{other:?} is not on or off"))),
        };
        Ok(Self {
            database_url,
            pool_size: settings::parsed("READ_POOL_SIZE", 16)?,
            amqp_url: amqp_url()?,
            replication_factor: ordering_platform::amqp::replication_factor()?,
            redis_url,
            redis_key_prefix: settings::string("REDIS_KEY_PREFIX", "ordering:read:"),
            redis_timeout: Duration::from_millis(settings::parsed("REDIS_TIMEOUT_MS", 100)?),
            cache_ttl: settings::duration("CACHE_TTL", Duration::from_secs(600))?,
            local_cache_ttl: settings::duration("LOCAL_CACHE_TTL", Duration::from_secs(5))?,
            addr: settings::socket_addr("READ_API_ADDR", "127.0.0.1:8081")?,
            auth,
            cursor_secret,
            consistency_wait: Duration::from_millis(settings::parsed("CONSISTENCY_WAIT_MS", 3000)?),
            consistency_key,
            max_waiters,
            exchange,
            queue,
            stream,
            prefetch,
            workers,
            gap_timeout: settings::duration("GAP_TIMEOUT", DEFAULT_GAP_TIMEOUT)?,
            projector,
            limits,
            admin: ordering_platform::http::admin::AdminGate::from_env()?,
        })
    }
}

/// The read-api's own settings as `--help` lists them (read above in [`Settings::from_env`]).
pub const HELP: &[Setting] = &[
    Setting {
        name: "READ_API_ADDR",
        default: "127.0.0.1:8081",
        about: "where it listens",
    },
    Setting {
        name: "READ_DATABASE_URL",
        default: "= DATABASE_URL",
        about: "where the views live",
    },
    Setting {
        name: "READ_POOL_SIZE",
        default: "16",
        about: "database connections",
    },
    Setting {
        name: "REDIS_URL",
        default: "redis://127.0.0.1:6379/0",
        about: "Redis; redis+cluster://h1:p1,h2:p2 for a cluster",
    },
    Setting {
        name: "REDIS_KEY_PREFIX",
        default: "ordering:read:",
        about: "prefix of every cache key",
    },
    Setting {
        name: "REDIS_TIMEOUT_MS",
        default: "100",
        about: "bound on every Redis call (past it, PostgreSQL answers)",
    },
    Setting {
        name: "CACHE_TTL",
        default: "10m",
        about: "lifetime of a Redis entry",
    },
    Setting {
        name: "LOCAL_CACHE_TTL",
        default: "5s",
        about: "lifetime of an in-process entry",
    },
    Setting {
        name: "CURSOR_SECRET",
        default: "= JWT_SECRET",
        about: "signs list cursors",
    },
    Setting {
        name: "CONSISTENCY_WAIT_MS",
        default: "3000",
        about: "longest wait for an X-Consistency-Token",
    },
    Setting {
        name: "CONSISTENCY_MAX_WAITERS",
        default: "512",
        about: "requests that may wait for the views at once (1 to 1023)",
    },
    Setting {
        name: "EVENTS_EXCHANGE",
        default: "ordering.events",
        about: "the exchange the projector consumes",
    },
    Setting {
        name: "PROJECTOR_QUEUE",
        default: "read-api.projector",
        about: "the projector's quorum queue (dead letters: <queue>.dead)",
    },
    Setting {
        name: "EVENT_LOG_STREAM",
        default: "<exchange>.log",
        about: "the stream rebuild replays",
    },
    Setting {
        name: "PROJECTOR",
        default: "on",
        about: "off serves queries only",
    },
    Setting {
        name: "PROJECTOR_WORKERS",
        default: "8",
        about: "aggregates applied in parallel",
    },
    Setting {
        name: "PROJECTOR_PREFETCH",
        default: "1024",
        about: "unacknowledged deliveries at most",
    },
    Setting {
        name: "GAP_TIMEOUT",
        default: "60s",
        about: "how long events parked behind a missing predecessor wait",
    },
];

/// `READ_DATABASE_URL` (or `DATABASE_URL`) alone: what `read-api migrate` needs, so migrating
/// asks for no secret.
pub fn database_url() -> Result<String, SettingError> {
    let database_default = settings::url(
        "DATABASE_URL",
        "postgres://root@127.0.0.1:5432/ordering",
        &["postgres://", "postgresql://"],
    )?;
    settings::url(
        "READ_DATABASE_URL",
        &database_default,
        &["postgres://", "postgresql://"],
    )
}

/// `AMQP_URL` alone: with [`projector_queue`], what `read-api dlq` needs.
pub fn amqp_url() -> Result<AmqpNodes, SettingError> {
    AmqpNodes::from_env()
}

/// `PROJECTOR_QUEUE`: the projector's queue (its dead letters are in `<queue>.dead`).
pub fn projector_queue() -> String {
    settings::string("PROJECTOR_QUEUE", "read-api.projector")
}
