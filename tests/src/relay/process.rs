//! The relay binary as a child process, for tests that kill it or send it signals: a
//! [`ServiceProcess`] with the relay's settings.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use crate::process::{ServiceProcess, binary, free_addr_unless_set};

/// Environment for a relay process.
#[derive(Clone, Debug)]
pub struct RelayEnv {
    pub vars: HashMap<String, String>,
}

impl RelayEnv {
    /// A relay on `database_url` publishing to `exchange`, with fast test timings.
    pub fn new(database_url: &str, exchange: &str) -> Self {
        let mut vars = HashMap::new();
        for (k, v) in [
            ("DATABASE_URL", database_url),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("OUTBOX_EXCHANGE", exchange),
            ("RELAY_POLL_INTERVAL", "200ms"),
            ("RELAY_LEASE_TTL", "2s"),
            ("RELAY_BREAKER_FAILURES", "3"),
            ("RELAY_BREAKER_COOLDOWN", "1s"),
            ("RELAY_CONFIRM_TIMEOUT", "5s"),
            ("LOG_FORMAT", "pretty"),
        ] {
            vars.insert(k.to_owned(), v.to_owned());
        }
        if std::env::var("RUST_LOG").is_err() {
            vars.insert("RUST_LOG".into(), "warn,outbox_relay=info".into());
        }
        Self { vars }
    }

    /// Sets one more variable.
    pub fn set(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.to_owned(), v.to_owned());
        self
    }
}

/// Starts `outbox-relay` (serve) with `env`; killed when dropped.
pub fn spawn_relay(env: &RelayEnv) -> ServiceProcess {
    ServiceProcess::spawn("outbox-relay", &[], "RELAY_ADDR", &env.vars)
}

/// The relay binary with `env` and `args` (a CLI command such as `migrate` or `dlq list`, or none
/// to serve), stdout/stderr inherited; it listens on a free port unless `env` sets `RELAY_ADDR`.
pub fn relay_command(env: &RelayEnv, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("outbox-relay"));
    cmd.args(args).envs(&env.vars).stdin(Stdio::null());
    free_addr_unless_set(&mut cmd, "outbox-relay", &env.vars);
    cmd
}
