//! Server-to-server streams (RFC 6120, `jabber:server`): federation with
//! other XMPP servers.
//!
//! - [`connect`]: opening a stream to a remote domain (resolution, STARTTLS
//!   or direct TLS, SASL EXTERNAL or dialback), and asking a remote domain
//!   to verify a dialback key.
//! - [`outbound`]: one outbound stream per remote domain owned by this node
//!   (the router claimed the domain for it in the registry, see
//!   `starling_api::S2S_RESOURCE_PREFIX`), with the bounded queue of what
//!   waits for it to open, bounced with the RFC 6120 section 10.4.3 error
//!   when it does not.
//! - [`inbound`]: the s2s listener: streams other servers open to us,
//!   authenticated by dialback, each stanza's `from` checked against the
//!   authenticated domains, then routed like any other stanza.
//! - [`dialback`]: XEP-0220 keys (XEP-0185) and elements.

pub(crate) mod connect;
pub(crate) mod dialback;
pub(crate) mod inbound;
pub(crate) mod outbound;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts, Registry};

/// Federation settings of a connection-manager (`s2s.*`, `tls.ca_file`).
#[derive(Clone)]
pub struct S2sSettings {
    /// `s2s.enabled`: the listener accepts and outbound streams open.
    pub enabled: bool,
    /// `s2s.dialback_secret`: the XEP-0185 secret, the same on every node.
    pub dialback_secret: String,
    /// `s2s.require_tls`: no stream without TLS, in and out (RFC 6120 section 5).
    pub require_tls: bool,
    /// `tls.ca_file`: trusted CAs besides the system's.
    pub ca_file: Option<PathBuf>,
    /// `s2s.hosts`: a fixed `host:port` per remote domain instead of DNS.
    pub hosts: HashMap<String, String>,
    /// `s2s.allow` / `s2s.deny` (normalised), for inbound streams too.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// `s2s.connect_timeout_secs`: the bounded wait of a queued stanza for
    /// its stream (resolution, connection, TLS, authentication).
    pub connect_timeout: Duration,
    /// `s2s.idle_timeout_secs`: an outbound stream with nothing to send for
    /// this long is closed.
    pub idle_timeout: Duration,
    /// `s2s.queue_stanzas` / `s2s.queue_bytes`: what one remote domain's
    /// stream may hold waiting; past it a stanza bounces at once.
    pub queue_stanzas: usize,
    pub queue_bytes: usize,
}

impl std::fmt::Debug for S2sSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("S2sSettings")
            .field("enabled", &self.enabled)
            .field("require_tls", &self.require_tls)
            .field("hosts", &self.hosts)
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .finish_non_exhaustive()
    }
}

impl Default for S2sSettings {
    fn default() -> Self {
        S2sSettings {
            enabled: false,
            dialback_secret: String::new(),
            require_tls: true,
            ca_file: None,
            hosts: HashMap::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            queue_stanzas: 1000,
            queue_bytes: 4 * 1024 * 1024,
        }
    }
}

impl S2sSettings {
    /// Whether streams with `domain` (normalised) are allowed.
    pub(crate) fn allows(&self, domain: &str) -> bool {
        self.enabled
            && !self.deny.iter().any(|denied| denied == domain)
            && (self.allow.is_empty() || self.allow.iter().any(|allowed| allowed == domain))
    }
}

/// The s2s metrics: outbound stanzas by outcome, streams by direction and outcome.
#[derive(Clone)]
pub(crate) struct S2sMetrics {
    stanzas: IntCounterVec,
    streams: IntCounterVec,
}

/// Outcomes of a stanza given to an outbound stream.
pub(crate) const STANZA_OUTCOMES: [&str; 5] = [
    "sent",
    "remote_server_not_found",
    "remote_server_timeout",
    "queue_full",
    "received",
];

impl S2sMetrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let stanzas = IntCounterVec::new(
            Opts::new(
                "starling_s2s_stanzas_total",
                "Server-to-server stanzas by outcome: sent (written to a remote domain's stream), remote_server_not_found and remote_server_timeout (bounced to the sender, RFC 6120 section 10.4.3), queue_full (bounced: s2s.queue_stanzas or s2s.queue_bytes), received (from an authenticated inbound stream, routed)",
            ),
            &["outcome"],
        )?;
        let streams = IntCounterVec::new(
            Opts::new(
                "starling_s2s_streams_total",
                "Server-to-server streams by direction (in, out) and outcome: external and dialback (authenticated that way), failed (not opened or refused), invalid_from (an inbound stanza whose from was not authenticated), denied (the policy refused the domain)",
            ),
            &["direction", "outcome"],
        )?;
        registry.register(Box::new(stanzas.clone()))?;
        registry.register(Box::new(streams.clone()))?;
        for outcome in STANZA_OUTCOMES {
            stanzas.with_label_values(&[outcome]);
        }
        Ok(S2sMetrics { stanzas, streams })
    }

    pub(crate) fn stanza(&self, outcome: &'static str) {
        self.stanzas.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn stream(&self, direction: &'static str, outcome: &'static str) {
        self.streams.with_label_values(&[direction, outcome]).inc();
    }
}

/// What the node's s2s side shares.
pub(crate) struct S2s {
    pub connector: connect::Connector,
    pub links: Mutex<HashMap<String, outbound::Link>>,
    pub next_link: std::sync::atomic::AtomicU64,
}

impl S2s {
    pub(crate) fn settings(&self) -> &S2sSettings {
        &self.connector.settings
    }
}
