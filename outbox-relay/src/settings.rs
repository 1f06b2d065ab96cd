//! The relay's settings, read once from the environment at start.

use std::time::Duration;

use ordering_platform::cli::Setting;
use ordering_platform::settings::{self, SettingError};

/// Everything the relay can be told. Each field names the variable that sets it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `DATABASE_URL`: the database holding the outbox.
    pub database_url: String,
    /// `AMQP_URL`: the broker's node, or a cluster's nodes separated by commas.
    pub amqp_url: ordering_platform::amqp::AmqpNodes,
    /// `AMQP_REPLICATION_FACTOR`: nodes holding the stream (its `x-initial-cluster-size`).
    pub replication_factor: u32,
    /// `RELAY_ADDR`: where `/health/*`, `/metrics` and `/admin` are served.
    pub addr: std::net::SocketAddr,
    /// `OUTBOX_TABLE`: the outbox, plain (`outbox`) or schema-qualified (`billing.outbox`).
    pub table: crate::schema::TableNames,
    /// `OUTBOX_EXCHANGE`: the topic exchange events are published to.
    pub exchange: String,
    /// `EVENT_LOG_MAX_BYTES`: the stream's `x-max-length-bytes`.
    pub event_log_max_bytes: u64,
    /// `EVENT_LOG_MAX_AGE`: the stream's `x-max-age` (RabbitMQ's format: `7D`, `12h`, `1Y`).
    pub event_log_max_age: String,
    /// `OUTBOX_CLEANUP_CRON`: when sent rows past retention are deleted, or, on an outbox
    /// partitioned by day, when days are created ahead and dropped past retention (6 or 7 cron
    /// fields, seconds first).
    pub cleanup_cron: cron::Schedule,
    /// `OUTBOX_RETENTION`: how long sent rows are kept.
    pub retention: Duration,
    /// `OUTBOX_CLEANUP_BATCH`: rows deleted per statement, so cleanup never holds long locks.
    pub cleanup_batch: i64,
    /// `RELAY_PARTITIONS`: aggregates are hashed into this many partitions, each owned by one
    /// instance at a time. Every instance on one outbox must use the same number.
    pub partitions: i32,
    /// `RELAY_WINDOW`: outstanding publisher confirms at most.
    pub window: usize,
    /// `RELAY_BATCH`: rows read per round.
    pub batch: i64,
    /// `RELAY_POLL_INTERVAL`: the fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// `RELAY_LEASE_TTL`: how long a partition lease lasts without renewal.
    pub lease_ttl: Duration,
    /// `RELAY_MAX_ATTEMPTS`: returns of a message no queue is bound for before its row is
    /// dead-lettered (nacks are retried for as long as they last).
    pub max_attempts: i32,
    /// `RELAY_BREAKER_FAILURES`: consecutive failures that open a circuit breaker.
    pub breaker_failures: u32,
    /// `RELAY_BREAKER_COOLDOWN`: how long an open breaker waits before its probe.
    pub breaker_cooldown: Duration,
    /// `RELAY_CONFIRM_TIMEOUT`: a confirm not received in this time counts as a broker failure.
    pub confirm_timeout: Duration,
    /// `JWT_SECRET` (with `JWT_AUDIENCE`, `JWT_ISSUER`): signs in to the admin page `/admin`;
    /// unset, the page is off.
    pub admin: Option<ordering_platform::http::admin::AdminGate>,
}

impl Settings {
    /// Reads every setting; the first bad one is returned, naming itself.
    pub fn from_env() -> Result<Self, SettingError> {
        let table = crate::schema::TableNames::parse(&settings::string("OUTBOX_TABLE", "outbox"))
            .map_err(|m| SettingError::new("OUTBOX_TABLE", m))?;
        let exchange = settings::string("OUTBOX_EXCHANGE", ordering_schema::events::DEFAULT_EXCHANGE);
        validate_exchange(&exchange).map_err(|m| SettingError::new("OUTBOX_EXCHANGE", m))?;
        let event_log_max_age = settings::string("EVENT_LOG_MAX_AGE", "7D");
        if !valid_max_age(&event_log_max_age) {
            return Err(SettingError::new(
                "EVENT_LOG_MAX_AGE",
                format!("{event_log_max_age:?} is not a stream age like 7D, 12h, 30m, 1M or 1Y"),
            ));
        }
        let cron_text = settings::string("OUTBOX_CLEANUP_CRON", "0 */5 * * * *");
        let cleanup_cron: cron::Schedule = cron_text.parse().map_err(|e: cron::error::Error| {
            SettingError::new(
                "OUTBOX_CLEANUP_CRON",
                format!(
                    "{cron_text:?} is not a cron schedule (sec min hour day month weekday): {}",
                    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
                ),
            )
        })?;
        let s = Self {
            database_url: settings::url(
                "DATABASE_URL",
                "postgres://root@127.0.0.1:5432/ordering",
                &["postgres://", "postgresql://"],
            )?,
            amqp_url: ordering_platform::amqp::AmqpNodes::from_env()?,
            replication_factor: ordering_platform::amqp::replication_factor()?,
            addr: settings::socket_addr("RELAY_ADDR", "127.0.0.1:8082")?,
            table,
            exchange,
            event_log_max_bytes: settings::parsed("EVENT_LOG_MAX_BYTES", 5_000_000_000u64)?,
            event_log_max_age,
            cleanup_cron,
            retention: settings::duration("OUTBOX_RETENTION", Duration::from_secs(7 * 86_400))?,
            cleanup_batch: settings::parsed("OUTBOX_CLEANUP_BATCH", 1000i64)?,
            partitions: settings::parsed("RELAY_PARTITIONS", 16i32)?,
            window: settings::parsed("RELAY_WINDOW", 256usize)?,
            batch: settings::parsed("RELAY_BATCH", 5000i64)?,
            poll_interval: settings::duration("RELAY_POLL_INTERVAL", Duration::from_secs(1))?,
            lease_ttl: settings::duration("RELAY_LEASE_TTL", Duration::from_secs(10))?,
            max_attempts: settings::parsed("RELAY_MAX_ATTEMPTS", 5i32)?,
            breaker_failures: settings::parsed("RELAY_BREAKER_FAILURES", 5u32)?,
            breaker_cooldown: settings::duration("RELAY_BREAKER_COOLDOWN", Duration::from_secs(5))?,
            confirm_timeout: settings::duration("RELAY_CONFIRM_TIMEOUT", Duration::from_secs(30))?,
            admin: ordering_platform::http::admin::AdminGate::from_env()?,
        };
        let range = |name: &'static str, ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(SettingError::new(name, what.to_owned()))
            }
        };
        range(
            "RELAY_PARTITIONS",
            (1..=4096).contains(&s.partitions),
            "must be between 1 and 4096",
        )?;
        range(
            "RELAY_WINDOW",
            (1..=65_535).contains(&s.window),
            "must be between 1 and 65535",
        )?;
        range(
            "RELAY_BATCH",
            (1..=100_000).contains(&s.batch),
            "must be between 1 and 100000",
        )?;
        range(
            "OUTBOX_CLEANUP_BATCH",
            (1..=100_000).contains(&s.cleanup_batch),
            "must be between 1 and 100000",
        )?;
        range(
            "OUTBOX_RETENTION",
            (Duration::from_secs(1)..=Duration::from_secs(3650 * 86_400)).contains(&s.retention),
            "must be between 1s and 3650d",
        )?;
        range("RELAY_MAX_ATTEMPTS", s.max_attempts >= 1, "must be at least 1")?;
        range("RELAY_BREAKER_FAILURES", s.breaker_failures >= 1, "must be at least 1")?;
        range(
            "RELAY_LEASE_TTL",
            s.lease_ttl >= Duration::from_secs(1),
            "must be at least 1s",
        )?;
        range(
            "RELAY_POLL_INTERVAL",
            s.poll_interval >= Duration::from_millis(10),
            "must be at least 10ms",
        )?;
        range(
            "RELAY_CONFIRM_TIMEOUT",
            s.confirm_timeout >= Duration::from_millis(100),
            "must be at least 100ms",
        )?;
        range("EVENT_LOG_MAX_BYTES", s.event_log_max_bytes > 0, "must be positive")?;
        Ok(s)
    }

    /// The stream bound to the exchange: `<exchange>.log`, so the default exchange gets the
    /// contract's `ordering.events.log` and every other exchange (a test's, a sidecar's) a
    /// stream of its own.
    pub fn stream(&self) -> String {
        stream_name(&self.exchange)
    }
}

/// The stream of `exchange`: `<exchange>.log`.
pub fn stream_name(exchange: &str) -> String {
    format!("{exchange}.log")
}

fn validate_exchange(name: &str) -> Result<(), String> {
    // The stream name adds 4 bytes and must still fit an AMQP short string.
    if name.is_empty() || name.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if name.starts_with("amq.") {
        return Err("names starting with amq. are reserved by the broker".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return Err(format!("{name:?} may only contain letters, digits and . _ - :"));
    }
    Ok(())
}

fn valid_max_age(v: &str) -> bool {
    let Some(unit) = v.chars().last() else { return false };
    let num = &v[..v.len() - unit.len_utf8()];
    matches!(unit, 'Y' | 'M' | 'D' | 'h' | 'm' | 's')
        && !num.is_empty()
        && num.chars().all(|c| c.is_ascii_digit())
        && num.parse::<u64>().is_ok_and(|n| n > 0)
}

/// The relay's own settings as `--help` lists them (read above in [`Settings::from_env`]).
pub const HELP: &[Setting] = &[
    Setting {
        name: "RELAY_ADDR",
        default: "127.0.0.1:8082",
        about: "where /health/*, /metrics and /admin are served",
    },
    Setting {
        name: "OUTBOX_TABLE",
        default: "outbox",
        about: "the table to relay (plain or schema-qualified)",
    },
    Setting {
        name: "OUTBOX_EXCHANGE",
        default: "ordering.events",
        about: "the topic exchange; the stream is <exchange>.log",
    },
    Setting {
        name: "EVENT_LOG_MAX_BYTES",
        default: "5000000000",
        about: "the stream's size limit",
    },
    Setting {
        name: "EVENT_LOG_MAX_AGE",
        default: "7D",
        about: "the stream's age limit (RabbitMQ's format: 7D, 12h, 1Y)",
    },
    Setting {
        name: "OUTBOX_CLEANUP_CRON",
        default: "0 */5 * * * *",
        about: "when sent rows (or day partitions) past retention are dropped and days made ahead (seconds first)",
    },
    Setting {
        name: "OUTBOX_RETENTION",
        default: "7d",
        about: "how long sent rows are kept (1s to 3650d; day partitions: up to a day longer)",
    },
    Setting {
        name: "OUTBOX_CLEANUP_BATCH",
        default: "1000",
        about: "rows deleted per statement",
    },
    Setting {
        name: "RELAY_PARTITIONS",
        default: "16",
        about: "partitions leased to instances (the same on every instance)",
    },
    Setting {
        name: "RELAY_WINDOW",
        default: "256",
        about: "outstanding publisher confirms",
    },
    Setting {
        name: "RELAY_BATCH",
        default: "5000",
        about: "rows read per round",
    },
    Setting {
        name: "RELAY_POLL_INTERVAL",
        default: "1s",
        about: "fallback poll when no notification arrives",
    },
    Setting {
        name: "RELAY_LEASE_TTL",
        default: "10s",
        about: "a dead instance's partitions are taken over after this",
    },
    Setting {
        name: "RELAY_MAX_ATTEMPTS",
        default: "5",
        about: "returns (no queue bound) before a row is dead-lettered",
    },
    Setting {
        name: "RELAY_BREAKER_FAILURES",
        default: "5",
        about: "consecutive failures that open a circuit breaker",
    },
    Setting {
        name: "RELAY_BREAKER_COOLDOWN",
        default: "5s",
        about: "how long an open breaker waits before its probe",
    },
    Setting {
        name: "RELAY_CONFIRM_TIMEOUT",
        default: "30s",
        about: "a confirm not received by then counts as lost",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ages_use_rabbitmq_units() {
        assert!(valid_max_age("7D"));
        assert!(valid_max_age("12h"));
        assert!(!valid_max_age("7d "));
        assert!(!valid_max_age("D"));
        assert!(!valid_max_age("0D"));
        assert!(!valid_max_age("7w"));
    }

    #[test]
    fn exchange_names() {
        assert!(validate_exchange("ordering.events").is_ok());
        assert!(validate_exchange("test.0b1c-2").is_ok());
        assert!(validate_exchange("").is_err());
        assert!(validate_exchange("amq.topic").is_err());
        assert!(validate_exchange("a b").is_err());
        assert_eq!(
            stream_name("ordering.events"),
            ordering_schema::events::EVENT_LOG_STREAM
        );
    }
}
