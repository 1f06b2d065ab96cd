//! A TCP proxy a test puts between a service and PostgreSQL, RabbitMQ or Redis, and cuts and
//! restores at will (as crates.io's chaos proxy does): cutting closes every open connection
//! and refuses new ones until restored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
        });
        let state = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if state.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = state.target;
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
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

    /// Lets connections through again.
    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
