//! Redis latency as Prometheus metrics (docs/operations.md):
//! `starling_redis_operation_duration_seconds{operation}` (each operation of
//! the registry, with all its round trips, and each bus publish) and
//! `starling_redis_operation_errors_total{operation}`.
//!
//! The operations are a fixed list; their handles are resolved once, so
//! timing an operation costs two atomic updates.

use std::future::Future;
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// Buckets from 100 microseconds to 5 seconds (the response timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// One Redis operation of the routing state (the `operation` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOperation {
    /// Bind a resource: the node index, then the atomic bind script.
    Bind,
    /// Unbind a resource: the unbind script, then the node index.
    Unbind,
    /// Every session of an account (`HGETALL sess:{bare}`).
    Sessions,
    /// One session (`HGET sess:{bare} resource`).
    Session,
    /// The presence fields of a session (script).
    SetPresence,
    /// Mark a session interested in roster pushes (script).
    SetInterested,
    /// Enable or disable Message Carbons for a session (script).
    SetCarbons,
    /// Record or forget directed presence (`SADD`/`SREM`).
    SetDirectedPresence,
    /// Take the directed presence set (script).
    TakeDirectedPresence,
    /// The sessions of one node (index, then one lookup per entry).
    NodeSessions,
    /// Write a node's sessions back after Redis lost them.
    Reregister,
    /// A bus publish (`PUBLISH`/`SPUBLISH deliver:{node}`).
    Publish,
    /// A node's liveness refresh (script on `node:{id}`).
    LivenessRefresh,
    /// Mark a session resumable, or move it (detach, resume) (scripts).
    Relocate,
    /// Stream resumption state (XEP-0198): enable, journal, park, detach,
    /// resume, end, expiry (scripts on `smres:{id}` and `smq:{id}`).
    Resumption,
}

impl RedisOperation {
    const ALL: [RedisOperation; 15] = [
        RedisOperation::Bind,
        RedisOperation::Unbind,
        RedisOperation::Sessions,
        RedisOperation::Session,
        RedisOperation::SetPresence,
        RedisOperation::SetInterested,
        RedisOperation::SetCarbons,
        RedisOperation::SetDirectedPresence,
        RedisOperation::TakeDirectedPresence,
        RedisOperation::NodeSessions,
        RedisOperation::Reregister,
        RedisOperation::Publish,
        RedisOperation::LivenessRefresh,
        RedisOperation::Relocate,
        RedisOperation::Resumption,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RedisOperation::Bind => "bind",
            RedisOperation::Unbind => "unbind",
            RedisOperation::Sessions => "sessions",
            RedisOperation::Session => "session",
            RedisOperation::SetPresence => "set_presence",
            RedisOperation::SetInterested => "set_interested",
            RedisOperation::SetCarbons => "set_carbons",
            RedisOperation::SetDirectedPresence => "set_directed_presence",
            RedisOperation::TakeDirectedPresence => "take_directed_presence",
            RedisOperation::NodeSessions => "node_sessions",
            RedisOperation::Reregister => "reregister",
            RedisOperation::Publish => "publish",
            RedisOperation::LivenessRefresh => "liveness_refresh",
            RedisOperation::Relocate => "relocate",
            RedisOperation::Resumption => "resumption",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|operation| *operation == self)
            .unwrap_or(0)
    }
}

/// The Redis metrics; cheap to clone. [`RedisMetrics::default`] counts into
/// a registry nobody scrapes.
#[derive(Clone)]
pub struct RedisMetrics {
    durations: [Histogram; 15],
    errors: [IntCounter; 15],
}

impl std::fmt::Debug for RedisMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisMetrics")
            .finish_non_exhaustive()
    }
}

impl Default for RedisMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl RedisMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "starling_redis_operation_duration_seconds",
                "Redis operations of the routing state and the bus, from the first command to the last answer, by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "starling_redis_operation_errors_total",
                "Redis operations that failed (unreachable, timeout, error reply), by operation",
            ),
            &["operation"],
        )?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(RedisMetrics {
            durations: RedisOperation::ALL
                .map(|operation| durations.with_label_values(&[operation.label()])),
            errors: RedisOperation::ALL
                .map(|operation| errors.with_label_values(&[operation.label()])),
        })
    }

    /// Run `operation`'s future and observe its duration, and its failure if it fails.
    pub async fn time<T, E>(
        &self,
        operation: RedisOperation,
        future: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = future.await;
        let index = operation.index();
        self.durations[index].observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors[index].inc();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn times_operations_and_counts_failures() {
        let registry = Registry::new();
        let metrics = RedisMetrics::register(&registry).unwrap();
        let ok: Result<u8, ()> = metrics.time(RedisOperation::Bind, async { Ok(1) }).await;
        assert_eq!(ok, Ok(1));
        let failed: Result<u8, &str> = metrics
            .time(RedisOperation::Publish, async { Err("down") })
            .await;
        assert_eq!(failed, Err("down"));
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("starling_redis_operation_duration_seconds_count{operation=\"bind\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "starling_redis_operation_duration_seconds_count{operation=\"publish\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("starling_redis_operation_errors_total{operation=\"publish\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("starling_redis_operation_errors_total{operation=\"bind\"} 0"),
            "{text}"
        );
    }
}
