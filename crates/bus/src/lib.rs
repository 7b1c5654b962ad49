//! The delivery bus: how the router and the presence service hand stanzas to
//! the connection-manager that holds the recipient's stream (DESIGN.md,
//! `deliver:{node}`).
//!
//! One envelope is published per destination node, carrying every recipient
//! connection on that node, so a fan-out to 500 contacts costs one message per
//! node, not 500. The in-process implementation passes the parsed stanza; the
//! Redis one (cluster, `RedisBus`) carries a protobuf envelope around the
//! re-serialised stanza.
//!
//! Each envelope carries the trace context of the `bus.publish` span that
//! sent it (in the protobuf envelope on Redis, beside the delivery in
//! process), so that the receiving connection-manager's span joins the trace.
//!
//! [`deliver_to_sessions`] is the one way a stanza reaches connection-managers
//! from the router and the presence service: it groups the target sessions by
//! node and publishes one envelope per node.

pub mod blocklists;
mod buffer;
mod delivery;
mod metrics;
mod redis;
#[cfg(test)]
mod redis_tests;

pub use blocklists::{BlockDirection, BlockingMetrics, Blocklists};
pub use buffer::{BusBuffer, DEFAULT_BUS_BUFFER_BYTES};
pub use delivery::{deliver_to_session, deliver_to_sessions};
pub use metrics::BusMetrics;
pub use redis::{
    decode_delivery, decode_envelope, encode_delivery, encode_envelope, BusError, RedisBus,
};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::RwLock;
use starling_api::{ApiResult, ConnId, ResumptionStore};
use starling_telemetry::{TraceContext, SPAN_TARGET};
use starling_xmpp::{Element, StanzaError, StreamErrorCondition};
use tokio::sync::mpsc;

use crate::buffer::Buffered;

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
    /// A stanza delivery that arrived but did not decode on this node (its
    /// stanza broke the receiving parser's limits, or the envelope was damaged).
    /// Made by a receiving bus, never published: the connection-manager answers
    /// the stanza's sender with `error` (RFC 6120 section 8.3.1) through the
    /// router, so that nothing is dropped without a word. `stanza` is the
    /// stanza's start tag (kind and addresses), when it could be read.
    Undecodable {
        stanza: Option<Element>,
        error: StanzaError,
    },
}

impl Delivery {
    fn kind(&self) -> &'static str {
        match self {
            Delivery::Stanza { .. } => "stanza",
            Delivery::Close { .. } => "close",
            Delivery::Drain { .. } => "drain",
            Delivery::Undecodable { .. } => "undecodable",
        }
    }

    fn recipient_count(&self) -> usize {
        match self {
            Delivery::Stanza { recipients, .. } => recipients.len(),
            Delivery::Close { .. } => 1,
            Delivery::Drain { .. } | Delivery::Undecodable { .. } => 0,
        }
    }
}

/// A delivery as received, with the trace context of its publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedDelivery {
    pub delivery: Delivery,
    /// The `bus.publish` span's context; empty when tracing is off.
    pub trace_context: TraceContext,
}

/// The receiving end a connection-manager reads its deliveries from. What
/// waits in it counts against the node's [`BusBuffer`] until it is taken.
#[derive(Debug)]
pub struct DeliveryReceiver {
    receiver: mpsc::UnboundedReceiver<Buffered<TracedDelivery>>,
    buffer: BusBuffer,
}

impl DeliveryReceiver {
    fn new(receiver: mpsc::UnboundedReceiver<Buffered<TracedDelivery>>, buffer: BusBuffer) -> Self {
        DeliveryReceiver { receiver, buffer }
    }

    fn taken(&self, buffered: Buffered<TracedDelivery>) -> TracedDelivery {
        self.buffer.release(buffered.bytes);
        buffered.item
    }

    /// The next delivery with its publisher's trace context; `None` once the bus is gone.
    pub async fn recv_traced(&mut self) -> Option<TracedDelivery> {
        let buffered = self.receiver.recv().await?;
        Some(self.taken(buffered))
    }

    /// The next delivery; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.recv_traced().await.map(|traced| traced.delivery)
    }

    /// A delivery if one is waiting.
    pub fn try_recv(&mut self) -> Result<Delivery, mpsc::error::TryRecvError> {
        let buffered = self.receiver.try_recv()?;
        Ok(self.taken(buffered).delivery)
    }
}

impl Drop for DeliveryReceiver {
    fn drop(&mut self) {
        // What was never taken is held no more.
        self.receiver.close();
        while let Ok(buffered) = self.receiver.try_recv() {
            self.buffer.release(buffered.bytes);
        }
    }
}

/// The start tag of a stanza (its kind and addresses): what a refused
/// delivery keeps to answer the sender.
fn stanza_head(stanza: &Element) -> Element {
    let mut head = Element::new(stanza.name(), stanza.namespace());
    for (name, value) in stanza.attrs() {
        head.set_attr(name, value);
    }
    head
}

/// The `bus.publish` span (a producer, in OpenTelemetry terms) and the trace
/// context the envelope carries: the receiver's span becomes its child.
fn publish_span(
    bus: &'static str,
    node: &str,
    delivery: &Delivery,
) -> (tracing::Span, TraceContext) {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "bus.publish",
        otel.kind = "producer",
        bus.system = bus,
        bus.node = node,
        delivery.kind = delivery.kind(),
        delivery.recipients = delivery.recipient_count(),
        bus.receivers = tracing::field::Empty,
    );
    let trace_context = TraceContext::of(&span);
    (span, trace_context)
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish to a node's delivery channel; returns how many subscribers got
    /// it (0 means nobody holds that node: the caller falls back to offline storage).
    async fn publish(&self, node: &str, delivery: Delivery) -> ApiResult<usize>;
    /// Subscribe to a node's delivery channel. One subscriber per node.
    async fn subscribe(&self, node: &str) -> ApiResult<DeliveryReceiver>;
    /// [`Bus::publish`], also recording, for each `(resumption id, stanza)` of
    /// `in_flight`, that the stanza is in flight to that stream's node (see
    /// `starling_api::resumption`). In one process nothing is ever in flight
    /// to a dead node: a plain publish.
    async fn publish_in_flight(
        &self,
        node: &str,
        delivery: Delivery,
        in_flight: &[(&str, String)],
    ) -> ApiResult<usize> {
        let _ = in_flight;
        self.publish(node, delivery).await
    }
    /// Whether a node reads its delivery channel now (its process is alive
    /// and subscribed): a killed node's subscription is gone at once, long
    /// before its liveness key expires.
    async fn is_listening(&self, node: &str) -> ApiResult<bool> {
        let _ = node;
        Ok(true)
    }
    /// Where stanzas for detached resumable streams (XEP-0198) are parked;
    /// `None` when stream resumption is off.
    fn resumption(&self) -> Option<&dyn ResumptionStore> {
        None
    }
}

/// The bus of `starling serve`: a channel per node inside one process,
/// bounded in bytes by the process's [`BusBuffer`] (each stanza counted at
/// its serialised size); each connection is bounded again in the
/// connection-manager's outbound queue.
#[derive(Clone)]
pub struct InProcessBus {
    channels: Arc<RwLock<HashMap<String, mpsc::UnboundedSender<Buffered<TracedDelivery>>>>>,
    metrics: BusMetrics,
    buffer_limit: usize,
    buffer: BusBuffer,
    resumption: Option<Arc<dyn ResumptionStore>>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        let metrics = BusMetrics::default();
        InProcessBus {
            channels: Arc::default(),
            buffer: metrics.buffer(DEFAULT_BUS_BUFFER_BYTES),
            buffer_limit: DEFAULT_BUS_BUFFER_BYTES,
            metrics,
            resumption: None,
        }
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count publishes and receptions in `metrics`.
    pub fn with_metrics(mut self, metrics: BusMetrics) -> Self {
        self.buffer = metrics.buffer(self.buffer_limit);
        self.metrics = metrics;
        self
    }

    /// Hold at most `limit` bytes of deliveries not yet taken
    /// (`limits.bus_buffer_bytes`).
    pub fn with_buffer_limit(mut self, limit: usize) -> Self {
        self.buffer_limit = limit;
        self.buffer = self.metrics.buffer(limit);
        self
    }

    /// Park stanzas for detached resumable streams in `store`.
    pub fn with_resumption(mut self, store: Arc<dyn ResumptionStore>) -> Self {
        self.resumption = Some(store);
        self
    }
}

impl InProcessBus {
    /// `delivery` counted against the buffer, or its refusal when the buffer
    /// is over its bound (a stanza counts at its serialised size; what the
    /// channel is sent but never taken is released by the receiver's drop).
    fn buffered(
        &self,
        delivery: Delivery,
        trace_context: TraceContext,
    ) -> Buffered<TracedDelivery> {
        let (delivery, bytes) = match delivery {
            Delivery::Stanza { ref stanza, .. } => {
                let bytes = stanza.stanza_xml_len();
                self.buffer.hold(bytes);
                if self.buffer.is_over() {
                    self.buffer.release(bytes);
                    (self.buffer.refuse(Some(stanza_head(stanza))), 0)
                } else {
                    (delivery, bytes)
                }
            }
            other => (other, 0),
        };
        Buffered {
            item: TracedDelivery {
                delivery,
                trace_context,
            },
            bytes,
        }
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, node: &str, delivery: Delivery) -> ApiResult<usize> {
        let (span, trace_context) = publish_span("in_process", node, &delivery);
        let sender = self.channels.read().get(node).cloned();
        let receivers = match sender {
            Some(sender) => match sender.send(self.buffered(delivery, trace_context)) {
                Ok(()) => {
                    self.metrics.received();
                    1
                }
                Err(mpsc::error::SendError(lost)) => {
                    self.buffer.release(lost.bytes);
                    self.channels.write().remove(node);
                    0
                }
            },
            None => 0,
        };
        span.record("bus.receivers", receivers);
        let outcome: ApiResult<usize> = Ok(receivers);
        self.metrics.published(&outcome);
        outcome
    }

    async fn subscribe(&self, node: &str) -> ApiResult<DeliveryReceiver> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.channels.write().insert(node.to_string(), sender);
        Ok(DeliveryReceiver::new(receiver, self.buffer.clone()))
    }

    fn resumption(&self) -> Option<&dyn ResumptionStore> {
        self.resumption.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::ns;
    use tracing::Instrument;

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

    #[tokio::test(flavor = "current_thread")]
    async fn the_envelope_carries_the_publish_span_as_parent_of_the_receiver() {
        use starling_telemetry::testing::recording;
        use starling_telemetry::TRACEPARENT;

        let (recorded, subscriber) = recording();
        let _default = tracing::subscriber::set_default(subscriber);
        let bus = InProcessBus::new();
        let mut receiver = bus.subscribe("cm1").await.unwrap();
        let delivery = Delivery::Stanza {
            recipients: vec![Recipient::conn(7), Recipient::conn(8)],
            stanza: Arc::new(Element::new("message", ns::CLIENT)),
            routed_at: None,
        };
        let router = tracing::info_span!(target: SPAN_TARGET, "test.route");
        bus.publish("cm1", delivery.clone())
            .instrument(router.clone())
            .await
            .unwrap();
        drop(router);
        let traced = receiver.recv_traced().await.unwrap();
        assert_eq!(traced.delivery, delivery);
        let publish = recorded.span("bus.publish");
        assert_eq!(
            publish.parent_span_id,
            recorded.span("test.route").span_context.span_id()
        );
        assert_eq!(
            traced.trace_context.get(TRACEPARENT).unwrap(),
            format!(
                "00-{}-{}-01",
                publish.span_context.trace_id(),
                publish.span_context.span_id()
            )
        );
        let attribute = |key: &str| {
            publish
                .attributes
                .iter()
                .find(|attribute| attribute.key.as_str() == key)
                .map(|attribute| attribute.value.to_string())
        };
        assert_eq!(attribute("bus.node").as_deref(), Some("cm1"));
        assert_eq!(attribute("delivery.recipients").as_deref(), Some("2"));
        assert_eq!(attribute("bus.receivers").as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn past_the_buffer_bound_a_stanza_becomes_a_resource_constraint_refusal() {
        let bus = InProcessBus::new().with_buffer_limit(600);
        let mut receiver = bus.subscribe("cm1").await.unwrap();
        let message = |index: usize| Delivery::Stanza {
            recipients: vec![Recipient::conn(7)],
            stanza: Arc::new(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", "a@example.com/pc")
                    .with_attr("id", format!("m{index}"))
                    .with_child(Element::new("body", ns::CLIENT).with_text("x".repeat(200))),
            ),
            routed_at: None,
        };
        for index in 0..5 {
            assert_eq!(bus.publish("cm1", message(index)).await.unwrap(), 1);
        }
        assert!(bus.buffer.held() <= 600);
        // A close always passes.
        let close = Delivery::Close {
            conn: 7,
            condition: StreamErrorCondition::Conflict,
            text: None,
        };
        bus.publish("cm1", close.clone()).await.unwrap();
        for index in 0..2 {
            assert_eq!(receiver.recv().await.unwrap(), message(index));
        }
        for index in 2..5 {
            let Some(Delivery::Undecodable { stanza, error }) = receiver.recv().await else {
                panic!("a refusal expected");
            };
            assert_eq!(
                error.condition,
                starling_xmpp::StanzaErrorCondition::ResourceConstraint
            );
            assert_eq!(
                stanza.unwrap().to_xml(),
                format!("<message xmlns='jabber:client' from='a@example.com/pc' id='m{index}'/>")
            );
        }
        assert_eq!(receiver.recv().await.unwrap(), close);
        assert_eq!(bus.buffer.held(), 0);
        // What a dropped receiver never took is released.
        bus.publish("cm1", message(9)).await.unwrap();
        assert!(bus.buffer.held() > 0);
        drop(receiver);
        assert_eq!(bus.buffer.held(), 0);
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
