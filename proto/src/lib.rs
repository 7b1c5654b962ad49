//! gRPC contracts between the Starling services (DESIGN: "Services talk
//! gRPC"), their tonic server adapters and the balancing, failing-over clients
//! that implement the `starling_api` traits.
//!
//! The `.proto` files under `proto/starling/` (versioned packages) are
//! compiled at build time by the pure-Rust `protox` compiler, without a
//! `protoc` binary (see `build.rs`).
//!
//! - `storage_service` / [`GrpcStorageClient`]: `starling.storage.v1`
//! - `router_service` / [`GrpcRouterClient`]: `starling.router.v1`, with the
//!   per-stanza bidirectional `RouteStream`
//! - `presence_service` / [`GrpcPresenceClient`]: `starling.presence.v1`
//! - `admin::v1`: the operator's admin API (server in `starling-admin`)
//! - `bus::v1`: the delivery envelope the routers publish to connection-managers
//! - [`serve_grpc`]: every service a process runs, on one port

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use starling_api::{PresenceApi, RouterApi, StorageApi};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod balance;
mod convert;
mod error;
mod metrics;
mod presence_adapter;
mod router_adapter;
mod storage_adapter;

pub use balance::{RetryPolicy, CONNECT_TIMEOUT, DEFAULT_CALL_TIMEOUT, UNHEALTHY_COOLDOWN};
pub use error::{
    api_error_to_status, bind_rejection_from_proto, bind_rejection_to_proto, code_to_api_error,
    status_to_api_error, ProtoError,
};
pub use metrics::{GrpcClientMetrics, GrpcServerMetrics, MeteredGrpcService};
pub use presence_adapter::{presence_service, GrpcPresenceClient, PresenceGrpcServer};
pub use router_adapter::{router_service, GrpcRouterClient, RouterGrpcServer};
pub use storage_adapter::{storage_service, GrpcStorageClient, StorageGrpcServer};

/// `starling.bus.v1`: deliveries from the routers to the connection-managers.
pub mod bus {
    /// Version 1 of the bus envelope.
    pub mod v1 {
        tonic::include_proto!("starling.bus.v1");
    }
}

/// `starling.common.v1`: types shared by the service contracts.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("starling.common.v1");
    }
}

/// `starling.storage.v1`: accounts, credentials, rosters, offline queue.
pub mod storage {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("starling.storage.v1");
    }
}

/// `starling.router.v1`: binding and stanza routing.
pub mod router {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("starling.router.v1");
    }
}

/// `starling.presence.v1`: rosters, subscriptions and presence.
pub mod presence {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("starling.presence.v1");
    }
}

/// `starling.admin.v1`: the operator's admin API (served by `starling-admin`).
pub mod admin {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("starling.admin.v1");
    }
}

/// How long [`serve_grpc`] waits for calls in progress after `shutdown`.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve whichever services this process runs on one port until `shutdown`
/// resolves. On shutdown the router's route streams stop reading, acknowledge
/// what they hold and end, so that clients move the rest to another replica;
/// the server then drains its connections, for at most [`DRAIN_DEADLINE`].
pub async fn serve_grpc(
    addr: SocketAddr,
    storage: Option<Arc<dyn StorageApi>>,
    router: Option<Arc<dyn RouterApi>>,
    presence: Option<Arc<dyn PresenceApi>>,
    metrics: GrpcServerMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProtoError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ProtoError::Listen { addr, source })?;
    serve_grpc_on(listener, storage, router, presence, metrics, shutdown).await
}

/// [`serve_grpc`] on a listener bound already (port 0 in tests).
pub async fn serve_grpc_on(
    listener: TcpListener,
    storage: Option<Arc<dyn StorageApi>>,
    router: Option<Arc<dyn RouterApi>>,
    presence: Option<Arc<dyn PresenceApi>>,
    metrics: GrpcServerMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProtoError> {
    let local_addr = listener.local_addr().ok();
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut drain_started = drain_rx.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(addr = ?local_addr, "grpc server draining");
        let _ = drain_tx.send(true);
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(
        addr = ?local_addr,
        storage = storage.is_some(),
        router = router.is_some(),
        presence = presence.is_some(),
        "grpc server listening"
    );
    let serve = tonic::transport::Server::builder()
        .layer(metrics)
        // Unary handlers run under the caller's trace context (gRPC metadata).
        .layer(starling_telemetry::grpc::RemoteParentLayer)
        .add_optional_service(storage.map(storage_service))
        .add_optional_service(
            router.map(|router| router_adapter::router_service_with_drain(router, drain_rx)),
        )
        .add_optional_service(presence.map(presence_service))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // A call stuck in a service must not keep the process from stopping.
    let drain_deadline = async move {
        if drain_started.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        served = serve => served?,
        () = drain_deadline => {
            tracing::warn!(addr = ?local_addr, deadline_ms = DRAIN_DEADLINE.as_millis() as u64, "grpc drain deadline passed, closing");
        }
    }
    Ok(())
}
