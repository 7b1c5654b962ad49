//! The HTTP listener: `/healthz` (the process runs) and `/readyz` (it can
//! reach what it needs and is not draining), plus the routes a service adds
//! (the connection-manager's XMPP over WebSocket and XEP-0156 host-meta).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use starling_storage::Storage;

#[derive(Clone)]
pub struct Readiness {
    storage: Arc<Storage>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new(storage: Arc<Storage>) -> Self {
        Readiness {
            storage,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    if readiness.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    match readiness.storage.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unreachable: {error}\n"),
        ),
    }
}

/// Serve `/healthz`, `/readyz` and `routes` until `shutdown` resolves. The
/// peer's address reaches handlers as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
        .merge(routes);
    if let Err(error) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    {
        tracing::error!(%error, "http listener failed");
    }
}
