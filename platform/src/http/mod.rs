//! HTTP plumbing shared by the services: middleware, the JSON body and path id extractors, the
//! ops endpoints, and serving with graceful shutdown.

pub mod access_log;
pub mod admin;
pub mod json;
pub mod layers;
pub mod openapi;
pub mod ops;
pub mod path;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Binds `addr`, naming the setting if that fails.
pub async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, crate::settings::SettingError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| crate::settings::SettingError::new(setting, format!("cannot listen on {addr}: {e}")))
}

/// How long a client may take to send a request's head (request line and headers), and how
/// long an idle keep-alive connection may wait for its next request. A slow client that
/// trickles its headers (slow loris) or parks idle connections is cut off after this, so it
/// can hold a connection only briefly and never starve the server.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` until `shutdown` resolves, then lets in-flight requests finish.
///
/// HTTP/1.1 over hyper, with [`HEADER_READ_TIMEOUT`] on every request head (axum's own
/// `serve` sets no timer, so it has no such timeout and a slow client could keep a connection
/// forever). Each request carries [`ConnectInfo`] of the peer's address.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req.map(Body::new))
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
