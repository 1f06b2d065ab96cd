//! HTTP plumbing shared by the services: middleware, the JSON body extractor, the ops
//! endpoints, and serving with graceful shutdown.

pub mod json;
pub mod layers;
pub mod ops;

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

/// Binds `addr`, naming the setting if that fails.
pub async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, crate::settings::SettingError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| crate::settings::SettingError::new(setting, format!("cannot listen on {addr}: {e}")))
}

/// Serves `router` until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
