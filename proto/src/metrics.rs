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
