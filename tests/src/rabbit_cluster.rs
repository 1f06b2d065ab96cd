//! A real three-node RabbitMQ cluster on this machine, for the tests of `AMQP_URL` listing
//! several nodes: `rabbitmq-server` nodes with node names of their own (unique per run), free
//! ports, data directories in a temporary directory and a cookie of their own (so they can
//! never reach the machine's `rabbit@localhost`), joined with `rabbitmqctl join_cluster`.
//! Dropping the cluster kills every node (also when a test panics) and removes the directories
//! (after a panic it keeps them, for the nodes' logs).
//!
//! Each node reads a config file of its own: the machine's `/etc/rabbitmq` files would put it
//! on port 5672 and name it `rabbit@localhost`. The CLI is run directly (not the `su rabbitmq`
//! wrapper) with `HOME` at the cluster's cookie.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The CLI and server of the Debian package.
const BIN: &str = "/usr/lib/rabbitmq/bin";

/// One node of the cluster.
struct Node {
    /// `<prefix>_<i>@localhost`.
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// The `rabbitmq-server` script, leader of its own process group (the Erlang VM and its
    /// helpers are in the same group).
    server: Option<Child>,
}

/// A running three-node cluster. Dropping it kills the nodes and deletes their data.
pub struct RabbitCluster {
    base: PathBuf,
    nodes: Vec<Node>,
}

/// A free TCP port on 127.0.0.1, outside the range the Erlang CLI uses for itself
/// (35672–35682) and the ports the machine's own services use.
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if !(35_672..=35_682).contains(&port) && ![5672, 25_672].contains(&port) {
            return port;
        }
    }
}

impl RabbitCluster {
    /// Starts three nodes and clusters the second and third with the first (blocks for the
    /// 10 to 20 s that takes).
    pub fn start() -> Self {
        let t0 = Instant::now();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let base = std::env::temp_dir().join(format!("rabbit-cluster-{id}"));
        std::fs::create_dir_all(base.join("home")).expect("cluster dir");
        let cookie: String = uuid::Uuid::new_v4().simple().to_string();
        let cookie_path = base.join("home/.erlang.cookie");
        std::fs::write(&cookie_path, cookie).expect("cookie");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o400)).expect("cookie mode");
        std::fs::write(base.join("rabbitmq-env.conf"), "").expect("env file");
        let nodes = (1..=3)
            .map(|i| {
                let dir = base.join(format!("n{i}"));
                std::fs::create_dir_all(&dir).expect("node dir");
                let port = free_port();
                std::fs::write(
                    dir.join("rabbitmq.conf"),
                    format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
                )
                .expect("config");
                std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
                Node {
                    name: format!("rc{id}_{i}@localhost"),
                    port,
                    dist_port: free_port(),
                    dir,
                    server: None,
                }
            })
            .collect();
        let mut cluster = Self { base, nodes };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_booted(i);
        }
        let first = cluster.nodes[0].name.clone();
        for i in 1..3 {
            let name = cluster.nodes[i].name.clone();
            cluster.ctl(&["-n", &name, "stop_app"]);
            cluster.ctl(&["-n", &name, "reset"]);
            cluster.ctl(&["-n", &name, "join_cluster", &first]);
            cluster.ctl(&["-n", &name, "start_app"]);
        }
        let status = cluster.ctl(&["-n", &first, "cluster_status", "--formatter", "json"]);
        let status: serde_json::Value = serde_json::from_str(&status).expect("cluster_status json");
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        assert_eq!(running, 3, "cluster_status: {status}");
        println!("[rabbit cluster] 3 nodes up and clustered in {:.1?}", t0.elapsed());
        cluster
    }

    /// Each node's AMQP URL, in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s AMQP URL.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].port)
    }

    /// Node `i`'s Erlang node name.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// `kill -9` of node `i` (its whole process group); its data stays for [`Self::restart`].
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut server) = self.nodes[i].server.take() {
            kill_group(&server);
            let _ = server.wait();
        }
    }

    /// Starts node `i` again on its data directory (it rejoins the cluster) and waits for it.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_booted(i);
    }

    /// The node (index) whose AMQP port holds the connection named `connection_name`, asked
    /// of a running node; `None` if no such connection is open.
    pub fn node_of_connection(&self, connection_name: &str) -> Option<usize> {
        let out = self.ctl(&[
            "-n",
            self.running_node()?,
            "list_connections",
            "port",
            "client_properties",
            "--formatter",
            "json",
        ]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        rows.iter().find_map(|row| {
            let named = row["client_properties"]
                .as_array()?
                .iter()
                .any(|p| p[0].as_str() == Some("connection_name") && p[2].as_str() == Some(connection_name));
            let port = row["port"].as_u64()?;
            named.then(|| self.nodes.iter().position(|n| u64::from(n.port) == port))?
        })
    }

    /// The node (index) leading quorum queue (or stream) `queue`, asked of a running node.
    pub fn leader_of(&self, queue: &str) -> Option<usize> {
        let leader = self.queue_info(queue, "leader")?;
        self.nodes.iter().position(|n| Some(n.name.as_str()) == leader.as_str())
    }

    /// The members of quorum queue (or stream) `queue` (node names).
    pub fn members_of(&self, queue: &str) -> Vec<String> {
        names(self.queue_info(queue, "members"))
    }

    /// The members of quorum queue (or stream) `queue` that are running.
    pub fn online_members_of(&self, queue: &str) -> Vec<String> {
        names(self.queue_info(queue, "online"))
    }

    /// `rabbitmqctl list_queues name <column>` for `queue`, asked of a running node.
    fn queue_info(&self, queue: &str, column: &str) -> Option<serde_json::Value> {
        let out = self.ctl(&[
            "-n",
            self.running_node()?,
            "list_queues",
            "name",
            column,
            "--formatter",
            "json",
        ]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        rows.into_iter()
            .find(|r| r["name"].as_str() == Some(queue))
            .map(|r| r[column].clone())
    }

    fn running_node(&self) -> Option<&str> {
        self.nodes.iter().find(|n| n.server.is_some()).map(|n| n.name.as_str())
    }

    fn spawn(&mut self, i: usize) {
        let n = &self.nodes[i];
        let log = std::fs::File::create(n.dir.join("stdout.log")).expect("log file");
        let mut cmd = Command::new(format!("{BIN}/rabbitmq-server"));
        self.env(&mut cmd);
        cmd.env("RABBITMQ_CONFIG_FILE", n.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &n.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", n.port.to_string())
            .env("RABBITMQ_DIST_PORT", n.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", n.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", n.dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", n.dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", n.dir.join("rabbitmq.pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // A process group of its own: kill -9 reaches the Erlang VM and its helpers too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start rabbitmq-server");
        self.nodes[i].server = Some(child);
    }

    /// Waits (at most 120 s) until node `i` runs; panics with its log if it does not.
    fn wait_booted(&mut self, i: usize) {
        let n = &self.nodes[i];
        let pid_file = n.dir.join("rabbitmq.pid");
        let pid_file = pid_file.to_str().expect("path");
        // `wait` for a node whose boot failed only ends at its timeout: bounded by `timeout`.
        let ok = self
            .run_ctl(&["-n", &n.name, "wait", pid_file, "--timeout", "120"], 130)
            .0;
        let alive = self.nodes[i]
            .server
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        if !(ok && alive) {
            let log = std::fs::read_to_string(self.nodes[i].dir.join("stdout.log")).unwrap_or_default();
            panic!("RabbitMQ node {} did not start:\n{log}", self.nodes[i].name);
        }
    }

    /// `rabbitmqctl args` with the cluster's cookie; its stdout, panicking on failure.
    fn ctl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run_ctl(args, 120);
        assert!(ok, "rabbitmqctl {args:?} failed: {out}{err}");
        out
    }

    fn run_ctl(&self, args: &[&str], timeout_secs: u32) -> (bool, String, String) {
        let mut cmd = Command::new("timeout");
        cmd.arg(timeout_secs.to_string())
            .arg(format!("{BIN}/rabbitmqctl"))
            .args(args);
        self.env(&mut cmd);
        let out = cmd.output().expect("run rabbitmqctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", self.base.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", self.base.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }
}

/// The strings of a JSON array (none for anything else).
fn names(v: Option<serde_json::Value>) -> Vec<String> {
    v.and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect()
}

fn kill_group(server: &Child) {
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{}", server.id())])
        .stderr(Stdio::null())
        .status();
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if std::thread::panicking() {
            // The nodes' logs say what the broker made of the failure.
            eprintln!("[rabbit cluster] logs kept in {}", self.base.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// Waits until `probe` returns `Some`, polling every 200 ms for at most `limit`.
pub async fn eventually<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
