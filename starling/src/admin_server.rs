//! Where `starling serve` runs the admin API (`[admin]`): in the
//! session-router and `--target all` processes, which hold the registry, the
//! bus and storage. Off unless `admin.listen` is set, and then only with a token.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use starling_admin::{AdminService, BearerAuth, Membership};
use starling_api::{SessionRegistry, StorageApi};
use starling_bus::Bus;
use tokio::task::JoinHandle;

use crate::config::Config;

/// What the admin API acts on.
pub struct AdminParts {
    pub registry: Arc<dyn SessionRegistry>,
    pub bus: Arc<dyn Bus>,
    pub storage: Arc<dyn StorageApi>,
    pub membership: Arc<dyn Membership>,
}

/// Bind `admin.listen` (when set) and serve until `shutdown`.
pub async fn spawn(
    config: &Config,
    parts: AdminParts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<JoinHandle<anyhow::Result<()>>>> {
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
    .context("cannot configure the admin api")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (admin.listen)"))?;
    tracing::info!(role = "admin", address = %listener.local_addr()?, "listening");
    Ok(Some(tokio::spawn(async move {
        starling_admin::serve_admin(listener, service, BearerAuth::new(&token), shutdown)
            .await
            .context("admin api")
    })))
}
