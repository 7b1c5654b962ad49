//! What every connection task of the node shares: its identity and limits,
//! the services it calls, the TLS acceptors, the bound connections by id, the
//! metrics, and the shutdown and drain signals. Built by `ConnectionManager`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use starling_api::{ConnId, Features, RouterApi, StorageApi};
use starling_sasl::ServerSecret;
use starling_xmpp::Limits;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::CmLimits;
use crate::drain_state::DrainState;
use crate::limits::IpLimits;
use crate::metrics::CmMetrics;
use crate::outbound::ConnectionHandle;
use crate::outbound_bytes::OutboundBytes;

/// What every connection task of the node shares.
pub(crate) struct Shared {
    /// Federation (`crate::s2s`); `None` when `s2s.enabled` is off.
    pub s2s: Option<crate::s2s::state::S2s>,
    pub node_id: String,
    /// The served domain, normalised.
    pub domain: String,
    /// External components (XEP-0114) that may connect, by domain.
    pub components: crate::config::Components,
    pub limits: CmLimits,
    /// The byte bound of every outbound queue of the node (`limits.outbound_queue_bytes*`).
    pub outbound_bytes: OutboundBytes,
    pub parser_limits: Limits,
    pub registration_enabled: bool,
    /// XEP-0352 client state indication (`crate::csi`).
    pub csi_enabled: bool,
    /// SASL2 (XEP-0388) with Bind 2 (XEP-0386) offered beside RFC 6120 SASL.
    pub sasl2_enabled: bool,
    /// The routers answer XEP-0280 carbons: Bind 2 may enable them inline.
    pub carbons_enabled: bool,
    /// FAST tokens' lifetime (XEP-0484); 0: FAST is not offered.
    pub fast_token_ttl_secs: u64,
    /// The stream features offered, from the features' declarations (`crate::features`).
    pub stream_features: Features,
    pub require_tls: bool,
    /// Whose PROXY header (stream listeners) is read (`crate::proxy`).
    pub proxies: crate::proxy::TrustedProxies,
    pub router: Arc<dyn RouterApi>,
    pub storage: Arc<dyn StorageApi>,
    pub starttls: TlsAcceptor,
    pub direct_tls: TlsAcceptor,
    pub https: TlsAcceptor,
    /// Fake salts of unknown accounts derive from it (RFC 5802 section 9).
    pub scram_secret: ServerSecret,
    /// The `tls-server-end-point` channel binding data of the certificate
    /// the TLS acceptors present (RFC 5929 section 4.1), if defined.
    pub tls_server_end_point: Option<Vec<u8>>,
    /// The bound connections of this node, by connection id.
    pub connections: RwLock<HashMap<ConnId, Arc<ConnectionHandle>>>,
    /// The id of the next connection (`next_conn_id`); starts at 1.
    pub next_conn: AtomicU64,
    pub ip_limits: Arc<IpLimits>,
    pub metrics: CmMetrics,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Graceful drain: its phase, and the token that stops accepting.
    pub drain: DrainState,
    /// Where streams taken over by a resumption are closed (`Delivery::Close`).
    pub bus: Arc<dyn starling_bus::Bus>,
    /// Stream management (XEP-0198).
    pub sm: crate::sm::SmSettings,
    /// Resumption state and the registry, when resumption is on.
    pub resumption: Option<crate::sm::StreamResumption>,
    /// The node's journal task (with `resumption`).
    pub journal: Option<tokio::sync::mpsc::UnboundedSender<crate::sm::JournalOp>>,
    /// The rerouting tasks (`crate::reroute::spawn_rerouters`).
    pub rerouters: Vec<tokio::sync::mpsc::UnboundedSender<crate::reroute::Reroute>>,
    /// Resumable streams that ended here lately, by connection: a delivery
    /// still in flight to one is marked consumed before it is rerouted.
    pub ended_streams:
        parking_lot::Mutex<HashMap<ConnId, (crate::sm::JournalSink, std::time::Instant)>>,
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

    /// Hand `stanza`, which connection `conn` did not take, back to the
    /// router, after the stanzas that connection handed back before.
    pub fn reroute(
        &self,
        conn: ConnId,
        stanza: starling_xmpp::Element,
        journal: Option<tokio::sync::mpsc::UnboundedSender<crate::sm::JournalOp>>,
    ) {
        let reroute = crate::reroute::Reroute {
            stanza,
            failed: starling_api::SessionAddr {
                node: self.node_id.clone(),
                conn,
            },
            journal,
            // Still part of the delivery's trace (the current span), off its path.
            span: tracing::Span::current(),
        };
        let index = (conn as usize) % self.rerouters.len().max(1);
        if let Some(tx) = self.rerouters.get(index) {
            if tx.send(reroute).is_err() {
                tracing::warn!(conn, "rerouting task gone, a stanza was not rerouted");
            }
        }
    }

    /// A resumable stream's connection is gone from this node.
    pub fn note_ended_stream(&self, conn: ConnId, sink: crate::sm::JournalSink) {
        let now = std::time::Instant::now();
        let mut ended = self.ended_streams.lock();
        // What is still in flight arrives within moments; a minute is plenty.
        ended.retain(|_, (_, at)| now.duration_since(*at) < std::time::Duration::from_secs(60));
        ended.insert(conn, (sink, now));
    }

    /// The journal of a resumable stream that ended here lately on `conn`.
    pub fn ended_stream_journal(&self, conn: ConnId) -> Option<crate::sm::JournalSink> {
        self.ended_streams
            .lock()
            .get(&conn)
            .map(|(sink, _)| sink.clone())
    }

    /// Stream resumption is offered: on, with a timeout, and a store.
    pub fn resumption_offered(&self) -> bool {
        self.sm.enabled && self.sm.resume_timeout_secs > 0 && self.resumption.is_some()
    }
}
