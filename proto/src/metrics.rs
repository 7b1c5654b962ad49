//! The gRPC clients' Prometheus metrics (docs/operations.md):
//! `starling_grpc_client_duration_seconds{service,method,code}`, one
//! observation per unary call (all its attempts on every replica included)
//! and per stanza on a `RouteStream` (from hand-over to its ack).
//!
//! Labels are bounded: the three services, their methods, the 17 gRPC codes.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, Registry};
use tonic::Code;

/// Buckets from 100 microseconds to 5 seconds (the call deadline).
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The gRPC client metrics; cheap to clone. [`GrpcClientMetrics::default`]
/// counts into a registry nobody scrapes.
#[derive(Clone)]
pub struct GrpcClientMetrics {
    duration: HistogramVec,
    /// `router`/`route_stream`/`OK`, the per-stanza series, resolved once.
    route_ok: Histogram,
}

impl std::fmt::Debug for GrpcClientMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GrpcClientMetrics")
            .finish_non_exhaustive()
    }
}

impl Default for GrpcClientMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl GrpcClientMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "starling_grpc_client_duration_seconds",
                "gRPC calls made by this process, from the call to its answer (every retry included), by service, method and gRPC status code",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["service", "method", "code"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let route_ok = duration.with_label_values(&["router", "route_stream", "OK"]);
        Ok(GrpcClientMetrics { duration, route_ok })
    }

    pub(crate) fn observe(
        &self,
        service: &'static str,
        method: &'static str,
        code: Code,
        elapsed: Duration,
    ) {
        if service == "router" && method == "route_stream" && code == Code::Ok {
            self.route_ok.observe(elapsed.as_secs_f64());
            return;
        }
        self.duration
            .with_label_values(&[service, method, code_label(code)])
            .observe(elapsed.as_secs_f64());
    }
}

/// The gRPC status code's name as the gRPC specification spells it.
pub(crate) fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_series() {
        let registry = Registry::new();
        let metrics = GrpcClientMetrics::register(&registry).unwrap();
        metrics.observe("router", "route_stream", Code::Ok, Duration::from_millis(2));
        metrics.observe(
            "storage",
            "credentials",
            Code::Unavailable,
            Duration::from_millis(7),
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains(
            "starling_grpc_client_duration_seconds_count{code=\"OK\",method=\"route_stream\",service=\"router\"} 1"
        ), "{text}");
        assert!(text.contains(
            "starling_grpc_client_duration_seconds_count{code=\"UNAVAILABLE\",method=\"credentials\",service=\"storage\"} 1"
        ), "{text}");
    }
}

/// The gRPC servers' metrics: `starling_grpc_server_duration_seconds{service,method,code}`,
/// one observation per unary call this process served, from the request to
/// its response (its `_count` is the number of calls handled). `RouteStream`
/// is not observed here (a stream lives for hours; the router's
/// `starling_router_route_duration_seconds` measures each stanza), nor are
/// unknown services and methods (so a client cannot make up label values).
/// Used as a tower layer of the tonic server.
#[derive(Clone)]
pub struct GrpcServerMetrics {
    duration: HistogramVec,
}

impl std::fmt::Debug for GrpcServerMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GrpcServerMetrics")
            .finish_non_exhaustive()
    }
}

impl Default for GrpcServerMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl GrpcServerMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "starling_grpc_server_duration_seconds",
                "Unary gRPC calls this process served, from the request to its response, by service, method and gRPC status code",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["service", "method", "code"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(GrpcServerMetrics { duration })
    }

    /// Observe a served call of `path` (`/starling.storage.v1.Storage/Credentials`)
    /// that answered with `grpc_status` (the header of a trailers-only error
    /// response; absent for a unary success).
    fn observe(&self, path: &str, grpc_status: Option<i32>, elapsed: Duration) {
        let Some((service, method)) = known_method(path) else {
            return;
        };
        let code = Code::from_i32(grpc_status.unwrap_or(0));
        if code == Code::Unimplemented {
            return;
        }
        self.duration
            .with_label_values(&[service, method, code_label(code)])
            .observe(elapsed.as_secs_f64());
    }
}

/// The service label and method of a path of one of our services, `None`
/// for anything else and for the route stream.
fn known_method(path: &str) -> Option<(&'static str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let service = match service {
        "starling.storage.v1.Storage" => "storage",
        "starling.router.v1.Router" => "router",
        "starling.presence.v1.Presence" => "presence",
        _ => return None,
    };
    let plausible = !method.is_empty()
        && method.len() <= 64
        && method.chars().all(|c| c.is_ascii_alphanumeric());
    (plausible && method != "RouteStream").then_some((service, method))
}

impl<S> tower_layer::Layer<S> for GrpcServerMetrics {
    type Service = MeteredGrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeteredGrpcService {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A tonic server's service stack, observed by [`GrpcServerMetrics`].
#[derive(Clone)]
pub struct MeteredGrpcService<S> {
    inner: S,
    metrics: GrpcServerMetrics,
}

type BoxedResponse<R, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<R, E>> + Send + 'static>>;

impl<S, RequestBody, ResponseBody>
    tonic::codegen::Service<tonic::codegen::http::Request<RequestBody>> for MeteredGrpcService<S>
where
    S: tonic::codegen::Service<
        tonic::codegen::http::Request<RequestBody>,
        Response = tonic::codegen::http::Response<ResponseBody>,
    >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxedResponse<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path().to_string();
        let started = std::time::Instant::now();
        let response = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = response.await;
            if let Ok(response) = &response {
                let grpc_status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse().ok());
                metrics.observe(&path, grpc_status, started.elapsed());
            }
            response
        })
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;

    #[test]
    fn only_known_unary_methods_are_labels() {
        assert_eq!(
            known_method("/starling.storage.v1.Storage/Credentials"),
            Some(("storage", "Credentials"))
        );
        assert_eq!(known_method("/starling.router.v1.Router/RouteStream"), None);
        assert_eq!(known_method("/evil.Service/Anything"), None);
        assert_eq!(known_method("/starling.router.v1.Router/a%20b"), None);
        assert_eq!(known_method("nonsense"), None);
        let registry = Registry::new();
        let metrics = GrpcServerMetrics::register(&registry).unwrap();
        metrics.observe(
            "/starling.router.v1.Router/Bind",
            None,
            Duration::from_millis(1),
        );
        metrics.observe(
            "/starling.router.v1.Router/Bind",
            Some(14),
            Duration::from_millis(1),
        );
        metrics.observe(
            "/starling.router.v1.Router/Nope",
            Some(12),
            Duration::from_millis(1),
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("starling_grpc_server_duration_seconds_count{code=\"OK\",method=\"Bind\",service=\"router\"} 1"), "{text}");
        assert!(text.contains("starling_grpc_server_duration_seconds_count{code=\"UNAVAILABLE\",method=\"Bind\",service=\"router\"} 1"), "{text}");
        assert!(!text.contains("Nope"), "{text}");
    }
}
