//! The HTTP listener: `/healthz` (the process runs) and `/readyz` (it can
//! reach what it needs and is not draining), plus the routes a service adds
//! (the connection-manager's XMPP over WebSocket, BOSH and XEP-0156 host-meta).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `/readyz` checks: every dependency this process needs, and whether it drains.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// A dependency that must answer for the process to be ready.
    pub fn add_check(
        &mut self,
        name: &'static str,
        check: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) {
        self.checks.push((name, Arc::new(check)));
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
    for (name, check) in &readiness.checks {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(3), check()).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{name} unreachable: {error}\n"),
                )
            }
            Err(_) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{name} did not answer in time\n"),
                )
            }
        }
    }
    (StatusCode::OK, "ready\n".into())
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
