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
//!
//! The modules form layers; each uses only the ones below it (no module
//! imports one that imports it: `scripts/module-graph.py
//! services/connection-manager/src` prints the graph and fails on a cycle):
//!
//! ```text
//! lib (ConnectionManager)     the public API: build, bind, run
//! listener::{tcp, websocket, bosh}
//!                             accept, per-address limit, negotiate, serve
//! session, component, delivery, drain
//!                             a bound stream; an external component (XEP-0114);
//!                             the bus dispatcher; the drain
//! s2s::{inbound, outbound}    server-to-server streams in and out (RFC 6120)
//! s2s::{state, connect, dialback}
//!                             what the node's s2s side shares; opening a
//!                             stream to a remote domain; XEP-0220 keys
//! reading                     the reading side of an authenticated stream
//! negotiation::{header, starttls, sasl, bind, features, stream}, register
//!                             the steps before a session, each in its module
//! shared                      what every connection task shares (Shared)
//! outbound                    a connection's bounded queue and its writer
//! csi                         what an inactive client is not sent yet (XEP-0352)
//! transport::{tcp, websocket, bosh, tls}
//!                             the Transport trait and its implementations
//! framing, queued, xml        stream and WebSocket framing, queued stanzas
//! config, error, metrics, limits, drain_state
//! ```

#![forbid(unsafe_code)]

mod component;
mod config;
mod csi;
mod delivery;
mod drain;
mod drain_state;
mod error;
mod features;
mod framing;
mod limits;
mod listener;
mod metrics;
mod negotiation;
mod outbound;
mod outbound_bytes;
mod proxy;
mod queued;
mod reading;
mod register;
mod reroute;
mod s2s;
mod session;
mod shared;
mod sm;
mod sm_session;
mod transport;
pub mod upload;
mod xml;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use starling_api::{RouterApi, SessionRecord, StorageApi};
use starling_bus::{Bus, DeliveryReceiver};
use starling_jid::BareJid;
use starling_sasl::ServerSecret;
use starling_xmpp::Limits;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{CmConfig, CmLimits, ComponentSettings, S2sHost, S2sSettings, TlsSettings};
pub use drain::DrainHandle;
pub use drain_state::{DrainPhase, DEFAULT_DRAIN_WINDOW};
pub use error::CmError;
pub use features::edge_features;
pub use listener::bosh::BOSH_PATH;
pub use listener::websocket::WEBSOCKET_PATH;
pub use metrics::CmMetrics;
pub use proxy::{BadNetwork, TrustedProxies};
pub use sm::{SmSettings, StreamResumption};
pub use transport::tls::ALPN_XMPP_CLIENT;
pub use transport::TlsChannel;

use drain_state::DrainState;
use features::stream_features;
use limits::IpLimits;
use listener::tcp::ListenerKind;
use shared::Shared;

/// How long `run` waits for the connections to close after the shutdown signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

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

/// A view of this node's open server-to-server streams (the admin API's
/// ListS2sStreams; published to Redis in a cluster).
#[derive(Clone)]
pub struct LocalS2sStreams {
    shared: Arc<Shared>,
}

impl LocalS2sStreams {
    /// One row per remote domain and open stream, ordered by domain; empty
    /// when federation is off.
    pub fn streams(&self) -> Vec<starling_api::S2sStreamInfo> {
        match self.shared.s2s.as_ref() {
            Some(s2s) => s2s.stream_views(&self.shared.node_id),
            None => Vec::new(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }
}

/// The connection-manager, configured but not yet listening.
pub struct ConnectionManager {
    shared: Arc<Shared>,
    c2s_addr: Option<SocketAddr>,
    c2s_tls_addr: Option<SocketAddr>,
    component_addr: Option<SocketAddr>,
    s2s_addr: Option<SocketAddr>,
    s2s_tls_addr: Option<SocketAddr>,
    bus: Arc<dyn Bus>,
}

impl ConnectionManager {
    /// Validate the configuration and load (or generate) the TLS certificate.
    pub fn new(
        config: CmConfig,
        router: Arc<dyn RouterApi>,
        storage: Arc<dyn StorageApi>,
        bus: Arc<dyn Bus>,
        resumption: Option<sm::StreamResumption>,
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
        let components =
            config::Components::new(config.components, &domain, limits.max_stanza_bytes)
                .map_err(CmError::Config)?;
        for component_domain in components.domains() {
            config.metrics.component().declare(component_domain);
        }
        let tls = transport::tls::load(&config.tls, &domain)?;
        let s2s = if config.s2s.enabled {
            if config.s2s.dialback_secret.is_empty() {
                return Err(CmError::Config(
                    "s2s.dialback_secret must be set when s2s.enabled is true".to_string(),
                ));
            }
            let certificates = Arc::new(s2s::tls::S2sTls::new(
                config.s2s.ca_file.as_deref(),
                tls.certificates.clone(),
                tls.key.clone_key(),
            )?);
            let connector = s2s::connect::Connector::new(
                domain.clone(),
                config.s2s.clone(),
                Limits {
                    max_stanza_bytes: limits.max_stanza_bytes,
                    max_depth: limits.max_depth,
                    ..Limits::default()
                },
                Arc::clone(&certificates),
            )?;
            Some(s2s::state::S2s::new(
                connector,
                certificates,
                config.metrics.s2s().clone(),
            )?)
        } else {
            None
        };
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
        if config.sm.enabled && config.sm.max_unacked_stanzas == 0 {
            return Err(CmError::Config(
                "sm.max_unacked_stanzas must be at least 1".to_string(),
            ));
        }
        let router_for_reroute = Arc::clone(&router);
        let journal = resumption.as_ref().map(|resumption| {
            sm::spawn_journal(
                Arc::clone(&resumption.store),
                Arc::clone(&router),
                config.metrics.clone(),
            )
        });
        let outbound_bytes = config.metrics.outbound_bytes(
            limits.outbound_queue_bytes,
            limits.outbound_queue_bytes_total,
        );
        let shared = Shared {
            s2s,
            outbound_bytes,
            node_id: config.node_id,
            domain,
            components,
            limits,
            parser_limits,
            registration_enabled: config.registration_enabled,
            csi_enabled: config.csi_enabled,
            sasl2_enabled: config.sasl2_enabled,
            carbons_enabled: config.carbons_enabled,
            fast_token_ttl_secs: config.fast_token_ttl_secs,
            stream_features: stream_features(
                config.registration_enabled,
                config.sm.enabled,
                config.csi_enabled,
            ),
            require_tls: config.require_tls,
            proxies: config.proxies,
            router,
            storage,
            starttls: TlsAcceptor::from(tls.starttls),
            direct_tls: TlsAcceptor::from(tls.direct_tls),
            https: TlsAcceptor::from(tls.https),
            // Every node serving the domain holds the same key, and it outlives
            // restarts: fake salts stay stable across the cluster.
            scram_secret: ServerSecret::derive_from(&tls.key_pem),
            tls_server_end_point: tls.server_end_point,
            connections: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            ip_limits,
            metrics: config.metrics,
            drain: DrainState::new(&shutdown, config.drain_window),
            shutdown,
            bus: Arc::clone(&bus),
            sm: config.sm,
            resumption,
            journal,
            ended_streams: Default::default(),
            rerouters: reroute::spawn_rerouters(Arc::clone(&router_for_reroute)),
        };
        Ok(ConnectionManager {
            shared: Arc::new(shared),
            c2s_addr: config.c2s_addr,
            c2s_tls_addr: config.c2s_tls_addr,
            component_addr: config.component_addr,
            s2s_addr: config.s2s_addr.filter(|_| config.s2s.enabled),
            s2s_tls_addr: config.s2s_tls_addr.filter(|_| config.s2s.enabled),
            bus,
        })
    }

    /// Bind the listeners (so errors like "address in use" surface before run), subscribe to the bus.
    pub async fn bind(self) -> Result<BoundConnectionManager, CmError> {
        let mut listeners = Vec::new();
        for (kind, addr) in [
            (ListenerKind::StartTls, self.c2s_addr),
            (ListenerKind::DirectTls, self.c2s_tls_addr),
            (ListenerKind::Component, self.component_addr),
            (ListenerKind::S2s, self.s2s_addr),
            (ListenerKind::S2sTls, self.s2s_tls_addr),
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
        listener::websocket::router(Arc::clone(&self.shared), self.connections.clone()).merge(
            listener::bosh::router(Arc::clone(&self.shared), self.connections.clone()),
        )
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

    /// A view of this node's open server-to-server streams.
    pub fn local_s2s_streams(&self) -> LocalS2sStreams {
        LocalS2sStreams {
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
            accept_loops.push(tokio::spawn(listener::tcp::accept_loop(
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
