//! The services' binaries as child processes, for tests that signal, kill or restart them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Builds `package`'s binary once per test process (a no-op when up to date) and returns its
/// path. Tests of this crate cannot use `CARGO_BIN_EXE_*` for another package's binary.
pub fn binary(package: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = !cfg!(debug_assertions);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|p| p == package) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root).args(["build", "-q", "-p", package]);
        // Without the variables cargo sets for this test crate (CARGO_MANIFEST_DIR,
        // CARGO_PKG_NAME, ...): ring's build script reruns when they change, so inheriting them
        // made every in-test build and every plain `cargo build` after it rebuild ring and all
        // above it (lapin, the services), tens of seconds each time.
        const PER_CRATE: [&str; 6] = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ];
        for (name, _) in std::env::vars_os() {
            if name
                .to_str()
                .is_some_and(|n| PER_CRATE.iter().any(|p| n.starts_with(p)))
            {
                cmd.env_remove(name);
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("run cargo build -p {package}: {e}"));
        assert!(status.success(), "cargo build -p {package} failed");
        built.push(package.to_owned());
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join(if release { "release" } else { "debug" }).join(package)
}

/// A free local address (bound and released; good enough for tests).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A running service binary; killed when dropped.
pub struct ServiceProcess {
    child: Child,
    /// Where it serves HTTP (`/health/*`, `/metrics`, its API).
    pub addr: SocketAddr,
}

impl ServiceProcess {
    /// Starts `package`'s binary with `args` and `env`, listening on a free port given in the
    /// setting `addr_var` (e.g. `WRITE_API_ADDR`).
    pub fn spawn(package: &str, args: &[&str], addr_var: &str, env: &HashMap<String, String>) -> Self {
        Self::spawn_with_stdout(package, args, addr_var, env, Stdio::inherit())
    }

    /// [`ServiceProcess::spawn`], its standard output (where it logs) going to `stdout`.
    pub fn spawn_with_stdout(
        package: &str,
        args: &[&str],
        addr_var: &str,
        env: &HashMap<String, String>,
        stdout: Stdio,
    ) -> Self {
        let addr = free_addr();
        let child = Command::new(binary(package))
            .args(args)
            .envs(env)
            .env(addr_var, addr.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {package}: {e}"));
        Self { child, addr }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The status of `GET /health/ready`, or `None` while nothing answers.
    pub async fn ready_status(&self) -> Option<u16> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        client
            .get(self.url("/health/ready"))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Waits until `/health/ready` answers `status`, failing after `limit`.
    pub async fn wait_ready_status(&self, status: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.ready_status().await != Some(status) {
            assert!(
                Instant::now() < deadline,
                "{} did not answer {status} on /health/ready within {limit:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The body of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body")
    }

    /// SIGTERM, then waits for the exit (failing after `limit`).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.sigterm();
        self.wait_exit(limit)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit, failing after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait child") {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The setting naming where `package` listens (e.g. `WRITE_API_ADDR` for `write-api`).
pub fn addr_var(package: &str) -> &'static str {
    match package {
        "write-api" => "WRITE_API_ADDR",
        "read-api" => "READ_API_ADDR",
        "outbox-relay" => "RELAY_ADDR",
        other => panic!("no listening address known for {other}"),
    }
}

/// Sets `package`'s listening address to a free port unless `cmd`'s `env` names one: a run that
/// was meant to stop early but gets as far as binding must never take a default port (8080-8082),
/// which a pipeline running on this machine holds.
pub fn free_addr_unless_set(cmd: &mut Command, package: &str, env: &HashMap<String, String>) {
    let var = addr_var(package);
    if !env.contains_key(var) {
        cmd.env(var, free_addr().to_string());
    }
}

/// Runs `package`'s binary to completion with `args` and `env` (listening, if it gets that far,
/// on a free port unless `env` gives an address), and returns its exit status and standard error.
pub fn run_to_exit(package: &str, args: &[&str], env: &HashMap<String, String>) -> (ExitStatus, String) {
    let out = run_for_output(package, args, env);
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// [`run_to_exit`], keeping standard output too (`--help`, `write-api token`).
pub fn run_for_output(package: &str, args: &[&str], env: &HashMap<String, String>) -> Output {
    let mut cmd = Command::new(binary(package));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env);
    free_addr_unless_set(&mut cmd, package, env);
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {package}: {e}"))
}
