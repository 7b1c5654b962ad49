//! The HTTP listener: `/healthz` (the process runs), `/readyz` (it can
//! reach what it needs and is not draining) and `/metrics` (Prometheus text
//! format, docs/operations.md), plus the routes a service adds
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

/// `/metrics`: everything registered in the process's registry, in the
/// Prometheus text exposition format (version 0.0.4).
async fn metrics(State(registry): State<prometheus::Registry>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&registry.gather()) {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {error}\n"),
        )
            .into_response(),
    }
}

/// The routes every process serves.
fn base_routes(readiness: Readiness, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
        .merge(
            Router::new()
                .route("/metrics", get(metrics))
                .with_state(registry),
        )
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

/// Serve `/healthz`, `/readyz`, `/metrics` (from `registry`) and `routes`
/// until `shutdown` resolves. The peer's address reaches handlers as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    registry: prometheus::Registry,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = base_routes(readiness, registry).merge(routes);
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

/// The same routes over TLS (wss://, https://). Each connection is handed to
/// hyper with upgrades enabled (WebSocket) and the peer address as axum's
/// `ConnectInfo`, like the plain listener.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    readiness: Readiness,
    registry: prometheus::Registry,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt;

    let app = base_routes(readiness, registry).merge(routes);
    let mut shutdown = std::pin::pin!(shutdown);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "https accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream))
                    .await;
            let tls_stream = match handshake {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "https handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "https handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    app.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            if let Err(error) = Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls_stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "https connection ended with an error");
            }
        });
    }
    connections.close();
    // Streams end through the connection-manager's own shutdown; give them a moment.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connections.wait()).await;
}
