//! `starling serve`: the four services composed in one process over the
//! in-process bus and registry. The services are the same library code the
//! cluster runs; only the bus and registry implementations differ.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use starling_api::{PresenceApi, RouterApi, SessionRegistry, StorageApi};
use starling_bus::{Bus, InProcessBus};
use starling_connection_manager::{CmConfig, CmLimits, ConnectionManager, TlsSettings};
use starling_presence::{PresenceConfig, PresenceService};
use starling_registry::MemoryRegistry;
use starling_session_router::{RouterConfig, SessionRouter};
use starling_storage::{redact_url, Storage};
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{self, Readiness};

pub async fn connect_storage(config: &Config) -> anyhow::Result<Storage> {
    let storage_config = starling_storage::StorageConfig {
        url: config.storage_url(),
        max_offline_per_user: config.storage.max_offline_per_user,
        max_roster_items: config.storage.max_roster_items,
        max_connections: config.storage.max_connections,
    };
    Storage::connect(&storage_config)
        .await
        .with_context(|| format!("cannot open storage {}", redact_url(&storage_config.url)))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(error) = result {
        eprintln!("starling: logging already initialised: {error}");
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for sigterm");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => tracing::info!("sigint received, shutting down"),
            _ = terminate.recv() => tracing::info!("sigterm received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let node_id = format!("cm-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    tracing::info!(domain = %config.domain, node = %node_id, storage = %redact_url(&config.storage_url()), "starting starling serve");

    let storage = Arc::new(connect_storage(&config).await?);
    let registry: Arc<dyn SessionRegistry> = Arc::new(MemoryRegistry::new());
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let storage_api: Arc<dyn StorageApi> = storage.clone();

    let router = Arc::new(
        SessionRouter::new(
            RouterConfig {
                domain: config.domain.clone(),
                max_resources_per_user: config.limits.max_resources_per_user as usize,
                server_name: "Starling".into(),
                server_version: env!("CARGO_PKG_VERSION").into(),
            },
            registry.clone(),
            bus.clone(),
            storage_api.clone(),
        )
        .with_in_band_registration(config.registration.enabled),
    );
    let router_api: Arc<dyn RouterApi> = router.clone();
    let presence: Arc<dyn PresenceApi> = Arc::new(PresenceService::new(
        PresenceConfig {
            domain: config.domain.clone(),
        },
        registry.clone(),
        bus.clone(),
        storage_api.clone(),
        router_api.clone(),
    ));
    router.set_presence(presence);

    let cm_config = CmConfig {
        node_id,
        domain: config.domain.clone(),
        c2s_addr: config.c2s_addr(),
        c2s_tls_addr: config.c2s_tls_addr(),
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
        },
        registration_enabled: config.registration.enabled,
        require_tls: config.tls.required,
    };
    let connection_manager = ConnectionManager::new(cm_config, router_api, storage_api, bus)
        .context("cannot configure the connection-manager")?
        .bind()
        .await
        .context("cannot start the connection-manager listeners")?;
    for (role, address) in connection_manager.local_addrs() {
        tracing::info!(role, %address, "listening");
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let readiness = Readiness::new(storage.clone());
    let http_task = match config.http_addr() {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (listen.http)"))?;
            tracing::info!(role = "http", address = %listener.local_addr()?, "listening");
            tracing::info!(
                role = "websocket",
                path = starling_connection_manager::WEBSOCKET_PATH,
                "xmpp over websocket on the http listener"
            );
            Some(tokio::spawn(http::serve(
                listener,
                readiness.clone(),
                connection_manager.websocket_router(),
                wait_for(shutdown_rx.clone()),
            )))
        }
        None => None,
    };

    let signal_readiness = readiness.clone();
    let signal_task = tokio::spawn(async move {
        termination_signal().await;
        // Drain in order: not-ready first, then stop accepting and close streams.
        signal_readiness.set_draining();
        let _ = shutdown_tx.send(true);
    });

    connection_manager
        .run(wait_for(shutdown_rx.clone()))
        .await
        .context("connection-manager failed")?;
    signal_task.abort();
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A future that resolves once the shutdown flag is set.
async fn wait_for(mut shutdown_rx: watch::Receiver<bool>) {
    while !*shutdown_rx.borrow() {
        if shutdown_rx.changed().await.is_err() {
            return;
        }
    }
}
