//! The configuration file (TOML) and its environment overrides.
//!
//! Every key has an override named `STARLING_<SECTION>_<KEY>` in upper case
//! (`STARLING_DOMAIN`, `STARLING_LISTEN_C2S`, `STARLING_LIMITS_MAX_STANZA_BYTES`).
//! The list of keys comes from the typed defaults below, so a key and its
//! override are declared in one place. Unknown keys and bad values stop the
//! start with a message naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the configuration cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {variable} (key `{key}`): {message}")]
    Environment {
        variable: String,
        key: String,
        message: String,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XMPP domain this server serves.
    pub domain: String,
    /// Where the SQLite database and the generated TLS certificate live.
    pub data_dir: String,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub registration: RegistrationConfig,
    pub carbons: CarbonsConfig,
    pub blocking: BlockingConfig,
    pub pep: PepConfig,
    pub mam: MamConfig,
    pub upload: UploadConfig,
    pub muc: MucConfig,
    pub push: PushConfig,
    pub csi: CsiConfig,
    pub sasl2: Sasl2Config,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    pub admin: AdminConfig,
    pub drain: DrainConfig,
    pub telemetry: TelemetryConfig,
    pub sm: SmConfig,
    pub proxy: ProxyConfig,
    pub s2s: S2sConfig,
    /// External components (XEP-0114), `[[components]]` entries.
    pub components: Vec<ComponentConfig>,
}

/// One `[[components]]` entry: an external component (XEP-0114) that may
/// connect to `listen.component` and is given every stanza addressed to its
/// domain, wherever in the cluster it was sent.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentConfig {
    /// The component's domain, e.g. `irc.example.com` (not the served domain).
    pub domain: String,
    /// The shared secret of its `<handshake/>`.
    pub secret: String,
    /// The largest stanza it may send, in bytes; 0 = `limits.max_stanza_bytes`.
    pub max_stanza_bytes: u64,
    /// Its token bucket: stanzas per second read from it (0 = unlimited)...
    pub stanzas_per_second: u32,
    /// ...and the bucket's size (at least the rate).
    pub stanza_burst: u32,
}

impl Default for ComponentConfig {
    fn default() -> Self {
        ComponentConfig {
            domain: String::new(),
            secret: String::new(),
            max_stanza_bytes: 0,
            stanzas_per_second: 500,
            stanza_burst: 1000,
        }
    }
}

impl std::fmt::Debug for ComponentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `starling config check` and logs never show the secret.
        f.debug_struct("ComponentConfig")
            .field("domain", &self.domain)
            .field("secret", &"<hidden>")
            .field("max_stanza_bytes", &self.max_stanza_bytes)
            .field("stanzas_per_second", &self.stanzas_per_second)
            .field("stanza_burst", &self.stanza_burst)
            .finish()
    }
}

/// Client addresses behind a load balancer: whose word on them is believed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Addresses or networks (`10.0.0.0/8`) of the load balancers and reverse proxies in front.
    pub trusted: Vec<String>,
    /// The c2s listeners expect a PROXY protocol header (v1 or v2) from a trusted address.
    pub protocol: bool,
    /// The HTTP listeners take the client from `X-Forwarded-For` when the request comes from a trusted address.
    pub forwarded_for: bool,
}

/// Stream management (XEP-0198): acks, and resumption on any connection-manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmConfig {
    /// Offer stream management (the `<sm/>` stream feature).
    pub enabled: bool,
    /// How long a stream whose connection was lost stays resumable (the `max`
    /// of `<enabled/>`); 0 offers stream management without resumption.
    pub resume_timeout_secs: u64,
    /// Stanzas a client may leave unacknowledged; past it the stream ends with
    /// `<policy-violation/>` and what it did not acknowledge is rerouted.
    pub max_unacked_stanzas: u64,
}

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            enabled: true,
            resume_timeout_secs: 300,
            max_unacked_stanzas: 1000,
        }
    }
}

/// OpenTelemetry traces (docs/operations.md "Traces"). Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, `http://HOST:PORT` (4317 by convention); empty: no traces.
    pub otlp_endpoint: String,
    /// Share of new traces recorded, 0.0 to 1.0; a stanza whose trace began
    /// in another process follows that process's decision (parent-based).
    pub sample_ratio: f64,
    /// The `service.name` resource attribute; empty: `starling-<target>`.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            service_name: String::new(),
        }
    }
}

/// The admin API (gRPC, `starling admin ...`): served by the session-router
/// and `--target all` processes when `listen` is set; never open by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the admin API listens, such as 127.0.0.1:5290; empty (the default) disables it.
    pub listen: String,
    /// The bearer token every admin call must carry (at least 16 characters); or `token_file`.
    pub token: String,
    /// A file whose first line is the token (instead of `token`).
    pub token_file: String,
}

/// Graceful drain of a connection-manager (SIGTERM, or the admin API's drain).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Seconds over which the streams are closed with <system-shutdown/> (SIGTERM, and a drain that names no window).
    pub window_secs: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { window_secs: 5 }
    }
}

/// How this process joins a cluster (`starling serve --target ...`). Unused by
/// `--target all`, which keeps the in-process bus and registry unless `redis` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URLs: one server, or the seed nodes of a Redis Cluster (with `redis_cluster = true`).
    pub redis: Vec<String>,
    pub redis_cluster: bool,
    /// A prefix for every Redis key and channel (lets clusters share a Redis).
    pub redis_key_prefix: String,
    /// This process's identity in the cluster; empty: generated at start.
    pub node_id: String,
    /// Where this process serves gRPC (session-router, presence, storage targets).
    pub grpc: String,
    /// gRPC endpoints (`http://HOST:PORT`) of the storage replicas, or
    /// `dns:///NAME:PORT`: every address of the name, re-resolved (a headless Service).
    pub storage: Vec<String>,
    /// gRPC endpoints of the session-router replicas.
    pub routers: Vec<String>,
    /// gRPC endpoints of the presence replicas.
    pub presence: Vec<String>,
    /// Seconds after which a connection-manager that stopped refreshing its liveness key is dead.
    pub liveness_ttl_secs: u64,
    /// Who elects the janitor's leader: `auto` (a Kubernetes Lease when
    /// running in a pod, the Redis lock elsewhere), `redis` or `kubernetes`.
    pub leader_election: String,
    /// The name of the janitor's `coordination.k8s.io` Lease.
    pub lease_name: String,
    /// Its namespace; empty: the pod's (the kubeconfig context's outside a pod).
    pub lease_namespace: String,
    /// How long a Lease holding lasts without renewal.
    pub lease_duration_secs: u64,
}

/// How the janitor's leader is elected (`cluster.leader_election`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderElectionKind {
    Redis,
    Kubernetes,
}

impl ClusterConfig {
    /// `cluster.leader_election` resolved: `auto` is a Lease in a pod
    /// (`KUBERNETES_SERVICE_HOST` set), the Redis lock elsewhere.
    pub fn leader_election_kind(&self, in_pod: bool) -> LeaderElectionKind {
        match self.leader_election.as_str() {
            "kubernetes" => LeaderElectionKind::Kubernetes,
            "auto" if in_pod => LeaderElectionKind::Kubernetes,
            _ => LeaderElectionKind::Redis,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: Vec::new(),
            redis_cluster: false,
            redis_key_prefix: String::new(),
            node_id: String::new(),
            grpc: String::new(),
            storage: Vec::new(),
            routers: Vec::new(),
            presence: Vec::new(),
            liveness_ttl_secs: 10,
            leader_election: "auto".into(),
            lease_name: "starling-janitor".into(),
            lease_namespace: String::new(),
            lease_duration_secs: 15,
        }
    }
}

/// Federation with other servers (RFC 6120 server-to-server streams).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Federate: accept server streams on `listen.s2s` and open them to remote domains; off, a stanza to another domain gets remote-server-not-found.
    pub enabled: bool,
    /// The XEP-0185 dialback secret, the same on every node of the cluster; required when enabled.
    pub dialback_secret: String,
    /// Refuse server streams (in and out) without TLS.
    pub require_tls: bool,
    /// When not empty, the only remote domains federated with.
    pub allow: Vec<String>,
    /// Remote domains never federated with (wins over `allow`).
    pub deny: Vec<String>,
    /// Fixed addresses instead of DNS, as `domain=host:port` (STARTTLS) or `domain=tls://host:port` (direct TLS) entries (tests, private peers).
    pub hosts: Vec<String>,
    /// Resolution, connection and negotiation of an outbound stream; queued stanzas bounce after it.
    pub connect_timeout_secs: u64,
    /// A stream with nothing to send (outbound) or nothing received (inbound) for this long is closed.
    pub idle_timeout_secs: u64,
    /// Stanzas per second this node takes from one remote domain over its inbound streams; more are answered resource-constraint; 0: no limit.
    pub max_stanzas_per_sec: u32,
    /// Remote domains with an open stream that get series of their own in the per-domain metrics; the others share domain="_other".
    pub metrics_domains: u32,
    /// Stanzas waiting for one remote domain's stream; more bounce at once.
    pub queue_stanzas: u32,
    /// Bytes of stanzas waiting for one remote domain's stream; more bounce at once.
    pub queue_bytes: u64,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            enabled: false,
            dialback_secret: String::new(),
            require_tls: true,
            allow: Vec::new(),
            deny: Vec::new(),
            hosts: Vec::new(),
            connect_timeout_secs: 30,
            idle_timeout_secs: 600,
            max_stanzas_per_sec: 1000,
            metrics_domains: 50,
            queue_stanzas: 1000,
            queue_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Client-to-server with STARTTLS; empty disables it.
    pub c2s: String,
    /// Client-to-server with direct TLS (XEP-0368); empty disables it.
    pub c2s_tls: String,
    /// HTTP: health, readiness, XMPP over WebSocket, BOSH; empty disables it.
    pub http: String,
    /// The same routes over TLS (wss://, https:// BOSH) with the c2s certificate; empty (the default) disables it.
    pub https: String,
    /// External components (XEP-0114, plain TCP, e.g. `127.0.0.1:5347`); empty (the default) disables it.
    pub component: String,
    /// Server-to-server streams with STARTTLS (RFC 6120), used when `s2s.enabled`; empty disables it.
    pub s2s: String,
    /// Server-to-server streams with direct TLS (XEP-0368, ALPN xmpp-server), used when `s2s.enabled`; empty (the default) disables it.
    pub s2s_tls: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; empty: a self-signed certificate kept in `data_dir/tls`.
    pub cert: String,
    /// PEM private key; set together with `cert`.
    pub key: String,
    /// Refuse authentication before STARTTLS (turn off only for load tests on loopback).
    pub required: bool,
    /// PEM file of CAs trusted for server-to-server certificates besides the system's; empty: the system's only.
    pub ca_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://FILE` or `postgres://USER@HOST:PORT/DB`; empty: `sqlite://<data_dir>/starling.db`.
    pub url: String,
    pub max_offline_per_user: u32,
    /// Bytes of stored messages per account; what a login's flush holds at most.
    pub max_offline_bytes_per_user: u64,
    pub max_roster_items: u32,
    /// Bytes of one account's roster: contact JIDs, names, groups, kept subscription requests.
    pub max_roster_bytes: u64,
    pub max_connections: u32,
    /// Bytes of private XML (XEP-0049) and vCard (XEP-0054) kept per account.
    pub max_account_data_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_stanza_bytes: u64,
    pub max_depth: u32,
    pub pre_auth_timeout_secs: u64,
    pub max_auth_attempts: u32,
    pub max_connections_per_ip: u32,
    pub failed_auth_per_ip: u32,
    pub failed_auth_window_secs: u64,
    pub stanzas_per_second: u32,
    pub stanza_burst: u32,
    pub outbound_queue_stanzas: u32,
    /// Bytes waiting to be written to one client; past it the stream ends like a full queue.
    pub outbound_queue_bytes: u64,
    /// Bytes waiting in all the outbound queues of one connection-manager.
    pub outbound_queue_bytes_total: u64,
    /// Bytes of deliveries a node received from the bus and has not yet
    /// handed to its sessions; past it stanzas are refused with `resource-constraint`.
    pub bus_buffer_bytes: u64,
    pub max_resources_per_user: u32,
    /// Entities one session may have sent directed presence to (RFC 6121 section 4.6) at once.
    pub max_directed_presences: u32,
    /// A BOSH session with no request for this long ends (XEP-0124 `inactivity`).
    pub bosh_inactivity_secs: u64,
    /// HTTP listeners: from accept, or from the end of the previous response,
    /// until a request's head is whole (the keep-alive idle timeout too).
    pub http_header_timeout_secs: u64,
    /// HTTP listeners: from a request's head until its body is whole.
    pub http_body_timeout_secs: u64,
    /// HTTP listeners: open connections from one address (HTTP and HTTPS together).
    pub http_connections_per_ip: u32,
    /// HTTP listeners: requests handled at once; more are answered 503.
    pub http_max_requests: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// XEP-0077 in-band registration.
    pub enabled: bool,
}

/// XEP-0280 Message Carbons, read by the session-router.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CarbonsConfig {
    /// Answer `<enable/>`/`<disable/>`, advertise `urn:xmpp:carbons:2` and copy messages.
    pub enabled: bool,
}

impl Default for CarbonsConfig {
    fn default() -> Self {
        CarbonsConfig { enabled: true }
    }
}

/// XEP-0191 Blocking Command (session-router and storage targets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlockingConfig {
    /// The most items one account's block list holds; a block request past
    /// it gets `policy-violation` and adds nothing. 1 to 100000.
    pub max_items: u32,
}

/// The default `blocking.max_items`, and its upper bound.
pub const DEFAULT_BLOCKING_MAX_ITEMS: u32 = 1000;
pub const MAX_BLOCKING_MAX_ITEMS: u32 = 100_000;

impl Default for BlockingConfig {
    fn default() -> Self {
        BlockingConfig {
            max_items: DEFAULT_BLOCKING_MAX_ITEMS,
        }
    }
}

/// XEP-0163 Personal Eventing Protocol (session-router targets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PepConfig {
    /// The largest item payload, serialised, in bytes; a larger publish gets
    /// `not-acceptable` + `payload-too-big`. 1 to 16 MiB; the stanza size
    /// limit (`limits.max_stanza_bytes`) applies first.
    pub max_item_bytes: u64,
    /// The most items one node keeps (what `pubsub#max_items = max` means);
    /// a configuration asking for more gets `not-acceptable`. 1 to 10000.
    pub max_items_per_node: u32,
    /// The most nodes one account owns; a publish or create past it gets
    /// `policy-violation` + `max-nodes-exceeded`. 1 to 10000.
    pub max_nodes_per_account: u32,
    /// The most members on one node's whitelist; past it `policy-violation`. 1 to 100000.
    pub max_whitelist_per_node: u32,
    /// The most explicit subscriptions (pending or approved, XEP-0060
    /// section 6.1) to one node; a subscribe past it gets `policy-violation`
    /// + `too-many-subscriptions`. 1 to 100000.
    pub max_subscriptions_per_node: u32,
    /// Days a verified XEP-0115 capability record is kept after the last
    /// session announced it; the storage service removes older ones every
    /// hour. 0 keeps them forever; at most 36500.
    pub caps_retention_days: u32,
}

/// The upper bound of `pep.caps_retention_days`.
pub const MAX_CAPS_RETENTION_DAYS: u32 = 36_500;

/// The upper bound of `pep.max_item_bytes`.
pub const MAX_PEP_ITEM_BYTES: u64 = 16 * 1024 * 1024;

impl Default for PepConfig {
    fn default() -> Self {
        PepConfig {
            max_item_bytes: 65_536,
            max_items_per_node: 256,
            max_nodes_per_account: 256,
            max_whitelist_per_node: 1000,
            max_subscriptions_per_node: 1000,
            caps_retention_days: 30,
        }
    }
}

/// XEP-0357 Push Notifications, read by the session-router.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Answer `<enable/>`/`<disable/>`, advertise `urn:xmpp:push:0` on
    /// accounts and notify app servers.
    pub enabled: bool,
    /// Send `last-message-body` in notifications (XEP-0357 section 12:
    /// bodies then go through the app server and the push service).
    pub include_body: bool,
    /// The least time between two notifications to one registration, in
    /// seconds (0: every message); at most [`MAX_PUSH_MIN_INTERVAL_SECS`].
    pub min_interval_secs: u64,
}

/// The upper bound of `push.min_interval_secs`.
pub const MAX_PUSH_MIN_INTERVAL_SECS: u64 = 86_400;

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            include_body: false,
            min_interval_secs: 5,
        }
    }
}

/// XEP-0313 Message Archive Management with XEP-0441 preferences and
/// XEP-0359 stanza ids (session-router and storage targets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MamConfig {
    /// Archive one-to-one messages, stamp `<stanza-id/>` and answer archive
    /// queries (session-router); off: neither, and `urn:xmpp:mam:2` is not advertised.
    pub enabled: bool,
    /// The most messages one query page returns; a client's larger `<max/>`
    /// is clamped to it (XEP-0313 section 4.3.1). 1 to 10000.
    pub max_page_size: u32,
    /// The largest message archived, in bytes as sent on; a larger one is
    /// delivered but not archived. At least 1024.
    pub max_message_bytes: u64,
    /// Days an archived message is kept (storage); older ones are purged
    /// every `purge_interval_secs`. 0 keeps them forever.
    pub retention_days: u32,
    /// Messages kept per account archive (storage); past it the oldest are
    /// removed as new ones are archived. 0: no bound.
    pub max_messages_per_account: u64,
    /// How often the storage service purges messages past `retention_days`.
    pub purge_interval_secs: u64,
}

/// The bounds of `mam.max_page_size` and `mam.retention_days`.
pub const MAX_MAM_PAGE_SIZE: u32 = 10_000;
pub const MAX_MAM_RETENTION_DAYS: u32 = 36_500;

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig {
            enabled: true,
            max_page_size: 250,
            max_message_bytes: 65_536,
            retention_days: 0,
            max_messages_per_account: starling_storage::DEFAULT_MAX_ARCHIVE_MESSAGES_PER_ACCOUNT,
            purge_interval_secs: 3600,
        }
    }
}

/// XEP-0363 HTTP File Upload: slots granted by the session-router, files
/// PUT to and served by every connection-manager's HTTP listeners.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Offer the upload service (session-router: slots and disco;
    /// connection-manager: the `/upload/` routes).
    pub enabled: bool,
    /// The service's domain; empty: `upload.` + `domain`.
    pub domain: String,
    /// The largest file a slot is granted for, in bytes (advertised in disco).
    pub max_file_bytes: u64,
    /// Bytes one account may keep in files and pending slots; 0: no quota.
    pub quota_bytes: u64,
    /// How long an uploaded file is kept and served, in seconds.
    pub expire_after_secs: u64,
    /// How long after the grant a slot's PUT may start, in seconds.
    pub slot_validity_secs: u64,
    /// The directory of the files, shared by every connection-manager, or
    /// `s3://BUCKET[/PREFIX]`; empty: `data_dir/upload`.
    pub storage: String,
    /// The base of the PUT and GET URLs (`https://upload.example.org`); empty: derived from the listeners.
    pub public_url: String,
    /// With `storage = "s3://…"`: an S3-compatible endpoint; empty: AWS.
    pub s3_endpoint: String,
    /// With `storage = "s3://…"`: the region; empty: `AWS_DEFAULT_REGION` or `us-east-1`.
    pub s3_region: String,
    /// With `storage = "s3://…"`: allow an `http://` endpoint.
    pub s3_allow_http: bool,
    /// With `storage = "s3://…"`: credentials; empty: `AWS_ACCESS_KEY_ID`
    /// and `AWS_SECRET_ACCESS_KEY` (or the instance's role).
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            domain: String::new(),
            max_file_bytes: 10 * 1024 * 1024,
            quota_bytes: 100 * 1024 * 1024,
            expire_after_secs: 7 * 86_400,
            slot_validity_secs: 300,
            storage: String::new(),
            public_url: String::new(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_allow_http: false,
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
        }
    }
}

/// XEP-0045 multi-user chat: rooms served by every session-router replica
/// (docs/muc.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// Offer the MUC service.
    pub enabled: bool,
    /// The service's domain; empty: `conference.` + `domain`.
    pub domain: String,
    /// The most occupants one room may hold (a room's `maxusers` is at most this).
    pub max_occupants: u32,
    /// The most messages a room's discussion history keeps.
    pub history_max_stanzas: u32,
    /// The most bytes (of XML) a room's discussion history keeps.
    pub history_max_bytes: u64,
    /// The longest nick, in bytes.
    pub max_nick_bytes: u32,
    /// The most rooms one user (bare JID) occupies at once; a join past it
    /// is refused with `resource-constraint`.
    pub max_rooms_per_user: u32,
    /// The most invitations and voice requests one occupant sends a room
    /// in a minute; past it they are refused with `policy-violation`.
    pub max_requests_per_minute: u32,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            enabled: true,
            domain: String::new(),
            max_occupants: 500,
            history_max_stanzas: 50,
            history_max_bytes: 256 * 1024,
            max_nick_bytes: 64,
            max_rooms_per_user: 100,
            max_requests_per_minute: 30,
        }
    }
}

/// The bounds of `muc.max_occupants`, `muc.history_max_stanzas`,
/// `muc.history_max_bytes` (a room's record is rewritten for each message:
/// the history is what makes it large) and `muc.max_nick_bytes`.
pub const MAX_MUC_OCCUPANTS: u32 = 10_000;
pub const MAX_MUC_HISTORY_STANZAS: u32 = 1_000;
pub const MAX_MUC_HISTORY_BYTES: u64 = 4 * 1024 * 1024;
pub const MAX_MUC_NICK_BYTES: u32 = 1023;
/// The bounds of `muc.max_rooms_per_user` and `muc.max_requests_per_minute`.
pub const MAX_MUC_ROOMS_PER_USER: u32 = 10_000;
pub const MAX_MUC_REQUESTS_PER_MINUTE: u32 = 10_000;

/// The bounds of `upload.max_file_bytes` (1 TiB) and `upload.expire_after_secs` (10 years).
pub const MAX_UPLOAD_FILE_BYTES: u64 = 1 << 40;
pub const MAX_UPLOAD_EXPIRE_AFTER_SECS: u64 = 10 * 365 * 86_400;

/// XEP-0352 client state indication (connection-manager targets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CsiConfig {
    /// Offer `<csi/>` after authentication; an inactive client's presence
    /// updates and chat states wait (the latest per contact) until it is
    /// active or something important comes.
    pub enabled: bool,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig { enabled: true }
    }
}

/// XEP-0388 SASL2 with XEP-0386 Bind 2 and XEP-0484 FAST (connection-manager targets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sasl2Config {
    /// Offer `<authentication xmlns='urn:xmpp:sasl:2'/>` beside the RFC 6120
    /// mechanisms, with Bind 2 and inline stream management (enable and
    /// resume), carbons and client state. Off by default: clients that
    /// prefer SASL2 (xmpp.js, Conversations) then bind with Bind 2.
    pub enabled: bool,
    /// Offer FAST tokens (XEP-0484, HT-SHA-256-NONE) inside SASL2.
    pub fast: bool,
    /// How long a FAST token is valid, in seconds (60 to 31536000).
    pub fast_token_ttl_secs: u64,
}

impl Default for Sasl2Config {
    fn default() -> Self {
        Sasl2Config {
            enabled: false,
            fast: true,
            fast_token_ttl_secs: 14 * 86_400,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `starling=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: "./data".into(),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            proxy: ProxyConfig::default(),
            registration: RegistrationConfig::default(),
            carbons: CarbonsConfig::default(),
            blocking: BlockingConfig::default(),
            pep: PepConfig::default(),
            mam: MamConfig::default(),
            upload: UploadConfig::default(),
            muc: MucConfig::default(),
            push: PushConfig::default(),
            csi: CsiConfig::default(),
            sasl2: Sasl2Config::default(),
            log: LogConfig::default(),
            cluster: ClusterConfig::default(),
            admin: AdminConfig::default(),
            drain: DrainConfig::default(),
            telemetry: TelemetryConfig::default(),
            sm: SmConfig::default(),
            s2s: S2sConfig::default(),
            components: Vec::new(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            c2s: "0.0.0.0:5222".into(),
            c2s_tls: "0.0.0.0:5223".into(),
            http: "0.0.0.0:5280".into(),
            https: String::new(),
            component: String::new(),
            s2s: "0.0.0.0:5269".into(),
            s2s_tls: String::new(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: String::new(),
            key: String::new(),
            required: true,
            ca_file: String::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: String::new(),
            max_offline_per_user: 1000,
            max_offline_bytes_per_user: 2 * 1024 * 1024,
            max_roster_items: 1000,
            max_roster_bytes: starling_storage::DEFAULT_MAX_ROSTER_BYTES,
            max_connections: 8,
            max_account_data_bytes: starling_storage::DEFAULT_MAX_ACCOUNT_DATA_BYTES,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            pre_auth_timeout_secs: 60,
            max_auth_attempts: 5,
            max_connections_per_ip: 64,
            failed_auth_per_ip: 10,
            failed_auth_window_secs: 60,
            stanzas_per_second: 200,
            stanza_burst: 400,
            outbound_queue_stanzas: 1000,
            outbound_queue_bytes: 4 * 1024 * 1024,
            outbound_queue_bytes_total: 256 * 1024 * 1024,
            bus_buffer_bytes: starling_bus::DEFAULT_BUS_BUFFER_BYTES as u64,
            max_resources_per_user: 16,
            max_directed_presences: 1000,
            bosh_inactivity_secs: 60,
            http_header_timeout_secs: 10,
            http_body_timeout_secs: 30,
            http_connections_per_ip: 256,
            http_max_requests: 4096,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// One `s2s.hosts` entry, `domain=host:port` or `domain=tls://host:port`:
/// the normalised domain and the address.
fn parse_s2s_host(entry: &str) -> Result<(String, starling_connection_manager::S2sHost), String> {
    let (domain, address) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?} is not domain=host:port or domain=tls://host:port"))?;
    let domain = starling_jid::normalize_domainpart(domain.trim())
        .map_err(|error| format!("{entry:?}: {domain:?} is not a valid domain: {error}"))?;
    let address = starling_connection_manager::S2sHost::parse(address)
        .map_err(|error| format!("{entry:?}: {error}"))?;
    Ok((domain, address))
}

/// The environment variable that overrides a key path such as `limits.max_stanza_bytes`.
pub fn env_name(key_path: &str) -> String {
    format!("STARLING_{}", key_path.replace('.', "_").to_uppercase())
}

/// Every key path with its default value, in file order.
pub fn key_paths() -> Vec<(String, toml::Value)> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialise");
    let mut out = Vec::new();
    collect_leaves("", &defaults, &mut out);
    out
}

fn collect_leaves(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                collect_leaves(&path, child, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

/// Parse an environment value as the type of the key's default.
fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match default {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_string())),
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        toml::Value::Boolean(_) => match raw.trim() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        // Lists are comma-separated: STARLING_CLUSTER_ROUTERS=http://a:7001,http://b:7001
        toml::Value::Array(_) => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_string()))
                .collect(),
        )),
        other => Err(format!("unsupported type {}", other.type_str())),
    }
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("non-empty key path");
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(last.to_string(), value);
}

impl Config {
    /// Load from an optional file, apply the environment, validate.
    pub fn load(
        path: Option<&Path>,
        environment: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let (source_name, text) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                (path.display().to_string(), text)
            }
            None => ("(defaults)".to_string(), String::new()),
        };
        Self::from_toml_str(&source_name, &text, environment)
    }

    /// Parse TOML text, apply environment overrides, validate.
    pub fn from_toml_str(
        source_name: &str,
        text: &str,
        environment: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: source_name.to_string(),
            message: error.to_string(),
        })?;
        for (key, default) in key_paths() {
            // `[[components]]` entries are tables: the file alone holds them.
            if key == "components" {
                continue;
            }
            let variable = env_name(&key);
            if let Some(raw) = environment.get(&variable) {
                let value =
                    env_value(&default, raw).map_err(|message| ConfigError::Environment {
                        variable,
                        key: key.clone(),
                        message,
                    })?;
                set_path(&mut table, &key, value);
            }
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|error: toml::de::Error| ConfigError::Parse {
                    path: source_name.to_string(),
                    message: error.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        starling_jid::BareJid::domain_jid(&self.domain).map_err(|error| ConfigError::Invalid {
            key: "domain",
            message: format!("{:?} is not a valid XMPP domain: {error}", self.domain),
        })?;
        if self.data_dir.is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                message: "must not be empty".into(),
            });
        }
        for (key, value) in [
            ("listen.c2s", &self.listen.c2s),
            ("listen.c2s_tls", &self.listen.c2s_tls),
            ("listen.http", &self.listen.http),
            ("listen.https", &self.listen.https),
            ("listen.component", &self.listen.component),
            ("listen.s2s", &self.listen.s2s),
            ("listen.s2s_tls", &self.listen.s2s_tls),
        ] {
            parse_listen(key, value)?;
        }
        self.validate_components()?;
        self.validate_s2s()?;
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            let key = if self.tls.cert.is_empty() {
                "tls.cert"
            } else {
                "tls.key"
            };
            return Err(ConfigError::Invalid {
                key,
                message: "tls.cert and tls.key are set together".into(),
            });
        }
        for (key, value) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
            if !value.is_empty() && !Path::new(value).is_file() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("no such file: {value}"),
                });
            }
        }
        let url = self.storage_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "storage.url",
                message: format!("{url:?}: expected sqlite://FILE or postgres://USER@HOST:PORT/DB"),
            });
        }
        let limits = &self.limits;
        let positive: [(&'static str, u64); 18] = [
            ("limits.outbound_queue_bytes", limits.outbound_queue_bytes),
            (
                "limits.outbound_queue_bytes_total",
                limits.outbound_queue_bytes_total,
            ),
            ("limits.bosh_inactivity_secs", limits.bosh_inactivity_secs),
            (
                "limits.http_header_timeout_secs",
                limits.http_header_timeout_secs,
            ),
            (
                "limits.http_body_timeout_secs",
                limits.http_body_timeout_secs,
            ),
            (
                "limits.http_connections_per_ip",
                limits.http_connections_per_ip.into(),
            ),
            ("limits.http_max_requests", limits.http_max_requests.into()),
            ("limits.max_stanza_bytes", limits.max_stanza_bytes),
            ("limits.max_depth", limits.max_depth.into()),
            ("limits.pre_auth_timeout_secs", limits.pre_auth_timeout_secs),
            ("limits.max_auth_attempts", limits.max_auth_attempts.into()),
            (
                "limits.max_connections_per_ip",
                limits.max_connections_per_ip.into(),
            ),
            (
                "limits.outbound_queue_stanzas",
                limits.outbound_queue_stanzas.into(),
            ),
            (
                "limits.max_resources_per_user",
                limits.max_resources_per_user.into(),
            ),
            (
                "limits.max_directed_presences",
                limits.max_directed_presences.into(),
            ),
            (
                "storage.max_connections",
                self.storage.max_connections.into(),
            ),
            (
                "storage.max_account_data_bytes",
                self.storage.max_account_data_bytes,
            ),
            ("storage.max_roster_bytes", self.storage.max_roster_bytes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be greater than 0".into(),
                });
            }
        }
        if !(1..=MAX_BLOCKING_MAX_ITEMS).contains(&self.blocking.max_items) {
            return Err(ConfigError::Invalid {
                key: "blocking.max_items",
                message: format!("must be between 1 and {MAX_BLOCKING_MAX_ITEMS}"),
            });
        }
        // The stanza size limit applies first: an item larger than it never
        // arrives whole, whatever this says.
        if !(1..=MAX_PEP_ITEM_BYTES).contains(&self.pep.max_item_bytes) {
            return Err(ConfigError::Invalid {
                key: "pep.max_item_bytes",
                message: format!("must be between 1 and {MAX_PEP_ITEM_BYTES}"),
            });
        }
        let pep_bounds = [
            (
                "pep.max_items_per_node",
                self.pep.max_items_per_node,
                10_000,
            ),
            (
                "pep.max_nodes_per_account",
                self.pep.max_nodes_per_account,
                10_000,
            ),
            (
                "pep.max_whitelist_per_node",
                self.pep.max_whitelist_per_node,
                100_000,
            ),
            (
                "pep.max_subscriptions_per_node",
                self.pep.max_subscriptions_per_node,
                100_000,
            ),
        ];
        for (key, value, upper) in pep_bounds {
            if !(1..=upper).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be between 1 and {upper}"),
                });
            }
        }
        if self.push.min_interval_secs > MAX_PUSH_MIN_INTERVAL_SECS {
            return Err(ConfigError::Invalid {
                key: "push.min_interval_secs",
                message: format!("must be at most {MAX_PUSH_MIN_INTERVAL_SECS}"),
            });
        }
        if self.pep.caps_retention_days > MAX_CAPS_RETENTION_DAYS {
            return Err(ConfigError::Invalid {
                key: "pep.caps_retention_days",
                message: format!(
                    "must be at most {MAX_CAPS_RETENTION_DAYS} (0 keeps capability records forever)"
                ),
            });
        }
        if !(1..=MAX_MAM_PAGE_SIZE).contains(&self.mam.max_page_size) {
            return Err(ConfigError::Invalid {
                key: "mam.max_page_size",
                message: format!("must be between 1 and {MAX_MAM_PAGE_SIZE}"),
            });
        }
        if self.mam.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "mam.max_message_bytes",
                message: "must be at least 1024".into(),
            });
        }
        if self.mam.retention_days > MAX_MAM_RETENTION_DAYS {
            return Err(ConfigError::Invalid {
                key: "mam.retention_days",
                message: format!(
                    "must be at most {MAX_MAM_RETENTION_DAYS} (0 keeps messages forever)"
                ),
            });
        }
        if !(1..=86_400).contains(&self.mam.purge_interval_secs) {
            return Err(ConfigError::Invalid {
                key: "mam.purge_interval_secs",
                message: "must be between 1 and 86400".into(),
            });
        }
        self.validate_upload()?;
        self.validate_muc()?;
        if limits.max_stanza_bytes < 10_000 {
            return Err(ConfigError::Invalid {
                key: "limits.max_stanza_bytes",
                message: "must be at least 10000 (RFC 6120 section 13.12 requires accepting 10000-byte stanzas)".into(),
            });
        }
        // The whole offline queue is flushed to the session that logs in: it
        // must fit in half its outbound queue, the other half for live traffic.
        if self.storage.max_offline_bytes_per_user == 0
            || self.storage.max_offline_bytes_per_user > limits.outbound_queue_bytes / 2
        {
            return Err(ConfigError::Invalid {
                key: "storage.max_offline_bytes_per_user",
                message: format!(
                    "must be between 1 and half of limits.outbound_queue_bytes ({})",
                    limits.outbound_queue_bytes / 2
                ),
            });
        }
        if limits.outbound_queue_bytes_total < limits.outbound_queue_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.outbound_queue_bytes_total",
                message: "must be at least limits.outbound_queue_bytes".into(),
            });
        }
        // Room for at least a few stanzas of the largest size re-serialised
        // (up to 3 x limits.max_stanza_bytes, docs/operations.md).
        if limits.bus_buffer_bytes < 4 * limits.max_stanza_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.bus_buffer_bytes",
                message: format!(
                    "must be at least 4 x limits.max_stanza_bytes ({})",
                    4 * limits.max_stanza_bytes
                ),
            });
        }
        if limits.max_auth_attempts > 5 || limits.max_auth_attempts < 2 {
            // RFC 6120 section 6.4.5: at least 2 and no more than 5 retries.
            return Err(ConfigError::Invalid {
                key: "limits.max_auth_attempts",
                message: "must be between 2 and 5".into(),
            });
        }
        if limits.stanzas_per_second > 0 && limits.stanza_burst < limits.stanzas_per_second {
            return Err(ConfigError::Invalid {
                key: "limits.stanza_burst",
                message: "must be at least limits.stanzas_per_second".into(),
            });
        }
        self.trusted_proxies()?;
        parse_listen("cluster.grpc", &self.cluster.grpc)?;
        for (key, endpoints) in [
            ("cluster.storage", &self.cluster.storage),
            ("cluster.routers", &self.cluster.routers),
            ("cluster.presence", &self.cluster.presence),
        ] {
            for endpoint in endpoints {
                starling_proto::check_endpoint(endpoint)
                    .map_err(|message| ConfigError::Invalid { key, message })?;
            }
        }
        for url in &self.cluster.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::Invalid {
                    key: "cluster.redis",
                    message: format!("{url:?}: expected redis://HOST:PORT"),
                });
            }
        }
        if self.cluster.liveness_ttl_secs < 2 {
            return Err(ConfigError::Invalid {
                key: "cluster.liveness_ttl_secs",
                message: "must be at least 2".into(),
            });
        }
        self.validate_leader_election()?;
        self.validate_admin()?;
        self.telemetry.validate()?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid {
                key: "log.format",
                message: "expected \"text\" or \"json\"".into(),
            });
        }
        Ok(())
    }

    fn validate_leader_election(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        if !matches!(
            cluster.leader_election.as_str(),
            "auto" | "redis" | "kubernetes"
        ) {
            return Err(ConfigError::Invalid {
                key: "cluster.leader_election",
                message: format!(
                    "{:?}: expected \"auto\", \"redis\" or \"kubernetes\"",
                    cluster.leader_election
                ),
            });
        }
        // A Kubernetes object name (RFC 1123 subdomain) and namespace (label).
        let is_name = |name: &str, dots: bool| {
            !name.is_empty()
                && name.len() <= if dots { 253 } else { 63 }
                && name.bytes().all(|byte| {
                    byte.is_ascii_lowercase()
                        || byte.is_ascii_digit()
                        || byte == b'-'
                        || (dots && byte == b'.')
                })
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        if !is_name(&cluster.lease_name, true) {
            return Err(ConfigError::Invalid {
                key: "cluster.lease_name",
                message: format!(
                    "{:?}: expected a Kubernetes object name (lowercase letters, digits, '-' and '.')",
                    cluster.lease_name
                ),
            });
        }
        if !cluster.lease_namespace.is_empty() && !is_name(&cluster.lease_namespace, false) {
            return Err(ConfigError::Invalid {
                key: "cluster.lease_namespace",
                message: format!(
                    "{:?}: expected a namespace name (lowercase letters, digits and '-'), or empty for the pod's",
                    cluster.lease_namespace
                ),
            });
        }
        if !(3..=3600).contains(&cluster.lease_duration_secs) {
            return Err(ConfigError::Invalid {
                key: "cluster.lease_duration_secs",
                message: "must be from 3 to 3600 (seconds)".into(),
            });
        }
        Ok(())
    }

    /// `[[components]]` (XEP-0114): each a valid domain of its own, once,
    /// with a secret, and limits within the node's.
    fn validate_components(&self) -> Result<(), ConfigError> {
        let served = starling_jid::normalize_domainpart(&self.domain).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        for (index, component) in self.components.iter().enumerate() {
            let entry = format!("entry {} ({:?})", index + 1, component.domain);
            let domain = starling_jid::BareJid::domain_jid(&component.domain)
                .map(|jid| jid.domain().to_string())
                .map_err(|error| ConfigError::Invalid {
                    key: "components.domain",
                    message: format!("{entry}: not a valid XMPP domain: {error}"),
                })?;
            if domain == served {
                return Err(ConfigError::Invalid {
                    key: "components.domain",
                    message: format!(
                        "{entry}: is the served domain (`domain`); a component needs a domain of its own, such as irc.{served}"
                    ),
                });
            }
            if !seen.insert(domain.clone()) {
                return Err(ConfigError::Invalid {
                    key: "components.domain",
                    message: format!("{entry}: {domain} is configured twice"),
                });
            }
            if component.secret.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "components.secret",
                    message: format!("{entry}: must not be empty"),
                });
            }
            if component.max_stanza_bytes > self.limits.max_stanza_bytes {
                return Err(ConfigError::Invalid {
                    key: "components.max_stanza_bytes",
                    message: format!(
                        "{entry}: at most limits.max_stanza_bytes ({}); 0 takes that value",
                        self.limits.max_stanza_bytes
                    ),
                });
            }
            if component.stanzas_per_second > 0
                && component.stanza_burst < component.stanzas_per_second
            {
                return Err(ConfigError::Invalid {
                    key: "components.stanza_burst",
                    message: format!("{entry}: must be at least components.stanzas_per_second"),
                });
            }
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        parse_listen("admin.listen", &self.admin.listen)?;
        if !self.admin.token.is_empty() && !self.admin.token_file.is_empty() {
            return Err(ConfigError::Invalid {
                key: "admin.token",
                message: "set admin.token or admin.token_file, not both".into(),
            });
        }
        if !self.admin.token_file.is_empty() {
            self.admin_token()?;
        } else if !self.admin.token.is_empty() {
            check_admin_token("admin.token", &self.admin.token)?;
        } else if !self.admin.listen.is_empty() {
            return Err(ConfigError::Invalid {
                key: "admin.token",
                message: "must be set (or admin.token_file) when admin.listen is set: the admin API is never open".into(),
            });
        }
        if self.drain.window_secs > 3600 {
            return Err(ConfigError::Invalid {
                key: "drain.window_secs",
                message: "must be at most 3600".into(),
            });
        }
        if self.sm.resume_timeout_secs > 86_400 {
            return Err(ConfigError::Invalid {
                key: "sm.resume_timeout_secs",
                message: "must be at most 86400 (a day)".into(),
            });
        }
        if !(60..=31_536_000).contains(&self.sasl2.fast_token_ttl_secs) {
            return Err(ConfigError::Invalid {
                key: "sasl2.fast_token_ttl_secs",
                message: "must be between 60 (a minute) and 31536000 (a year)".into(),
            });
        }
        if !(1..=100_000).contains(&self.sm.max_unacked_stanzas) {
            return Err(ConfigError::Invalid {
                key: "sm.max_unacked_stanzas",
                message: "must be between 1 and 100000".into(),
            });
        }
        Ok(())
    }

    /// The admin token: `admin.token`, or the first line of `admin.token_file`;
    /// `None` when neither is set.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        if !self.admin.token.is_empty() {
            return Ok(Some(self.admin.token.clone()));
        }
        if self.admin.token_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.admin.token_file).map_err(|error| {
            ConfigError::Invalid {
                key: "admin.token_file",
                message: format!("cannot read {}: {error}", self.admin.token_file),
            }
        })?;
        let token = text.lines().next().unwrap_or_default().trim().to_string();
        check_admin_token("admin.token_file", &token)?;
        Ok(Some(token))
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        parse_listen("admin.listen", &self.admin.listen)
            .ok()
            .flatten()
    }

    /// The storage URL, defaulting to a SQLite file in the data directory.
    pub fn storage_url(&self) -> String {
        if self.storage.url.is_empty() {
            format!(
                "sqlite://{}/starling.db",
                self.data_dir.trim_end_matches('/')
            )
        } else {
            self.storage.url.clone()
        }
    }

    /// The limits every hop after the edge parses a stanza again under (the
    /// bus on the receiving node, the offline store): `[limits]` sized for
    /// what the server adds (`Limits::for_server_copies`), so that a stanza
    /// the edge accepted always parses again.
    pub fn stored_stanza_limits(&self) -> starling_xmpp::Limits {
        starling_xmpp::Limits {
            max_stanza_bytes: self.limits.max_stanza_bytes as usize,
            max_depth: self.limits.max_depth as usize,
            ..starling_xmpp::Limits::default()
        }
        .for_server_copies()
    }

    /// The load balancers whose word on a client's address is believed (`proxy.*`).
    pub fn trusted_proxies(
        &self,
    ) -> Result<starling_connection_manager::TrustedProxies, ConfigError> {
        let proxy = &self.proxy;
        let proxies = starling_connection_manager::TrustedProxies::new(
            &proxy.trusted,
            proxy.protocol,
            proxy.forwarded_for,
        )
        .map_err(|error| ConfigError::Invalid {
            key: "proxy.trusted",
            message: error.to_string(),
        })?;
        for (key, on) in [
            ("proxy.protocol", proxy.protocol),
            ("proxy.forwarded_for", proxy.forwarded_for),
        ] {
            if on && proxy.trusted.is_empty() {
                return Err(ConfigError::Invalid {
                    key,
                    message: "is on, but proxy.trusted names no load balancer to believe".into(),
                });
            }
        }
        Ok(proxies)
    }

    /// The limits of the HTTP listeners, from `limits.http_*`.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_timeout: std::time::Duration::from_secs(self.limits.http_header_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.limits.http_body_timeout_secs),
            connections_per_ip: self.limits.http_connections_per_ip,
            max_requests: self.limits.http_max_requests,
        }
    }

    pub fn c2s_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.c2s", &self.listen.c2s).ok().flatten()
    }

    pub fn s2s_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.s2s", &self.listen.s2s).ok().flatten()
    }

    pub fn s2s_tls_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.s2s_tls", &self.listen.s2s_tls)
            .ok()
            .flatten()
    }

    /// `s2s.hosts` by domain (validated at load).
    pub fn s2s_hosts(
        &self,
    ) -> std::collections::HashMap<String, starling_connection_manager::S2sHost> {
        self.s2s
            .hosts
            .iter()
            .filter_map(|entry| parse_s2s_host(entry).ok())
            .collect()
    }

    /// `s2s.*`, `tls.ca_file`: valid domains, a secret when enabled,
    /// addresses in `host:port` or `tls://host:port` form, positive bounds.
    fn validate_s2s(&self) -> Result<(), ConfigError> {
        if !self.listen.s2s_tls.is_empty() && self.listen.s2s_tls == self.listen.s2s {
            return Err(ConfigError::Invalid {
                key: "listen.s2s_tls",
                message: "must differ from listen.s2s (one port speaks STARTTLS, the other TLS from the first byte)".into(),
            });
        }
        if !self.tls.ca_file.is_empty() && !Path::new(&self.tls.ca_file).is_file() {
            return Err(ConfigError::Invalid {
                key: "tls.ca_file",
                message: format!("{:?} is not a readable file", self.tls.ca_file),
            });
        }
        if self.s2s.enabled && self.s2s.dialback_secret.len() < 16 {
            return Err(ConfigError::Invalid {
                key: "s2s.dialback_secret",
                message: "must hold at least 16 characters when s2s.enabled is true (the same on every node)".into(),
            });
        }
        for (key, list) in [("s2s.allow", &self.s2s.allow), ("s2s.deny", &self.s2s.deny)] {
            for domain in list {
                starling_jid::normalize_domainpart(domain).map_err(|error| {
                    ConfigError::Invalid {
                        key,
                        message: format!("{domain:?} is not a valid domain: {error}"),
                    }
                })?;
            }
        }
        for entry in &self.s2s.hosts {
            parse_s2s_host(entry).map_err(|message| ConfigError::Invalid {
                key: "s2s.hosts",
                message,
            })?;
        }
        for (key, value) in [
            ("s2s.connect_timeout_secs", self.s2s.connect_timeout_secs),
            ("s2s.idle_timeout_secs", self.s2s.idle_timeout_secs),
            ("s2s.metrics_domains", u64::from(self.s2s.metrics_domains)),
            ("s2s.queue_stanzas", u64::from(self.s2s.queue_stanzas)),
            ("s2s.queue_bytes", self.s2s.queue_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    pub fn component_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.component", &self.listen.component)
            .ok()
            .flatten()
    }

    pub fn c2s_tls_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.c2s_tls", &self.listen.c2s_tls)
            .ok()
            .flatten()
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.https", &self.listen.https)
            .ok()
            .flatten()
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        parse_listen("cluster.grpc", &self.cluster.grpc)
            .ok()
            .flatten()
    }

    fn validate_muc(&self) -> Result<(), ConfigError> {
        let muc = &self.muc;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let bounds: [(&'static str, u64, u64); 6] = [
            (
                "muc.max_occupants",
                u64::from(muc.max_occupants),
                u64::from(MAX_MUC_OCCUPANTS),
            ),
            (
                "muc.history_max_stanzas",
                u64::from(muc.history_max_stanzas),
                u64::from(MAX_MUC_HISTORY_STANZAS),
            ),
            (
                "muc.history_max_bytes",
                muc.history_max_bytes,
                MAX_MUC_HISTORY_BYTES,
            ),
            (
                "muc.max_nick_bytes",
                u64::from(muc.max_nick_bytes),
                u64::from(MAX_MUC_NICK_BYTES),
            ),
            (
                "muc.max_rooms_per_user",
                u64::from(muc.max_rooms_per_user),
                u64::from(MAX_MUC_ROOMS_PER_USER),
            ),
            (
                "muc.max_requests_per_minute",
                u64::from(muc.max_requests_per_minute),
                u64::from(MAX_MUC_REQUESTS_PER_MINUTE),
            ),
        ];
        for (key, value, max) in bounds {
            let min = u64::from(key != "muc.history_max_stanzas");
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("must be between {min} and {max}")));
            }
        }
        self.validate_service_domain("muc.domain", &muc.domain)?;
        if muc.enabled && self.upload.enabled && self.muc_domain() == self.upload_domain() {
            return Err(invalid(
                "muc.domain",
                "must differ from the upload service's domain".into(),
            ));
        }
        Ok(())
    }

    /// A service's own domain (`upload.domain`, `muc.domain`): empty (the
    /// default), or a valid domain other than the served `domain`.
    fn validate_service_domain(&self, key: &'static str, value: &str) -> Result<(), ConfigError> {
        if value.is_empty() {
            return Ok(());
        }
        let invalid = |message: String| ConfigError::Invalid { key, message };
        let domain = starling_jid::BareJid::domain_jid(value)
            .map_err(|error| invalid(format!("{value:?} is not a valid XMPP domain: {error}")))?;
        let served = starling_jid::BareJid::domain_jid(&self.domain).ok();
        if served.as_ref() == Some(&domain) {
            return Err(invalid(
                "must differ from `domain` (the service is an entity of its own)".into(),
            ));
        }
        Ok(())
    }

    /// The MUC service's domain: `muc.domain`, or `conference.` + `domain`.
    pub fn muc_domain(&self) -> String {
        let domain = if self.muc.domain.is_empty() {
            format!("conference.{}", self.domain)
        } else {
            self.muc.domain.clone()
        };
        starling_jid::BareJid::domain_jid(&domain)
            .map(|jid| jid.domain().to_string())
            .unwrap_or(domain)
    }

    fn validate_upload(&self) -> Result<(), ConfigError> {
        let upload = &self.upload;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        if !(1..=MAX_UPLOAD_FILE_BYTES).contains(&upload.max_file_bytes) {
            return Err(invalid(
                "upload.max_file_bytes",
                format!("must be between 1 and {MAX_UPLOAD_FILE_BYTES}"),
            ));
        }
        if upload.quota_bytes != 0 && upload.quota_bytes < upload.max_file_bytes {
            return Err(invalid(
                "upload.quota_bytes",
                "must be 0 (no quota) or at least upload.max_file_bytes".into(),
            ));
        }
        if !(1..=MAX_UPLOAD_EXPIRE_AFTER_SECS).contains(&upload.expire_after_secs) {
            return Err(invalid(
                "upload.expire_after_secs",
                format!("must be between 1 and {MAX_UPLOAD_EXPIRE_AFTER_SECS}"),
            ));
        }
        if !(1..=86_400).contains(&upload.slot_validity_secs) {
            return Err(invalid(
                "upload.slot_validity_secs",
                "must be between 1 and 86400".into(),
            ));
        }
        self.validate_service_domain("upload.domain", &upload.domain)?;
        if !upload.public_url.is_empty() {
            let url = upload.public_url.as_str();
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            let valid = rest.is_some_and(|rest| {
                !rest.is_empty()
                    && !rest.starts_with('/')
                    && !rest.contains(['?', '#', ' '])
                    && rest.chars().all(|character| character.is_ascii_graphic())
            });
            if !valid {
                return Err(invalid(
                    "upload.public_url",
                    format!("{url:?}: expected http(s)://HOST[:PORT][/PATH], without a query"),
                ));
            }
        }
        self.validate_upload_s3()
    }

    /// `upload.storage = "s3://…"` and the `upload.s3_*` keys that go with it.
    fn validate_upload_s3(&self) -> Result<(), ConfigError> {
        let upload = &self.upload;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let Some((bucket, prefix)) = self.upload_s3_location() else {
            if upload.storage.contains("://") {
                return Err(invalid(
                    "upload.storage",
                    format!(
                        "{:?}: expected a directory or s3://BUCKET[/PREFIX]",
                        upload.storage
                    ),
                ));
            }
            for (key, set) in [
                ("upload.s3_endpoint", !upload.s3_endpoint.is_empty()),
                ("upload.s3_region", !upload.s3_region.is_empty()),
                ("upload.s3_allow_http", upload.s3_allow_http),
                (
                    "upload.s3_access_key_id",
                    !upload.s3_access_key_id.is_empty(),
                ),
                (
                    "upload.s3_secret_access_key",
                    !upload.s3_secret_access_key.is_empty(),
                ),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "only goes with upload.storage = \"s3://BUCKET[/PREFIX]\"".into(),
                    ));
                }
            }
            return Ok(());
        };
        // The S3 bucket naming rules: 3 to 63 lowercase letters, digits,
        // dots and hyphens, starting and ending with a letter or digit.
        let bucket_valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || b".-".contains(&byte)
            })
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_valid {
            return Err(invalid(
                "upload.storage",
                format!("{bucket:?} is not a valid S3 bucket name (3 to 63 of a-z 0-9 . -)"),
            ));
        }
        let bad_segment = |segment: &str| {
            segment.is_empty()
                || segment == "."
                || segment == ".."
                || segment.chars().any(char::is_control)
        };
        if !prefix.is_empty() && prefix.split('/').any(bad_segment) {
            return Err(invalid(
                "upload.storage",
                format!("{prefix:?}: the key prefix has an empty, `.`, `..` or control-character segment"),
            ));
        }
        if !upload.s3_endpoint.is_empty() {
            let endpoint = upload.s3_endpoint.as_str();
            let (plain, rest) = match (
                endpoint.strip_prefix("http://"),
                endpoint.strip_prefix("https://"),
            ) {
                (Some(rest), _) => (true, rest),
                (_, Some(rest)) => (false, rest),
                _ => (false, ""),
            };
            if rest.is_empty()
                || rest.starts_with('/')
                || rest.contains(['?', '#', ' '])
                || !rest.chars().all(|character| character.is_ascii_graphic())
            {
                return Err(invalid(
                    "upload.s3_endpoint",
                    format!("{endpoint:?}: expected http(s)://HOST[:PORT]"),
                ));
            }
            if plain && !upload.s3_allow_http {
                return Err(invalid(
                    "upload.s3_endpoint",
                    format!(
                        "{endpoint:?} is plain HTTP: set upload.s3_allow_http = true to allow it"
                    ),
                ));
            }
        }
        match (
            upload.s3_access_key_id.is_empty(),
            upload.s3_secret_access_key.is_empty(),
        ) {
            (false, true) => Err(invalid(
                "upload.s3_secret_access_key",
                "must be set with upload.s3_access_key_id".into(),
            )),
            (true, false) => Err(invalid(
                "upload.s3_access_key_id",
                "must be set with upload.s3_secret_access_key".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The bucket and key prefix of `upload.storage = "s3://BUCKET[/PREFIX]"`
    /// (the prefix without its trailing `/`), or `None` for a directory.
    pub fn upload_s3_location(&self) -> Option<(&str, &str)> {
        let rest = self.upload.storage.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Some((bucket, prefix.trim_end_matches('/')))
    }

    /// The upload service's domain: `upload.domain`, or `upload.` + `domain`.
    pub fn upload_domain(&self) -> String {
        let domain = if self.upload.domain.is_empty() {
            format!("upload.{}", self.domain)
        } else {
            self.upload.domain.clone()
        };
        starling_jid::BareJid::domain_jid(&domain)
            .map(|jid| jid.domain().to_string())
            .unwrap_or(domain)
    }

    /// The upload directory: `upload.storage`, or `data_dir/upload`.
    pub fn upload_directory(&self) -> PathBuf {
        if self.upload.storage.is_empty() {
            Path::new(&self.data_dir).join("upload")
        } else {
            PathBuf::from(&self.upload.storage)
        }
    }

    /// The base of upload URLs, without a trailing `/`: `upload.public_url`,
    /// or the HTTPS listener (else the HTTP one) at the served domain.
    pub fn upload_public_url(&self) -> String {
        if !self.upload.public_url.is_empty() {
            return self.upload.public_url.trim_end_matches('/').to_string();
        }
        match (self.https_addr(), self.http_addr()) {
            (Some(https), _) => format!("https://{}:{}", self.domain, https.port()),
            (None, Some(http)) => format!("http://{}:{}", self.domain, http.port()),
            (None, None) => format!("https://{}", self.domain),
        }
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        parse_listen("listen.http", &self.listen.http)
            .ok()
            .flatten()
    }
}

/// The shortest admin token (`starling_admin::MIN_TOKEN_BYTES`).
const MIN_ADMIN_TOKEN_BYTES: usize = 16;

fn check_admin_token(key: &'static str, token: &str) -> Result<(), ConfigError> {
    if token.len() < MIN_ADMIN_TOKEN_BYTES
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::Invalid {
            key,
            message: format!(
                "the admin token must be at least {MIN_ADMIN_TOKEN_BYTES} characters without spaces"
            ),
        });
    }
    Ok(())
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let endpoint = &self.otlp_endpoint;
        // The exporter speaks OTLP/gRPC in clear text (a collector beside the process).
        let has_host = endpoint
            .strip_prefix("http://")
            .is_some_and(|host| !host.is_empty());
        if !endpoint.is_empty() && !has_host {
            return Err(ConfigError::Invalid {
                key: "telemetry.otlp_endpoint",
                message: format!(
                    "{endpoint:?}: expected http://HOST:PORT of an OTLP/gRPC collector (empty disables traces)"
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::Invalid {
                key: "telemetry.sample_ratio",
                message: format!("{} is not between 0.0 and 1.0", self.sample_ratio),
            });
        }
        Ok(())
    }
}

fn parse_listen(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| ConfigError::Invalid {
        key,
        message: format!(
            "{value:?} is not an address such as 0.0.0.0:5222 or [::]:5222 (empty disables it)"
        ),
    })
}

/// The environment as a map (injectable in tests).
pub fn process_environment() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with("STARLING_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_toml_str("test", "", &env(&[])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.storage_url(), "sqlite://./data/starling.db");
        assert_eq!(config.c2s_addr(), Some("0.0.0.0:5222".parse().unwrap()));
    }

    #[test]
    fn stream_management_keys_are_checked_by_name() {
        let config = Config::from_toml_str(
            "test",
            "[sm]\nresume_timeout_secs = 0\nmax_unacked_stanzas = 50\n",
            &env(&[("STARLING_SM_ENABLED", "false")]),
        )
        .unwrap();
        assert!(!config.sm.enabled);
        assert_eq!(
            (config.sm.resume_timeout_secs, config.sm.max_unacked_stanzas),
            (0, 50)
        );
        for (text, key) in [
            (
                "[sm]\nresume_timeout_secs = 86401\n",
                "sm.resume_timeout_secs",
            ),
            ("[sm]\nmax_unacked_stanzas = 0\n", "sm.max_unacked_stanzas"),
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn archive_keys_are_checked_by_name() {
        let config = Config::from_toml_str(
            "test",
            "[mam]\nmax_page_size = 50\nretention_days = 30\n",
            &env(&[("STARLING_MAM_MAX_MESSAGES_PER_ACCOUNT", "0")]),
        )
        .unwrap();
        assert_eq!(
            (
                config.mam.enabled,
                config.mam.max_page_size,
                config.mam.retention_days,
                config.mam.max_messages_per_account
            ),
            (true, 50, 30, 0)
        );
        for (text, key) in [
            ("[mam]\nmax_page_size = 0\n", "mam.max_page_size"),
            (
                "[push]\nmin_interval_secs = 86401\n",
                "push.min_interval_secs",
            ),
            ("[mam]\nmax_page_size = 10001\n", "mam.max_page_size"),
            ("[mam]\nretention_days = 36501\n", "mam.retention_days"),
            (
                "[pep]\ncaps_retention_days = 36501\n",
                "pep.caps_retention_days",
            ),
            (
                "[mam]\npurge_interval_secs = 0\n",
                "mam.purge_interval_secs",
            ),
            ("[mam]\nmax_pages = 1\n", "max_pages"),
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn leader_election_keys_are_checked_by_name() {
        let config = Config::from_toml_str(
            "test",
            "[cluster]\nleader_election = \"kubernetes\"\nlease_name = \"chat-janitor\"\n",
            &env(&[
                ("STARLING_CLUSTER_LEASE_NAMESPACE", "chat"),
                ("STARLING_CLUSTER_LEASE_DURATION_SECS", "6"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.cluster.leader_election_kind(false),
            LeaderElectionKind::Kubernetes
        );
        assert_eq!(
            (
                config.cluster.lease_name.as_str(),
                config.cluster.lease_namespace.as_str(),
                config.cluster.lease_duration_secs
            ),
            ("chat-janitor", "chat", 6)
        );
        let defaults = ClusterConfig::default();
        assert_eq!(
            defaults.leader_election_kind(false),
            LeaderElectionKind::Redis
        );
        assert_eq!(
            defaults.leader_election_kind(true),
            LeaderElectionKind::Kubernetes
        );
        for (text, key) in [
            (
                "[cluster]\nleader_election = \"etcd\"\n",
                "cluster.leader_election",
            ),
            (
                "[cluster]\nlease_name = \"Janitor\"\n",
                "cluster.lease_name",
            ),
            ("[cluster]\nlease_name = \"\"\n", "cluster.lease_name"),
            (
                "[cluster]\nlease_namespace = \"a.b\"\n",
                "cluster.lease_namespace",
            ),
            (
                "[cluster]\nlease_duration_secs = 2\n",
                "cluster.lease_duration_secs",
            ),
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn upload_s3_storage_is_parsed_and_checked_by_name() {
        let config = Config::from_toml_str(
            "test",
            "[upload]\nstorage = \"s3://chat-files/a/b/\"\ns3_endpoint = \"http://127.0.0.1:9000\"\ns3_allow_http = true\n",
            &env(&[]),
        )
        .unwrap();
        assert_eq!(config.upload_s3_location(), Some(("chat-files", "a/b")));
        let config =
            Config::from_toml_str("test", "[upload]\nstorage = \"s3://files\"\n", &env(&[]))
                .unwrap();
        assert_eq!(config.upload_s3_location(), Some(("files", "")));
        assert_eq!(Config::default().upload_s3_location(), None);
        for (text, key) in [
            ("[upload]\nstorage = \"s3://Bad_Name\"\n", "upload.storage"),
            ("[upload]\nstorage = \"s3://ab\"\n", "upload.storage"),
            (
                "[upload]\nstorage = \"s3://files/a/../b\"\n",
                "upload.storage",
            ),
            ("[upload]\nstorage = \"https://files\"\n", "upload.storage"),
            (
                "[upload]\nstorage = \"s3://files\"\ns3_endpoint = \"http://minio:9000\"\n",
                "upload.s3_endpoint",
            ),
            (
                "[upload]\nstorage = \"s3://files\"\ns3_endpoint = \"minio:9000\"\n",
                "upload.s3_endpoint",
            ),
            (
                "[upload]\nstorage = \"s3://files\"\ns3_secret_access_key = \"s\"\n",
                "upload.s3_access_key_id",
            ),
            ("[upload]\ns3_allow_http = true\n", "upload.s3_allow_http"),
            (
                "[upload]\ns3_endpoint = \"https://s3\"\n",
                "upload.s3_endpoint",
            ),
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn muc_keys_are_checked_by_name() {
        let config = Config::from_toml_str(
            "test",
            "domain = \"Example.ORG\"\n",
            &env(&[("STARLING_MUC_MAX_OCCUPANTS", "20")]),
        )
        .unwrap();
        assert!(config.muc.enabled);
        assert_eq!(config.muc.max_occupants, 20);
        assert_eq!(config.muc_domain(), "conference.example.org");
        for (text, key) in [
            ("[muc]\nmax_occupants = 0\n", "muc.max_occupants"),
            ("[muc]\nmax_occupants = 10001\n", "muc.max_occupants"),
            (
                "[muc]\nhistory_max_stanzas = 1001\n",
                "muc.history_max_stanzas",
            ),
            ("[muc]\nhistory_max_bytes = 0\n", "muc.history_max_bytes"),
            ("[muc]\nmax_nick_bytes = 0\n", "muc.max_nick_bytes"),
            ("[muc]\nmax_rooms_per_user = 0\n", "muc.max_rooms_per_user"),
            (
                "[muc]\nmax_requests_per_minute = 10001\n",
                "muc.max_requests_per_minute",
            ),
            ("[muc]\ndomain = \"localhost\"\n", "muc.domain"),
            ("[muc]\ndomain = \"a b\"\n", "muc.domain"),
            ("[muc]\ndomain = \"upload.localhost\"\n", "muc.domain"),
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn upload_keys_are_checked_by_name() {
        let config = Config::from_toml_str(
            "test",
            "domain = \"Example.ORG\"\n[listen]\nhttp = \"127.0.0.1:5280\"\nhttps = \"\"\n",
            &env(&[("STARLING_UPLOAD_QUOTA_BYTES", "0")]),
        )
        .unwrap();
        assert!(config.upload.enabled);
        assert_eq!(config.upload.quota_bytes, 0);
        assert_eq!(config.upload_domain(), "upload.example.org");
        assert_eq!(config.upload_public_url(), "http://Example.ORG:5280");
        assert_eq!(config.upload_directory(), Path::new("./data/upload"));
        let config = Config::from_toml_str(
            "test",
            "[upload]\ndomain = \"Files.Example.org\"\npublic_url = \"https://files.example.org/x/\"\nstorage = \"/srv/up\"\n",
            &env(&[]),
        )
        .unwrap();
        assert_eq!(config.upload_domain(), "files.example.org");
        assert_eq!(config.upload_public_url(), "https://files.example.org/x");
        assert_eq!(config.upload_directory(), Path::new("/srv/up"));
        for (text, key) in [
            ("[upload]\nmax_file_bytes = 0\n", "upload.max_file_bytes"),
            ("[upload]\nquota_bytes = 5\n", "upload.quota_bytes"),
            (
                "[upload]\nexpire_after_secs = 0\n",
                "upload.expire_after_secs",
            ),
            (
                "[upload]\nslot_validity_secs = 0\n",
                "upload.slot_validity_secs",
            ),
            ("[upload]\ndomain = \"localhost\"\n", "upload.domain"),
            ("[upload]\ndomain = \"a b\"\n", "upload.domain"),
            ("[upload]\npublic_url = \"ftp://x\"\n", "upload.public_url"),
            (
                "[upload]\npublic_url = \"https://x/?a\"\n",
                "upload.public_url",
            ),
            ("[upload]\nbucket = \"x\"\n", "bucket"),
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn sasl2_keys_are_checked_by_name() {
        let config = Config::from_toml_str(
            "test",
            "[sasl2]\nenabled = true\nfast_token_ttl_secs = 3600\n",
            &env(&[("STARLING_SASL2_FAST", "false")]),
        )
        .unwrap();
        assert!(config.sasl2.enabled && !config.sasl2.fast);
        assert_eq!(config.sasl2.fast_token_ttl_secs, 3600);
        assert_eq!(Config::default().sasl2.fast_token_ttl_secs, 1_209_600);
        for text in [
            "[sasl2]\nfast_token_ttl_secs = 59\n",
            "[sasl2]\nfast_token_ttl_secs = 31536001\n",
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(
                error.to_string().contains("sasl2.fast_token_ttl_secs"),
                "{error}"
            );
        }
    }

    #[test]
    fn reads_every_documented_section() {
        let text = r#"
            domain = "example.org"
            [listen]
            c2s = "127.0.0.1:15222"
            c2s_tls = ""
            http = "127.0.0.1:15280"
            [storage]
            url = "sqlite::memory:"
            [limits]
            max_stanza_bytes = 65536
        "#;
        let config = Config::from_toml_str("test", text, &env(&[])).unwrap();
        assert_eq!(config.domain, "example.org");
        assert_eq!(config.c2s_tls_addr(), None);
        assert_eq!(config.limits.max_stanza_bytes, 65536);
    }

    #[test]
    fn pep_limits_are_validated_by_key() {
        let config = Config::from_toml_str("test", "", &env(&[])).unwrap();
        assert_eq!(config.pep, PepConfig::default());
        for (text, key) in [
            ("[pep]\nmax_item_bytes = 0\n", "pep.max_item_bytes"),
            ("[pep]\nmax_items_per_node = 0\n", "pep.max_items_per_node"),
            (
                "[pep]\nmax_nodes_per_account = 20000\n",
                "pep.max_nodes_per_account",
            ),
            (
                "[pep]\nmax_whitelist_per_node = 0\n",
                "pep.max_whitelist_per_node",
            ),
            (
                "[pep]\nmax_subscriptions_per_node = 100001\n",
                "pep.max_subscriptions_per_node",
            ),
        ] {
            match Config::from_toml_str("test", text, &env(&[])) {
                Err(ConfigError::Invalid { key: invalid, .. }) => assert_eq!(invalid, key),
                other => panic!("{text}: {other:?}"),
            }
        }
        let config =
            Config::from_toml_str("test", "", &env(&[("STARLING_PEP_MAX_ITEM_BYTES", "1000")]))
                .unwrap();
        assert_eq!(config.pep.max_item_bytes, 1000);
    }

    #[test]
    fn environment_overrides_file() {
        let config = Config::from_toml_str(
            "test",
            "[limits]\nmax_stanza_bytes = 65536\n",
            &env(&[
                ("STARLING_LIMITS_MAX_STANZA_BYTES", "20000"),
                ("STARLING_DOMAIN", "env.example"),
                ("STARLING_REGISTRATION_ENABLED", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(config.limits.max_stanza_bytes, 20000);
        assert_eq!(config.domain, "env.example");
        assert!(config.registration.enabled);
    }

    #[test]
    fn unknown_key_is_named() {
        let error = Config::from_toml_str("test", "[limits]\nmax_stanza_byte = 1\n", &env(&[]))
            .unwrap_err();
        assert!(error.to_string().contains("max_stanza_byte"), "{error}");
        let error = Config::from_toml_str("test", "domian = \"x\"\n", &env(&[])).unwrap_err();
        assert!(error.to_string().contains("domian"), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        let error =
            Config::from_toml_str("test", "[listen]\nc2s = \"nonsense\"\n", &env(&[])).unwrap_err();
        assert!(error.to_string().contains("listen.c2s"), "{error}");
        let error =
            Config::from_toml_str("test", "[limits]\nmax_stanza_bytes = \"big\"\n", &env(&[]))
                .unwrap_err();
        assert!(error.to_string().contains("max_stanza_bytes"), "{error}");
        let error =
            Config::from_toml_str("test", "", &env(&[("STARLING_LIMITS_MAX_DEPTH", "deep")]))
                .unwrap_err();
        assert!(
            error.to_string().contains("STARLING_LIMITS_MAX_DEPTH"),
            "{error}"
        );
        let error = Config::from_toml_str("test", "[storage]\nurl = \"mysql://x\"\n", &env(&[]))
            .unwrap_err();
        assert!(error.to_string().contains("storage.url"), "{error}");
        let error = Config::from_toml_str("test", "domain = \"a b\"\n", &env(&[])).unwrap_err();
        assert!(error.to_string().contains("`domain`"), "{error}");
    }

    #[test]
    fn lists_come_from_comma_separated_environment_values() {
        let config = Config::from_toml_str(
            "test",
            "",
            &env(&[(
                "STARLING_CLUSTER_ROUTERS",
                "http://127.0.0.1:7001, http://127.0.0.1:7002",
            )]),
        )
        .unwrap();
        assert_eq!(
            config.cluster.routers,
            vec!["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
        let error = Config::from_toml_str(
            "test",
            "[cluster]\nrouters = [\"127.0.0.1:7001\"]\n",
            &env(&[]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("cluster.routers"), "{error}");
    }

    #[test]
    fn the_admin_api_is_never_open_without_a_token() {
        let config = Config::from_toml_str("test", "", &env(&[])).unwrap();
        assert_eq!(config.admin_addr(), None);
        assert_eq!(config.admin_token().unwrap(), None);
        let error =
            Config::from_toml_str("test", "[admin]\nlisten = \"127.0.0.1:5290\"\n", &env(&[]))
                .unwrap_err();
        assert!(error.to_string().contains("`admin.token`"), "{error}");
        let error = Config::from_toml_str(
            "test",
            "[admin]\nlisten = \"127.0.0.1:5290\"\ntoken = \"short\"\n",
            &env(&[]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("`admin.token`"), "{error}");
        let config = Config::from_toml_str(
            "test",
            "[admin]\nlisten = \"127.0.0.1:5290\"\n",
            &env(&[("STARLING_ADMIN_TOKEN", "0123456789abcdef0123")]),
        )
        .unwrap();
        assert_eq!(config.admin_addr(), Some("127.0.0.1:5290".parse().unwrap()));
        assert_eq!(
            config.admin_token().unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
    }

    #[test]
    fn the_admin_token_can_come_from_a_file() {
        let path =
            std::env::temp_dir().join(format!("starling-admin-token-{}", std::process::id()));
        std::fs::write(&path, "fedcba9876543210fedcba\n").unwrap();
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:5290\"\ntoken_file = \"{}\"\n",
            path.display()
        );
        let config = Config::from_toml_str("test", &text, &env(&[])).unwrap();
        assert_eq!(
            config.admin_token().unwrap().as_deref(),
            Some("fedcba9876543210fedcba")
        );
        std::fs::remove_file(&path).unwrap();
        let error = Config::from_toml_str("test", &text, &env(&[])).unwrap_err();
        assert!(error.to_string().contains("`admin.token_file`"), "{error}");
    }

    #[test]
    fn telemetry_is_off_by_default_and_validated() {
        let config = Config::from_toml_str("test", "", &env(&[])).unwrap();
        assert!(config.telemetry.otlp_endpoint.is_empty());
        let config = Config::from_toml_str(
            "test",
            "[telemetry]\nsample_ratio = 1\n",
            &env(&[
                ("STARLING_TELEMETRY_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("STARLING_TELEMETRY_SAMPLE_RATIO", "0.25"),
                ("STARLING_TELEMETRY_SERVICE_NAME", "edge"),
            ]),
        )
        .unwrap();
        assert_eq!(config.telemetry.otlp_endpoint, "http://127.0.0.1:4317");
        assert_eq!(config.telemetry.sample_ratio, 0.25);
        assert_eq!(config.telemetry.service_name, "edge");
        for (text, key) in [
            (
                "[telemetry]\nsample_ratio = 1.5\n",
                "telemetry.sample_ratio",
            ),
            (
                "[telemetry]\nsample_ratio = -0.1\n",
                "telemetry.sample_ratio",
            ),
            (
                "[telemetry]\nsample_ratio = nan\n",
                "telemetry.sample_ratio",
            ),
            (
                "[telemetry]\notlp_endpoint = \"127.0.0.1:4317\"\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "[telemetry]\notlp_endpoint = \"https://collector:4317\"\n",
                "telemetry.otlp_endpoint",
            ),
        ] {
            let error = Config::from_toml_str("test", text, &env(&[])).unwrap_err();
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
        let error = Config::from_toml_str(
            "test",
            "",
            &env(&[("STARLING_TELEMETRY_SAMPLE_RATIO", "half")]),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("STARLING_TELEMETRY_SAMPLE_RATIO"),
            "{error}"
        );
    }

    #[test]
    fn component_entries_are_validated_with_the_key_named() {
        let load = |components: &str| {
            Config::from_toml_str(
                "test.toml",
                &format!("domain = \"example.com\"\n{components}"),
                &BTreeMap::new(),
            )
        };
        let config =
            load("[[components]]\ndomain = \"irc.example.com\"\nsecret = \"s\"\n").unwrap();
        assert_eq!(config.components[0].stanzas_per_second, 500);
        assert!(!format!("{config:?}").contains("secret: \"s\""));
        for (components, key) in [
            ("[[components]]\ndomain = \"Example.com\"\nsecret = \"s\"\n", "components.domain"),
            ("[[components]]\ndomain = \"irc.example.com\"\n", "components.secret"),
            (
                "[[components]]\ndomain = \"a.example.com\"\nsecret = \"s\"\n[[components]]\ndomain = \"A.example.com\"\nsecret = \"t\"\n",
                "components.domain",
            ),
            (
                "[[components]]\ndomain = \"a.example.com\"\nsecret = \"s\"\nstanzas_per_second = 10\nstanza_burst = 5\n",
                "components.stanza_burst",
            ),
        ] {
            let error = load(components).unwrap_err().to_string();
            assert!(error.contains(key), "{components}: {error}");
        }
    }

    #[test]
    fn s2s_keys_are_validated_with_the_key_named() {
        let load = |toml: &str, environment: &[(&str, &str)]| {
            Config::from_toml_str(
                "test.toml",
                &format!("domain = \"example.com\"\n{toml}"),
                &environment
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
            )
        };
        let config = load(
            "[listen]\ns2s_tls = \"127.0.0.1:5270\"\n[s2s]\nenabled = true\ndialback_secret = \"0123456789abcdef\"\nhosts = [\"Example.NET=127.0.0.2:5269\", \"tls.example=tls://127.0.0.3:5270\"]\ndeny = [\"evil.example\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.listen.s2s, "0.0.0.0:5269");
        assert_eq!(
            config.s2s_tls_addr(),
            Some("127.0.0.1:5270".parse().unwrap())
        );
        let hosts = config.s2s_hosts();
        let starttls = &hosts["example.net"];
        assert_eq!(
            (starttls.host.as_str(), starttls.port, starttls.direct_tls),
            ("127.0.0.2", 5269, false)
        );
        let direct = &hosts["tls.example"];
        assert_eq!(
            (direct.host.as_str(), direct.port, direct.direct_tls),
            ("127.0.0.3", 5270, true)
        );
        // Lists and the rest come from the environment too.
        let config = load(
            "",
            &[
                ("STARLING_S2S_ENABLED", "true"),
                ("STARLING_S2S_DIALBACK_SECRET", "0123456789abcdef"),
                ("STARLING_S2S_ALLOW", "a.example, b.example"),
            ],
        )
        .unwrap();
        assert_eq!(config.s2s.allow, vec!["a.example", "b.example"]);
        for (toml, key) in [
            ("[s2s]\nenabled = true\n", "s2s.dialback_secret"),
            (
                "[s2s]\nenabled = true\ndialback_secret = \"short\"\n",
                "s2s.dialback_secret",
            ),
            ("[s2s]\ndeny = [\"not a domain\"]\n", "s2s.deny"),
            ("[s2s]\nallow = [\"a@b\"]\n", "s2s.allow"),
            ("[s2s]\nhosts = [\"example.net\"]\n", "s2s.hosts"),
            ("[s2s]\nhosts = [\"example.net=127.0.0.2\"]\n", "s2s.hosts"),
            ("[s2s]\nqueue_stanzas = 0\n", "s2s.queue_stanzas"),
            (
                "[s2s]\nconnect_timeout_secs = 0\n",
                "s2s.connect_timeout_secs",
            ),
            ("[listen]\ns2s = \"nowhere\"\n", "listen.s2s"),
            ("[listen]\ns2s_tls = \"nowhere\"\n", "listen.s2s_tls"),
            (
                "[listen]\ns2s = \"0.0.0.0:5269\"\ns2s_tls = \"0.0.0.0:5269\"\n",
                "listen.s2s_tls",
            ),
            (
                "[s2s]\nhosts = [\"example.net=tcp://127.0.0.2:5269\"]\n",
                "s2s.hosts",
            ),
            ("[s2s]\nmetrics_domains = 0\n", "s2s.metrics_domains"),
            ("[tls]\nca_file = \"/nonexistent/ca.pem\"\n", "tls.ca_file"),
        ] {
            let error = load(toml, &[]).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }

    #[test]
    fn every_key_has_an_override_name() {
        let names: Vec<String> = key_paths().iter().map(|(key, _)| env_name(key)).collect();
        assert!(names.contains(&"STARLING_LISTEN_C2S_TLS".to_string()));
        assert!(names.contains(&"STARLING_TLS_CERT".to_string()));
        assert!(names.contains(&"STARLING_STORAGE_URL".to_string()));
    }
}
