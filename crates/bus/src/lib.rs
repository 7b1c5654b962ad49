//! The delivery bus: how the router and the presence service hand stanzas to
//! the connection-manager that holds the recipient's stream (DESIGN.md,
//! `deliver:{node}`).
//!
//! One envelope is published per destination node, carrying every recipient
//! connection on that node, so a fan-out to 500 contacts costs one message per
//! node, not 500. The in-process implementation passes the parsed stanza; the
//! Redis one (cluster, `RedisBus`) carries a protobuf envelope around the
//! re-serialised stanza.

mod metrics;
mod redis;
#[cfg(test)]
mod redis_tests;

pub use metrics::BusMetrics;
pub use redis::{decode_delivery, encode_delivery, BusError, RedisBus};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::RwLock;
use starling_api::{ApiResult, ConnId};
use starling_xmpp::{Element, StreamErrorCondition};
use tokio::sync::mpsc;

/// One recipient connection of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub conn: ConnId,
    /// Rewrite the stanza's `to` for this recipient (presence broadcast to
    /// several contacts shares one envelope); `None` keeps the stanza's own.
    pub to: Option<String>,
}

impl Recipient {
    pub fn conn(conn: ConnId) -> Self {
        Recipient { conn, to: None }
    }
}

/// What a connection-manager is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Write the stanza to each recipient's stream.
    Stanza {
        recipients: Vec<Recipient>,
        stanza: Arc<Element>,
        /// When the sending connection-manager took the stanza from its
        /// client (`starling_api::origin_time`), for the end-to-end latency.
        routed_at: Option<SystemTime>,
    },
    /// Close a stream with a stream error (a replaced session gets `conflict`).
    Close {
        conn: ConnId,
        condition: StreamErrorCondition,
        text: Option<String>,
    },
    /// Drain the node (the admin API's DrainNode): not ready, no new
    /// connections, every stream closed with `<system-shutdown/>` (RFC 6120
    /// section 4.9.3.20) spread over `window`; `None`: the node's configured window.
    Drain { window: Option<std::time::Duration> },
}

/// The receiving end a connection-manager reads its deliveries from.
pub type DeliveryReceiver = mpsc::UnboundedReceiver<Delivery>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish to a node's delivery channel; returns how many subscribers got
    /// it (0 means nobody holds that node: the caller falls back to offline storage).
    async fn publish(&self, node: &str, delivery: Delivery) -> ApiResult<usize>;
    /// Subscribe to a node's delivery channel. One subscriber per node.
    async fn subscribe(&self, node: &str) -> ApiResult<DeliveryReceiver>;
}

/// The bus of `starling serve`: an unbounded channel per node inside one process.
/// Bounding happens per connection, in the connection-manager's outbound queue.
#[derive(Default, Clone)]
pub struct InProcessBus {
    channels: Arc<RwLock<HashMap<String, mpsc::UnboundedSender<Delivery>>>>,
    metrics: BusMetrics,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count publishes and receptions in `metrics`.
    pub fn with_metrics(mut self, metrics: BusMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, node: &str, delivery: Delivery) -> ApiResult<usize> {
        let sender = self.channels.read().get(node).cloned();
        let outcome = match sender {
            Some(sender) if sender.send(delivery).is_ok() => {
                self.metrics.received();
                Ok(1)
            }
            Some(_) => {
                self.channels.write().remove(node);
                Ok(0)
            }
            None => Ok(0),
        };
        self.metrics.published(&outcome);
        outcome
    }

    async fn subscribe(&self, node: &str) -> ApiResult<DeliveryReceiver> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.channels.write().insert(node.to_string(), sender);
        Ok(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::ns;

    #[tokio::test]
    async fn publishes_to_the_subscribed_node_only() {
        let bus = InProcessBus::new();
        let mut receiver = bus.subscribe("cm1").await.unwrap();
        let delivery = Delivery::Stanza {
            recipients: vec![Recipient::conn(7)],
            stanza: Arc::new(Element::new("message", ns::CLIENT)),
            routed_at: None,
        };
        assert_eq!(bus.publish("cm1", delivery.clone()).await.unwrap(), 1);
        assert_eq!(bus.publish("cm2", delivery.clone()).await.unwrap(), 0);
        assert_eq!(receiver.recv().await, Some(delivery));
    }

    #[test]
    fn a_drain_round_trips_through_its_envelope() {
        let limits = starling_xmpp::Limits::default();
        for delivery in [
            Delivery::Drain {
                window: Some(std::time::Duration::from_secs(30)),
            },
            Delivery::Drain { window: None },
        ] {
            let decoded = decode_delivery(&encode_delivery(&delivery), &limits).unwrap();
            assert_eq!(decoded, delivery);
        }
    }

    #[tokio::test]
    async fn publishes_are_counted_by_result() {
        let registry = prometheus::Registry::new();
        let bus = InProcessBus::new().with_metrics(BusMetrics::register(&registry).unwrap());
        let _receiver = bus.subscribe("cm1").await.unwrap();
        let delivery = Delivery::Close {
            conn: 1,
            condition: StreamErrorCondition::Conflict,
            text: None,
        };
        bus.publish("cm1", delivery.clone()).await.unwrap();
        bus.publish("cm1", delivery.clone()).await.unwrap();
        bus.publish("gone", delivery).await.unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for expected in [
            "starling_bus_messages_published_total{result=\"delivered\"} 2",
            "starling_bus_messages_published_total{result=\"no_subscriber\"} 1",
            "starling_bus_messages_received_total 2",
            "starling_bus_publish_failures_total 0",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_dropped_subscriber_counts_as_none() {
        let bus = InProcessBus::new();
        drop(bus.subscribe("cm1").await.unwrap());
        let delivery = Delivery::Close {
            conn: 1,
            condition: StreamErrorCondition::Conflict,
            text: None,
        };
        assert_eq!(bus.publish("cm1", delivery).await.unwrap(), 0);
    }
}
