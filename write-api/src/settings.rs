//! The write-api's settings, from the environment (docs/operations.md, "Settings").

use std::net::SocketAddr;
use std::time::Duration;

use ordering_platform::auth::Authenticator;
use ordering_platform::cli::Setting;
use ordering_platform::http::layers::HttpLimits;
use ordering_platform::settings::{self, SettingError};
use ordering_schema::consistency::ConsistencyKey;

/// Everything the write-api reads at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `WRITE_API_ADDR`, default `127.0.0.1:8080`.
    pub addr: SocketAddr,
    /// `JWT_SECRET` / `AUTH`.
    pub auth: Authenticator,
    /// `CONSISTENCY_SECRET` (default: `JWT_SECRET`): signs consistency tokens; the read-api must
    /// have the same.
    pub consistency_key: ConsistencyKey,
    /// `DB_POOL_SIZE`, default 16: the most database connections this instance opens.
    pub pool_size: usize,
    /// `REQUEST_TIMEOUT` (default 10s) and `MAX_CONCURRENT_REQUESTS` (default 512).
    pub limits: HttpLimits,
    /// `IDEMPOTENCY_TTL`, default 24h (the contract's minimum): how long keys are kept.
    pub idempotency_ttl: Duration,
    /// `READ_API_URL`, default `http://127.0.0.1:8081`: the read-api's public base URL, where
    /// `Location` headers point (the write-api serves no reads).
    pub read_api_url: String,
}

/// Default `DATABASE_URL` of every service.
pub const DEFAULT_DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/ordering";

impl Settings {
    /// Reads the settings; the error names the first bad one.
    pub fn from_env() -> Result<Self, SettingError> {
        let idempotency_ttl = settings::duration("IDEMPOTENCY_TTL", Duration::from_secs(24 * 3600))?;
        if idempotency_ttl < Duration::from_secs(24 * 3600) {
            return Err(SettingError::new(
                "IDEMPOTENCY_TTL",
                "must be at least 24h (the contract keeps keys that long)",
            ));
        }
        let pool_size = settings::parsed("DB_POOL_SIZE", 16usize)?;
        if pool_size == 0 {
            return Err(SettingError::new("DB_POOL_SIZE", "must be at least 1"));
        }
        let max_concurrent_requests = settings::parsed("MAX_CONCURRENT_REQUESTS", 512usize)?;
        if max_concurrent_requests == 0 {
            return Err(SettingError::new("MAX_CONCURRENT_REQUESTS", "must be at least 1"));
        }
        Ok(Self {
            read_api_url: read_api_url()?,
            database_url: database_url()?,
            addr: settings::socket_addr("WRITE_API_ADDR", "127.0.0.1:8080")?,
            auth: Authenticator::from_env()?,
            consistency_key: consistency_key()?,
            pool_size,
            limits: HttpLimits {
                request_timeout: settings::duration("REQUEST_TIMEOUT", Duration::from_secs(10))?,
                max_concurrent_requests,
            },
            idempotency_ttl,
        })
    }
}

/// `READ_API_URL`: an `http(s)://` base URL (a trailing slash is dropped). It goes into a
/// header, so nothing but visible ASCII.
fn read_api_url() -> Result<String, SettingError> {
    let v = settings::url("READ_API_URL", "http://127.0.0.1:8081", &["http://", "https://"])?;
    if v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(v.trim_end_matches('/').to_owned())
    } else {
        Err(SettingError::new(
            "READ_API_URL",
            "must be a URL of visible ASCII characters",
        ))
    }
}

/// `CONSISTENCY_SECRET`, else `JWT_SECRET`, else (with `AUTH=off`) the public demo key.
fn consistency_key() -> Result<ConsistencyKey, SettingError> {
    ConsistencyKey::from_settings(
        settings::raw("CONSISTENCY_SECRET").as_deref(),
        settings::raw("JWT_SECRET").as_deref(),
    )
    .map_err(|e| SettingError::new("CONSISTENCY_SECRET", e))
}

/// The write-api's own settings as `--help` lists them (read above in [`Settings::from_env`]).
pub const HELP: &[Setting] = &[
    Setting {
        name: "WRITE_API_ADDR",
        default: "127.0.0.1:8080",
        about: "where it listens",
    },
    Setting {
        name: "DB_POOL_SIZE",
        default: "16",
        about: "most database connections",
    },
    Setting {
        name: "REQUEST_TIMEOUT",
        default: "10s",
        about: "a longer request is answered 503 and rolled back",
    },
    Setting {
        name: "MAX_CONCURRENT_REQUESTS",
        default: "512",
        about: "requests served at once",
    },
    Setting {
        name: "IDEMPOTENCY_TTL",
        default: "24h",
        about: "how long Idempotency-Keys are kept (at least 24h)",
    },
    Setting {
        name: "READ_API_URL",
        default: "http://127.0.0.1:8081",
        about: "the read-api's public URL, where Location headers point",
    },
];

/// `DATABASE_URL` alone: what `write-api migrate` needs, so migrating asks for no secret.
pub fn database_url() -> Result<String, SettingError> {
    settings::url("DATABASE_URL", DEFAULT_DATABASE_URL, &["postgres://", "postgresql://"])
}
