//! The relay binary as a child process, for tests that kill it or send it signals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The relay binary (`RELAY_BIN`, or the workspace's target dir), built with `cargo build -p
/// outbox-relay` when missing or older than the relay's sources. Tests of this crate cannot
/// use `CARGO_BIN_EXE_*` for another package's binary.
pub fn relay_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("RELAY_BIN") {
            return PathBuf::from(bin);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let release = !cfg!(debug_assertions);
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        let bin = target
            .join(if release { "release" } else { "debug" })
            .join("outbox-relay");
        if !stale(&bin, &root.join("outbox-relay")) {
            return bin;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root).args(["build", "-q", "-p", "outbox-relay"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p outbox-relay");
        assert!(status.success(), "cargo build -p outbox-relay failed");
        bin
    })
    .clone()
}

/// Is `bin` missing or older than any file under `sources`?
fn stale(bin: &std::path::Path, sources: &std::path::Path) -> bool {
    fn newest(dir: &std::path::Path) -> Option<std::time::SystemTime> {
        let mut best = None;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let t = if p.is_dir() {
                newest(&p)
            } else {
                e.metadata().ok()?.modified().ok()
            };
            best = best.max(t);
        }
        best
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    newest(sources).is_some_and(|src| src > built)
}

/// A free local port (bound and released; good enough for tests).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

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

/// A running relay; killed when dropped.
pub struct RelayProcess {
    child: Child,
    /// Where its `/health/*` and `/metrics` are served.
    pub addr: SocketAddr,
}

impl RelayProcess {
    /// Starts `outbox-relay` (serve) with `env`.
    pub fn spawn(env: &RelayEnv) -> Self {
        let addr = free_addr();
        let child = Self::command(env, &[])
            .env("RELAY_ADDR", addr.to_string())
            .spawn()
            .expect("spawn outbox-relay");
        Self { child, addr }
    }

    /// The relay binary with `env` and `args`, stdout/stderr inherited.
    pub fn command(env: &RelayEnv, args: &[&str]) -> Command {
        let mut cmd = Command::new(relay_binary());
        cmd.args(args).envs(&env.vars).stdin(Stdio::null());
        cmd
    }

    /// The status code of `GET /health/ready`, or `None` while nothing answers.
    pub async fn ready_status(&self) -> Option<u16> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let r = client
            .get(format!("http://{}/health/ready", self.addr))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    }

    /// The body of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body")
    }

    /// Waits until `/health/ready` answers `status`.
    pub async fn wait_ready_status(&self, status: u16, limit: Duration) {
        super::wait_until(&format!("/health/ready to answer {status}"), limit, || async {
            self.ready_status().await == Some(status)
        })
        .await;
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (at most `limit`).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait relay") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "relay did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
