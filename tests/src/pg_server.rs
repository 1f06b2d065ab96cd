//! A throwaway PostgreSQL server of a test's own: a cluster made with `initdb` in a temporary
//! directory, on a free port, trust authentication, listening on 127.0.0.1 only (and on a Unix
//! socket in its own directory, so it never touches the machine's server's socket directory).
//! The test starts, stops and restarts it with `pg_ctl`; dropping the value stops it at once
//! (`pg_ctl stop -m immediate`, then `kill -9` of the postmaster if that failed) and removes
//! its directory, also when the test panics.
//!
//! `initdb` and the server refuse to run as root. Tests here run as root, so every PostgreSQL
//! program is run as the `postgres` user (`runuser -u postgres`) on a directory owned by it;
//! run as anyone else, they run as that user.
//!
//! A test process killed outright (SIGKILL, or a SIGTERM from the test runner) runs no `Drop`,
//! and `pg_ctl` starts the server detached from it: each cluster's directory records the pid
//! of the process that made it, and [`PgServer::start`] first stops and removes the clusters
//! whose process is gone.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The prefix of every cluster directory in the temporary directory.
const DIR_PREFIX: &str = "ordering-pg-";
/// The file, in a cluster directory, naming the pid of the process that made it.
const OWNER_FILE: &str = "owner.pid";
/// The superuser `initdb` creates.
const SUPERUSER: &str = "postgres";

/// A PostgreSQL server of the test's own (see the module documentation).
pub struct PgServer {
    /// The cluster's directory: `data/`, the server log, the socket, [`OWNER_FILE`].
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run PostgreSQL's programs as `postgres` (this process is root).
    as_postgres: bool,
}

/// Where PostgreSQL's programs are: `PG_BIN_DIR`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout), else whatever `PATH` finds.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_default()
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| match l.split(':').collect::<Vec<_>>()[..] {
            [name, _, uid, gid, ..] if name == SUPERUSER => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        })
        .expect("running as root, a `postgres` user is needed to run PostgreSQL's programs")
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl PgServer {
    /// Makes a cluster on a free port and starts it (about a second).
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// As [`Self::start`], with `settings` (lines of `postgresql.conf`, e.g.
    /// `wal_level = logical`) added to the cluster's configuration.
    pub fn start_with(settings: &str) -> Self {
        sweep_orphans();
        let bin = bin_dir();
        let as_postgres = running_as_root();
        let root = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).expect("create the cluster directory");
        std::fs::write(root.join(OWNER_FILE), std::process::id().to_string()).expect("write the owner file");
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown the cluster directory");
        }
        let mut server = Self {
            root,
            bin,
            port: 0,
            as_postgres,
        };
        let data = server.data();
        let out = server.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb ({}) failed: {}{}",
            server.bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A port is free when chosen and may be taken before the server binds it: try another.
        for attempt in 0.. {
            server.port = crate::process::free_addr().port();
            // Later lines of postgresql.conf win: each attempt's port replaces the last.
            // `fsync = off` only risks data on an operating-system crash; a crashed server
            // ([`PgServer::crash`]) keeps every commit it acknowledged, as in production, since
            // `synchronous_commit` stays on (off, a crash loses the last acknowledged commits).
            let conf = format!(
                "\n# ordering tests\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 fsync = off\nmax_connections = 200\n{settings}\n",
                server.port,
                server.root.display()
            );
            let path = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&path).expect("read postgresql.conf");
            text.push_str(&conf);
            std::fs::write(&path, text).expect("write postgresql.conf");
            match server.try_start() {
                Ok(()) => break,
                Err(e) if attempt < 3 => tracing::warn!(error = %e, "test PostgreSQL did not start; another port"),
                Err(e) => panic!("test PostgreSQL did not start: {e}"),
            }
        }
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates `name` (an SQL identifier) and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut admin = AsyncPgConnection::establish(&self.url("postgres"))
            .await
            .expect("connect to the test PostgreSQL server");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        self.url(name)
    }

    /// Stops the server (`-m fast`: sessions are ended, as on a planned restart or a failover)
    /// and waits until it is down; clients then find the port closed.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["stop", "-m", "fast"]);
        assert!(out.status.success(), "pg_ctl stop: {}", self.describe(&out));
    }

    /// Stops the server as a crash would (`-m immediate`: every process quits at once, nothing
    /// is flushed, connections are cut mid-transaction; the next start runs crash recovery).
    pub fn crash(&self) {
        let out = self.pg_ctl(&["stop", "-m", "immediate"]);
        assert!(
            out.status.success(),
            "pg_ctl stop -m immediate: {}",
            self.describe(&out)
        );
    }

    /// Starts the stopped server again, on the same port, and waits until it accepts connections.
    pub fn restart(&self) {
        self.try_start()
            .unwrap_or_else(|e| panic!("test PostgreSQL did not start again: {e}"));
    }

    /// The cluster's directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.pg_ctl(&["status"]).status.success()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn try_start(&self) -> Result<(), String> {
        let log = self.root.join("server.log");
        let out = self.pg_ctl(&["start", "-l", path_str(&log)]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}; server log:\n{}", self.describe(&out), self.log()))
        }
    }

    /// `pg_ctl -D <data> -w -t 30 <args>`.
    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let mut all = vec!["-D", path_str(&data), "-w", "-t", "30"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Runs PostgreSQL's program `program` with `args` (as `postgres` when this process is root).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", SUPERUSER, "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // In the cluster's directory: `postgres` may not enter the test's working directory.
        cmd.args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()))
    }

    fn describe(&self, out: &Output) -> String {
        format!(
            "{} {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        stop_and_remove(&self.root, &self.bin, self.as_postgres);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Stops the cluster in `root` at once and removes `root`.
fn stop_and_remove(root: &Path, bin: &Path, as_postgres: bool) {
    let server = PgServer {
        root: root.to_owned(),
        bin: bin.to_owned(),
        port: 0,
        as_postgres,
    };
    if server.data().join("postmaster.pid").exists() {
        let _ = server.pg_ctl(&["stop", "-m", "immediate"]);
        // pg_ctl failed or timed out: the postmaster's pid is the file's first line.
        if let Some(pid) = std::fs::read_to_string(server.data().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
            && pid_alive(pid)
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // `server` must not run this again when it goes out of scope.
    std::mem::forget(server);
    let _ = std::fs::remove_dir_all(root);
}

/// Stops and removes the clusters whose test process is gone.
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(DIR_PREFIX)) {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !pid_alive(pid)) {
            tracing::warn!(dir = %e.path().display(), "removing a test PostgreSQL cluster its test left behind");
            stop_and_remove(&e.path(), &bin_dir(), running_as_root());
        }
    }
}
