//! The Kubernetes API for Starling (issue 15): the janitor's leader election
//! by a `coordination.k8s.io/v1` Lease ([`LeaseLock`]) and replica discovery
//! by watching `discovery.k8s.io/v1` EndpointSlices ([`watch_endpoint_slices`]).
//!
//! The client is configured the way `kubectl` and client-go are: from
//! `KUBECONFIG` (or `~/.kube/config`) when there is one, else from the pod's
//! service account (`KUBERNETES_SERVICE_HOST`; the token, CA and namespace
//! under `/var/run/secrets/kubernetes.io/serviceaccount`). It speaks plain
//! HTTP or TLS (rustls); nothing here needs anything but these two resources.

mod endpoints;
mod lease;

use std::sync::Arc;

pub use endpoints::{
    parse_endpoint_slice_target, watch_endpoint_slices, EndpointSliceTarget, PortRef,
};
pub use lease::{LeaseConfig, LeaseLock};

/// The errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No kubeconfig and no in-cluster service account.
    #[error("no Kubernetes client configuration (neither KUBECONFIG/~/.kube/config nor an in-cluster service account): {0}")]
    NoConfig(String),
    /// The API server answered with an error, or could not be reached.
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// Whether this process runs in a Kubernetes pod: the kubelet sets
/// `KUBERNETES_SERVICE_HOST` in every container.
pub fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|host| !host.is_empty())
}

/// A client configured from `KUBECONFIG` / `~/.kube/config`, else the pod's
/// service account.
pub async fn client() -> Result<kube::Client, KubernetesError> {
    let config = kube::Config::infer()
        .await
        .map_err(|error| KubernetesError::NoConfig(error.to_string()))?;
    kube::Client::try_from(config).map_err(KubernetesError::Api)
}

/// One client for the whole process (discovery of every service shares its
/// connections); made at the first call. A failure is not kept: the next call
/// tries again.
pub async fn shared_client() -> Result<kube::Client, Arc<KubernetesError>> {
    static CLIENT: tokio::sync::OnceCell<kube::Client> = tokio::sync::OnceCell::const_new();
    CLIENT
        .get_or_try_init(|| async { client().await.map_err(Arc::new) })
        .await
        .cloned()
}

/// The HTTP status of an API error answer (404, 409, 410, ...).
fn api_status(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(response) => Some(response.code),
        _ => None,
    }
}
