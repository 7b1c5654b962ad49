//! Real tonic servers on 127.0.0.1 port 0 for the gRPC tests.

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_api::{PresenceApi, RouterApi, StorageApi};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A gRPC server on its own port; stopped gracefully by `stop` or drop.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(
        storage: Option<Arc<dyn StorageApi>>,
        router: Option<Arc<dyn RouterApi>>,
        presence: Option<Arc<dyn PresenceApi>>,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = shutdown_rx.await;
            };
            starling_proto::serve_grpc_on(
                listener,
                storage,
                router,
                presence,
                starling_proto::GrpcServerMetrics::default(),
                shutdown,
            )
            .await
            .expect("grpc server");
        });
        TestServer {
            addr,
            shutdown_tx: Some(shutdown_tx),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop: the shutdown future resolves, the server drains.
    pub async fn stop(mut self) {
        drop(self.shutdown_tx.take());
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// A gRPC server on a runtime of its own, so that it can die abruptly like a
/// killed process: every connection drops at once, nothing is drained.
pub struct KillableServer {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KillableServer {
    pub fn start_router(router: Arc<dyn RouterApi>) -> KillableServer {
        KillableServer::start(None, Some(router))
    }

    pub fn start(
        storage: Option<Arc<dyn StorageApi>>,
        router: Option<Arc<dyn RouterApi>>,
    ) -> KillableServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        runtime.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            let _ = starling_proto::serve_grpc_on(
                listener,
                storage,
                router,
                None,
                starling_proto::GrpcServerMetrics::default(),
                std::future::pending::<()>(),
            )
            .await;
        });
        KillableServer {
            addr,
            runtime: Some(runtime),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Die now, like kill -9.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for KillableServer {
    fn drop(&mut self) {
        self.kill();
    }
}
