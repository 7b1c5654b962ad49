//! The HTTP listener: `/healthz` (the process runs), `/readyz` (it can
//! reach what it needs and is not draining) and `/metrics` (Prometheus text
//! format, docs/operations.md), plus the routes a service adds
//! (the connection-manager's XMPP over WebSocket, BOSH and XEP-0156 host-meta).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use starling_connection_manager::TlsChannel;

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
/// until `shutdown` resolves, under `guard`'s limits. The peer's address
/// reaches handlers as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    guard: Arc<HttpGuard>,
    readiness: Readiness,
    registry: prometheus::Registry,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = base_routes(readiness, registry).merge(routes);
    serve_connections(listener, None, guard, app, shutdown).await;
}

/// The same routes over TLS (wss://, https://), under the same limits.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    guard: Arc<HttpGuard>,
    readiness: Readiness,
    registry: prometheus::Registry,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = base_routes(readiness, registry).merge(routes);
    serve_connections(listener, Some(acceptor), guard, app, shutdown).await;
}

/// Accept until `shutdown`; each connection is handed to hyper with upgrades
/// enabled (WebSocket), the peer address as axum's `ConnectInfo`, and the
/// limits of `guard`: connections per address, the head and body timeouts
/// (hyper's header timeout runs on its timer, which it needs to run at all)
/// and the requests in flight.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    guard: Arc<HttpGuard>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let stopping = tokio_util::sync::CancellationToken::new();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = guard.admit(peer.ip()) else {
            // Closed at once: no task, no buffer for an address over its share.
            drop(stream);
            continue;
        };
        let connection = HttpConnection {
            peer,
            guard: Arc::clone(&guard),
            app: app.clone(),
            stopping: stopping.clone(),
        };
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection.serve(stream, None).await,
                Some(acceptor) => {
                    let timeout = connection.guard.limits.header_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            // Channel binding data of this TLS session, for a
                            // wss:// WebSocket upgraded on it (RFC 5056).
                            let tls = TlsChannel::of(tls_stream.get_ref().1);
                            connection.serve(tls_stream, Some(tls)).await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "https handshake failed"),
                        Err(_) => {
                            connection.guard.timed_out(HttpTimeout::TlsHandshake);
                            tracing::debug!(%peer, "https handshake timed out");
                        }
                    }
                }
            }
        });
    }
    stopping.cancel();
    connections.close();
    // Upgraded streams end through the connection-manager's own shutdown;
    // requests in flight get a moment.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
}

/// One accepted HTTP connection and what serving it needs.
struct HttpConnection {
    peer: SocketAddr,
    guard: Arc<HttpGuard>,
    app: Router,
    stopping: tokio_util::sync::CancellationToken,
}

impl HttpConnection {
    async fn serve<S>(self, stream: S, tls: Option<TlsChannel>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use hyper_util::rt::{TokioIo, TokioTimer};

        let HttpConnection {
            peer,
            guard,
            app,
            stopping,
        } = self;
        let service_guard = Arc::clone(&guard);
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let guard = Arc::clone(&service_guard);
                let app = app.clone();
                let tls = tls.clone();
                async move { guard.handle(peer, tls, app, request).await }
            });
        // HTTP/1.1 only, served by hyper itself (hyper-util's auto builder
        // first waits for bytes to tell the version, with no timer: a client
        // that sends nothing would never be timed out). The header timeout runs
        // from accept, or from the end of the previous response on a kept-alive
        // connection (hyper 1.6 and later), until a request's head is whole:
        // the header and the idle timeout in one. Without a timer hyper never
        // fires it.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(guard.limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        let outcome = tokio::select! {
            outcome = connection.as_mut() => outcome,
            _ = stopping.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = outcome {
            if error.is_timeout() {
                guard.timed_out(HttpTimeout::Header);
            }
            tracing::debug!(%peer, %error, "http connection ended with an error");
        }
    }
}

/// The limits of the HTTP listeners (`limits.http_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From accept (or the end of the previous response) until a request's
    /// head is whole; also the TLS handshake's deadline.
    pub header_timeout: Duration,
    /// From a request's head until its body is whole.
    pub body_timeout: Duration,
    /// Open connections from one address, HTTP and HTTPS together.
    pub connections_per_ip: u32,
    /// Requests being handled at once (an upgraded WebSocket is no longer a
    /// request; a BOSH long poll is one until it is answered); more get 503.
    pub max_requests: u32,
}

/// Why an HTTP connection or request was cut short (the `phase` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpTimeout {
    TlsHandshake,
    Header,
    Body,
}

impl HttpTimeout {
    const ALL: [HttpTimeout; 3] = [
        HttpTimeout::TlsHandshake,
        HttpTimeout::Header,
        HttpTimeout::Body,
    ];

    fn label(self) -> &'static str {
        match self {
            HttpTimeout::TlsHandshake => "tls_handshake",
            HttpTimeout::Header => "header",
            HttpTimeout::Body => "body",
        }
    }
}

/// The limits shared by a process's HTTP listeners, with their counts and metrics.
pub struct HttpGuard {
    limits: HttpLimits,
    /// A trusted balancer's requests name their client in `X-Forwarded-For`:
    /// its connections carry many clients and are not held to
    /// `connections_per_ip`; each request's client is its `ConnectInfo`.
    proxies: starling_connection_manager::TrustedProxies,
    per_address: Mutex<HashMap<IpAddr, u32>>,
    requests: Arc<tokio::sync::Semaphore>,
    refused_per_address: prometheus::IntCounter,
    refused_requests: prometheus::IntCounter,
    timeouts: prometheus::IntCounterVec,
    open: prometheus::IntGauge,
}

impl HttpGuard {
    /// The guard of `limits`, its metrics registered in `registry`.
    pub fn new(
        limits: HttpLimits,
        proxies: starling_connection_manager::TrustedProxies,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Arc<Self>> {
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "starling_http_refused_total",
                "HTTP connections and requests refused by a limit, by reason",
            ),
            &["reason"],
        )?;
        let timeouts = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "starling_http_timeouts_total",
                "HTTP connections and requests cut short by a timeout, by phase",
            ),
            &["phase"],
        )?;
        let open = prometheus::IntGauge::new(
            "starling_http_connections",
            "Open connections on the HTTP listeners (upgraded WebSockets included)",
        )?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(timeouts.clone()))?;
        registry.register(Box::new(open.clone()))?;
        for phase in HttpTimeout::ALL {
            timeouts.with_label_values(&[phase.label()]);
        }
        Ok(Arc::new(HttpGuard {
            limits,
            proxies,
            per_address: Mutex::default(),
            requests: Arc::new(tokio::sync::Semaphore::new(limits.max_requests as usize)),
            refused_per_address: refused.with_label_values(&["connections_per_ip"]),
            refused_requests: refused.with_label_values(&["concurrent_requests"]),
            timeouts,
            open,
        }))
    }

    /// A slot for a new connection from `address`, or `None` when the address
    /// has `connections_per_ip` open already. A trusted balancer that
    /// forwards its clients' addresses is not counted: the per-address limits
    /// of the sessions behind it (WebSocket, BOSH) count its clients.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<ConnectionSlot> {
        if self.proxies.forwarded_for && self.proxies.trusts(address) {
            self.open.inc();
            return Some(ConnectionSlot {
                guard: Arc::clone(self),
                address: None,
            });
        }
        let mut per_address = self
            .per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = per_address.entry(address).or_insert(0);
        if *open >= self.limits.connections_per_ip {
            drop(per_address);
            self.refused_per_address.inc();
            tracing::debug!(%address, "http connection refused: too many from this address");
            return None;
        }
        *open += 1;
        self.open.inc();
        Some(ConnectionSlot {
            guard: Arc::clone(self),
            address: Some(address),
        })
    }

    fn timed_out(&self, phase: HttpTimeout) {
        self.timeouts.with_label_values(&[phase.label()]).inc();
    }

    /// One request: refused with 503 past `max_requests` in flight, else
    /// handed to `app` with its body held to `body_timeout`.
    async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        tls: Option<TlsChannel>,
        app: Router,
        mut request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<axum::response::Response, std::convert::Infallible> {
        use tower::ServiceExt;

        let Ok(_permit) = Arc::clone(&self.requests).try_acquire_owned() else {
            self.refused_requests.inc();
            let mut busy = axum::response::Response::new(axum::body::Body::from("busy\n"));
            *busy.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(busy);
        };
        // The client, as a trusted balancer names it (`proxy.forwarded_for`).
        let client = self.proxies.http_client(peer, request.headers());
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(client));
        if let Some(tls) = tls {
            request.extensions_mut().insert(tls);
        }
        let guard = Arc::clone(&self);
        let body_timeout = upload_body_timeout(&request, guard.limits.body_timeout);
        let request = request.map(move |body| {
            axum::body::Body::new(DeadlineBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep(body_timeout)),
                guard,
            })
        });
        app.oneshot(request).await
    }
}

/// The body deadline of a request: `body_timeout`, longer for a file PUT
/// to the upload service (XEP-0363) by its announced size.
fn upload_body_timeout(
    request: &hyper::Request<hyper::body::Incoming>,
    body_timeout: Duration,
) -> Duration {
    if request.method() != hyper::Method::PUT
        || !request
            .uri()
            .path()
            .starts_with(starling_api::upload::UPLOAD_PATH_PREFIX)
    {
        return body_timeout;
    }
    let content_length = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    starling_connection_manager::upload::put_body_deadline(body_timeout, content_length)
}

/// A connection counted against its address until it ends.
struct ConnectionSlot {
    guard: Arc<HttpGuard>,
    /// `None` for a trusted balancer's connection (not counted per address).
    address: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.guard.open.dec();
        let Some(address) = self.address else {
            return;
        };
        let mut per_address = self
            .guard
            .per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = per_address.get_mut(&address) {
            *open -= 1;
            if *open == 0 {
                per_address.remove(&address);
            }
        }
    }
}

/// A request body that must be whole `body_timeout` after the request's head.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    guard: Arc<HttpGuard>,
}

/// The error a body that came too slowly ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
struct BodyTimeout;

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(context) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(context).is_ready() {
            self.guard.timed_out(HttpTimeout::Body);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
