//! Who leads the janitor (`cluster.leader_election`): a Kubernetes Lease in a
//! pod, the Redis lock elsewhere, both behind starling-registry's
//! [`LeaderElection`], with the `starling_janitor_leader` gauge on top.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use starling_kubernetes::{LeaseConfig, LeaseLock};
use starling_redis_client::RedisClient;
use starling_registry::{LeaderElection, RedisLock, RegistryError};

use crate::config::{Config, LeaderElectionKind};

/// How often the janitor tries to lead (and sweeps while it does) when the
/// Redis lock elects it; its lease is three of these.
const REDIS_INTERVAL: Duration = Duration::from_secs(2);

/// The janitor's election for this process, and the interval of its
/// attempts (a third of the lease or less, so the holder renews in time).
pub(crate) async fn janitor_election(
    config: &Config,
    node_id: &str,
    redis: RedisClient,
    registry: &prometheus::Registry,
) -> anyhow::Result<(Box<dyn LeaderElection>, Duration)> {
    let kind = config
        .cluster
        .leader_election_kind(starling_kubernetes::in_pod());
    let (election, interval): (Box<dyn LeaderElection>, Duration) = match kind {
        LeaderElectionKind::Redis => (
            Box::new(RedisLock::new(redis, REDIS_INTERVAL * 3)),
            REDIS_INTERVAL,
        ),
        LeaderElectionKind::Kubernetes => {
            let client = starling_kubernetes::client().await.with_context(|| {
                format!(
                    "cluster.leader_election = {:?} elects the janitor by a Kubernetes Lease",
                    config.cluster.leader_election
                )
            })?;
            let duration = Duration::from_secs(config.cluster.lease_duration_secs);
            let lease = LeaseLock::new(
                client,
                LeaseConfig {
                    name: config.cluster.lease_name.clone(),
                    namespace: Some(config.cluster.lease_namespace.clone())
                        .filter(|namespace| !namespace.is_empty()),
                    identity: node_id.to_string(),
                    duration,
                },
            );
            tracing::info!(lease = %config.cluster.lease_name, namespace = %lease.namespace(), identity = %node_id, "janitor elected by a kubernetes lease");
            (
                Box::new(KubernetesLease(lease)),
                (duration / 3).min(REDIS_INTERVAL),
            )
        }
    };
    Ok((Box::new(Metered::register(election, registry)?), interval))
}

/// The Lease as a [`LeaderElection`].
struct KubernetesLease(LeaseLock);

fn election_error(error: starling_kubernetes::KubernetesError) -> RegistryError {
    RegistryError::Election {
        kind: "kubernetes",
        message: error.to_string(),
    }
}

#[async_trait]
impl LeaderElection for KubernetesLease {
    async fn acquire_or_renew(&mut self) -> Result<bool, RegistryError> {
        self.0.acquire_or_renew().await.map_err(election_error)
    }

    async fn release(&mut self) -> Result<(), RegistryError> {
        self.0.release().await.map_err(election_error)
    }

    fn kind(&self) -> &'static str {
        "kubernetes"
    }
}

/// An election whose outcome is exported: `starling_janitor_leader` (1 while
/// this process's janitor leads) and `starling_janitor_election_failures_total`.
struct Metered {
    inner: Box<dyn LeaderElection>,
    leader: prometheus::IntGauge,
    failures: prometheus::IntCounter,
}

impl Metered {
    fn register(
        inner: Box<dyn LeaderElection>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Metered> {
        let kind = inner.kind();
        let leader = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "starling_janitor_leader",
                "1 while this process's janitor is the leader (it removes the sessions of dead nodes)",
            ),
            &["election"],
        )?;
        let failures = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "starling_janitor_election_failures_total",
                "Attempts to become or stay the janitor's leader that failed (Redis or Kubernetes API errors)",
            ),
            &["election"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Metered {
            leader: leader.with_label_values(&[kind]),
            failures: failures.with_label_values(&[kind]),
            inner,
        })
    }
}

#[async_trait]
impl LeaderElection for Metered {
    async fn acquire_or_renew(&mut self) -> Result<bool, RegistryError> {
        let outcome = self.inner.acquire_or_renew().await;
        if outcome.is_err() {
            self.failures.inc();
        }
        self.leader.set(i64::from(matches!(outcome, Ok(true))));
        outcome
    }

    async fn release(&mut self) -> Result<(), RegistryError> {
        self.leader.set(0);
        self.inner.release().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}
