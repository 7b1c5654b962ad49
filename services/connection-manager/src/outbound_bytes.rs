//! The byte bound of the outbound queues (issue 18): a connection's queue is
//! bounded in stanzas (`limits.outbound_queue_stanzas`) and in bytes
//! (`limits.outbound_queue_bytes`), and all the queues of the node together
//! in bytes (`limits.outbound_queue_bytes_total`), so that clients that stop
//! reading while large stanzas come cannot make the node hold more than that.
//!
//! A stanza counts its re-serialised size (`Element::stanza_xml_len`) from
//! the moment it enters a connection's queue until the writer has written
//! it: the writer's batch is held too. A connection that holds nothing is
//! always given one stanza, however large (a stanza is at most
//! `limits.max_stanza_bytes`), so a reader that keeps up is never refused.
//! Past the bound the push is refused like a full queue: the stream ends
//! with `<policy-violation/>` and what it did not get is rerouted
//! (`crate::outbound`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

/// The byte bound one connection's queue is held to, and the node's total.
#[derive(Clone)]
pub(crate) struct OutboundBytes {
    per_connection: usize,
    node: Arc<NodeBytes>,
}

/// The bytes held by every outbound queue of the node.
struct NodeBytes {
    held: AtomicUsize,
    max: usize,
    /// `starling_outbound_queue_bytes`.
    gauge: IntGauge,
    /// `starling_limits_hit_total{limit="outbound_queue_bytes"}`.
    refused: IntCounter,
}

impl OutboundBytes {
    pub fn new(
        per_connection: usize,
        node_total: usize,
        gauge: IntGauge,
        refused: IntCounter,
    ) -> Self {
        OutboundBytes {
            per_connection,
            node: Arc::new(NodeBytes {
                held: AtomicUsize::new(0),
                max: node_total,
                gauge,
                refused,
            }),
        }
    }

    /// No byte bound (unit tests of the queue's other rules).
    #[cfg(test)]
    pub fn unbounded() -> Self {
        Self::new(
            usize::MAX,
            usize::MAX,
            IntGauge::new("unused", "unused").expect("a valid gauge"),
            IntCounter::new("unused", "unused").expect("a valid counter"),
        )
    }

    /// The bound of one connection.
    pub fn per_connection(&self) -> usize {
        self.per_connection
    }

    /// Whether a connection that holds `held` bytes may take `size` more.
    pub fn admits(&self, held: usize, size: usize) -> bool {
        if held == 0 {
            return true;
        }
        let node_held = self.node.held.load(Ordering::Relaxed);
        let fits = held.saturating_add(size) <= self.per_connection
            && node_held.saturating_add(size) <= self.node.max;
        if !fits {
            self.node.refused.inc();
        }
        fits
    }

    /// `size` bytes entered a queue.
    pub fn hold(&self, size: usize) {
        self.node.held.fetch_add(size, Ordering::Relaxed);
        self.node.gauge.add(gauge_value(size));
    }

    /// `size` bytes left a queue (written, or the connection is gone).
    pub fn release(&self, size: usize) {
        if size == 0 {
            return;
        }
        self.node.held.fetch_sub(size, Ordering::Relaxed);
        self.node.gauge.sub(gauge_value(size));
    }
}

fn gauge_value(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stanza_always_fits_then_the_bounds_hold() {
        let bytes = OutboundBytes::new(
            1000,
            1500,
            IntGauge::new("g", "g").unwrap(),
            IntCounter::new("c", "c").unwrap(),
        );
        assert!(bytes.admits(0, 5000), "an empty queue takes any stanza");
        assert!(bytes.admits(600, 400));
        assert!(!bytes.admits(600, 401), "over the connection's bound");
        bytes.hold(1300);
        assert!(!bytes.admits(100, 250), "over the node's bound");
        bytes.release(1300);
        assert!(bytes.admits(100, 250));
        assert_eq!(bytes.node.refused.get(), 2);
        assert_eq!(bytes.node.gauge.get(), 0);
    }
}
