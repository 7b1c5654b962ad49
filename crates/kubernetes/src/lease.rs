//! Leader election by a `coordination.k8s.io/v1` Lease, with the semantics of
//! client-go's `leaderelection` package:
//!
//! - The Lease names its holder (`spec.holderIdentity`), how long a holding
//!   lasts (`spec.leaseDurationSeconds`) and when the holder last renewed it
//!   (`spec.renewTime`).
//! - A candidate takes a Lease that is free (no holder) or expired. Expiry is
//!   judged on the candidate's own clock: the Lease is expired when its record
//!   (holder, renewal) has not changed for a lease duration since this
//!   candidate first saw it, so clocks that differ between nodes do not matter.
//! - Every write (create, renewal, takeover, release) is conditional: a
//!   create fails with 409 when the Lease exists, a patch carries the
//!   `metadata.resourceVersion` it was computed from and fails with 409 when
//!   another candidate wrote first. So two candidates never both take it.
//! - The holder renews every attempt (the janitor's interval, a third of the
//!   lease duration or less), and stops calling itself leader when it could
//!   not renew for two thirds of the duration (client-go's renew deadline),
//!   before any other candidate can see the Lease expire.
//! - Stopping releases it (the holder is removed), so another candidate takes
//!   it at its next attempt rather than a lease duration later.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::Utc;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

use crate::{api_status, KubernetesError};

/// Which Lease, and who this candidate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's name (`cluster.lease_name`).
    pub name: String,
    /// Its namespace; `None`: the client's (the pod's namespace in a pod).
    pub namespace: Option<String>,
    /// This candidate's identity (the node id: the pod's name in the chart).
    pub identity: String,
    /// How long a holding lasts without renewal (`cluster.lease_duration_secs`).
    pub duration: Duration,
}

/// The record of the Lease as this candidate last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObservedRecord {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: i32,
    resource_version: Option<String>,
}

/// One candidate for one Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The record as last seen, and when it was first seen as it is (on this
    /// candidate's clock): the base of the expiry judgement.
    observed: Option<(ObservedRecord, Instant)>,
    /// When this candidate last created, took or renewed the Lease.
    last_renewed: Option<Instant>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LeaseLock")
            .field("config", &self.config)
            .field("leading", &self.last_renewed.is_some())
            .finish()
    }
}

impl LeaseLock {
    /// A candidate for `config.name` through `client`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> LeaseLock {
        let api = match &config.namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::default_namespaced(client),
        };
        LeaseLock {
            api,
            config,
            observed: None,
            last_renewed: None,
        }
    }

    /// The namespace of the Lease.
    pub fn namespace(&self) -> &str {
        self.api.namespace().unwrap_or("default")
    }

    /// After this long without renewing, the holder stops leading: two
    /// thirds of the duration (client-go's default renew deadline, 10 s of 15 s).
    fn renew_deadline(&self) -> Duration {
        self.config.duration * 2 / 3
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Become the holder or stay it: true when this candidate leads now.
    /// An API error while leading keeps the leadership until the renew
    /// deadline, then is returned.
    pub async fn acquire_or_renew(&mut self) -> Result<bool, KubernetesError> {
        match self.try_acquire_or_renew().await {
            Ok(true) => {
                self.last_renewed = Some(Instant::now());
                Ok(true)
            }
            Ok(false) => {
                self.last_renewed = None;
                Ok(false)
            }
            Err(error) => match self.last_renewed {
                Some(renewed) if renewed.elapsed() < self.renew_deadline() => {
                    tracing::warn!(lease = %self.config.name, %error, "lease renewal failed, retrying before the renew deadline");
                    Ok(true)
                }
                _ => {
                    self.last_renewed = None;
                    Err(error)
                }
            },
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, KubernetesError> {
        let lease = match self.api.get(&self.config.name).await {
            Ok(lease) => lease,
            Err(error) if api_status(&error) == Some(404) => return self.create().await,
            Err(error) => return Err(error.into()),
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = ObservedRecord {
            holder: spec
                .holder_identity
                .clone()
                .filter(|holder| !holder.is_empty()),
            renew_time: spec.renew_time.clone(),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        };
        self.observe(record.clone());
        let holder_is_me = record.holder.as_deref() == Some(self.config.identity.as_str());
        if !holder_is_me && record.holder.is_some() {
            let duration = spec
                .lease_duration_seconds
                .and_then(|seconds| u64::try_from(seconds).ok())
                .map_or(self.config.duration, Duration::from_secs);
            let unchanged_since = self.observed.as_ref().map(|(_, since)| *since);
            if unchanged_since.is_none_or(|since| since.elapsed() < duration) {
                return Ok(false);
            }
            tracing::info!(lease = %self.config.name, holder = ?record.holder, "lease expired, taking it over");
        }
        let now = MicroTime(Utc::now());
        let mut spec_patch = json!({
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": self.duration_seconds(),
            "renewTime": now,
        });
        if !holder_is_me {
            spec_patch["acquireTime"] = json!(now);
            spec_patch["leaseTransitions"] = json!(record.transitions + 1);
        }
        self.conditional_patch(&record, spec_patch).await
    }

    /// A merge patch of `spec`, conditional on the resourceVersion of
    /// `record`: true when it applied, false when another writer came first.
    async fn conditional_patch(
        &mut self,
        record: &ObservedRecord,
        spec_patch: serde_json::Value,
    ) -> Result<bool, KubernetesError> {
        let patch = json!({
            "metadata": { "resourceVersion": record.resource_version },
            "spec": spec_patch,
        });
        match self
            .api
            .patch(
                &self.config.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(lease) => {
                self.observe_lease(&lease);
                Ok(lease
                    .spec
                    .and_then(|spec| spec.holder_identity)
                    .is_some_and(|holder| holder == self.config.identity))
            }
            Err(error) if api_status(&error) == Some(409) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn create(&mut self) -> Result<bool, KubernetesError> {
        let now = MicroTime(Utc::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.namespace().to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                tracing::info!(lease = %self.config.name, namespace = %self.namespace(), "lease created");
                self.observe_lease(&created);
                Ok(true)
            }
            Err(error) if api_status(&error) == Some(409) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn observe_lease(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(ObservedRecord {
            holder: spec.holder_identity.filter(|holder| !holder.is_empty()),
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        });
    }

    /// Remember `record`; the expiry clock restarts only when the holder or
    /// its renewal changed (not for a resourceVersion alone).
    fn observe(&mut self, record: ObservedRecord) {
        let changed = self.observed.as_ref().is_none_or(|(seen, _)| {
            seen.holder != record.holder || seen.renew_time != record.renew_time
        });
        let since = match &self.observed {
            Some((_, since)) if !changed => *since,
            _ => Instant::now(),
        };
        self.observed = Some((record, since));
    }

    /// Remove this candidate as the holder (if it still is), so that another
    /// takes the Lease at its next attempt.
    pub async fn release(&mut self) -> Result<(), KubernetesError> {
        let Some((record, _)) = self.observed.clone() else {
            return Ok(());
        };
        self.last_renewed = None;
        if record.holder.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        // A 409 means another candidate wrote since: nothing of ours to release.
        self.conditional_patch(
            &record,
            json!({ "holderIdentity": null, "renewTime": MicroTime(Utc::now()) }),
        )
        .await?;
        tracing::info!(lease = %self.config.name, "lease released");
        Ok(())
    }
}
