//! Where `starling serve` runs the admin API (`[admin]`): in the
//! session-router and `--target all` processes, which hold the registry, the
//! bus and storage. Off unless `admin.listen` is set, and then only with a token.
//! Also how a connection-manager's drain shows: `/readyz` and `nodedrain:{id}`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use starling_admin::{
    AdminService, BearerAuth, LocalMembership, LocalS2sStreams, Membership, RedisMembership,
    RedisS2sStreams, S2sStreamSource,
};
use starling_api::{SessionRegistry, StorageApi};
use starling_bus::Bus;
use starling_connection_manager::{DrainHandle, LocalS2sStreams as LocalS2sStreamsView};
use starling_redis_client::RedisClient;
use starling_registry::DrainMarker;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::Readiness;

/// A drain (from SIGTERM or the admin API) makes the process not ready at
/// once and marks the node as draining in Redis (`nodedrain:{id}`).
pub fn watch_drain(drain: &DrainHandle, readiness: Readiness, marker: Option<DrainMarker>) {
    let mut phase_rx = drain.subscribe();
    tokio::spawn(async move {
        let phase = match phase_rx.wait_for(|phase| phase.is_draining()).await {
            Ok(phase) => *phase,
            Err(_) => return,
        };
        readiness.set_draining();
        if let (Some(marker), Some(since)) = (marker, phase.draining_since()) {
            marker.mark(starling_admin::unix_ms(since));
        }
    });
}

/// The cluster membership of `--target all`: Redis when configured, else
/// this process's own connection-manager.
pub fn membership(
    redis: Option<RedisClient>,
    node_id: &str,
    drain: &DrainHandle,
) -> Arc<dyn Membership> {
    match redis {
        Some(redis) => Arc::new(RedisMembership::new(redis)),
        None => {
            let drain = drain.clone();
            Arc::new(LocalMembership::new(
                node_id,
                Arc::new(move || drain.phase().draining_since().map(starling_admin::unix_ms)),
            ))
        }
    }
}

/// Where `--target all` reads the s2s streams: Redis when configured (each
/// connection-manager publishes its own), else this process's.
pub fn s2s_streams(
    redis: Option<RedisClient>,
    local: LocalS2sStreamsView,
) -> Arc<dyn S2sStreamSource> {
    match redis {
        Some(redis) => Arc::new(RedisS2sStreams::new(redis)),
        None => Arc::new(LocalS2sStreams::new(Arc::new(move || local.streams()))),
    }
}

/// What the admin API acts on.
pub struct AdminParts {
    pub registry: Arc<dyn SessionRegistry>,
    pub bus: Arc<dyn Bus>,
    pub storage: Arc<dyn StorageApi>,
    pub membership: Arc<dyn Membership>,
    pub s2s_streams: Arc<dyn S2sStreamSource>,
}

/// Bind `admin.listen` (when set) and serve until `shutdown`; the bound
/// address and the serving task.
pub async fn spawn(
    config: &Config,
    parts: AdminParts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<(SocketAddr, JoinHandle<anyhow::Result<()>>)>> {
    let Some(address) = config.admin_addr() else {
        return Ok(None);
    };
    // Validated at load: a listen address without a token never gets here.
    let token = config
        .admin_token()?
        .context("config key `admin.token` must be set when admin.listen is set")?;
    let service = AdminService::new(
        &config.domain,
        parts.registry,
        parts.bus,
        parts.storage,
        parts.membership,
    )
    .context("cannot configure the admin api")?
    .with_s2s_streams(parts.s2s_streams);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (admin.listen)"))?;
    let local_addr = listener.local_addr()?;
    tracing::info!(role = "admin", address = %local_addr, "listening");
    let task = tokio::spawn(async move {
        starling_admin::serve_admin(listener, service, BearerAuth::new(&token), shutdown)
            .await
            .context("admin api")
    });
    Ok(Some((local_addr, task)))
}
