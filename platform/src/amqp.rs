//! The RabbitMQ broker as the services see it: one node or the nodes of a cluster, listed in
//! `AMQP_URL` (comma-separated), and the one way every service connects to it.
//!
//! [`AmqpNodes::connect`] tries the nodes in turn, each bounded by [`CONNECT_TIMEOUT`], starting
//! from a rotating index: each process starts at a random node (so instances spread over the
//! cluster), and after a connection to node *i* the next attempt starts at *i + 1*, so a
//! service whose node died tries the others first. It logs which node it got.
//!
//! Queues and streams are replicated over `AMQP_REPLICATION_FACTOR` nodes
//! ([`declare_replicated`]); RabbitMQ caps the factor at the cluster's size, so the default
//! (3) also works on a single node.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::settings::{self, SettingError};

/// `AMQP_URL` when unset: the local node.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// `AMQP_REPLICATION_FACTOR` when unset: a quorum of three survives the loss of one node.
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// How long one node may take to accept a connection before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker's nodes, from `AMQP_URL`. Clones share the rotating start index.
#[derive(Clone)]
pub struct AmqpNodes {
    nodes: Arc<[Node]>,
    next: Arc<AtomicUsize>,
}

struct Node {
    url: String,
    /// `host:port`, safe to log (no credentials).
    addr: String,
}

impl fmt::Debug for AmqpNodes {
    // Never the URLs: they hold passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.nodes.iter().map(|n| &n.addr)).finish()
    }
}

/// Why no node could be connected to.
#[derive(Debug, thiserror::Error)]
#[error("no RabbitMQ node accepted a connection: {0}")]
pub struct ConnectError(String);

/// A connection and the node it is to.
pub struct Connected {
    pub connection: Connection,
    /// The node's `host:port`.
    pub node: String,
}

impl AmqpNodes {
    /// `AMQP_URL` (default [`DEFAULT_URL`]).
    pub fn from_env() -> Result<Self, SettingError> {
        Self::parse(&settings::string("AMQP_URL", DEFAULT_URL)).map_err(|m| SettingError::new("AMQP_URL", m))
    }

    /// One `amqp://` or `amqps://` URL, or several separated by commas (one per node of a
    /// cluster); the message says which one is wrong, without its password.
    pub fn parse(value: &str) -> Result<Self, String> {
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        let mut nodes: Vec<Node> = Vec::with_capacity(items.len());
        for (i, url) in items.iter().enumerate() {
            let which = if items.len() == 1 {
                "the URL".to_owned()
            } else {
                format!("node {} of {}", i + 1, items.len())
            };
            if url.is_empty() {
                return Err(format!(
                    "{which} is empty (list nodes as amqp://host1:5672/%2f,amqp://host2:5672/%2f)"
                ));
            }
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(format!("{which} ({}) must start with amqp:// or amqps://", redact(url)));
            }
            let uri: AMQPUri = url
                .parse()
                .map_err(|e: String| format!("{which} ({}) is not an AMQP URL: {e}", redact(url)))?;
            let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
            if nodes.iter().any(|n| n.addr == addr) {
                return Err(format!("{which} ({addr}) is listed twice"));
            }
            nodes.push(Node {
                url: (*url).to_owned(),
                addr,
            });
        }
        let start = rand::random_range(0..nodes.len());
        Ok(Self {
            nodes: nodes.into(),
            next: Arc::new(AtomicUsize::new(start)),
        })
    }

    /// Each node's `host:port`, in the order listed.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Connects to the first node that accepts, trying each once (see the module doc); the
    /// connection is named `name` on the broker.
    pub async fn connect(&self, name: &str) -> Result<Connected, ConnectError> {
        let n = self.nodes.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let node = &self.nodes[i];
            let props = ConnectionProperties::default().with_connection_name(name.into());
            let error = match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&node.url, props)).await {
                Ok(Ok(connection)) => {
                    self.next.store((i + 1) % n, Ordering::Relaxed);
                    tracing::info!(node = %node.addr, connection = name, "connected to RabbitMQ");
                    return Ok(Connected {
                        connection,
                        node: node.addr.clone(),
                    });
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
            };
            if n > 1 {
                tracing::warn!(node = %node.addr, connection = name, %error, "cannot connect to this RabbitMQ node; trying the next");
            }
            failures.push(format!("{}: {error}", node.addr));
        }
        // The next attempt starts one further on, whichever node failed how.
        self.next.store((start + 1) % n, Ordering::Relaxed);
        Err(ConnectError(failures.join("; ")))
    }
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// `AMQP_REPLICATION_FACTOR`: over how many nodes the queues and streams a service declares
/// are replicated (at least 1; RabbitMQ caps it at the cluster's size).
pub fn replication_factor() -> Result<u32, SettingError> {
    let n: u32 = settings::parsed("AMQP_REPLICATION_FACTOR", DEFAULT_REPLICATION_FACTOR)?;
    if n == 0 {
        return Err(SettingError::new("AMQP_REPLICATION_FACTOR", "must be at least 1"));
    }
    Ok(n)
}

/// Whether a queue got the replication argument when declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// Declared (or found) with the argument.
    Applied,
    /// The queue existed without the argument (declared by a version before it): it is kept as
    /// it is, with the replicas it has (docs/operations.md says how to add some).
    Existing,
}

/// Declares the durable queue `name` with `args` plus `replication_key` = `factor` (the
/// quorum queue's `x-quorum-initial-group-size`, the stream's `x-initial-cluster-size`), on a
/// channel of its own. RabbitMQ refuses (406, precondition failed) to declare again a queue
/// that exists with other arguments, and queues declared before this setting have none: such
/// a queue is then declared as it was, without the argument, and a warning says so.
pub async fn declare_replicated(
    conn: &Connection,
    name: &str,
    args: &FieldTable,
    replication_key: &str,
    factor: u32,
) -> Result<Replication, lapin::Error> {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut with = args.clone();
    with.insert(
        replication_key.into(),
        AMQPValue::LongInt(i32::try_from(factor).unwrap_or(i32::MAX)),
    );
    let ch = conn.create_channel().await?;
    let first = ch.queue_declare(name.into(), opts, with).await;
    let Err(refused) = first else {
        let _ = ch.close(200, "declared".into()).await;
        return Ok(Replication::Applied);
    };
    if !is_precondition_failed(&refused) {
        return Err(refused);
    }
    // The refusal closed that channel.
    let ch = conn.create_channel().await?;
    match ch.queue_declare(name.into(), opts, args.clone()).await {
        Ok(_) => {
            let _ = ch.close(200, "declared".into()).await;
            tracing::warn!(
                queue = name,
                argument = replication_key,
                factor,
                "this queue was declared before AMQP_REPLICATION_FACTOR existed and keeps the replicas it has; \
                 docs/operations.md (\"A RabbitMQ cluster\") says how to add replicas"
            );
            Ok(Replication::Existing)
        }
        // Another difference (e.g. an earlier factor): the first refusal names it.
        Err(_) => Err(refused),
    }
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 406)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_nodes() {
        let one = AmqpNodes::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(one.addrs(), ["127.0.0.1:5672"]);
        let three = AmqpNodes::parse("amqp://u:p@a:5672/%2f, amqp://u:p@b:5673/%2f,amqp://u:p@c/%2f").unwrap();
        assert_eq!(three.addrs(), ["a:5672", "b:5673", "c:5672"]);
        let e = AmqpNodes::parse("amqp://u:secret@a/%2f,").unwrap_err();
        assert!(e.contains("node 2 of 2 is empty"), "{e}");
        let e = AmqpNodes::parse("amqp://u:secret@a/%2f,http://u:secret@b/").unwrap_err();
        assert!(
            e.contains("node 2 of 2") && e.contains("amqp://") && !e.contains("secret"),
            "{e}"
        );
        let e = AmqpNodes::parse("amqp://u:secret@a:99999/%2f").unwrap_err();
        assert!(e.contains("the URL") && !e.contains("secret"), "{e}");
        let e = AmqpNodes::parse("amqp://a:5672/%2f,amqp://a:5672/other").unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        assert!(!format!("{three:?}").contains(":p@"));
    }

    #[tokio::test]
    async fn connecting_tries_every_node_and_moves_the_start_on() {
        // Ports where nothing listens: refused at once, so each attempt fails quickly.
        let dead = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (a, b) = (dead(), dead());
        let nodes = AmqpNodes::parse(&format!("amqp://127.0.0.1:{a}/%2f,amqp://127.0.0.1:{b}/%2f")).unwrap();
        let start = nodes.next.load(Ordering::Relaxed);
        let e = nodes.connect("test").await.err().unwrap().to_string();
        assert!(
            e.contains(&format!("127.0.0.1:{a}")) && e.contains(&format!("127.0.0.1:{b}")),
            "{e}"
        );
        assert_eq!(nodes.next.load(Ordering::Relaxed), (start + 1) % 2);
    }
}
