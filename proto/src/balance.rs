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

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
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

/// Every replica of one service, with the round-robin cursor.
#[derive(Debug)]
pub(crate) struct ReplicaSet {
    pub(crate) service: &'static str,
    pub(crate) replicas: Vec<Replica>,
    next: AtomicUsize,
    pub(crate) call_timeout: Duration,
    pub(crate) metrics: GrpcClientMetrics,
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
    /// Lazy channels to every endpoint: nothing is dialled until the first call.
    pub(crate) fn connect(
        service: &'static str,
        endpoints: Vec<String>,
    ) -> Result<ReplicaSet, ProtoError> {
        if endpoints.is_empty() {
            return Err(ProtoError::NoEndpoints { service });
        }
        let mut replicas = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let uri = endpoint_uri(&endpoint);
            let channel = Endpoint::from_shared(uri.clone())
                .map_err(|error| ProtoError::InvalidEndpoint {
                    service,
                    endpoint: endpoint.clone(),
                    reason: error.to_string(),
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy();
            replicas.push(Replica {
                address: uri,
                channel,
                unhealthy_until: Mutex::new(None),
            });
        }
        Ok(ReplicaSet {
            service,
            replicas,
            next: AtomicUsize::new(0),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            metrics: GrpcClientMetrics::default(),
        })
    }

    /// Observe this client's calls in `metrics` (registered in the process's registry).
    pub(crate) fn with_metrics(mut self, metrics: GrpcClientMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The replicas to try for one unary call: round robin from the cursor,
    /// healthy ones first, the others after them as a last resort.
    fn unary_order(&self) -> Vec<usize> {
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let rotation = (0..count).map(|offset| (start + offset) % count);
        let (mut healthy, unhealthy): (Vec<usize>, Vec<usize>) =
            rotation.partition(|&index| self.replicas[index].is_healthy());
        healthy.extend(unhealthy);
        healthy
    }

    /// The replica a sticky key (a session's full JID) goes to among the
    /// `eligible` ones: rendezvous hashing, so that losing one replica moves
    /// only the keys that were on it. Falls back to every replica when none is eligible.
    pub(crate) fn sticky_index(&self, key: &str, eligible: impl Fn(usize) -> bool) -> usize {
        let score = |index: usize| {
            let mut hasher = DefaultHasher::new();
            key.hash(&mut hasher);
            self.replicas[index].address.hash(&mut hasher);
            hasher.finish()
        };
        let candidates: Vec<usize> = (0..self.replicas.len())
            .filter(|&index| eligible(index))
            .collect();
        let pick = |indices: &mut dyn Iterator<Item = usize>| {
            indices.max_by_key(|&index| (score(index), index))
        };
        pick(&mut candidates.into_iter())
            .or_else(|| pick(&mut (0..self.replicas.len())))
            .unwrap_or(0)
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
        for index in self.unary_order() {
            let replica = &self.replicas[index];
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
        let firsts: Vec<usize> = (0..3).map(|_| set.unary_order()[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2]);
        set.replicas[1].mark_unhealthy();
        assert_eq!(set.unary_order(), vec![0, 2, 1]);
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
        for number in 0..200 {
            let key = format!("user{number}@example.org/phone");
            let everywhere = set.sticky_index(&key, |_| true);
            assert_eq!(everywhere, set.sticky_index(&key, |_| true));
            let without_first = set.sticky_index(&key, |index| index != 0);
            assert_ne!(without_first, 0);
            if everywhere != 0 {
                assert_eq!(everywhere, without_first);
            }
            assert_eq!(set.sticky_index(&key, |_| false), everywhere);
        }
    }
}
