//! A TCP proxy a test puts between a service and PostgreSQL, RabbitMQ or Redis, and cuts and
//! restores at will (as crates.io's chaos proxy does): cutting closes every open connection
//! and refuses new ones until restored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy to one target address.
pub struct ChaosProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

struct Inner {
    target: SocketAddr,
    cut: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
    /// Added to every chunk forwarded (0: none), see [`ChaosProxy::slow`].
    delay_ms: AtomicU64,
}

impl ChaosProxy {
    /// Starts a proxy on a free local port forwarding to `target` (e.g. `127.0.0.1:5672`).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind chaos proxy");
        let addr = listener.local_addr().expect("proxy address");
        let inner = Arc::new(Inner {
            target,
            cut: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
        });
        let state = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if state.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = state.target;
                let link = state.clone();
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        pump(client, server, link).await;
                    }
                });
                let mut conns = state.connections.lock().expect("proxy lock");
                conns.retain(|t| !t.is_finished());
                conns.push(task);
            }
        });
        Self { addr, inner, accept }
    }

    /// The address clients should connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with its `host:port` (the target's) replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let target = self.inner.target.to_string();
        assert!(url.contains(&target), "{url} does not point at {target}");
        url.replacen(&target, &self.addr.to_string(), 1)
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        for t in self.inner.connections.lock().expect("proxy lock").drain(..) {
            // Aborting drops both sockets: each side sees its connection closed.
            t.abort();
        }
    }

    /// Lets connections through again (at full speed: any [`slow`](Self::slow) ends too).
    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
        self.inner.delay_ms.store(0, Ordering::SeqCst);
    }

    /// Slows every connection, open and new, down: each chunk forwarded either way waits
    /// `delay` first (`Duration::ZERO` or [`restore`](Self::restore): full speed again).
    pub fn slow(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.inner.delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// Forwards both ways between `client` and `server` until both directions end (as
/// `copy_bidirectional` does), or either fails.
async fn pump(client: TcpStream, server: TcpStream, inner: Arc<Inner>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = forward(client_read, server_write, inner.clone());
    let down = forward(server_read, client_write, inner);
    tokio::pin!(up, down);
    tokio::select! {
        clean = &mut up => if clean { down.await; },
        clean = &mut down => if clean { up.await; },
    }
}

/// Copies `from` to `to`, delaying each chunk by the proxy's current delay; `true` on a
/// clean end of stream (then shuts `to`'s writing down), `false` on an error.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, inner: Arc<Inner>) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return false,
        };
        let delay = inner.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
    let _ = to.shutdown().await;
    true
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
