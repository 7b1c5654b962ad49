//! The connection-manager service: listeners, XML streams, TLS, SASL, resource binding, limits; the edge of the cluster.
//!
//! A client's stream (RFC 6120) ends here: STARTTLS on the c2s listener or
//! direct TLS (XEP-0368), SASL with SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN
//! (section 6), resource binding through the session-router (section 7), then
//! every stanza the client sends is checked, stamped with its full JID
//! (section 8.1.2.1) and handed to the router. Stanzas for this node's
//! sessions arrive on the bus and go to each connection's bounded queue.
//! WebSocket clients (RFC 7395) come in through the HTTP listener's
//! [`BoundConnectionManager::websocket_router`] and take the same path with
//! the WebSocket framing; BOSH clients (XEP-0206) come in at
//! [`BOSH_PATH`] as virtual connections with the same framing.
//!
//! ```text
//! accept -> [negotiation: header, STARTTLS, SASL, bind]  (absolute pre-auth deadline)
//!        -> [session: reader task -> router.route]        (token bucket on reads)
//!           [writer task <- bounded queue <- bus dispatcher]
//! ```

#![forbid(unsafe_code)]

mod bosh;
mod config;
mod delivery;
mod drain;
mod error;
mod framing;
mod limits;
mod metrics;
mod negotiation;
mod outbound;
mod register;
mod session;
mod tls;
mod transport;
mod websocket;
mod xml;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use starling_api::{ConnId, RouterApi, SessionRecord, StorageApi};
use starling_bus::{Bus, DeliveryReceiver};
use starling_jid::BareJid;
use starling_sasl::ServerSecret;
use starling_xmpp::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bosh::BOSH_PATH;
pub use config::{CmConfig, CmLimits, TlsSettings};
pub use drain::{DrainHandle, DrainPhase, DEFAULT_DRAIN_WINDOW};
pub use error::CmError;
pub use metrics::CmMetrics;
pub use tls::ALPN_XMPP_CLIENT;
pub use websocket::WEBSOCKET_PATH;

use limits::IpLimits;
use outbound::ConnectionHandle;

/// How long `run` waits for the connections to close after the shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    /// Plain TCP, STARTTLS offered (RFC 6120 section 5).
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
}

impl ListenerKind {
    fn name(self) -> &'static str {
        match self {
            ListenerKind::StartTls => "c2s",
            ListenerKind::DirectTls => "c2s_tls",
        }
    }
}

/// What every connection task of the node shares.
pub(crate) struct Shared {
    pub node_id: String,
    /// The served domain, normalised.
    pub domain: String,
    pub limits: CmLimits,
    pub parser_limits: Limits,
    pub registration_enabled: bool,
    pub require_tls: bool,
    pub router: Arc<dyn RouterApi>,
    pub storage: Arc<dyn StorageApi>,
    pub starttls: TlsAcceptor,
    pub direct_tls: TlsAcceptor,
    pub https: TlsAcceptor,
    /// Fake salts of unknown accounts derive from it (RFC 5802 section 9).
    pub scram_secret: ServerSecret,
    /// The bound connections of this node, by connection id.
    pub connections: RwLock<HashMap<ConnId, Arc<ConnectionHandle>>>,
    next_conn: AtomicU64,
    pub ip_limits: Arc<IpLimits>,
    pub metrics: CmMetrics,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Graceful drain: its phase, and the token that stops accepting.
    pub drain: drain::DrainState,
}

impl Shared {
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A bound (or binding) connection; `starling_sessions` follows the map.
    pub fn add_connection(&self, conn: ConnId, handle: Arc<ConnectionHandle>) {
        let mut connections = self.connections.write();
        connections.insert(conn, handle);
        self.metrics.set_sessions(connections.len());
    }

    pub fn remove_connection(&self, conn: ConnId) {
        let mut connections = self.connections.write();
        connections.remove(&conn);
        self.metrics.set_sessions(connections.len());
    }

    pub fn connection(&self, conn: ConnId) -> Option<Arc<ConnectionHandle>> {
        self.connections.read().get(&conn).cloned()
    }
}

/// A random stream id (RFC 6120 section 4.7.3: unique and unpredictable).
pub(crate) fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The sessions bound on this node. After Redis lost the routing state (a
/// restart without persistence), the node re-registers them from here: their
/// full JIDs, addresses, availability, priority and last broadcast presence.
#[derive(Clone)]
pub struct LocalSessions {
    shared: Arc<Shared>,
}

impl LocalSessions {
    pub fn records(&self) -> Vec<SessionRecord> {
        self.shared
            .connections
            .read()
            .values()
            .filter_map(|handle| handle.registry_view())
            .collect()
    }
}

/// The connection-manager, configured but not yet listening.
pub struct ConnectionManager {
    shared: Arc<Shared>,
    c2s_addr: Option<SocketAddr>,
    c2s_tls_addr: Option<SocketAddr>,
    bus: Arc<dyn Bus>,
}

impl ConnectionManager {
    /// Validate the configuration and load (or generate) the TLS certificate.
    pub fn new(
        config: CmConfig,
        router: Arc<dyn RouterApi>,
        storage: Arc<dyn StorageApi>,
        bus: Arc<dyn Bus>,
    ) -> Result<Self, CmError> {
        if config.node_id.is_empty() {
            return Err(CmError::Config("node_id must not be empty".to_string()));
        }
        let domain_jid = BareJid::domain_jid(&config.domain).map_err(|error| {
            CmError::Config(format!(
                "domain {:?} is not a valid domain: {error}",
                config.domain
            ))
        })?;
        if config.c2s_addr.is_none() && config.c2s_tls_addr.is_none() {
            return Err(CmError::Config(
                "neither c2s_addr nor c2s_tls_addr is set".to_string(),
            ));
        }
        let limits = config.limits.clone();
        if limits.max_stanza_bytes < 1024 {
            return Err(CmError::Config(
                "limits.max_stanza_bytes must be at least 1024".to_string(),
            ));
        }
        if limits.max_depth < 4 {
            return Err(CmError::Config(
                "limits.max_depth must be at least 4".to_string(),
            ));
        }
        if limits.max_auth_attempts == 0 {
            return Err(CmError::Config(
                "limits.max_auth_attempts must be at least 1".to_string(),
            ));
        }
        if limits.outbound_queue_stanzas == 0 {
            return Err(CmError::Config(
                "limits.outbound_queue_stanzas must be at least 1".to_string(),
            ));
        }
        let domain = domain_jid.domain().to_string();
        let tls = tls::load(&config.tls, &domain)?;
        let parser_limits = Limits {
            max_stanza_bytes: limits.max_stanza_bytes,
            max_depth: limits.max_depth,
            ..Limits::default()
        };
        let ip_limits = IpLimits::new(
            limits.max_connections_per_ip,
            limits.failed_auth_per_ip,
            limits.failed_auth_window,
        );
        let shutdown = CancellationToken::new();
        let shared = Shared {
            node_id: config.node_id,
            domain,
            limits,
            parser_limits,
            registration_enabled: config.registration_enabled,
            require_tls: config.require_tls,
            router,
            storage,
            starttls: TlsAcceptor::from(tls.starttls),
            direct_tls: TlsAcceptor::from(tls.direct_tls),
            https: TlsAcceptor::from(tls.https),
            // Every node serving the domain holds the same key, and it outlives
            // restarts: fake salts stay stable across the cluster.
            scram_secret: ServerSecret::derive_from(&tls.key_pem),
            connections: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            ip_limits,
            metrics: config.metrics,
            drain: drain::DrainState::new(&shutdown, config.drain_window),
            shutdown,
        };
        Ok(ConnectionManager {
            shared: Arc::new(shared),
            c2s_addr: config.c2s_addr,
            c2s_tls_addr: config.c2s_tls_addr,
            bus,
        })
    }

    /// Bind the listeners (so errors like "address in use" surface before run), subscribe to the bus.
    pub async fn bind(self) -> Result<BoundConnectionManager, CmError> {
        let mut listeners = Vec::new();
        for (kind, addr) in [
            (ListenerKind::StartTls, self.c2s_addr),
            (ListenerKind::DirectTls, self.c2s_tls_addr),
        ] {
            let Some(addr) = addr else { continue };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| CmError::Listen { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| CmError::Listen { addr, source })?;
            tracing::info!(listener = kind.name(), addr = %local, "listening");
            listeners.push((kind, local, listener));
        }
        let deliveries = self.bus.subscribe(&self.shared.node_id).await?;
        Ok(BoundConnectionManager {
            shared: self.shared,
            listeners,
            deliveries,
            connections: TaskTracker::new(),
        })
    }
}

/// The connection-manager with its listeners bound, ready to run.
pub struct BoundConnectionManager {
    shared: Arc<Shared>,
    listeners: Vec<(ListenerKind, SocketAddr, TcpListener)>,
    deliveries: DeliveryReceiver,
    /// Every connection task, TCP and WebSocket: `run` waits for them.
    connections: TaskTracker,
}

impl BoundConnectionManager {
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners
            .iter()
            .map(|(kind, addr, _)| (kind.name(), *addr))
            .collect()
    }

    /// The HTTP routes of the connection-manager: XMPP over WebSocket at
    /// [`WEBSOCKET_PATH`] (RFC 7395), BOSH at [`BOSH_PATH`] (XEP-0124,
    /// XEP-0206) and XEP-0156 discovery at
    /// `/.well-known/host-meta` and `/.well-known/host-meta.json`. Merge it
    /// into the HTTP listener's router and serve that with
    /// `into_make_service_with_connect_info::<SocketAddr>()`. Its streams end,
    /// like the TCP ones, when `run`'s shutdown signal comes.
    pub fn websocket_router(&self) -> axum::Router {
        websocket::router(Arc::clone(&self.shared), self.connections.clone()).merge(bosh::router(
            Arc::clone(&self.shared),
            self.connections.clone(),
        ))
    }

    /// The TLS acceptor for an HTTPS listener serving [`Self::websocket_router`]
    /// (the node's certificate, ALPN `http/1.1`).
    pub fn https_acceptor(&self) -> TlsAcceptor {
        self.shared.https.clone()
    }

    /// Start and watch this node's graceful drain.
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A view of the sessions bound on this node, as the registry should know them.
    pub fn local_sessions(&self) -> LocalSessions {
        LocalSessions {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serve until `shutdown` resolves, then close every stream with <system-shutdown/>, call router.unbind for each session, and return when all connection tasks are gone (with a deadline of a few seconds).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), CmError> {
        let BoundConnectionManager {
            shared,
            listeners,
            deliveries,
            connections,
        } = self;
        let dispatcher = tokio::spawn(delivery::dispatch(Arc::clone(&shared), deliveries));
        let mut accept_loops = Vec::new();
        for (kind, _, listener) in listeners {
            accept_loops.push(tokio::spawn(accept_loop(
                Arc::clone(&shared),
                kind,
                listener,
                connections.clone(),
            )));
        }

        shutdown.await;
        tracing::info!(node = %shared.node_id, "shutting down: closing every stream");
        // Stop accepting first, then every connection sees the same token.
        shared.shutdown.cancel();
        for accept_loop in accept_loops {
            let _ = accept_loop.await;
        }
        connections.close();
        if tokio::time::timeout(SHUTDOWN_DEADLINE, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "connections still open at the shutdown deadline"
            );
        }
        dispatcher.abort();
        let _ = dispatcher.await;
        Ok(())
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    kind: ListenerKind,
    listener: TcpListener,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            // Returning drops the listener: new connections are refused, not queued.
            _ = shared.drain.stop_accepting.cancelled() => {
                tracing::info!(listener = kind.name(), "listener closed");
                return;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = kind.name(), %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(permit) = shared.ip_limits.try_connect(peer.ip()) else {
            tracing::info!(peer = %peer, listener = kind.name(), "too many connections from one address");
            shared.metrics.limit_hit(metrics::Limit::ConnectionsPerIp);
            connections.spawn(negotiation::refuse_connection(
                Arc::clone(&shared),
                tcp,
                kind,
            ));
            continue;
        };
        connections.spawn(serve_connection(
            Arc::clone(&shared),
            tcp,
            peer,
            kind,
            permit,
        ));
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    permit: limits::ConnectionPermit,
) {
    let conn = shared.next_conn_id();
    let mut counted = shared.metrics.connection(match kind {
        ListenerKind::StartTls => metrics::Transport::Tcp,
        ListenerKind::DirectTls => metrics::Transport::Tls,
    });
    tracing::debug!(conn, peer = %peer, listener = kind.name(), "connection accepted");
    if let Some(bound) = negotiation::negotiate(Arc::clone(&shared), conn, tcp, peer, kind).await {
        counted.bound();
        session::run(shared, bound).await;
    }
    drop(permit);
    tracing::debug!(conn, peer = %peer, "connection closed");
}
