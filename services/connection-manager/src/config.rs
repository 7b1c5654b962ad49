//! The connection-manager's configuration: listeners, TLS material and the
//! per-connection and per-IP limits (RFC 6120 section 13.12, denial of service).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use starling_jid::normalize_domainpart;

/// What one connection-manager serves.
#[derive(Debug, Clone)]
pub struct CmConfig {
    /// This node's identity in the cluster, e.g. "cm-<hostname>-<random>";
    /// its bus channel is `deliver:{node_id}`.
    pub node_id: String,
    /// The served domain (normalised again at start).
    pub domain: String,
    /// The STARTTLS listener (5222, RFC 6120 section 5).
    pub c2s_addr: Option<SocketAddr>,
    /// The direct TLS listener (5223, XEP-0368).
    pub c2s_tls_addr: Option<SocketAddr>,
    /// The external component listener (XEP-0114, `jabber:component:accept`,
    /// plain TCP as the XEP says; 5347 by custom). `None`: no listener.
    pub component_addr: Option<SocketAddr>,
    /// The s2s listener (RFC 6120, 5269), used when `s2s.enabled`. `None`: no listener.
    pub s2s_addr: Option<SocketAddr>,
    /// The s2s direct TLS listener (XEP-0368, ALPN `xmpp-server`), used
    /// when `s2s.enabled`. `None`: no listener.
    pub s2s_tls_addr: Option<SocketAddr>,
    /// Federation (`s2s.*`).
    pub s2s: S2sSettings,
    /// The components that may connect, each with its own limits.
    pub components: Vec<ComponentSettings>,
    pub tls: TlsSettings,
    pub limits: CmLimits,
    /// XEP-0077 in-band registration (offered inside TLS only: it carries a password).
    pub registration_enabled: bool,
    /// XEP-0352 client state indication: offered after authentication; an
    /// inactive client's presence updates and chat states wait.
    pub csi_enabled: bool,
    /// Offer SASL2 (XEP-0388) with Bind 2 (XEP-0386) and inline stream
    /// management, carbons and client state beside RFC 6120 SASL.
    pub sasl2_enabled: bool,
    /// Message Carbons (XEP-0280) are on in the routers (`carbons.enabled`):
    /// Bind 2 offers to enable them inline.
    pub carbons_enabled: bool,
    /// FAST (XEP-0484) inside SASL2: how long an issued token is valid; 0
    /// offers no FAST.
    pub fast_token_ttl_secs: u64,
    /// True by default: no SASL before STARTTLS. False allows SCRAM on a
    /// plaintext stream (load tests); PLAIN is never offered nor accepted there.
    pub require_tls: bool,
    /// Load balancers whose word on the client's address is believed: the
    /// PROXY protocol on the stream listeners, `X-Forwarded-For` on HTTP.
    pub proxies: crate::proxy::TrustedProxies,
    /// The window of a drain that names none (SIGTERM, the admin API's
    /// DrainNode with 0): the streams are closed over it ([`crate::DEFAULT_DRAIN_WINDOW`]).
    pub drain_window: Duration,
    /// Stream management (XEP-0198).
    pub sm: crate::sm::SmSettings,
    /// Where the connection-manager counts (`CmMetrics::register` exposes
    /// them on a registry; the default counts into an unscraped one).
    pub metrics: crate::metrics::CmMetrics,
}

/// One external component (XEP-0114): its domain, shared secret and limits.
#[derive(Clone, PartialEq, Eq)]
pub struct ComponentSettings {
    /// The component's domain (normalised again at start): `to` of its
    /// stream header, the domain of every `from` it writes, and where the
    /// cluster routes every address at it.
    pub domain: String,
    /// The shared secret of the `<handshake/>` (XEP-0114 section 3).
    pub secret: String,
    /// The largest stanza the component may send; a larger one ends its
    /// stream with `<policy-violation/>`. At most `limits.max_stanza_bytes`
    /// (the parser's bound applies first).
    pub max_stanza_bytes: usize,
    /// The component's token bucket: stanzas per second (0 = unlimited) and
    /// burst. Over it the component is read more slowly, not disconnected.
    pub stanzas_per_second: u32,
    pub stanza_burst: u32,
}

impl std::fmt::Debug for ComponentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("ComponentSettings")
            .field("domain", &self.domain)
            .field("max_stanza_bytes", &self.max_stanza_bytes)
            .field("stanzas_per_second", &self.stanzas_per_second)
            .field("stanza_burst", &self.stanza_burst)
            .finish_non_exhaustive()
    }
}

/// The components this node accepts, by normalised domain.
#[derive(Debug, Default)]
pub(crate) struct Components {
    by_domain: HashMap<String, ComponentSettings>,
}

impl Components {
    /// Normalise and index the configured components; an invalid or
    /// duplicate domain, an empty secret or the served domain is refused
    /// with the key named.
    pub fn new(
        settings: Vec<ComponentSettings>,
        served_domain: &str,
        max_stanza_bytes: usize,
    ) -> Result<Self, String> {
        let mut by_domain = HashMap::new();
        for (index, mut component) in settings.into_iter().enumerate() {
            let domain = normalize_domainpart(&component.domain).map_err(|error| {
                format!(
                    "components[{index}].domain {:?} is not a valid domain: {error}",
                    component.domain
                )
            })?;
            if domain == served_domain {
                return Err(format!(
                    "components[{index}].domain {domain:?} is the served domain; a component needs a domain of its own (a subdomain)"
                ));
            }
            if component.secret.is_empty() {
                return Err(format!("components[{index}].secret must not be empty"));
            }
            if component.max_stanza_bytes == 0 || component.max_stanza_bytes > max_stanza_bytes {
                component.max_stanza_bytes = max_stanza_bytes;
            }
            component.domain = domain.clone();
            if by_domain.insert(domain.clone(), component).is_some() {
                return Err(format!(
                    "components[{index}].domain {domain:?} is configured twice"
                ));
            }
        }
        Ok(Components { by_domain })
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.by_domain.keys().map(String::as_str)
    }

    pub fn get(&self, domain: &str) -> Option<&ComponentSettings> {
        self.by_domain.get(domain)
    }
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain; with `key_path`.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
    /// With no certificate configured, a self-signed one for the domain is
    /// generated on first start and kept as `data_dir/tls/cert.pem` and
    /// `data_dir/tls/key.pem`, and reused on later starts.
    pub data_dir: PathBuf,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_path: None,
            key_path: None,
            data_dir: PathBuf::from("data"),
        }
    }
}

/// Limits of one connection-manager.
#[derive(Debug, Clone)]
pub struct CmLimits {
    /// The largest stanza or nonza, in bytes (RFC 6120 section 13.12).
    pub max_stanza_bytes: usize,
    /// The deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// An absolute deadline from accept until a resource is bound, not an idle
    /// timer; then `<connection-timeout/>`.
    pub pre_auth_timeout: Duration,
    /// `<auth/>` attempts per stream; one more closes the stream with
    /// `<policy-violation/>` (RFC 6120 section 6.4.5 allows 2 to 5 retries).
    pub max_auth_attempts: u32,
    /// Open connections from one IP address; more get `<policy-violation/>`.
    pub max_connections_per_ip: u32,
    /// Failed authentications from one IP address within `failed_auth_window`
    /// after which further attempts from that address get
    /// `<temporary-auth-failure/>` without the password being checked. The
    /// account itself is never locked.
    pub failed_auth_per_ip: u32,
    pub failed_auth_window: Duration,
    /// Per-session token bucket on stanzas read from the client; 0 = unlimited.
    /// A session over its rate is read more slowly, not disconnected.
    pub stanzas_per_second: u32,
    pub stanza_burst: u32,
    /// Stanzas waiting to be written to one connection; a client that lets its
    /// queue fill up (it stopped reading) is disconnected with `<policy-violation/>`.
    pub outbound_queue_stanzas: usize,
    /// Bytes (re-serialised) waiting to be written to one connection; past it
    /// the same as a full queue. A connection holding nothing always takes one stanza.
    pub outbound_queue_bytes: usize,
    /// Bytes waiting in all the outbound queues of the node together; past
    /// it, a connection that holds anything already is treated as full.
    pub outbound_queue_bytes_total: usize,
    /// How long a BOSH session (XEP-0124 section 7.1, `inactivity`) may go
    /// without a request before it ends like a lost connection.
    pub bosh_inactivity: Duration,
}

impl Default for CmLimits {
    fn default() -> Self {
        CmLimits {
            max_stanza_bytes: 262_144,
            max_depth: 64,
            pre_auth_timeout: Duration::from_secs(60),
            max_auth_attempts: 5,
            max_connections_per_ip: 64,
            failed_auth_per_ip: 10,
            failed_auth_window: Duration::from_secs(60),
            stanzas_per_second: 50,
            stanza_burst: 200,
            outbound_queue_stanzas: 1000,
            outbound_queue_bytes: 4 * 1024 * 1024,
            outbound_queue_bytes_total: 256 * 1024 * 1024,
            bosh_inactivity: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(domain: &str, secret: &str) -> ComponentSettings {
        ComponentSettings {
            domain: domain.into(),
            secret: secret.into(),
            max_stanza_bytes: 0,
            stanzas_per_second: 100,
            stanza_burst: 200,
        }
    }

    #[test]
    fn configuration_errors_name_the_entry() {
        let error = |components: Vec<ComponentSettings>| {
            Components::new(components, "example.com", 262_144).unwrap_err()
        };
        assert!(error(vec![settings("example.com", "s")]).contains("components[0].domain"));
        assert!(error(vec![settings("irc.example.com", "")]).contains("components[0].secret"));
        assert!(error(vec![
            settings("irc.example.com", "a"),
            settings("IRC.example.com", "b")
        ])
        .contains("components[1].domain"));
        assert!(error(vec![settings("bad domain", "a")]).contains("components[0].domain"));
        let components = Components::new(
            vec![settings("Irc.Example.com", "a")],
            "example.com",
            10_000,
        )
        .unwrap();
        let irc = components.get("irc.example.com").unwrap();
        assert_eq!(irc.max_stanza_bytes, 10_000);
    }
}

/// Where to connect for a remote domain: an `s2s.hosts` address or a DNS
/// SRV target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sHost {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (XEP-0368), else STARTTLS.
    pub direct_tls: bool,
}

impl S2sHost {
    /// The URL scheme that marks an `s2s.hosts` address as direct TLS.
    pub const DIRECT_TLS_SCHEME: &'static str = "tls://";

    /// An `s2s.hosts` address: `host:port` (STARTTLS, RFC 6120 section 5)
    /// or `tls://host:port` (direct TLS, XEP-0368); an IPv6 host in
    /// brackets.
    pub fn parse(address: &str) -> Result<Self, String> {
        let address = address.trim();
        let (direct_tls, rest) = match address.strip_prefix(Self::DIRECT_TLS_SCHEME) {
            Some(rest) => (true, rest),
            None => (false, address),
        };
        if rest.contains("://") {
            return Err(format!(
                "{address:?}: the only scheme is {} (direct TLS); without one, STARTTLS",
                Self::DIRECT_TLS_SCHEME
            ));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, port)| !host.is_empty() && *port > 0)
            .ok_or_else(|| format!("{address:?} is not host:port or tls://host:port"))?;
        Ok(S2sHost {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            direct_tls,
        })
    }
}

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
    /// `s2s.hosts`: a fixed address per remote domain instead of DNS.
    pub hosts: HashMap<String, S2sHost>,
    /// `s2s.allow` / `s2s.deny` (normalised), for inbound streams too.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// `s2s.connect_timeout_secs`: the bounded wait of a queued stanza for
    /// its stream (resolution, connection, TLS, authentication).
    pub connect_timeout: Duration,
    /// `s2s.idle_timeout_secs`: an outbound stream with nothing to send, or
    /// an inbound one with nothing received, for this long is closed.
    pub idle_timeout: Duration,
    /// `s2s.max_stanzas_per_sec`: the stanzas this node takes from one
    /// remote domain per second over all its inbound streams (a burst of as
    /// many); past it a stanza is answered `resource-constraint`. 0: no limit.
    pub max_stanzas_per_sec: u32,
    /// `s2s.metrics_domains`: how many remote domains with an open stream
    /// get series of their own in the per-domain metrics; the others are
    /// counted under the domain label `_other`.
    pub metrics_domains: usize,
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
            max_stanzas_per_sec: 1000,
            metrics_domains: 50,
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

#[cfg(test)]
mod s2s_host_tests {
    use super::S2sHost;

    #[test]
    fn starttls_and_direct_tls_addresses() {
        assert_eq!(
            S2sHost::parse("127.0.0.2:5269"),
            Ok(S2sHost {
                host: "127.0.0.2".into(),
                port: 5269,
                direct_tls: false
            })
        );
        assert_eq!(
            S2sHost::parse("tls://xmpp.example.net:5270"),
            Ok(S2sHost {
                host: "xmpp.example.net".into(),
                port: 5270,
                direct_tls: true
            })
        );
        assert_eq!(
            S2sHost::parse("tls://[::1]:5270").map(|host| host.host),
            Ok("::1".to_string())
        );
        for bad in [
            "127.0.0.2",
            "tls://",
            ":5269",
            "host:0",
            "tcp://host:5269",
            "tls://host:x",
        ] {
            assert!(S2sHost::parse(bad).is_err(), "{bad}");
        }
    }
}
