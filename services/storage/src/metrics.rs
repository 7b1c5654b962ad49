//! The storage service's Prometheus metrics (docs/operations.md): database
//! latency by operation, and the offline queue (XEP-0160): messages stored
//! and delivered, messages taken per login, and how many wait in total.
//!
//! The operation label is the name of the query function (`credentials`,
//! `store_offline`, ...), a fixed set.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Buckets from 100 microseconds to 10 seconds (the pool's acquire timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Messages taken from one offline queue at once.
const QUEUE_LENGTH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
];

/// Every query operation, so that each series exists from the start.
pub(crate) const OPERATIONS: [&str; 14] = [
    "create_account",
    "set_credentials",
    "remove_account",
    "account_localparts",
    "credentials",
    "roster",
    "subscriptions",
    "put_roster_item",
    "remove_roster_item",
    "store_offline",
    "take_offline",
    "count_offline",
    "count_all_offline",
    "ping",
];

/// The storage metrics; cheap to clone. [`StorageMetrics::default`] counts
/// into a registry nobody scrapes.
#[derive(Clone)]
pub struct StorageMetrics {
    query_duration: HistogramVec,
    query_errors: IntCounterVec,
    offline_stored: IntCounter,
    offline_delivered: IntCounter,
    offline_per_login: Histogram,
    offline_queued: IntGauge,
    archive_messages: IntCounterVec,
}

impl std::fmt::Debug for StorageMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StorageMetrics")
            .finish_non_exhaustive()
    }
}

impl Default for StorageMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl StorageMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let query_duration = HistogramVec::new(
            HistogramOpts::new(
                "starling_db_query_duration_seconds",
                "Database operations of the storage service (one or more statements, pool wait included), by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )?;
        let query_errors = IntCounterVec::new(
            Opts::new(
                "starling_db_query_errors_total",
                "Database operations that failed (database unreachable, pool exhausted, query error), by operation; refusals such as a full queue are not errors",
            ),
            &["operation"],
        )?;
        let offline_stored = IntCounter::new(
            "starling_offline_messages_stored_total",
            "Messages stored in offline queues (XEP-0160)",
        )?;
        let offline_delivered = IntCounter::new(
            "starling_offline_messages_delivered_total",
            "Messages taken from offline queues for delivery to a session that became available",
        )?;
        let offline_per_login = Histogram::with_opts(
            HistogramOpts::new(
                "starling_offline_messages_per_login",
                "Messages taken from an account's offline queue in one page (pages of at most 256 KiB or 100 messages) when a session of it became available",
            )
            .buckets(QUEUE_LENGTH_BUCKETS.to_vec()),
        )?;
        let offline_queued = IntGauge::new(
            "starling_offline_messages_queued",
            "Messages waiting in all offline queues, counted in the database periodically by the storage service",
        )?;
        registry.register(Box::new(query_duration.clone()))?;
        registry.register(Box::new(query_errors.clone()))?;
        registry.register(Box::new(offline_stored.clone()))?;
        registry.register(Box::new(offline_delivered.clone()))?;
        registry.register(Box::new(offline_per_login.clone()))?;
        let archive_messages = IntCounterVec::new(
            Opts::new(
                "starling_archive_messages_total",
                "Messages added to archives (XEP-0313, event=\"added\"), removed as the oldest past mam.max_messages_per_account (\"evicted\") or past mam.retention_days (\"purged\")",
            ),
            &["event"],
        )?;
        registry.register(Box::new(offline_queued.clone()))?;
        registry.register(Box::new(archive_messages.clone()))?;
        for event in ["added", "evicted", "purged"] {
            archive_messages.with_label_values(&[event]);
        }
        for operation in OPERATIONS {
            query_duration.with_label_values(&[operation]);
            query_errors.with_label_values(&[operation]);
        }
        Ok(StorageMetrics {
            query_duration,
            query_errors,
            offline_stored,
            offline_delivered,
            offline_per_login,
            offline_queued,
            archive_messages,
        })
    }

    /// One database operation took `elapsed`; `failed` when the database failed it.
    pub(crate) fn query(&self, operation: &'static str, elapsed: Duration, failed: bool) {
        self.query_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
        if failed {
            self.query_errors.with_label_values(&[operation]).inc();
        }
    }

    pub(crate) fn offline_stored(&self) {
        self.offline_stored.inc();
    }

    /// A session's login took `count` messages from its offline queue.
    pub(crate) fn offline_taken(&self, count: usize) {
        self.offline_delivered
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        self.offline_per_login.observe(count as f64);
    }

    /// Archive rows `added`, `evicted` (quota) or `purged` (retention).
    pub(crate) fn archive(&self, event: &'static str, count: u64) {
        if count > 0 {
            self.archive_messages
                .with_label_values(&[event])
                .inc_by(count);
        }
    }

    pub(crate) fn set_offline_queued(&self, count: u64) {
        self.offline_queued
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}
