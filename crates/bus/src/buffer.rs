//! What a node holds between the bus and its sessions, bounded in bytes
//! (`limits.bus_buffer_bytes`, issue 18).
//!
//! A connection-manager's dispatcher never waits on a client (it hands each
//! stanza to a bounded per-connection queue), so deliveries pile up here only
//! when the process cannot keep up at all: a CPU-starved node, a flood from
//! many senders at once. Redis pub/sub offers no backpressure that keeps
//! messages (a subscriber that stops reading is disconnected by Redis and
//! loses everything in its output buffer), so past the bound a stanza delivery
//! is not kept: it becomes [`Delivery::Undecodable`] with `resource-constraint`
//! (RFC 6120 section 8.3.3.18, "the server ... lacks the system resources
//! necessary to service the request"), and the connection-manager answers its
//! sender through the router, as for any stanza it cannot deliver. Stream
//! closes and drains always pass: they are small and must not be lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};
use starling_xmpp::{Element, StanzaError, StanzaErrorCondition};

use crate::Delivery;

/// The default of `limits.bus_buffer_bytes`.
pub const DEFAULT_BUS_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// The bytes of deliveries received and not yet taken by the node's
/// dispatcher; cheap to clone (all clones count together).
#[derive(Clone, Debug)]
pub struct BusBuffer {
    limit: usize,
    held: Arc<AtomicUsize>,
    gauge: IntGauge,
    refused: IntCounter,
}

impl BusBuffer {
    pub(crate) fn new(limit: usize, gauge: IntGauge, refused: IntCounter) -> Self {
        BusBuffer {
            limit,
            held: Arc::default(),
            gauge,
            refused,
        }
    }

    /// Count `bytes` more as held.
    pub(crate) fn hold(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
        self.gauge.add(bytes as i64);
    }

    /// `bytes` held before are no longer.
    pub(crate) fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.gauge.sub(bytes as i64);
    }

    /// Whether what is held (this delivery's bytes included) is past the bound.
    pub(crate) fn is_over(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.limit
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A stanza delivery that arrived while the buffer was over its bound:
    /// what its sender is told. `head` is the stanza's start tag (kind and
    /// addresses), `None` when it could not be read.
    pub(crate) fn refuse(&self, head: Option<Element>) -> Delivery {
        self.refused.inc();
        tracing::warn!(
            held = self.held(),
            limit = self.limit,
            stanza = head.as_ref().map(|head| head.name()),
            "bus buffer over limits.bus_buffer_bytes, answering the sender with resource-constraint"
        );
        Delivery::Undecodable {
            stanza: head,
            error: StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_text("the recipient's server is overloaded, try again later"),
        }
    }
}

/// A delivery in the node's channel with the bytes it holds.
#[derive(Debug)]
pub(crate) struct Buffered<T> {
    pub(crate) item: T,
    pub(crate) bytes: usize,
}
