//! The connection-manager's Prometheus metrics (docs/operations.md lists them).
//!
//! Every label value is one of a small, fixed set (transport, mechanism,
//! result, SASL condition, stream error condition, stanza kind, limit): never
//! a JID nor an address. The handles the hot paths touch are resolved once,
//! so counting a stanza is one atomic increment.

use std::fmt;
use std::time::SystemTime;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use starling_xmpp::StanzaKind;

/// How a connection reached this node (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// The STARTTLS listener (5222), before and after STARTTLS.
    Tcp,
    /// The direct TLS listener (XEP-0368).
    Tls,
    WebSocket,
    Bosh,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::WebSocket => "websocket",
            Transport::Bosh => "bosh",
        }
    }
}

/// A limit that was hit (the `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A session read more slowly by its token bucket.
    StanzaRate,
    /// A client disconnected because its outbound queue was full.
    OutboundQueue,
    /// A connection refused: too many from one address.
    ConnectionsPerIp,
    /// An authentication refused: too many failures from one address.
    FailedAuthPerIp,
    /// Too many `<auth/>` attempts on one stream.
    AuthAttempts,
    /// No bound resource before the pre-authentication deadline.
    PreAuthTimeout,
    /// A client's outbound queue reached its byte bound (or the node's):
    /// counted with `OutboundQueue`, which closes the stream.
    OutboundQueueBytes,
    /// A stanza refused with `<policy-violation/>`: under `max_stanza_bytes`
    /// on the wire, over it as re-serialised with the stamped `from`.
    StanzaGrowth,
}

impl Limit {
    const ALL: [Limit; 8] = [
        Limit::StanzaRate,
        Limit::OutboundQueue,
        Limit::ConnectionsPerIp,
        Limit::FailedAuthPerIp,
        Limit::AuthAttempts,
        Limit::PreAuthTimeout,
        Limit::StanzaGrowth,
        Limit::OutboundQueueBytes,
    ];

    fn label(self) -> &'static str {
        match self {
            Limit::StanzaRate => "rate_limit",
            Limit::OutboundQueue => "outbound_queue",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::FailedAuthPerIp => "failed_auth_per_ip",
            Limit::AuthAttempts => "auth_attempts",
            Limit::PreAuthTimeout => "pre_auth_timeout",
            Limit::StanzaGrowth => "stanza_growth",
            Limit::OutboundQueueBytes => "outbound_queue_bytes",
        }
    }
}

const TRANSPORTS: [Transport; 4] = [
    Transport::Tcp,
    Transport::Tls,
    Transport::WebSocket,
    Transport::Bosh,
];
const KINDS: [StanzaKind; 3] = [StanzaKind::Message, StanzaKind::Presence, StanzaKind::Iq];
const MECHANISMS: [&str; 8] = [
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
    "HT-SHA-256-EXPR",
    "HT-SHA-256-ENDP",
    "HT-SHA-256-NONE",
];

fn kind_label(kind: StanzaKind) -> &'static str {
    match kind {
        StanzaKind::Message => "message",
        StanzaKind::Presence => "presence",
        StanzaKind::Iq => "iq",
    }
}

fn kind_index(kind: StanzaKind) -> usize {
    match kind {
        StanzaKind::Message => 0,
        StanzaKind::Presence => 1,
        StanzaKind::Iq => 2,
    }
}

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Tcp => 0,
        Transport::Tls => 1,
        Transport::WebSocket => 2,
        Transport::Bosh => 3,
    }
}

/// The connection-manager's metrics. Cheap to clone (every handle is shared).
/// [`CmMetrics::default`] counts into a registry nobody scrapes; use
/// [`CmMetrics::register`] to expose them.
#[derive(Clone)]
pub struct CmMetrics {
    /// By transport, then state: negotiating, bound.
    connections: [[IntGauge; 2]; 4],
    sessions: IntGauge,
    logins: IntCounterVec,
    sasl_failures: IntCounterVec,
    received: [IntCounter; 3],
    sent: [IntCounter; 3],
    stream_errors: IntCounterVec,
    limits: [IntCounter; 8],
    /// Bytes held by the outbound queues of the node (`crate::outbound_bytes`).
    outbound_queue_bytes: IntGauge,
    delivery_latency: [Histogram; 3],
    /// XEP-0198: streams enabled, resumed, failed resumptions, detached.
    sm_events: IntCounterVec,
    sm_journal_entries: IntCounter,
    /// XEP-0388/XEP-0386: SASL2 successes by what they completed.
    sasl2_events: IntCounterVec,
    /// PROXY protocol headers read from trusted balancers, by outcome.
    proxy_headers: IntCounterVec,
    /// SCRAM -PLUS failures that tell of a man in the middle.
    channel_binding_failures: IntCounterVec,
    csi: CsiMetrics,
    component: ComponentMetrics,
    s2s: S2sMetrics,
}

/// External components (XEP-0114), labelled by the component's configured
/// domain (a bounded set: only configured domains are ever labels; a stream
/// naming another domain counts under `domain=""`).
#[derive(Clone)]
pub(crate) struct ComponentMetrics {
    connected: IntGaugeVec,
    stanzas: IntCounterVec,
    refused: IntCounterVec,
    throttled: IntCounterVec,
}

impl ComponentMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connected = IntGaugeVec::new(
            Opts::new(
                "starling_component_connected",
                "External components (XEP-0114) with an authenticated stream on this connection-manager, by domain",
            ),
            &["domain"],
        )?;
        let stanzas = IntCounterVec::new(
            Opts::new(
                "starling_component_stanzas_total",
                "Stanzas an external component sent (direction in, routed) or was given (direction out, queued for its stream), by domain",
            ),
            &["domain", "direction"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "starling_component_refused_total",
                "What an external component's stream refused, by domain and reason: not_authorized (wrong handshake, or a stanza before it), host_unknown (no such component), invalid_namespace, invalid_from (a from outside its domain), too_large (over its max_stanza_bytes), bad_stanza (not a message, presence or iq, or breaking its kind's rules), jid_malformed, replaced (a newer stream for the same domain took over), handshake_timeout",
            ),
            &["domain", "reason"],
        )?;
        let throttled = IntCounterVec::new(
            Opts::new(
                "starling_component_rate_limited_total",
                "Stanzas of an external component read late by its token bucket (components.stanzas_per_second), by domain",
            ),
            &["domain"],
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(stanzas.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(throttled.clone()))?;
        Ok(ComponentMetrics {
            connected,
            stanzas,
            refused,
            throttled,
        })
    }

    /// Every series of a configured component exists from the start, at 0.
    pub(crate) fn declare(&self, domain: &str) {
        self.connected.with_label_values(&[domain]);
        for direction in ["in", "out"] {
            self.stanzas.with_label_values(&[domain, direction]);
        }
        self.throttled.with_label_values(&[domain]);
    }

    pub(crate) fn connected(&self, domain: &str) -> IntGauge {
        self.connected.with_label_values(&[domain])
    }

    /// The counter of stanzas in one direction (`in` or `out`).
    pub(crate) fn stanzas(&self, domain: &str, direction: &'static str) -> IntCounter {
        self.stanzas.with_label_values(&[domain, direction])
    }

    pub(crate) fn refused(&self, domain: &str, reason: &'static str) {
        self.refused.with_label_values(&[domain, reason]).inc();
    }

    pub(crate) fn throttled(&self, domain: &str) {
        self.throttled.with_label_values(&[domain]).inc();
    }
}

/// End-to-end latency buckets, from 100 microseconds to 5 seconds.
const DELIVERY_LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl fmt::Debug for CmMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmMetrics")
            .field("sessions", &self.sessions.get())
            .finish_non_exhaustive()
    }
}

impl Default for CmMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl CmMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections = IntGaugeVec::new(
            Opts::new(
                "starling_connections",
                "Open client connections by transport and state: negotiating (TLS, SASL, binding) or bound (a session), from accept (or the first BOSH request) to close",
            ),
            &["transport", "state"],
        )?;
        let sessions = IntGauge::new(
            "starling_sessions",
            "Client sessions with a bound resource on this connection-manager",
        )?;
        let logins = IntCounterVec::new(
            Opts::new(
                "starling_logins_total",
                "SASL authentications by mechanism and result (success or failure)",
            ),
            &["mechanism", "result"],
        )?;
        let sasl_failures = IntCounterVec::new(
            Opts::new(
                "starling_sasl_failures_total",
                "SASL failures by mechanism and RFC 6120 failure condition",
            ),
            &["mechanism", "reason"],
        )?;
        let received = IntCounterVec::new(
            Opts::new(
                "starling_stanzas_received_total",
                "Stanzas read from bound clients, by kind",
            ),
            &["kind"],
        )?;
        let sent = IntCounterVec::new(
            Opts::new(
                "starling_stanzas_sent_total",
                "Stanzas written to bound clients, by kind",
            ),
            &["kind"],
        )?;
        let stream_errors = IntCounterVec::new(
            Opts::new(
                "starling_stream_errors_total",
                "Stream errors sent to clients, by RFC 6120 condition",
            ),
            &["condition"],
        )?;
        let limits = IntCounterVec::new(
            Opts::new(
                "starling_limits_hit_total",
                "Times a connection-manager limit was hit, by limit",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(logins.clone()))?;
        registry.register(Box::new(sasl_failures.clone()))?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(stream_errors.clone()))?;
        registry.register(Box::new(limits.clone()))?;
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                "starling_stanza_delivery_latency_seconds",
                "End-to-end routing latency by stanza kind: from the sending connection-manager taking the stanza from its client to this connection-manager queueing it for the recipient's connection (wall clocks of two nodes: see docs/operations.md)",
            )
            .buckets(DELIVERY_LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )?;
        registry.register(Box::new(delivery_latency.clone()))?;
        let sm_events = IntCounterVec::new(
            Opts::new(
                "starling_sm_events_total",
                "Stream management (XEP-0198) events: enabled, enabled_resumable, resumed, resume_failed, detached, ended",
            ),
            &["event"],
        )?;
        let sm_journal_entries = IntCounter::new(
            "starling_sm_journal_entries_total",
            "Stream management journal entries (stanzas queued, acks) written to the resumption store",
        )?;
        registry.register(Box::new(sm_events.clone()))?;
        registry.register(Box::new(sm_journal_entries.clone()))?;
        let outbound_queue_bytes = IntGauge::new(
            "starling_outbound_queue_bytes",
            "Bytes of stanzas waiting in (or being written from) the outbound queues of this connection-manager",
        )?;
        registry.register(Box::new(outbound_queue_bytes.clone()))?;
        let sasl2_events = IntCounterVec::new(
            Opts::new(
                "starling_sasl2_events_total",
                "SASL2 (XEP-0388) events: authenticated (no bind), bound (Bind 2), resumed (XEP-0198 inline), bind_failed, inline_ignored (a Bind 2 request for a feature not offered inline), fast_token_issued, fast_invalidated (XEP-0484)",
            ),
            &["event"],
        )?;
        registry.register(Box::new(sasl2_events.clone()))?;
        let proxy_headers = IntCounterVec::new(
            Opts::new(
                "starling_proxy_headers_total",
                "PROXY protocol headers expected from trusted load balancers, by outcome: client (a client's address), local (the balancer's own connection), invalid, closed and timeout (the connection was dropped)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(proxy_headers.clone()))?;
        for outcome in ["client", "local", "invalid", "closed", "timeout"] {
            proxy_headers.with_label_values(&[outcome]);
        }
        let channel_binding_failures = IntCounterVec::new(
            Opts::new(
                "starling_sasl_channel_binding_failures_total",
                "SCRAM logins refused for channel binding (RFC 5802 section 6): mismatch (the client's channel binding data is another TLS session's), downgrade (gs2 flag 'y' where -PLUS was offered)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(channel_binding_failures.clone()))?;
        for reason in ["mismatch", "downgrade"] {
            channel_binding_failures.with_label_values(&[reason]);
        }
        let csi = CsiMetrics::register(registry)?;
        let component = ComponentMetrics::register(registry)?;
        let s2s = S2sMetrics::register(registry)?;
        // Every series of a bounded label set exists from the start, at 0.
        for mechanism in MECHANISMS {
            for result in ["success", "failure"] {
                logins.with_label_values(&[mechanism, result]);
            }
        }
        Ok(CmMetrics {
            connections: TRANSPORTS.map(|t| {
                ["negotiating", "bound"]
                    .map(|state| connections.with_label_values(&[t.label(), state]))
            }),
            sessions,
            logins,
            sasl_failures,
            received: KINDS.map(|kind| received.with_label_values(&[kind_label(kind)])),
            sent: KINDS.map(|kind| sent.with_label_values(&[kind_label(kind)])),
            stream_errors,
            limits: Limit::ALL.map(|limit| limits.with_label_values(&[limit.label()])),
            delivery_latency: KINDS
                .map(|kind| delivery_latency.with_label_values(&[kind_label(kind)])),
            sm_events,
            sm_journal_entries,
            sasl2_events,
            proxy_headers,
            channel_binding_failures,
            csi,
            component,
            s2s,
            outbound_queue_bytes,
        })
    }

    /// A stream management event (see `starling_sm_events_total`).
    pub(crate) fn sm_event(&self, event: &str) {
        self.sm_events.with_label_values(&[event]).inc();
    }

    /// A channel binding failure (see `starling_sasl_channel_binding_failures_total`).
    pub(crate) fn channel_binding_failure(&self, reason: &'static str) {
        self.channel_binding_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// A SASL2 event (see `starling_sasl2_events_total`).
    pub(crate) fn sasl2_event(&self, event: &'static str) {
        self.sasl2_events.with_label_values(&[event]).inc();
    }

    /// Journal entries written to the resumption store.
    pub(crate) fn sm_journaled(&self, entries: usize) {
        self.sm_journal_entries.inc_by(entries as u64);
    }

    /// XEP-0352 client state indication.
    pub(crate) fn csi(&self) -> &CsiMetrics {
        &self.csi
    }

    /// Server-to-server streams.
    pub(crate) fn s2s(&self) -> &S2sMetrics {
        &self.s2s
    }

    /// External components (XEP-0114).
    pub(crate) fn component(&self) -> &ComponentMetrics {
        &self.component
    }

    /// Count an open connection until the guard drops.
    pub(crate) fn connection(&self, transport: Transport) -> ConnectionGuard {
        let [negotiating, bound] = self.connections[transport_index(transport)].clone();
        negotiating.inc();
        ConnectionGuard {
            negotiating,
            bound,
            is_bound: false,
        }
    }

    /// A stanza that entered the cluster at `routed_at` (another node's clock,
    /// possibly) was queued for its recipient's connection now. A negative
    /// difference (clock skew) counts as 0.
    pub(crate) fn delivered(&self, kind: StanzaKind, routed_at: SystemTime) {
        let latency = SystemTime::now()
            .duration_since(routed_at)
            .unwrap_or_default();
        self.delivery_latency[kind_index(kind)].observe(latency.as_secs_f64());
    }

    pub(crate) fn set_sessions(&self, sessions: usize) {
        self.sessions
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }

    pub(crate) fn login(&self, mechanism: &'static str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.logins.with_label_values(&[mechanism, result]).inc();
    }

    /// `reason` is a SASL failure condition (RFC 6120 section 6.5).
    pub(crate) fn sasl_failure(&self, mechanism: &'static str, reason: &'static str) {
        self.sasl_failures
            .with_label_values(&[mechanism, reason])
            .inc();
    }

    pub(crate) fn stanza_received(&self, kind: StanzaKind) {
        self.received[kind_index(kind)].inc();
    }

    pub(crate) fn stanza_sent(&self, kind: StanzaKind) {
        self.sent[kind_index(kind)].inc();
    }

    /// `condition` is a stream error condition (RFC 6120 section 4.9.3).
    pub(crate) fn stream_error(&self, condition: &str) {
        self.stream_errors.with_label_values(&[condition]).inc();
    }

    /// The byte bound of the outbound queues, counting into these metrics.
    pub(crate) fn outbound_bytes(
        &self,
        per_connection: usize,
        node_total: usize,
    ) -> crate::outbound_bytes::OutboundBytes {
        crate::outbound_bytes::OutboundBytes::new(
            per_connection,
            node_total,
            self.outbound_queue_bytes.clone(),
            self.limits[Limit::ALL
                .iter()
                .position(|l| *l == Limit::OutboundQueueBytes)
                .unwrap_or(0)]
            .clone(),
        )
    }

    /// A PROXY header read, or the connection that did not send one (see
    /// `starling_proxy_headers_total`).
    pub(crate) fn proxy_header(&self, outcome: &'static str) {
        self.proxy_headers.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn limit_hit(&self, limit: Limit) {
        self.limits[Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0)].inc();
    }
}

/// Why stanzas held for an inactive client (XEP-0352, `crate::csi`) were
/// released (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsiFlush {
    /// The client sent `<active/>`.
    Active,
    /// A stanza that is not held arrived: the held ones go before it.
    Important,
    /// The buffer reached its bound (one stanza per contact).
    Limit,
    /// The stream ended: they went back with the queue, for rerouting.
    StreamEnd,
}

impl CsiFlush {
    const ALL: [CsiFlush; 4] = [
        CsiFlush::Active,
        CsiFlush::Important,
        CsiFlush::Limit,
        CsiFlush::StreamEnd,
    ];

    fn label(self) -> &'static str {
        match self {
            CsiFlush::Active => "active",
            CsiFlush::Important => "important",
            CsiFlush::Limit => "limit",
            CsiFlush::StreamEnd => "stream_end",
        }
    }
}

/// The XEP-0352 metrics: what inactive clients were spared.
#[derive(Clone)]
pub(crate) struct CsiMetrics {
    pub held: IntCounter,
    pub superseded: IntCounter,
    flushed: [IntCounter; 4],
    pub inactive_sessions: IntGauge,
}

impl Default for CsiMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl CsiMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let held = IntCounter::new(
            "starling_csi_stanzas_held_total",
            "Presence updates and chat-state-only messages held for inactive clients (XEP-0352)",
        )?;
        let superseded = IntCounter::new(
            "starling_csi_stanzas_superseded_total",
            "Held stanzas never sent because a newer one of the same contact (presence) or conversation (chat state) replaced them",
        )?;
        let flushed = IntCounterVec::new(
            Opts::new(
                "starling_csi_stanzas_flushed_total",
                "Held stanzas released, by reason: active (the client said so), important (a stanza that is not held came), limit (one per contact, half the outbound queue), stream_end (back with the queue for rerouting)",
            ),
            &["reason"],
        )?;
        let inactive_sessions = IntGauge::new(
            "starling_csi_inactive_sessions",
            "Sessions on this connection-manager whose client said it is inactive (XEP-0352)",
        )?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(superseded.clone()))?;
        registry.register(Box::new(flushed.clone()))?;
        registry.register(Box::new(inactive_sessions.clone()))?;
        Ok(CsiMetrics {
            held,
            superseded,
            flushed: CsiFlush::ALL.map(|reason| flushed.with_label_values(&[reason.label()])),
            inactive_sessions,
        })
    }

    pub(crate) fn flushed(&self, reason: CsiFlush, stanzas: usize) {
        let index = CsiFlush::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.flushed[index].inc_by(u64::try_from(stanzas).unwrap_or(u64::MAX));
    }

    #[cfg(test)]
    pub(crate) fn flushed_count(&self, reason: CsiFlush) -> u64 {
        let index = CsiFlush::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.flushed[index].get()
    }
}

/// An open connection in `starling_connections`, negotiating until
/// [`ConnectionGuard::bound`]; its gauge goes down on drop.
pub(crate) struct ConnectionGuard {
    negotiating: IntGauge,
    bound: IntGauge,
    is_bound: bool,
}

impl ConnectionGuard {
    /// The stream bound a resource: the connection now counts as `bound`.
    pub(crate) fn bound(&mut self) {
        if !self.is_bound {
            self.negotiating.dec();
            self.bound.inc();
            self.is_bound = true;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.is_bound {
            self.bound.dec();
        } else {
            self.negotiating.dec();
        }
    }
}

/// The s2s metrics: outbound stanzas by outcome, streams by direction and outcome.
#[derive(Clone)]
pub(crate) struct S2sMetrics {
    stanzas: IntCounterVec,
    streams: IntCounterVec,
    /// Per remote domain (`crate::s2s::state::StreamTable` decides which
    /// domains get a label of their own): open streams and stanzas, by
    /// direction.
    pub(crate) domain_streams: IntGaugeVec,
    pub(crate) domain_stanzas: IntCounterVec,
}

/// Outcomes of a stanza given to an outbound stream.
pub(crate) const STANZA_OUTCOMES: [&str; 6] = [
    "sent",
    "remote_server_not_found",
    "remote_server_timeout",
    "queue_full",
    "received",
    "rate_limited",
];

impl S2sMetrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let stanzas = IntCounterVec::new(
            Opts::new(
                "starling_s2s_stanzas_total",
                "Server-to-server stanzas by outcome: sent (written to a remote domain's stream), remote_server_not_found and remote_server_timeout (bounced to the sender, RFC 6120 section 10.4.3), queue_full (bounced: s2s.queue_stanzas or s2s.queue_bytes), received (from an authenticated inbound stream, routed), rate_limited (inbound, over s2s.max_stanzas_per_sec of its domain: answered resource-constraint)",
            ),
            &["outcome"],
        )?;
        let streams = IntCounterVec::new(
            Opts::new(
                "starling_s2s_streams_total",
                "Server-to-server streams by direction (in, out) and outcome: external and dialback (authenticated that way), failed (not opened or refused), invalid_from (an inbound stanza whose from was not authenticated), denied (the policy refused the domain), idle (an inbound stream closed after s2s.idle_timeout_secs without a stanza)",
            ),
            &["direction", "outcome"],
        )?;
        let domain_streams = IntGaugeVec::new(
            Opts::new(
                "starling_s2s_domain_streams",
                "Open server-to-server streams by remote domain and direction (in, out): a series for each domain with an open stream, up to s2s.metrics_domains of them; the others under domain=\"_other\"",
            ),
            &["domain", "direction"],
        )?;
        let domain_stanzas = IntCounterVec::new(
            Opts::new(
                "starling_s2s_domain_stanzas_total",
                "Server-to-server stanzas by remote domain and direction (in: received and routed, out: written), with the labels of starling_s2s_domain_streams; a domain's series goes when its last stream closes",
            ),
            &["domain", "direction"],
        )?;
        registry.register(Box::new(stanzas.clone()))?;
        registry.register(Box::new(streams.clone()))?;
        registry.register(Box::new(domain_streams.clone()))?;
        registry.register(Box::new(domain_stanzas.clone()))?;
        for outcome in STANZA_OUTCOMES {
            stanzas.with_label_values(&[outcome]);
        }
        Ok(S2sMetrics {
            stanzas,
            streams,
            domain_streams,
            domain_stanzas,
        })
    }

    pub(crate) fn stanza(&self, outcome: &'static str) {
        self.stanzas.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn stream(&self, direction: &'static str, outcome: &'static str) {
        self.streams.with_label_values(&[direction, outcome]).inc();
    }
}
