//! Client-side balancing and failover over every replica of a service.
//!
//! Each client holds one lazily connected [`Channel`] per endpoint. Unary
//! calls go round robin, skipping replicas that failed recently (for
//! [`UNHEALTHY_COOLDOWN`]), and every attempt has a deadline
//! ([`DEFAULT_CALL_TIMEOUT`]). A call that fails with `UNAVAILABLE`, a
//! transport error or a timeout is retried on the next replica according to
//! its [`RetryPolicy`]:
//!
//! - [`RetryPolicy::Idempotent`] (reads, setting a value): tried on every
//!   replica in turn until one answers.
//! - [`RetryPolicy::AtLeastOnce`] (most writes): retried once on another
//!   replica; when the first attempt was executed but its answer was lost the
//!   write happens twice (at-least-once).
//! - [`RetryPolicy::AtMostOnce`] (writes whose repetition loses data: taking
//!   the offline queue, binding a resource): retried only when the request
//!   provably never left (the connection was refused).
//!
//! Discovery (issue 15): an endpoint written `dns:///NAME:PORT` (or
//! `dns:NAME:PORT`) stands for every address the name resolves to, re-resolved
//! every [`DISCOVERY_INTERVAL`]: behind a Kubernetes headless Service, each
//! ready pod is a replica, so one the autoscaler adds gets calls within
//! seconds and one that goes stops getting new ones. A replica that stays
//! keeps its channel and its health; a failed lookup keeps the last answer
//! (a DNS hiccup does not empty the set).
//!
//! In Kubernetes, an endpoint written `k8s:///SERVICE.NAMESPACE:PORT` stands
//! for every ready endpoint of the Service's EndpointSlices, watched through
//! the API (crates/kubernetes): a change reaches the set as soon as the API
//! server publishes it, with no DNS caching in between. Both kinds feed the
//! same [`Membership`], so calls in flight on a replica that goes are re-sent
//! the same way.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use starling_api::{ApiError, ApiResult};
use starling_telemetry::{TraceContext, TRACEPARENT, TRACESTATE};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::error::{status_to_api_error, ProtoError};
use crate::metrics::GrpcClientMetrics;

/// The deadline of one attempt of a unary call (and of one stanza's ack).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long establishing a connection to a replica may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replica that failed is skipped while others are healthy.
pub const UNHEALTHY_COOLDOWN: Duration = Duration::from_secs(2);
/// How often the names of `dns:///` endpoints are resolved again.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// A replica's channel whose unary requests carry the caller's trace context
/// in their metadata (W3C `traceparent`/`tracestate`).
pub(crate) type TracedChannel =
    InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>;

/// Put the current trace context in a request's metadata; nothing when
/// tracing is off. The server side is `starling_telemetry::grpc::RemoteParentLayer`.
fn inject_trace_context(mut request: Request<()>) -> Result<Request<()>, Status> {
    let context = TraceContext::current();
    for key in [TRACEPARENT, TRACESTATE] {
        if let Some(value) = context
            .get(key)
            .and_then(|value| MetadataValue::try_from(value).ok())
        {
            request.metadata_mut().insert(key, value);
        }
    }
    Ok(request)
}

/// When a failed call may be sent again to another replica (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    Idempotent,
    AtLeastOnce,
    AtMostOnce,
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptFailure {
    /// The connection could not be made: the request never left.
    NotSent,
    /// Transport failure or timeout after the request may have been executed.
    MaybeExecuted,
    /// The service answered with an error: final.
    Answered,
}

/// One replica of a service.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) address: String,
    pub(crate) channel: Channel,
    unhealthy_until: Mutex<Option<Instant>>,
}

impl Replica {
    pub(crate) fn is_healthy(&self) -> bool {
        match *self.unhealthy_until.lock() {
            Some(until) => Instant::now() >= until,
            None => true,
        }
    }

    pub(crate) fn mark_unhealthy(&self) {
        *self.unhealthy_until.lock() = Some(Instant::now() + UNHEALTHY_COOLDOWN);
    }

    fn mark_healthy(&self) {
        *self.unhealthy_until.lock() = None;
    }
}

/// The replicas of one service at one moment; a call works on one snapshot.
pub(crate) type Replicas = Arc<Vec<Arc<Replica>>>;

/// Every replica of one service, with the round-robin cursor.
#[derive(Debug)]
pub(crate) struct ReplicaSet {
    pub(crate) service: &'static str,
    membership: Arc<Membership>,
    next: AtomicUsize,
    pub(crate) call_timeout: Duration,
    pub(crate) metrics: GrpcClientMetrics,
}

/// The replicas as last resolved; the discovery task writes it.
#[derive(Debug)]
struct Membership {
    replicas: RwLock<Replicas>,
    /// Turns true once every `dns:///` name was looked up once.
    resolved: tokio::sync::watch::Sender<bool>,
}

/// One entry of an endpoint list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `http://host:port`: one replica, dialled by name (tonic resolves it on connect).
    Fixed(String),
    /// `dns:///name:port`: one replica per address of the name.
    Dns { name: String, port: u16 },
    /// `k8s:///service.namespace:port`: one replica per ready endpoint of
    /// the Service's EndpointSlices.
    Kubernetes(starling_kubernetes::EndpointSliceTarget),
}

/// Whether `endpoint` can be an entry of an endpoint list: `http://HOST:PORT`,
/// `https://HOST:PORT`, `dns:///NAME:PORT` or `k8s:///SERVICE.NAMESPACE:PORT`;
/// the reason when not.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let endpoint = endpoint.trim();
    if !(endpoint.starts_with("http://")
        || endpoint.starts_with("https://")
        || endpoint.starts_with("dns:")
        || endpoint.starts_with("k8s:")
        || endpoint.starts_with("kubernetes:"))
    {
        return Err(format!(
            "{endpoint:?}: expected http://HOST:PORT, dns:///NAME:PORT or k8s:///SERVICE.NAMESPACE:PORT"
        ));
    }
    parse_source("config", endpoint)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

fn parse_source(service: &'static str, endpoint: &str) -> Result<Source, ProtoError> {
    let endpoint = endpoint.trim();
    let invalid = |reason: &str| ProtoError::InvalidEndpoint {
        service,
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    if let Some(target) = starling_kubernetes::parse_endpoint_slice_target(endpoint) {
        return target
            .map(Source::Kubernetes)
            .map_err(|reason| invalid(&reason));
    }
    let Some(rest) = endpoint.strip_prefix("dns:") else {
        return Ok(Source::Fixed(endpoint_uri(endpoint)));
    };
    let target = rest.strip_prefix("///").unwrap_or(rest);
    let (name, port) = target
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected dns:///NAME:PORT"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
    if name.is_empty() || port == 0 || name.contains('/') {
        return Err(invalid("expected dns:///NAME:PORT"));
    }
    Ok(Source::Dns {
        name: name.to_string(),
        port,
    })
}

/// A lazily connected replica at `uri`.
fn new_replica(service: &'static str, uri: String) -> Result<Arc<Replica>, ProtoError> {
    let channel = Endpoint::from_shared(uri.clone())
        .map_err(|error| ProtoError::InvalidEndpoint {
            service,
            endpoint: uri.clone(),
            reason: error.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(Arc::new(Replica {
        address: uri,
        channel,
        unhealthy_until: Mutex::new(None),
    }))
}

impl Membership {
    /// Make the replicas those of `uris` (sorted, distinct), keeping the
    /// replicas that stay (their channels and health).
    fn update(&self, service: &'static str, uris: &[String]) {
        let current = self.replicas.read().clone();
        if current.iter().map(|r| &r.address).eq(uris.iter()) {
            return;
        }
        let mut next = Vec::with_capacity(uris.len());
        for uri in uris {
            match current.iter().find(|replica| &replica.address == uri) {
                Some(replica) => next.push(Arc::clone(replica)),
                None => match new_replica(service, uri.clone()) {
                    Ok(replica) => next.push(replica),
                    Err(error) => tracing::warn!(service, %error, "discovered replica skipped"),
                },
            }
        }
        let added: Vec<&str> = uris
            .iter()
            .filter(|uri| !current.iter().any(|r| &r.address == *uri))
            .map(String::as_str)
            .collect();
        let removed: Vec<&str> = current
            .iter()
            .filter(|r| !uris.contains(&r.address))
            .map(|r| r.address.as_str())
            .collect();
        tracing::info!(
            service,
            ?added,
            ?removed,
            replicas = next.len(),
            "replicas changed"
        );
        *self.replicas.write() = Arc::new(next);
    }
}

/// Resolve every source: fixed ones as they are, names to their addresses.
/// `None` when a lookup failed (the caller keeps what it had).
async fn resolve(sources: &[Source]) -> Option<Vec<String>> {
    let mut uris = Vec::new();
    for source in sources {
        match source {
            Source::Fixed(uri) => uris.push(uri.clone()),
            Source::Dns { name, port } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addresses) => {
                        uris.extend(addresses.map(|address| format!("http://{address}")))
                    }
                    Err(error) => {
                        tracing::warn!(%name, %error, "replica discovery: lookup failed, keeping the last answer");
                        return None;
                    }
                }
            }
            Source::Kubernetes(_) => {}
        }
    }
    uris.sort();
    uris.dedup();
    Some(uris)
}

/// Re-resolve the names of `sources` every [`DISCOVERY_INTERVAL`] and follow
/// the EndpointSlices of its `k8s:///` entries, until the replica set is
/// dropped. The replicas are the union of every source's last answer.
async fn discover(service: &'static str, sources: Vec<Source>, membership: Weak<Membership>) {
    let mut slices: Vec<SliceWatch> = sources
        .iter()
        .filter_map(|source| match source {
            Source::Kubernetes(target) => {
                let (answer_tx, answer_rx) = tokio::sync::watch::channel(None);
                tokio::spawn(starling_kubernetes::watch_endpoint_slices(
                    target.clone(),
                    answer_tx,
                ));
                Some(SliceWatch {
                    answer: answer_rx,
                    open: true,
                })
            }
            _ => None,
        })
        .collect();
    let names: Vec<Source> = sources
        .into_iter()
        .filter(|source| !matches!(source, Source::Kubernetes(_)))
        .collect();
    // What the names resolved to last; the fixed entries until they answer.
    let fixed: Vec<String> = names
        .iter()
        .filter_map(|source| match source {
            Source::Fixed(uri) => Some(uri.clone()),
            _ => None,
        })
        .collect();
    let mut named: Option<Vec<String>> = None;
    let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(uris) = resolve(&names).await {
                    named = Some(uris);
                }
            }
            _ = next_slice_change(&mut slices) => {}
        }
        let Some(membership) = membership.upgrade() else {
            return;
        };
        let mut uris = named.clone().unwrap_or_else(|| fixed.clone());
        let mut every_watch_answered = true;
        for watch in &slices {
            match &*watch.answer.borrow() {
                Some(addresses) => {
                    uris.extend(addresses.iter().map(|address| format!("http://{address}")))
                }
                None => every_watch_answered = false,
            }
        }
        uris.sort();
        uris.dedup();
        membership.update(service, &uris);
        if every_watch_answered {
            membership.resolved.send_replace(true);
        }
    }
}

/// One EndpointSlice watch: the last addresses it published (`None` before
/// its first list answered), kept when its task is gone (`open` false).
struct SliceWatch {
    answer: tokio::sync::watch::Receiver<Option<Vec<std::net::SocketAddr>>>,
    open: bool,
}

/// Wait until one of the EndpointSlice watches publishes a new answer
/// (forever when none is open).
async fn next_slice_change(slices: &mut [SliceWatch]) {
    let (changed, index) = {
        let changes: Vec<_> = slices
            .iter_mut()
            .enumerate()
            .filter(|(_, watch)| watch.open)
            .map(|(index, watch)| {
                Box::pin(async move { (watch.answer.changed().await.is_ok(), index) })
            })
            .collect();
        if changes.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(changes).await.0
    };
    if !changed {
        tracing::error!("an endpointslice watch ended; its last answer is kept");
        slices[index].open = false;
    }
}

/// Accept `host:port` as well as `http://host:port`.
fn endpoint_uri(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

impl ReplicaSet {
    /// Lazy channels to every endpoint: nothing is dialled until the first
    /// call. With `dns:///` endpoints, a task (on the current Tokio runtime)
    /// resolves them now and every [`DISCOVERY_INTERVAL`].
    pub(crate) fn connect(
        service: &'static str,
        endpoints: Vec<String>,
    ) -> Result<ReplicaSet, ProtoError> {
        if endpoints.is_empty() {
            return Err(ProtoError::NoEndpoints { service });
        }
        let sources = endpoints
            .iter()
            .map(|endpoint| parse_source(service, endpoint))
            .collect::<Result<Vec<_>, _>>()?;
        let mut fixed = Vec::new();
        for source in &sources {
            if let Source::Fixed(uri) = source {
                if !fixed
                    .iter()
                    .any(|replica: &Arc<Replica>| &replica.address == uri)
                {
                    fixed.push(new_replica(service, uri.clone())?);
                }
            }
        }
        let discovering = sources
            .iter()
            .any(|source| !matches!(source, Source::Fixed(_)));
        let membership = Arc::new(Membership {
            replicas: RwLock::new(Arc::new(fixed)),
            resolved: tokio::sync::watch::Sender::new(!discovering),
        });
        if discovering {
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| ProtoError::InvalidEndpoint {
                    service,
                    endpoint: endpoints.join(","),
                    reason: "dns:/// and k8s:/// endpoints need a Tokio runtime to be resolved"
                        .into(),
                })?;
            runtime.spawn(discover(service, sources, Arc::downgrade(&membership)));
        }
        Ok(ReplicaSet {
            service,
            membership,
            next: AtomicUsize::new(0),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            metrics: GrpcClientMetrics::default(),
        })
    }

    /// The replicas now.
    pub(crate) fn snapshot(&self) -> Replicas {
        self.membership.replicas.read().clone()
    }

    /// The replicas now; before the first lookup of a `dns:///` name has
    /// answered, waits for it (at most a call's deadline).
    pub(crate) async fn current(&self) -> Replicas {
        if !*self.membership.resolved.borrow() {
            let mut resolved = self.membership.resolved.subscribe();
            let _ = tokio::time::timeout(self.call_timeout, resolved.wait_for(|done| *done)).await;
        }
        self.snapshot()
    }

    /// Observe this client's calls in `metrics` (registered in the process's registry).
    pub(crate) fn with_metrics(mut self, metrics: GrpcClientMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The replicas to try for one unary call: round robin from the cursor,
    /// healthy ones first, the others after them as a last resort.
    fn unary_order(&self, replicas: &[Arc<Replica>]) -> Vec<usize> {
        let count = replicas.len();
        if count == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let rotation = (0..count).map(|offset| (start + offset) % count);
        let (mut healthy, unhealthy): (Vec<usize>, Vec<usize>) =
            rotation.partition(|&index| replicas[index].is_healthy());
        healthy.extend(unhealthy);
        healthy
    }

    /// The replica a sticky key (a session's full JID) goes to among the
    /// `eligible` ones: rendezvous hashing, so that losing one replica moves
    /// only the keys that were on it. Falls back to every replica when none is eligible.
    /// `None` when there is no replica at all.
    pub(crate) fn sticky_index(
        replicas: &[Arc<Replica>],
        key: &str,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let score = |index: usize| {
            let mut hasher = DefaultHasher::new();
            key.hash(&mut hasher);
            replicas[index].address.hash(&mut hasher);
            hasher.finish()
        };
        let candidates: Vec<usize> = (0..replicas.len())
            .filter(|&index| eligible(index))
            .collect();
        let pick = |indices: &mut dyn Iterator<Item = usize>| {
            indices.max_by_key(|&index| (score(index), index))
        };
        pick(&mut candidates.into_iter()).or_else(|| pick(&mut (0..replicas.len())))
    }

    /// Run one unary call with balancing, deadline and failover; every
    /// attempt carries the caller's trace context. Its duration and final code
    /// go to `starling_grpc_client_duration_seconds`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        policy: RetryPolicy,
        attempt: F,
    ) -> ApiResult<T>
    where
        F: FnMut(TracedChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let (result, code) = self.call_replicas(method, policy, attempt).await;
        self.metrics
            .observe(self.service, method, code, started.elapsed());
        result
    }

    /// [`ReplicaSet::call`] without the metrics; also returns the final gRPC code.
    async fn call_replicas<T, F, Fut>(
        &self,
        method: &'static str,
        policy: RetryPolicy,
        mut attempt: F,
    ) -> (ApiResult<T>, Code)
    where
        F: FnMut(TracedChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut retries_after_execution = 0usize;
        let mut last_status = None;
        let replicas = self.current().await;
        for index in self.unary_order(&replicas) {
            let replica = &replicas[index];
            let channel = InterceptedService::new(
                replica.channel.clone(),
                inject_trace_context as fn(Request<()>) -> Result<Request<()>, Status>,
            );
            let status = match tokio::time::timeout(self.call_timeout, attempt(channel)).await {
                Ok(Ok(response)) => {
                    replica.mark_healthy();
                    return (Ok(response.into_inner()), Code::Ok);
                }
                Ok(Err(status)) => status,
                Err(_elapsed) => Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    self.call_timeout.as_millis()
                )),
            };
            let failure = classify_failure(&status);
            if failure == AttemptFailure::Answered {
                return (Err(status_to_api_error(&status)), status.code());
            }
            replica.mark_unhealthy();
            tracing::warn!(
                service = self.service,
                method,
                replica = %replica.address,
                code = ?status.code(),
                error = %status.message(),
                "grpc call failed on replica"
            );
            if failure == AttemptFailure::MaybeExecuted {
                retries_after_execution += 1;
                let may_retry = match policy {
                    RetryPolicy::Idempotent => true,
                    RetryPolicy::AtLeastOnce => retries_after_execution <= 1,
                    RetryPolicy::AtMostOnce => false,
                };
                if !may_retry {
                    return (Err(unavailable(&status)), status.code());
                }
            }
            last_status = Some(status);
        }
        match last_status {
            Some(status) => (Err(unavailable(&status)), status.code()),
            None => (
                Err(ApiError::Unavailable(format!(
                    "no {} replica",
                    self.service
                ))),
                Code::Unavailable,
            ),
        }
    }
}

/// A transport-level failure is `Unavailable`, whatever code tonic gave it.
fn unavailable(status: &Status) -> ApiError {
    ApiError::Unavailable(status.message().to_string())
}

/// Whether a status is the service's answer, or a transport failure that
/// happened before or after the request left.
fn classify_failure(status: &Status) -> AttemptFailure {
    let transport_failure = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            if transport_failure || status.code() == Code::DeadlineExceeded =>
        {
            if connection_refused(status) {
                AttemptFailure::NotSent
            } else {
                AttemptFailure::MaybeExecuted
            }
        }
        // A replica answering UNAVAILABLE itself (its database is down): another
        // replica may do better, the request was not executed.
        Code::Unavailable => AttemptFailure::NotSent,
        _ => AttemptFailure::Answered,
    }
}

/// The connection could not be established (the request never left).
fn connection_refused(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io_error) = error.downcast_ref::<std::io::Error>() {
            if matches!(
                io_error.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::NotFound
            ) {
                return true;
            }
        }
        if error.to_string().contains("tcp connect error") {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_invalid_endpoint_lists() {
        assert!(matches!(
            ReplicaSet::connect("storage", Vec::new()),
            Err(ProtoError::NoEndpoints { service: "storage" })
        ));
    }

    #[tokio::test]
    async fn invalid_endpoint_is_an_error_not_a_panic() {
        let result = ReplicaSet::connect("storage", vec!["http://exa mple:1".into()]);
        assert!(matches!(result, Err(ProtoError::InvalidEndpoint { .. })));
    }

    #[tokio::test]
    async fn round_robin_visits_every_replica() {
        let set = ReplicaSet::connect(
            "storage",
            vec![
                "127.0.0.1:1".into(),
                "127.0.0.1:2".into(),
                "127.0.0.1:3".into(),
            ],
        )
        .expect("valid endpoints");
        let replicas = set.snapshot();
        let firsts: Vec<usize> = (0..3).map(|_| set.unary_order(&replicas)[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2]);
        replicas[1].mark_unhealthy();
        assert_eq!(set.unary_order(&replicas), vec![0, 2, 1]);
    }

    #[tokio::test]
    async fn sticky_index_is_stable_and_moves_only_keys_of_a_lost_replica() {
        let set = ReplicaSet::connect(
            "router",
            vec![
                "127.0.0.1:1".into(),
                "127.0.0.1:2".into(),
                "127.0.0.1:3".into(),
            ],
        )
        .expect("valid endpoints");
        let replicas = set.snapshot();
        let sticky = |key: &str, eligible: &dyn Fn(usize) -> bool| {
            ReplicaSet::sticky_index(&replicas, key, eligible).unwrap()
        };
        for number in 0..200 {
            let key = format!("user{number}@example.org/phone");
            let everywhere = sticky(&key, &|_| true);
            assert_eq!(everywhere, sticky(&key, &|_| true));
            let without_first = sticky(&key, &|index| index != 0);
            assert_ne!(without_first, 0);
            if everywhere != 0 {
                assert_eq!(everywhere, without_first);
            }
            assert_eq!(sticky(&key, &|_| false), everywhere);
        }
        assert_eq!(ReplicaSet::sticky_index(&[], "k", |_| true), None);
    }

    #[test]
    fn endpoints_are_fixed_or_dns_names() {
        assert_eq!(
            parse_source("router", "127.0.0.1:5").unwrap(),
            Source::Fixed("http://127.0.0.1:5".into())
        );
        for written in [
            "dns:///starling-router.ns.svc:50051",
            "dns:starling-router.ns.svc:50051",
        ] {
            assert_eq!(
                parse_source("router", written).unwrap(),
                Source::Dns {
                    name: "starling-router.ns.svc".into(),
                    port: 50051
                }
            );
        }
        for bad in [
            "dns:///noport",
            "dns:///name:0",
            "dns:///name:x",
            "dns:///:5",
            "dns://a/b:5",
        ] {
            assert!(parse_source("router", bad).is_err(), "{bad}");
        }
        assert!(
            ReplicaSet::connect("router", vec!["dns:///localhost:1".into()]).is_err(),
            "no runtime, no discovery"
        );
    }

    #[tokio::test]
    async fn a_name_stands_for_each_of_its_addresses_and_replicas_that_stay_are_kept() {
        let set = ReplicaSet::connect(
            "storage",
            vec!["dns:///localhost:7".into(), "127.0.0.9:7".into()],
        )
        .expect("valid endpoints");
        let first = set.current().await;
        let addresses: Vec<&str> = first.iter().map(|r| r.address.as_str()).collect();
        assert!(addresses.contains(&"http://127.0.0.1:7"), "{addresses:?}");
        assert!(addresses.contains(&"http://127.0.0.9:7"), "{addresses:?}");

        // The next answer names another address; the one that stays is the same replica.
        first[0].mark_unhealthy();
        let mut uris: Vec<String> = first.iter().map(|r| r.address.clone()).collect();
        uris.push("http://127.0.0.10:7".into());
        uris.sort();
        set.membership.update("storage", &uris);
        let second = set.snapshot();
        assert_eq!(second.len(), first.len() + 1);
        let kept = second
            .iter()
            .find(|r| r.address == first[0].address)
            .unwrap();
        assert!(Arc::ptr_eq(kept, &first[0]) && !kept.is_healthy());
        // And one that goes is gone from the next snapshot, not from calls in progress.
        set.membership.update("storage", &uris[1..]);
        assert_eq!(set.snapshot().len(), second.len() - 1);
        assert_eq!(second.len(), first.len() + 1);
    }
}
