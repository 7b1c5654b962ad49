//! The bus's Prometheus metrics (docs/operations.md): envelopes published
//! (by whether a subscriber took them), publish failures, envelopes received
//! and envelopes dropped because they did not decode.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::buffer::BusBuffer;

/// The bus metrics; cheap to clone. [`BusMetrics::default`] counts into a
/// registry nobody scrapes.
#[derive(Clone)]
pub struct BusMetrics {
    published_delivered: IntCounter,
    published_unreached: IntCounter,
    publish_failures: IntCounter,
    received: IntCounter,
    invalid: IntCounter,
    buffer_bytes: IntGauge,
    refused: IntCounter,
}

impl std::fmt::Debug for BusMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("BusMetrics").finish_non_exhaustive()
    }
}

impl Default for BusMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl BusMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let published = IntCounterVec::new(
            Opts::new(
                "starling_bus_messages_published_total",
                "Delivery envelopes published on the bus, by result: delivered (a connection-manager subscribes to the channel) or no_subscriber (the node is gone)",
            ),
            &["result"],
        )?;
        let publish_failures = IntCounter::new(
            "starling_bus_publish_failures_total",
            "Bus publishes that failed (Redis unreachable or erroring); the router falls back to offline storage or an error",
        )?;
        let received = IntCounter::new(
            "starling_bus_messages_received_total",
            "Delivery envelopes received from the bus by this node",
        )?;
        let invalid = IntCounter::new(
            "starling_bus_messages_invalid_total",
            "Received delivery envelopes that did not decode or whose stanza did not parse under the configured limits (the stanza's sender is answered with an error)",
        )?;
        let buffer_bytes = IntGauge::new(
            "starling_bus_buffer_bytes",
            "Bytes of deliveries this node received from the bus and has not yet handed to its sessions (bounded by limits.bus_buffer_bytes)",
        )?;
        let refused = IntCounter::new(
            "starling_bus_messages_refused_total",
            "Stanza deliveries refused because this node's bus buffer was over limits.bus_buffer_bytes (the sender is answered with resource-constraint)",
        )?;
        registry.register(Box::new(buffer_bytes.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(publish_failures.clone()))?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(invalid.clone()))?;
        Ok(BusMetrics {
            published_delivered: published.with_label_values(&["delivered"]),
            published_unreached: published.with_label_values(&["no_subscriber"]),
            publish_failures,
            received,
            invalid,
            buffer_bytes,
            refused,
        })
    }

    /// The byte bound of what a node holds between the bus and its sessions.
    pub(crate) fn buffer(&self, limit: usize) -> BusBuffer {
        BusBuffer::new(limit, self.buffer_bytes.clone(), self.refused.clone())
    }

    /// Count a publish by its outcome (how many subscribers took it, or an error).
    pub(crate) fn published<E>(&self, outcome: &Result<usize, E>) {
        match outcome {
            Ok(0) => self.published_unreached.inc(),
            Ok(_) => self.published_delivered.inc(),
            Err(_) => self.publish_failures.inc(),
        }
    }

    pub(crate) fn received(&self) {
        self.received.inc();
    }

    pub(crate) fn invalid(&self) {
        self.invalid.inc();
    }
}
