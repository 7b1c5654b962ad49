//! `starling serve [--target T]`: the four services in one process (`all`,
//! the default), or one of them per process in a cluster.
//!
//! Every target runs the same service libraries; only the implementations of
//! the contracts change: in one process the router, presence and storage are
//! called directly and the bus and registry are in-process (or Redis when
//! `cluster.redis` is set); in a cluster the other services are gRPC clients
//! and the bus and registry are Redis.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::FutureExt;
use starling_api::{PresenceApi, ResumptionStore, RouterApi, SessionRegistry, StorageApi};
use starling_bus::{BlockingMetrics, Blocklists, Bus, BusMetrics, InProcessBus, RedisBus};
use starling_connection_manager::{
    BoundConnectionManager, CmConfig, CmLimits, CmMetrics, ConnectionManager, DrainHandle,
    SmSettings, StreamResumption, TlsSettings,
};
use starling_jid::BareJid;
use starling_presence::{PresenceConfig, PresenceService};
use starling_proto::{
    GrpcClientMetrics, GrpcPresenceClient, GrpcRouterClient, GrpcServerMetrics, GrpcStorageClient,
    ProtoError,
};
use starling_redis_client::{RedisClient, RedisConfig, RedisMetrics};
use starling_registry::{
    Janitor, MemoryRegistry, MemoryResumption, NodeLiveness, RedisRegistry, RedisResumption,
};
use starling_session_router::{
    spawn_resumption_expiry, RouterConfig, RouterMetrics, SessionRouter,
};
use starling_storage::{redact_url, Storage, StorageMetrics};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin_server::AdminParts;
use crate::config::Config;
use crate::http::{self, Readiness};

/// Which service(s) this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service in one process.
    All,
    ConnectionManager,
    SessionRouter,
    Presence,
    Storage,
}

impl Target {
    /// The name on the command line (`--target`) and in `starling_build_info`.
    pub fn name(self) -> &'static str {
        match self {
            Target::All => "all",
            Target::ConnectionManager => "connection-manager",
            Target::SessionRouter => "session-router",
            Target::Presence => "presence",
            Target::Storage => "storage",
        }
    }
}

pub async fn connect_storage(config: &Config) -> anyhow::Result<Storage> {
    let storage_config = starling_storage::StorageConfig {
        url: config.storage_url(),
        max_offline_per_user: config.storage.max_offline_per_user,
        max_offline_bytes_per_user: config.storage.max_offline_bytes_per_user,
        max_roster_items: config.storage.max_roster_items,
        max_roster_bytes: config.storage.max_roster_bytes,
        max_blocklist_items: config.blocking.max_items,
        max_connections: config.storage.max_connections,
        max_account_data_bytes: config.storage.max_account_data_bytes,
        max_archive_messages_per_account: config.mam.max_messages_per_account,
    };
    Storage::connect(&storage_config)
        .await
        .with_context(|| format!("cannot open storage {}", redact_url(&storage_config.url)))
}

/// A future that resolves once the shutdown flag is set.
async fn wait_for(mut shutdown_rx: watch::Receiver<bool>) {
    while !*shutdown_rx.borrow() {
        if shutdown_rx.changed().await.is_err() {
            return;
        }
    }
}

fn require(target: Target, key: &str, present: bool) -> anyhow::Result<()> {
    if !present {
        bail!(
            "config key `{key}` must be set for --target {}",
            target.name()
        );
    }
    Ok(())
}

/// Domains as the policy compares them (validated at load).
fn normalized_domains(domains: &[String]) -> Vec<String> {
    domains
        .iter()
        .filter_map(|domain| starling_jid::normalize_domainpart(domain).ok())
        .collect()
}

fn router_config(config: &Config) -> RouterConfig {
    RouterConfig {
        domain: config.domain.clone(),
        max_resources_per_user: config.limits.max_resources_per_user as usize,
        server_name: "Starling".into(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        carbons: config.carbons.enabled,
        blocking_max_items: config.blocking.max_items as usize,
        pep: starling_session_router::PepSettings {
            max_item_bytes: usize::try_from(config.pep.max_item_bytes).unwrap_or(usize::MAX),
            max_items_per_node: config.pep.max_items_per_node,
            max_nodes_per_account: config.pep.max_nodes_per_account,
            max_whitelist_per_node: config.pep.max_whitelist_per_node,
            max_subscriptions_per_node: config.pep.max_subscriptions_per_node,
        },
        mam: config.mam.enabled,
        mam_max_page_size: config.mam.max_page_size,
        mam_max_message_bytes: usize::try_from(config.mam.max_message_bytes).unwrap_or(usize::MAX),
        stored_stanza_limits: config.stored_stanza_limits(),
        upload: config
            .upload
            .enabled
            .then(|| starling_session_router::UploadSettings {
                domain: config.upload_domain(),
                max_file_bytes: config.upload.max_file_bytes,
                quota_bytes: config.upload.quota_bytes,
                expire_after: Duration::from_secs(config.upload.expire_after_secs),
                slot_validity: Duration::from_secs(config.upload.slot_validity_secs),
                public_url: config.upload_public_url(),
            }),
        components: config
            .components
            .iter()
            .filter_map(|component| starling_jid::normalize_domainpart(&component.domain).ok())
            .collect(),
        s2s: starling_session_router::S2sPolicy {
            enabled: config.s2s.enabled,
            allow: normalized_domains(&config.s2s.allow),
            deny: normalized_domains(&config.s2s.deny),
        },
        push: config
            .push
            .enabled
            .then(|| starling_session_router::PushSettings {
                include_body: config.push.include_body,
                min_interval: Duration::from_secs(config.push.min_interval_secs),
            }),
    }
}

/// The HTTP side of the upload service (XEP-0363) of a connection-manager
/// process: its routes, and the sweep of expired files.
fn upload_http(
    config: &Config,
    storage: Arc<dyn StorageApi>,
    registry: &prometheus::Registry,
) -> anyhow::Result<(axum::Router, JoinHandle<()>)> {
    use starling_connection_manager::upload::store::{FileStoreSettings, S3Settings};
    use starling_connection_manager::upload::{UploadHttp, UploadHttpSettings, UploadMetrics};
    let store = match config.upload_s3_location() {
        Some((bucket, prefix)) => FileStoreSettings::S3(S3Settings {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: config.upload.s3_endpoint.clone(),
            region: config.upload.s3_region.clone(),
            allow_http: config.upload.s3_allow_http,
            access_key_id: config.upload.s3_access_key_id.clone(),
            secret_access_key: config.upload.s3_secret_access_key.clone(),
        }),
        None => FileStoreSettings::Directory(config.upload_directory()),
    };
    let upload = UploadHttp::new(
        UploadHttpSettings {
            store,
            expire_after: Duration::from_secs(config.upload.expire_after_secs),
            slot_validity: Duration::from_secs(config.upload.slot_validity_secs),
        },
        storage,
        UploadMetrics::register(registry).context("cannot register the upload metrics")?,
    )
    .map_err(|error| anyhow::anyhow!("config key `upload.storage`: {error}"))?;
    Ok((upload.router(), upload.spawn_sweep()))
}

/// The session router of a process that routes (targets session-router and
/// all), with the presence service it hands presence to.
fn session_router(
    config: &Config,
    state: &RoutingState,
    storage: Arc<dyn StorageApi>,
    presence: Arc<dyn PresenceApi>,
    metrics: RouterMetrics,
    blocklists: Arc<Blocklists>,
    muc: Option<Arc<starling_muc::MucService>>,
) -> SessionRouter {
    let router = SessionRouter::new(
        router_config(config),
        state.registry.clone(),
        state.bus.clone(),
        storage,
        presence,
    )
    .with_advertised_features(&starling_connection_manager::edge_features(
        config.registration.enabled,
        config.sm.enabled,
    ))
    .with_resumption(state.resumption.clone())
    .with_metrics(metrics)
    .with_blocklists(blocklists);
    match muc {
        Some(muc) => router.with_muc(muc),
        None => router,
    }
}

/// The multi-user chat service (XEP-0045, `muc.*`) of a process that
/// routes: its rooms in Redis in the cluster (any router replica serves
/// any room), in the process otherwise, and the persistent rooms also in
/// the storage service; `None` when `muc.enabled` is off.
fn muc_service(
    config: &Config,
    state: &RoutingState,
    storage: Arc<dyn StorageApi>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Arc<starling_muc::MucService>>> {
    if !config.muc.enabled {
        return Ok(None);
    }
    let store: Arc<dyn starling_muc::RoomStore> = match &state.redis {
        Some(redis) => Arc::new(starling_muc::RedisRoomStore::new(redis.clone())),
        None => Arc::new(starling_muc::MemoryRoomStore::default()),
    };
    let settings = starling_muc::Settings {
        domain: config.muc_domain(),
        max_occupants: config.muc.max_occupants,
        history_max_stanzas: config.muc.history_max_stanzas as usize,
        history_max_bytes: usize::try_from(config.muc.history_max_bytes).unwrap_or(usize::MAX),
        max_nick_bytes: config.muc.max_nick_bytes as usize,
        max_requests_per_minute: config.muc.max_requests_per_minute,
        archives: config.mam.enabled,
    };
    let occupancy: Arc<dyn starling_muc::OccupancyIndex> = match &state.redis {
        Some(redis) => Arc::new(starling_muc::RedisOccupancy::new(redis.clone())),
        None => Arc::new(starling_muc::MemoryOccupancy::default()),
    };
    let metrics =
        starling_muc::MucMetrics::register(registry).context("cannot register the muc metrics")?;
    let service =
        starling_muc::MucService::new(settings, store, state.registry.clone(), state.bus.clone())
            .with_durable_rooms(storage.clone())
            .with_metrics(metrics)
            .with_room_limit(occupancy, config.muc.max_rooms_per_user);
    // XEP-0313 on rooms: with the accounts' archive (`mam.enabled`).
    let service = if config.mam.enabled {
        service.with_archive(starling_muc::RoomArchive {
            store: storage,
            max_page_size: config.mam.max_page_size,
            limits: config.stored_stanza_limits(),
        })
    } else {
        service
    };
    Ok(Some(Arc::new(service)))
}

/// The block lists (XEP-0191) of a process that routes or runs presence:
/// one cache shared by both services of the process, invalidated over
/// Redis in the cluster (`starling_bus::blocklists`).
async fn blocklists(
    state: &RoutingState,
    storage: Arc<dyn StorageApi>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Arc<Blocklists>> {
    let metrics =
        BlockingMetrics::register(registry).context("cannot register the blocking metrics")?;
    match &state.redis {
        None => Ok(Blocklists::in_process(storage, metrics)),
        Some(redis) => Blocklists::on_redis(storage, redis.clone(), metrics)
            .await
            .context("cannot subscribe to block list invalidations (cluster.redis)"),
    }
}

fn router_metrics(registry: &prometheus::Registry) -> anyhow::Result<RouterMetrics> {
    RouterMetrics::register(registry).context("cannot register the router metrics")
}

/// The presence service of a process that runs it (targets presence and all).
fn presence_service(
    config: &Config,
    state: &RoutingState,
    storage: Arc<dyn StorageApi>,
    router: Arc<dyn RouterApi>,
    blocklists: Arc<Blocklists>,
) -> Arc<dyn PresenceApi> {
    Arc::new(
        PresenceService::new(
            PresenceConfig {
                domain: config.domain.clone(),
                stored_stanza_limits: config.stored_stanza_limits(),
                max_directed_presences: config.limits.max_directed_presences as usize,
            },
            state.registry.clone(),
            state.bus.clone(),
            storage,
            router,
        )
        .with_blocklists(blocklists),
    )
}

/// `starling_build_info{version,target} 1`: every process exposes at least this.
fn register_build_info(registry: &prometheus::Registry, target: Target) -> prometheus::Result<()> {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "starling_build_info",
            "Always 1; the labels tell the running version and the served target",
        ),
        &["version", "target"],
    )?;
    registry.register(Box::new(info.clone()))?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), target.name()])
        .set(1);
    Ok(())
}

fn cm_config(
    config: &Config,
    node_id: &str,
    metrics: CmMetrics,
) -> Result<CmConfig, crate::config::ConfigError> {
    let proxies = config.trusted_proxies()?;
    Ok(CmConfig {
        node_id: node_id.to_string(),
        domain: config.domain.clone(),
        c2s_addr: config.c2s_addr(),
        c2s_tls_addr: config.c2s_tls_addr(),
        component_addr: config.component_addr(),
        s2s_addr: config.s2s_addr(),
        s2s_tls_addr: config.s2s_tls_addr(),
        s2s: starling_connection_manager::S2sSettings {
            enabled: config.s2s.enabled,
            dialback_secret: config.s2s.dialback_secret.clone(),
            require_tls: config.s2s.require_tls,
            ca_file: (!config.tls.ca_file.is_empty()).then(|| PathBuf::from(&config.tls.ca_file)),
            hosts: config.s2s_hosts(),
            allow: normalized_domains(&config.s2s.allow),
            deny: normalized_domains(&config.s2s.deny),
            connect_timeout: Duration::from_secs(config.s2s.connect_timeout_secs),
            idle_timeout: Duration::from_secs(config.s2s.idle_timeout_secs),
            max_stanzas_per_sec: config.s2s.max_stanzas_per_sec,
            metrics_domains: config.s2s.metrics_domains as usize,
            queue_stanzas: config.s2s.queue_stanzas as usize,
            queue_bytes: usize::try_from(config.s2s.queue_bytes).unwrap_or(usize::MAX),
        },
        components: config
            .components
            .iter()
            .map(|component| starling_connection_manager::ComponentSettings {
                domain: component.domain.clone(),
                secret: component.secret.clone(),
                max_stanza_bytes: usize::try_from(component.max_stanza_bytes).unwrap_or(usize::MAX),
                stanzas_per_second: component.stanzas_per_second,
                stanza_burst: component.stanza_burst,
            })
            .collect(),
        tls: TlsSettings {
            cert_path: (!config.tls.cert.is_empty()).then(|| PathBuf::from(&config.tls.cert)),
            key_path: (!config.tls.key.is_empty()).then(|| PathBuf::from(&config.tls.key)),
            data_dir: PathBuf::from(&config.data_dir),
        },
        limits: CmLimits {
            max_stanza_bytes: config.limits.max_stanza_bytes as usize,
            max_depth: config.limits.max_depth as usize,
            pre_auth_timeout: Duration::from_secs(config.limits.pre_auth_timeout_secs),
            max_auth_attempts: config.limits.max_auth_attempts,
            max_connections_per_ip: config.limits.max_connections_per_ip,
            failed_auth_per_ip: config.limits.failed_auth_per_ip,
            failed_auth_window: Duration::from_secs(config.limits.failed_auth_window_secs),
            stanzas_per_second: config.limits.stanzas_per_second,
            stanza_burst: config.limits.stanza_burst,
            outbound_queue_stanzas: config.limits.outbound_queue_stanzas as usize,
            outbound_queue_bytes: config.limits.outbound_queue_bytes as usize,
            outbound_queue_bytes_total: config.limits.outbound_queue_bytes_total as usize,
            bosh_inactivity: Duration::from_secs(config.limits.bosh_inactivity_secs),
        },
        registration_enabled: config.registration.enabled,
        csi_enabled: config.csi.enabled,
        sasl2_enabled: config.sasl2.enabled,
        carbons_enabled: config.carbons.enabled,
        fast_token_ttl_secs: if config.sasl2.fast {
            config.sasl2.fast_token_ttl_secs
        } else {
            0
        },
        require_tls: config.tls.required,
        proxies,
        drain_window: Duration::from_secs(config.drain.window_secs),
        sm: SmSettings {
            enabled: config.sm.enabled,
            resume_timeout_secs: config.sm.resume_timeout_secs,
            max_unacked_stanzas: config.sm.max_unacked_stanzas as usize,
        },
        metrics,
    })
}

/// The routing state: Redis when configured, in-process otherwise.
/// How often the storage service prunes the capability records unseen for
/// `pep.caps_retention_days` (each sweep bounded, see `Storage::spawn_caps_purge`).
const CAPS_PURGE_EVERY: Duration = Duration::from_secs(3600);

struct RoutingState {
    redis: Option<RedisClient>,
    redis_registry: Option<Arc<RedisRegistry>>,
    registry: Arc<dyn SessionRegistry>,
    bus: Arc<dyn Bus>,
    /// Stream resumption state (XEP-0198): in Redis in the cluster.
    resumption: Arc<dyn ResumptionStore>,
}

async fn routing_state(
    config: &Config,
    metrics: &prometheus::Registry,
    node_id: &str,
) -> anyhow::Result<RoutingState> {
    let bus_metrics = BusMetrics::register(metrics).context("cannot register the bus metrics")?;
    if config.cluster.redis.is_empty() {
        let resumption: Arc<dyn ResumptionStore> = Arc::new(MemoryResumption::new());
        return Ok(RoutingState {
            redis: None,
            redis_registry: None,
            // One process: its connection-manager is the one live node.
            registry: Arc::new(MemoryRegistry::new().with_local_node(node_id)),
            bus: Arc::new(
                InProcessBus::new()
                    .with_metrics(bus_metrics)
                    .with_buffer_limit(config.limits.bus_buffer_bytes as usize)
                    .with_resumption(resumption.clone()),
            ),
            resumption,
        });
    }
    let redis_config = RedisConfig {
        urls: config.cluster.redis.clone(),
        cluster: config.cluster.redis_cluster,
        key_prefix: config.cluster.redis_key_prefix.clone(),
    };
    let redis = RedisClient::connect(&redis_config)
        .await
        .context("cannot connect to redis (cluster.redis)")?
        .with_metrics(
            RedisMetrics::register(metrics).context("cannot register the redis metrics")?,
        );
    let redis_registry = Arc::new(RedisRegistry::new(redis.clone()));
    let resumption: Arc<dyn ResumptionStore> = Arc::new(RedisResumption::new(redis.clone()));
    let bus = RedisBus::new(
        redis.clone(),
        config.stored_stanza_limits(),
        config.limits.bus_buffer_bytes as usize,
        bus_metrics,
    )
    .await
    .context("cannot start the redis bus")?
    .with_resumption(resumption.clone());
    Ok(RoutingState {
        redis: Some(redis),
        registry: redis_registry.clone(),
        redis_registry: Some(redis_registry),
        bus: Arc::new(bus),
        resumption,
    })
}

/// Checks `/readyz` runs.
fn storage_check(readiness: &mut Readiness, storage: Arc<dyn StorageApi>) {
    // Any answer from storage (even "no such account") proves it is reachable.
    let probe = BareJid::from_parts(Some("readiness-probe"), "readiness.invalid")
        .expect("a valid probe address");
    readiness.add_check("storage", move || {
        let storage = storage.clone();
        let probe = probe.clone();
        async move {
            storage
                .credentials(&probe)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
        .boxed()
    });
}

/// The routers must answer: unbinding a session that was never bound is a
/// no-op that goes through a router and its Redis (any replica will do).
fn router_check(readiness: &mut Readiness, router: Arc<dyn RouterApi>) {
    let probe: starling_jid::FullJid = "readiness-probe@readiness.invalid/probe"
        .parse()
        .expect("a valid probe address");
    let addr = starling_api::SessionAddr {
        node: "readiness-probe".into(),
        conn: 0,
    };
    readiness.add_check("routers", move || {
        let (router, probe, addr) = (router.clone(), probe.clone(), addr.clone());
        async move {
            router
                .unbind(&probe, &addr)
                .await
                .map_err(|error| error.to_string())
        }
        .boxed()
    });
}

/// The session-router replicas of `cluster.routers`, which `/readyz` checks.
fn remote_routers(
    config: &Config,
    grpc_metrics: &GrpcClientMetrics,
    readiness: &mut Readiness,
) -> anyhow::Result<Arc<dyn RouterApi>> {
    let router: Arc<dyn RouterApi> = Arc::new(
        GrpcRouterClient::connect_with_metrics(
            config.cluster.routers.clone(),
            grpc_metrics.clone(),
        )
        .context("cluster.routers")?,
    );
    router_check(readiness, router.clone());
    Ok(router)
}

fn redis_check(readiness: &mut Readiness, redis: &Option<RedisClient>) {
    if let Some(redis) = redis.clone() {
        readiness.add_check("redis", move || {
            let redis = redis.clone();
            async move { redis.ping().await.map_err(|error| error.to_string()) }.boxed()
        });
    }
}

/// The janitor removes the sessions of connection-managers whose liveness
/// key expired and tells presence so that contacts see them leave. Its leader
/// is elected by `cluster.leader_election` (crate::election).
async fn spawn_janitor(
    config: &Config,
    node_id: &str,
    metrics: &prometheus::Registry,
    state: &RoutingState,
    presence: Arc<dyn PresenceApi>,
) -> anyhow::Result<Option<Janitor>> {
    let (Some(redis), Some(registry)) = (state.redis.clone(), state.redis_registry.clone()) else {
        return Ok(None);
    };
    let on_dead_session: starling_registry::DeadSessionCallback = Arc::new(move |record| {
        let presence = presence.clone();
        async move {
            if let Err(error) = presence.session_ended(&record.jid, record.available).await {
                tracing::warn!(jid = %record.jid, %error, "unavailable presence for a dead session failed");
            }
        }
        .boxed()
    });
    let (election, interval) =
        crate::election::janitor_election(config, node_id, redis, metrics).await?;
    Ok(Some(Janitor::spawn_elected(
        election,
        registry,
        on_dead_session,
        interval,
    )))
}

/// How often a connection-manager rewrites its s2s streams in Redis for the
/// admin API: a row it lists is at most this old.
const S2S_STREAMS_PUBLISH_PERIOD: Duration = Duration::from_secs(2);

/// Keep this node alive in Redis, and put its sessions back if Redis lost them.
fn spawn_liveness(
    config: &Config,
    state: &RoutingState,
    node_id: &str,
    connection_manager: &BoundConnectionManager,
) -> Option<(NodeLiveness, JoinHandle<()>)> {
    let (redis, registry) = (state.redis.clone()?, state.redis_registry.clone()?);
    let liveness = NodeLiveness::spawn(
        redis,
        node_id.to_string(),
        Duration::from_secs(config.cluster.liveness_ttl_secs),
    );
    let mut key_lost = liveness.key_lost();
    let sessions = connection_manager.local_sessions();
    let task = tokio::spawn(async move {
        while key_lost.changed().await.is_ok() {
            let records = sessions.records();
            match registry.reregister(records).await {
                Ok(count) => tracing::warn!(
                    sessions = count,
                    "redis lost this node's state: sessions re-registered"
                ),
                Err(error) => tracing::error!(%error, "re-registering sessions failed"),
            }
        }
    });
    Some((liveness, task))
}

/// This process's identity in the cluster: `cluster.node_id`, or
/// `<target>-<random>` when it is not set. Call once and put it in the
/// configuration ([`Config::cluster`]) when something else (the telemetry)
/// must know it before [`Server::bind`].
pub fn node_id(config: &Config, target: Target) -> String {
    if config.cluster.node_id.is_empty() {
        format!(
            "{}-{}",
            target.name(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    } else {
        config.cluster.node_id.clone()
    }
}

/// Run `target` until `shutdown` resolves, then drain and stop: the whole of
/// `starling serve` for a caller that has no second signal to offer (tests).
/// Its listeners are the configured ones; port 0 works, but only
/// [`Server::bind`] tells which ports were chosen.
pub async fn serve(
    config: Config,
    target: Target,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::bind(config, target)
        .await?
        .run(shutdown, std::future::pending())
        .await
}

/// One process's services, configured, connected and listening, not yet
/// serving ([`Server::run`]). Dropping it stops everything it started.
pub struct Server {
    node_id: String,
    local_addrs: Vec<(&'static str, SocketAddr)>,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    readiness: Readiness,
    services: Vec<JoinHandle<anyhow::Result<()>>>,
    janitor: Option<Janitor>,
    /// The router's sweep of expired detached streams (XEP-0198).
    resumption_expiry: Option<JoinHandle<()>>,
    liveness: Option<(NodeLiveness, JoinHandle<()>)>,
    connection_manager: Option<BoundConnectionManager>,
    drain: Option<DrainHandle>,
    offline_gauge: Option<JoinHandle<()>>,
    /// The storage service's archive retention purge (`mam.retention_days`).
    archive_purge: Option<JoinHandle<()>>,
    /// The storage service's prune of capability records no session
    /// announced for `pep.caps_retention_days` (XEP-0115).
    caps_purge: Option<JoinHandle<()>>,
    /// The upload service's (XEP-0363) expiry: the storage's purge of
    /// slots, the connection-manager's sweep of files.
    upload_tasks: Vec<JoinHandle<()>>,
    /// The connection-manager's rewrite of its s2s streams in Redis
    /// (`s2sstreams:{id}`, the admin API's ListS2sStreams).
    s2s_publisher: Option<JoinHandle<()>>,
    /// The router of this process, whose queued archive writes (XEP-0313)
    /// are flushed when the process stops.
    archiving_router: Option<Arc<SessionRouter>>,
    http_task: Option<JoinHandle<()>>,
    https_task: Option<JoinHandle<()>>,
    admin_task: Option<JoinHandle<anyhow::Result<()>>>,
    /// Held while serving: the Redis bus's subscription tasks (the
    /// connection-manager's deliveries) end when the last handle on it goes.
    routing_state: Option<RoutingState>,
}

impl Server {
    /// Check that `config` has what `target` needs, connect to the routing
    /// state and storage, build the services and bind every listener.
    pub async fn bind(config: Config, target: Target) -> anyhow::Result<Server> {
        let node_id = node_id(&config, target);
        tracing::info!(target = target.name(), domain = %config.domain, node = %node_id, "starting starling serve");
        check_target_config(&config, target)?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut readiness = Readiness::new();
        // This process's metrics, served at /metrics; each service registers its own.
        let registry = prometheus::Registry::new();
        register_build_info(&registry, target).context("cannot register starling_build_info")?;
        let mut server = Server {
            node_id,
            local_addrs: Vec::new(),
            shutdown_tx,
            shutdown_rx,
            readiness: Readiness::new(),
            services: Vec::new(),
            janitor: None,
            resumption_expiry: None,
            liveness: None,
            connection_manager: None,
            drain: None,
            offline_gauge: None,
            archive_purge: None,
            caps_purge: None,
            upload_tasks: Vec::new(),
            s2s_publisher: None,
            archiving_router: None,
            http_task: None,
            https_task: None,
            admin_task: None,
            routing_state: None,
        };
        let mut routes = axum::Router::new();
        let mut https_acceptor = None;

        let state = if target == Target::Storage {
            None
        } else {
            Some(routing_state(&config, &registry, &server.node_id).await?)
        };
        if let Some(state) = &state {
            redis_check(&mut readiness, &state.redis);
        }
        // One set of gRPC client metrics for every client of this process.
        let grpc_metrics = match target {
            Target::All | Target::Storage => GrpcClientMetrics::default(),
            _ => GrpcClientMetrics::register(&registry)
                .context("cannot register the grpc client metrics")?,
        };
        let storage: Arc<dyn StorageApi> = match target {
            Target::All | Target::Storage => {
                tracing::info!(storage = %redact_url(&config.storage_url()), "opening storage");
                let storage = connect_storage(&config).await?.with_metrics(
                    StorageMetrics::register(&registry)
                        .context("cannot register the storage metrics")?,
                );
                server.offline_gauge = Some(storage.spawn_offline_gauge(Duration::from_secs(15)));
                if config.mam.retention_days > 0 {
                    server.archive_purge = Some(storage.spawn_archive_purge(
                        Duration::from_secs(u64::from(config.mam.retention_days) * 86_400),
                        Duration::from_secs(config.mam.purge_interval_secs),
                    ));
                }
                if config.pep.caps_retention_days > 0 {
                    server.caps_purge = Some(storage.spawn_caps_purge(
                        Duration::from_secs(u64::from(config.pep.caps_retention_days) * 86_400),
                        CAPS_PURGE_EVERY,
                    ));
                }
                if config.upload.enabled {
                    server.upload_tasks.push(storage.spawn_upload_purge(
                        Duration::from_secs(config.upload.expire_after_secs),
                        starling_connection_manager::upload::sweep_interval(Duration::from_secs(
                            config.upload.expire_after_secs,
                        )),
                    ));
                }
                Arc::new(storage)
            }
            _ => Arc::new(
                GrpcStorageClient::connect_with_metrics(
                    config.cluster.storage.clone(),
                    grpc_metrics.clone(),
                )
                .context("cluster.storage")?,
            ),
        };
        storage_check(&mut readiness, storage.clone());

        match target {
            Target::Storage => {
                server
                    .spawn_grpc(
                        &config,
                        &registry,
                        GrpcServices {
                            storage: Some(storage.clone()),
                            ..GrpcServices::default()
                        },
                    )
                    .await?;
            }
            Target::SessionRouter => {
                let state = state.as_ref().expect("routing state");
                let presence: Arc<dyn PresenceApi> = Arc::new(
                    GrpcPresenceClient::connect_with_metrics(
                        config.cluster.presence.clone(),
                        grpc_metrics.clone(),
                    )
                    .context("cluster.presence")?,
                );
                let session_router = Arc::new(session_router(
                    &config,
                    state,
                    storage.clone(),
                    presence.clone(),
                    router_metrics(&registry)?,
                    blocklists(state, storage.clone(), &registry).await?,
                    muc_service(&config, state, storage.clone(), &registry)?,
                ));
                server.resumption_expiry = Some(spawn_resumption_expiry(session_router.clone()));
                server.archiving_router = Some(session_router.clone());
                let router: Arc<dyn RouterApi> = session_router;
                server.janitor =
                    spawn_janitor(&config, &server.node_id, &registry, state, presence).await?;
                let admin = AdminParts {
                    registry: state.registry.clone(),
                    bus: state.bus.clone(),
                    storage: storage.clone(),
                    membership: Arc::new(starling_admin::RedisMembership::new(
                        state.redis.clone().expect("a session-router runs on redis"),
                    )),
                    s2s_streams: Arc::new(starling_admin::RedisS2sStreams::new(
                        state.redis.clone().expect("a session-router runs on redis"),
                    )),
                };
                server.spawn_admin(&config, admin).await?;
                server
                    .spawn_grpc(
                        &config,
                        &registry,
                        GrpcServices {
                            router: Some(router),
                            ..GrpcServices::default()
                        },
                    )
                    .await?;
            }
            Target::Presence => {
                let state = state.as_ref().expect("routing state");
                let router = remote_routers(&config, &grpc_metrics, &mut readiness)?;
                let blocklists = blocklists(state, storage.clone(), &registry).await?;
                let presence =
                    presence_service(&config, state, storage.clone(), router, blocklists);
                server
                    .spawn_grpc(
                        &config,
                        &registry,
                        GrpcServices {
                            presence: Some(presence),
                            ..GrpcServices::default()
                        },
                    )
                    .await?;
            }
            Target::ConnectionManager | Target::All => {
                let state = state.as_ref().expect("routing state");
                let router_api: Arc<dyn RouterApi> = if target == Target::All {
                    let metrics = router_metrics(&registry)?;
                    let blocklists = blocklists(state, storage.clone(), &registry).await?;
                    let muc = muc_service(&config, state, storage.clone(), &registry)?;
                    // Presence routes to remote domains and reroutes what a
                    // session could not take through the router it serves.
                    let router = SessionRouter::new_cyclic(|router_handle| {
                        let presence = presence_service(
                            &config,
                            state,
                            storage.clone(),
                            router_handle,
                            blocklists.clone(),
                        );
                        session_router(
                            &config,
                            state,
                            storage.clone(),
                            presence,
                            metrics,
                            blocklists,
                            muc,
                        )
                    });
                    server.janitor = spawn_janitor(
                        &config,
                        &server.node_id,
                        &registry,
                        state,
                        router.presence().clone(),
                    )
                    .await?;
                    server.resumption_expiry = Some(spawn_resumption_expiry(router.clone()));
                    server.archiving_router = Some(router.clone());
                    router
                } else {
                    remote_routers(&config, &grpc_metrics, &mut readiness)?
                };
                let bound = ConnectionManager::new(
                    cm_config(
                        &config,
                        &server.node_id,
                        CmMetrics::register(&registry)
                            .context("cannot register the connection-manager metrics")?,
                    )?,
                    router_api,
                    storage.clone(),
                    state.bus.clone(),
                    Some(StreamResumption {
                        store: state.resumption.clone(),
                        registry: state.registry.clone(),
                        outlives_process: state.redis.is_some(),
                    }),
                )
                .context("cannot configure the connection-manager")?
                .bind()
                .await
                .context("cannot start the connection-manager listeners")?;
                for (role, address) in bound.local_addrs() {
                    tracing::info!(role, %address, "listening");
                    server.local_addrs.push((role, address));
                }
                server.liveness = spawn_liveness(&config, state, &server.node_id, &bound);
                if let (Some(redis), true) = (state.redis.clone(), config.s2s.enabled) {
                    let streams = bound.local_s2s_streams();
                    server.s2s_publisher = Some(starling_registry::spawn_s2s_streams_publisher(
                        redis,
                        server.node_id.clone(),
                        move || streams.streams(),
                        S2S_STREAMS_PUBLISH_PERIOD,
                    ));
                }
                let drain_handle = bound.drain_handle();
                let marker = server
                    .liveness
                    .as_ref()
                    .map(|(liveness, _)| liveness.drain_marker());
                crate::admin_server::watch_drain(&drain_handle, readiness.clone(), marker);
                if target == Target::All {
                    let admin = AdminParts {
                        registry: state.registry.clone(),
                        bus: state.bus.clone(),
                        storage: storage.clone(),
                        membership: crate::admin_server::membership(
                            state.redis.clone(),
                            &server.node_id,
                            &drain_handle,
                        ),
                        s2s_streams: crate::admin_server::s2s_streams(
                            state.redis.clone(),
                            bound.local_s2s_streams(),
                        ),
                    };
                    server.spawn_admin(&config, admin).await?;
                }
                server.drain = Some(drain_handle);
                routes = bound.websocket_router();
                if config.upload.enabled {
                    let (upload_routes, sweep) = upload_http(&config, storage.clone(), &registry)?;
                    routes = routes.merge(upload_routes);
                    server.upload_tasks.push(sweep);
                }
                https_acceptor = Some(bound.https_acceptor());
                server.connection_manager = Some(bound);
            }
        }
        server.readiness = readiness;
        server.routing_state = state;

        let proxies = config.trusted_proxies()?;
        let http_guard = http::HttpGuard::new(config.http_limits(), proxies, &registry)
            .context("cannot register the http metrics")?;
        if let Some(address) = config.http_addr() {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (listen.http)"))?;
            let local_addr = listener.local_addr()?;
            tracing::info!(role = "http", address = %local_addr, "listening");
            server.local_addrs.push(("http", local_addr));
            server.http_task = Some(tokio::spawn(http::serve(
                listener,
                http_guard.clone(),
                server.readiness.clone(),
                registry.clone(),
                routes.clone(),
                server.shutdown_signal(),
            )));
        }

        match (config.https_addr(), &https_acceptor) {
            (Some(address), Some(acceptor)) => {
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (listen.https)"))?;
                let local_addr = listener.local_addr()?;
                tracing::info!(role = "https", address = %local_addr, "listening");
                server.local_addrs.push(("https", local_addr));
                server.https_task = Some(tokio::spawn(http::serve_tls(
                    listener,
                    acceptor.clone(),
                    http_guard.clone(),
                    server.readiness.clone(),
                    registry.clone(),
                    routes.clone(),
                    server.shutdown_signal(),
                )));
            }
            (Some(_), None) => bail!("config key `listen.https` needs a connection-manager target (all or connection-manager)"),
            (None, _) => {}
        }

        if server.admin_task.is_none() && config.admin_addr().is_some() {
            tracing::warn!(
                target = target.name(),
                "admin.listen is set but the admin api is served by the session-router and all targets only"
            );
        }
        Ok(server)
    }

    /// This process's identity in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Every bound listener by role (`c2s`, `c2s_tls`, `http`, `https`,
    /// `admin`, `grpc`), with the port the system chose for port 0.
    pub fn local_addrs(&self) -> &[(&'static str, SocketAddr)] {
        &self.local_addrs
    }

    /// The address of the listener of `role`, if it is bound.
    pub fn local_addr(&self, role: &str) -> Option<SocketAddr> {
        self.local_addrs
            .iter()
            .find(|(bound_role, _)| *bound_role == role)
            .map(|(_, address)| *address)
    }

    /// A future that resolves once this server stops.
    fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_for(self.shutdown_rx.clone())
    }

    /// The gRPC server of a session-router, presence or storage process, on `cluster.grpc`.
    async fn spawn_grpc(
        &mut self,
        config: &Config,
        registry: &prometheus::Registry,
        grpc: GrpcServices,
    ) -> anyhow::Result<()> {
        let address = config.grpc_addr().expect("checked by check_target_config");
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ProtoError::Listen {
                addr: address,
                source,
            })
            .context("grpc server")?;
        self.local_addrs.push(("grpc", listener.local_addr()?));
        let metrics = GrpcServerMetrics::register(registry)
            .context("cannot register the grpc server metrics")?;
        let shutdown = self.shutdown_signal();
        self.services.push(tokio::spawn(async move {
            starling_proto::serve_grpc_on(
                listener,
                grpc.storage,
                grpc.router,
                grpc.presence,
                metrics,
                shutdown,
            )
            .await
            .context("grpc server")
        }));
        Ok(())
    }

    /// The admin API when `admin.listen` is set.
    async fn spawn_admin(&mut self, config: &Config, parts: AdminParts) -> anyhow::Result<()> {
        if let Some((address, task)) =
            crate::admin_server::spawn(config, parts, self.shutdown_signal()).await?
        {
            self.local_addrs.push(("admin", address));
            self.admin_task = Some(task);
        }
        Ok(())
    }

    /// Serve until `shutdown` resolves, then drain in order: not ready first,
    /// then (on a connection-manager) stop accepting and close the streams
    /// over `drain.window_secs`, then stop every service. `cut_drain_short`
    /// is polled once the drain has begun: when it resolves (a second
    /// SIGTERM), the drain's window is not waited for.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        cut_drain_short: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            node_id: _,
            local_addrs: _,
            shutdown_tx,
            shutdown_rx,
            readiness,
            services,
            janitor,
            resumption_expiry,
            liveness,
            connection_manager,
            drain,
            offline_gauge,
            archive_purge,
            caps_purge,
            upload_tasks,
            s2s_publisher,
            archiving_router,
            http_task,
            https_task,
            admin_task,
            routing_state,
        } = self;
        let signal_task = tokio::spawn(async move {
            shutdown.await;
            readiness.set_draining();
            if let Some(drain) = drain {
                drain.start(None);
                tokio::select! {
                    _ = drain.drained() => {}
                    _ = cut_drain_short => tracing::warn!("second signal: not waiting for the drain"),
                }
            }
            let _ = shutdown_tx.send(true);
        });

        let mut failure = None;
        if let Some(bound) = connection_manager {
            if let Err(error) = bound.run(wait_for(shutdown_rx.clone())).await {
                failure = Some(anyhow::Error::new(error).context("connection-manager failed"));
            }
        }
        for service in services {
            match service.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => failure = Some(error),
                Err(error) => failure = Some(anyhow::anyhow!("service task failed: {error}")),
            }
        }
        signal_task.abort();
        // Archive entries queued after delivery (XEP-0313): written before
        // the process goes, within a bound.
        if let Some(router) = archiving_router {
            if tokio::time::timeout(Duration::from_secs(5), router.flush_archive())
                .await
                .is_err()
            {
                tracing::warn!("archive writes still queued at exit were not all written");
            }
        }
        if let Some(task) = offline_gauge {
            task.abort();
        }
        if let Some(task) = archive_purge {
            task.abort();
        }
        if let Some(task) = caps_purge {
            task.abort();
        }
        for task in upload_tasks {
            task.abort();
        }
        if let Some(task) = s2s_publisher {
            task.abort();
        }
        if let Some((liveness, task)) = liveness {
            task.abort();
            if let Err(error) = liveness.stop().await {
                tracing::warn!(%error, "removing the liveness key failed");
            }
        }
        if let Some(janitor) = janitor {
            let _ = janitor.stop().await;
        }
        if let Some(task) = resumption_expiry {
            task.abort();
        }
        if let Some(task) = https_task {
            let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
        }
        if let Some(task) = admin_task {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Err(error))) => {
                    tracing::warn!(error = %format!("{error:#}"), "admin api stopped with an error")
                }
                Ok(_) => {}
                Err(_) => tracing::warn!("admin api did not stop in time"),
            }
        }
        if let Some(task) = http_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        drop(routing_state);
        match failure {
            Some(error) => Err(error),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// The services one gRPC server carries.
#[derive(Default)]
struct GrpcServices {
    storage: Option<Arc<dyn StorageApi>>,
    router: Option<Arc<dyn RouterApi>>,
    presence: Option<Arc<dyn PresenceApi>>,
}

/// What each target needs from the configuration beyond the defaults: the
/// first check of [`Server::bind`], and of `starling config check --target`.
pub fn check_target_config(config: &Config, target: Target) -> anyhow::Result<()> {
    if target != Target::All && target != Target::Storage {
        require(target, "cluster.redis", !config.cluster.redis.is_empty())?;
        require(
            target,
            "cluster.storage",
            !config.cluster.storage.is_empty(),
        )?;
    }
    match target {
        Target::SessionRouter => require(
            target,
            "cluster.presence",
            !config.cluster.presence.is_empty(),
        )?,
        Target::Presence | Target::ConnectionManager => require(
            target,
            "cluster.routers",
            !config.cluster.routers.is_empty(),
        )?,
        _ => {}
    }
    if target != Target::All && target != Target::ConnectionManager {
        require(target, "cluster.grpc", config.grpc_addr().is_some())?;
    }
    Ok(())
}
