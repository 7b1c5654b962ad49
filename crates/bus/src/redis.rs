//! The Redis delivery bus of the cluster (DESIGN.md "Redis layout",
//! `deliver:{node}`): one channel per connection-manager, PUBLISH/SUBSCRIBE
//! on one Redis server, sharded SPUBLISH/SSUBSCRIBE in Redis Cluster.
//!
//! Payloads are `starling.bus.v1.Delivery` protobuf envelopes. A stanza
//! travels re-serialised from its parsed form and is parsed again by the
//! receiving node under the stream limits: raw client bytes never cross the
//! bus (the "stanza smuggling" class of bugs, DESIGN.md). An envelope that does
//! not decode, or whose stanza does not parse, is dropped with a warning.
//! Pub/sub is at-most-once: the router keeps what matters elsewhere
//! (DESIGN.md "Delivery guarantees").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use prost::Message;
use starling_api::{origin_time, ApiError, ApiResult};
use starling_proto::bus::v1 as proto;
use starling_redis_client::redis::{PushInfo, PushKind, Value};
use starling_redis_client::{RedisClient, RedisError, RedisSubscriber};
use starling_telemetry::TraceContext;
use starling_xmpp::{
    parse_element, parse_start_tag, Limits, ParseError, StanzaError, StanzaErrorCondition,
    StanzaKind, StreamErrorCondition,
};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::buffer::{Buffered, BusBuffer};
use crate::{publish_span, Bus, BusMetrics, Delivery, DeliveryReceiver, Recipient, TracedDelivery};

/// The errors of the Redis bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("delivery envelope does not decode: {0}")]
    Envelope(#[from] prost::DecodeError),
    #[error("delivery envelope is invalid: {0}")]
    InvalidEnvelope(String),
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        match &error {
            BusError::Redis(redis_error) if redis_error.is_unavailable() => {
                ApiError::Unavailable(error.to_string())
            }
            _ => ApiError::Internal(error.to_string()),
        }
    }
}

/// The protobuf envelope of a delivery, without trace context.
pub fn encode_delivery(delivery: &Delivery) -> Vec<u8> {
    encode_envelope(delivery, &TraceContext::empty())
}

/// The protobuf envelope of a delivery and its publisher's trace context
/// (`Delivery.trace_context`). The stanza is serialised declaring its own
/// namespace (`jabber:client`), so that it parses standalone.
pub fn encode_envelope(delivery: &Delivery, trace_context: &TraceContext) -> Vec<u8> {
    let mut routed_at_unix_micros = 0;
    let kind = match delivery {
        Delivery::Stanza {
            recipients,
            stanza,
            routed_at,
        } => {
            routed_at_unix_micros = origin_time::to_unix_micros(*routed_at);
            proto::delivery::Kind::Stanza(proto::StanzaDelivery {
                recipients: recipients
                    .iter()
                    .map(|recipient| proto::Recipient {
                        conn: recipient.conn,
                        to: recipient.to.clone(),
                    })
                    .collect(),
                stanza: stanza.to_xml(),
            })
        }
        Delivery::Close {
            conn,
            condition,
            text,
        } => proto::delivery::Kind::Close(proto::CloseStream {
            conn: *conn,
            condition: condition.as_str().to_string(),
            text: text.clone(),
        }),
        Delivery::Drain { window } => proto::delivery::Kind::Drain(proto::DrainNode {
            window_seconds: window
                .map(|window| window.as_secs().clamp(1, u64::from(u32::MAX)) as u32)
                .unwrap_or(0),
        }),
        // Made by a receiver, never published (RedisBus::publish refuses it):
        // an envelope without a delivery, which a receiver counts as invalid.
        Delivery::Undecodable { .. } => {
            return proto::Delivery::default().encode_to_vec();
        }
    };
    proto::Delivery {
        kind: Some(kind),
        routed_at_unix_micros,
        trace_context: trace_context
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    }
    .encode_to_vec()
}

/// Decode an envelope, parsing its stanza under `limits`.
pub fn decode_delivery(payload: &[u8], limits: &Limits) -> Result<Delivery, BusError> {
    decode_envelope(payload, limits).map(|traced| traced.delivery)
}

/// Decode an envelope with its trace context, parsing its stanza under `limits`.
pub fn decode_envelope(payload: &[u8], limits: &Limits) -> Result<TracedDelivery, BusError> {
    let envelope = proto::Delivery::decode(payload)?;
    let routed_at = origin_time::from_unix_micros(envelope.routed_at_unix_micros);
    let delivery = delivery_from_proto(envelope.kind, routed_at, limits)?;
    Ok(TracedDelivery {
        delivery,
        trace_context: TraceContext::from_map(envelope.trace_context),
    })
}

fn delivery_from_proto(
    kind: Option<proto::delivery::Kind>,
    routed_at: Option<std::time::SystemTime>,
    limits: &Limits,
) -> Result<Delivery, BusError> {
    match kind {
        Some(proto::delivery::Kind::Stanza(stanza_delivery)) => {
            if stanza_delivery.recipients.is_empty() {
                return Err(BusError::InvalidEnvelope(
                    "stanza delivery without recipients".into(),
                ));
            }
            let stanza = match parse_element(stanza_delivery.stanza.as_bytes(), limits) {
                Ok(stanza) => stanza,
                Err(error) => {
                    return Ok(undecodable_stanza(&stanza_delivery.stanza, &error, limits))
                }
            };
            let recipients = stanza_delivery
                .recipients
                .into_iter()
                .map(|recipient| Recipient {
                    conn: recipient.conn,
                    to: recipient.to,
                })
                .collect();
            Ok(Delivery::Stanza {
                recipients,
                stanza: Arc::new(stanza),
                routed_at,
            })
        }
        Some(proto::delivery::Kind::Close(close)) => {
            // RFC 6120 section 4.9.3: an unknown condition still closes the stream.
            let condition = StreamErrorCondition::from_name(&close.condition).unwrap_or_else(|| {
                tracing::warn!(condition = %close.condition, "unknown stream error condition in a close delivery");
                StreamErrorCondition::UndefinedCondition
            });
            Ok(Delivery::Close {
                conn: close.conn,
                condition,
                text: close.text,
            })
        }
        Some(proto::delivery::Kind::Drain(drain)) => Ok(Delivery::Drain {
            window: (drain.window_seconds > 0)
                .then(|| Duration::from_secs(drain.window_seconds.into())),
        }),
        None => Err(BusError::InvalidEnvelope(
            "envelope without a delivery".into(),
        )),
    }
}

/// A stanza delivery whose stanza does not parse under this node's limits:
/// what its sender is to be told (RFC 6120 section 8.3.3.12 `policy-violation`
/// for a stanza over the size or depth limits, else `internal-server-error`:
/// a stanza the cluster re-serialised always parses).
fn undecodable_stanza(xml: &str, error: &ParseError, limits: &Limits) -> Delivery {
    let stanza = parse_start_tag(xml.as_bytes(), limits)
        .ok()
        .filter(|head| StanzaKind::of(head).is_some());
    let error = match error.condition() {
        StreamErrorCondition::PolicyViolation => {
            StanzaError::new(StanzaErrorCondition::PolicyViolation)
                .with_text("the stanza is larger than the recipient's server accepts")
        }
        _ => StanzaError::new(StanzaErrorCondition::InternalServerError)
            .with_text("the stanza could not be delivered"),
    };
    Delivery::Undecodable { stanza, error }
}

type Routes = Arc<RwLock<HashMap<Vec<u8>, mpsc::UnboundedSender<Buffered<TracedDelivery>>>>>;

/// How often the subscription connection is pinged, so that a lost
/// connection (a Redis restart) is noticed and resubscribed.
const SUBSCRIPTION_KEEPALIVE: Duration = Duration::from_secs(1);

/// The bus of the cluster, on Redis pub/sub.
pub struct RedisBus {
    client: RedisClient,
    subscriber: Arc<Mutex<RedisSubscriber>>,
    routes: Routes,
    tasks: Vec<JoinHandle<()>>,
    metrics: BusMetrics,
    pub(crate) buffer: BusBuffer,
    resumption: Option<Arc<dyn starling_api::ResumptionStore>>,
}

impl RedisBus {
    /// Open the dedicated subscription connection and start reading it.
    /// Received stanzas are parsed under `limits`: the cluster's configured
    /// stanza limits (`limits.max_stanza_bytes`), never a default, or a stanza
    /// the edge accepted would not decode on the receiving node. What was
    /// received and not yet taken by the node's dispatcher is bounded by
    /// `buffer_limit` bytes (`limits.bus_buffer_bytes`, see [`BusBuffer`]),
    /// counted from the moment the subscription connection reads it.
    pub async fn new(
        client: RedisClient,
        limits: Limits,
        buffer_limit: usize,
        metrics: BusMetrics,
    ) -> Result<Self, BusError> {
        let buffer = metrics.buffer(buffer_limit);
        let (push_tx, push_rx) = mpsc::unbounded_channel::<Buffered<PushInfo>>();
        let counting_sender = {
            let buffer = buffer.clone();
            move |push: PushInfo| {
                let bytes = push_bytes(&push);
                buffer.hold(bytes);
                push_tx
                    .send(Buffered { item: push, bytes })
                    .map_err(|mpsc::error::SendError(lost)| buffer.release(lost.bytes))
            }
        };
        let subscriber = Arc::new(Mutex::new(client.subscriber(counting_sender).await?));
        let routes: Routes = Arc::default();
        let dispatcher = tokio::spawn(dispatch(
            push_rx,
            routes.clone(),
            subscriber.clone(),
            limits,
            buffer.clone(),
            metrics.clone(),
        ));
        let keepalive = tokio::spawn(keep_subscription_alive(subscriber.clone()));
        Ok(RedisBus {
            client,
            subscriber,
            routes,
            tasks: vec![dispatcher, keepalive],
            metrics,
            buffer,
            resumption: None,
        })
    }

    /// Park stanzas for detached resumable streams (XEP-0198) in `store`.
    pub fn with_resumption(mut self, store: Arc<dyn starling_api::ResumptionStore>) -> Self {
        self.resumption = Some(store);
        self
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn resumption(&self) -> Option<&dyn starling_api::ResumptionStore> {
        self.resumption.as_deref()
    }

    async fn publish(&self, node: &str, delivery: Delivery) -> ApiResult<usize> {
        self.publish_in_flight(node, delivery, &[]).await
    }

    async fn is_listening(&self, node: &str) -> ApiResult<bool> {
        let channel = self.client.delivery_channel(node);
        Ok(self
            .client
            .channel_subscribers(&channel)
            .await
            .map_err(BusError::from)?
            > 0)
    }

    async fn publish_in_flight(
        &self,
        node: &str,
        delivery: Delivery,
        in_flight: &[(&str, String)],
    ) -> ApiResult<usize> {
        if matches!(delivery, Delivery::Undecodable { .. }) {
            return Err(ApiError::Invalid(
                "an undecodable delivery is made by a receiver, never published".into(),
            ));
        }
        let (span, trace_context) = publish_span("redis", node, &delivery);
        let channel = self.client.delivery_channel(node);
        let payload = encode_envelope(&delivery, &trace_context);
        let in_flight: Vec<(String, String)> = in_flight
            .iter()
            .map(|(id, stanza)| (self.client.resumption_inflight_key(id), stanza.clone()))
            .collect();
        let outcome = self
            .client
            .publish_in_flight(&channel, &payload, &in_flight)
            .instrument(span.clone())
            .await;
        self.metrics.published(&outcome);
        let receivers = outcome.map_err(BusError::from)?;
        span.record("bus.receivers", receivers);
        Ok(receivers)
    }

    async fn subscribe(&self, node: &str) -> ApiResult<DeliveryReceiver> {
        let channel = self.client.delivery_channel(node);
        let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
        self.routes
            .write()
            .insert(channel.clone().into_bytes(), delivery_tx);
        if let Err(error) = self.subscriber.lock().await.subscribe(&channel).await {
            self.routes.write().remove(channel.as_bytes());
            return Err(BusError::from(error).into());
        }
        Ok(DeliveryReceiver::new(delivery_rx, self.buffer.clone()))
    }
}

async fn keep_subscription_alive(subscriber: Arc<Mutex<RedisSubscriber>>) {
    let mut ticker = tokio::time::interval(SUBSCRIPTION_KEEPALIVE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = subscriber.lock().await.ping().await {
            tracing::warn!(error = %error, "bus subscription connection lost, reconnecting");
        }
    }
}

fn bulk_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// The bytes a pushed pub/sub message holds (its channel and payload).
fn push_bytes(push: &PushInfo) -> usize {
    push.data
        .iter()
        .map(|value| bulk_bytes(value).map_or(0, <[u8]>::len))
        .sum()
}

/// A stanza delivery received while the node's buffer is over its bound:
/// only its envelope and the stanza's start tag are read, and the sender is
/// answered (see [`BusBuffer`]). Closes and drains decode as always.
fn decode_refused(
    payload: &[u8],
    limits: &Limits,
    buffer: &BusBuffer,
) -> Result<TracedDelivery, BusError> {
    let envelope = proto::Delivery::decode(payload)?;
    let trace_context = TraceContext::from_map(envelope.trace_context);
    let delivery = match envelope.kind {
        Some(proto::delivery::Kind::Stanza(stanza_delivery)) => {
            let head = parse_start_tag(stanza_delivery.stanza.as_bytes(), limits)
                .ok()
                .filter(|head| StanzaKind::of(head).is_some());
            buffer.refuse(head)
        }
        kind => delivery_from_proto(
            kind,
            origin_time::from_unix_micros(envelope.routed_at_unix_micros),
            limits,
        )?,
    };
    Ok(TracedDelivery {
        delivery,
        trace_context,
    })
}

async fn dispatch(
    mut push_rx: mpsc::UnboundedReceiver<Buffered<PushInfo>>,
    routes: Routes,
    subscriber: Arc<Mutex<RedisSubscriber>>,
    limits: Limits,
    buffer: BusBuffer,
    metrics: BusMetrics,
) {
    while let Some(Buffered { item: push, bytes }) = push_rx.recv().await {
        // Held until the connection-manager takes the delivery; released
        // here on every path that does not hand it on.
        let mut held = bytes;
        let mut refused = false;
        let handed_on = 'receive: {
            match push.kind {
                PushKind::Message | PushKind::SMessage => {}
                PushKind::Disconnection => {
                    tracing::warn!("bus subscription connection dropped");
                    break 'receive None;
                }
                _ => break 'receive None,
            }
            let (Some(channel), Some(payload)) = (
                push.data.first().and_then(bulk_bytes),
                push.data.get(1).and_then(bulk_bytes),
            ) else {
                tracing::warn!("dropping a malformed pub/sub message");
                break 'receive None;
            };
            let Some(delivery_tx) = routes.read().get(channel).cloned() else {
                break 'receive None;
            };
            metrics.received();
            let decoded = if buffer.is_over() {
                buffer.release(held);
                held = 0;
                refused = true;
                decode_refused(payload, &limits, &buffer)
            } else {
                decode_envelope(payload, &limits)
            };
            Some((channel, delivery_tx, decoded))
        };
        let Some((channel, delivery_tx, decoded)) = handed_on else {
            buffer.release(held);
            continue;
        };
        let delivery = match decoded {
            Ok(delivery) => {
                if let (Delivery::Undecodable { stanza, error }, false) =
                    (&delivery.delivery, refused)
                {
                    // Not dropped: the connection-manager answers the sender.
                    metrics.invalid();
                    tracing::warn!(
                        channel = %String::from_utf8_lossy(channel),
                        condition = %error.condition,
                        stanza = stanza.as_ref().map(|stanza| stanza.name()),
                        "a delivered stanza does not parse here, answering its sender"
                    );
                }
                delivery
            }
            Err(error) => {
                metrics.invalid();
                tracing::warn!(channel = %String::from_utf8_lossy(channel), error = %error, "dropping an undecodable delivery");
                buffer.release(held);
                continue;
            }
        };
        if let Err(mpsc::error::SendError(lost)) = delivery_tx.send(Buffered {
            item: delivery,
            bytes: held,
        }) {
            buffer.release(lost.bytes);
            // Nobody reads this node's deliveries any more: stop counting as a subscriber.
            let channel = String::from_utf8_lossy(channel).into_owned();
            let still_routed = {
                let mut routes = routes.write();
                if routes
                    .get(channel.as_bytes())
                    .is_some_and(|sender| sender.is_closed())
                {
                    routes.remove(channel.as_bytes());
                    false
                } else {
                    true
                }
            };
            if !still_routed {
                let (subscriber, routes) = (subscriber.clone(), routes.clone());
                tokio::spawn(async move {
                    let mut subscriber = subscriber.lock().await;
                    // A new subscribe() for this node came in meanwhile: keep the subscription.
                    if routes.read().contains_key(channel.as_bytes()) {
                        return;
                    }
                    if let Err(error) = subscriber.unsubscribe(&channel).await {
                        tracing::warn!(channel = %channel, error = %error, "bus unsubscribe failed");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::{ns, Element};

    fn limits() -> Limits {
        Limits::default()
    }

    fn stanza_delivery(xml: &str, recipients: Vec<Recipient>) -> Delivery {
        let stanza = parse_element(xml.as_bytes(), &limits()).unwrap();
        Delivery::Stanza {
            recipients,
            stanza: Arc::new(stanza),
            routed_at: None,
        }
    }

    #[test]
    fn message_envelope_round_trips_literal_xml() {
        let xml = "<message xmlns='jabber:client' to='b@example.org/phone' from='a@example.com/pc' type='chat' id='m1'><body>hi &amp; &lt;bye&gt;</body></message>";
        let delivery = stanza_delivery(xml, vec![Recipient::conn(7)]);
        let decoded = decode_delivery(&encode_delivery(&delivery), &limits()).unwrap();
        assert_eq!(decoded, delivery);
        let Delivery::Stanza { stanza, .. } = decoded else {
            panic!("not a stanza")
        };
        assert!(stanza.is("message", ns::CLIENT));
        assert_eq!(
            stanza.get_child("body", ns::CLIENT).unwrap().text(),
            "hi & <bye>"
        );
    }

    #[test]
    fn presence_envelope_keeps_recipient_rewrites() {
        let xml = "<presence xmlns='jabber:client' from='a@example.com/pc'><show>away</show><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>";
        let recipients = vec![
            Recipient {
                conn: 1,
                to: Some("b@example.org/x".into()),
            },
            Recipient {
                conn: 2,
                to: Some("c@example.org/y".into()),
            },
            Recipient::conn(3),
        ];
        let delivery = stanza_delivery(xml, recipients);
        assert_eq!(
            decode_delivery(&encode_delivery(&delivery), &limits()).unwrap(),
            delivery
        );
    }

    #[test]
    fn iq_envelope_round_trips_with_a_payload_namespace() {
        let xml = "<iq xmlns='jabber:client' type='set' id='r1' to='a@example.com/pc'><query xmlns='jabber:iq:roster' ver='3'><item jid='b@example.org' subscription='both'/></query></iq>";
        let delivery = stanza_delivery(xml, vec![Recipient::conn(u64::MAX)]);
        let decoded = decode_delivery(&encode_delivery(&delivery), &limits()).unwrap();
        assert_eq!(decoded, delivery);
    }

    #[test]
    fn close_envelope_round_trips() {
        let delivery = Delivery::Close {
            conn: 9,
            condition: StreamErrorCondition::Conflict,
            text: Some("replaced".into()),
        };
        assert_eq!(
            decode_delivery(&encode_delivery(&delivery), &limits()).unwrap(),
            delivery
        );
    }

    #[test]
    fn the_trace_context_travels_in_the_envelope() {
        let xml = "<message xmlns='jabber:client' to='b@example.org/phone' id='m1'/>";
        let delivery = stanza_delivery(xml, vec![Recipient::conn(7)]);
        let trace_context = TraceContext::from_map(HashMap::from([(
            "traceparent".to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        )]));
        let payload = encode_envelope(&delivery, &trace_context);
        let envelope = proto::Delivery::decode(payload.as_slice()).unwrap();
        assert_eq!(
            envelope
                .trace_context
                .get("traceparent")
                .map(String::as_str),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let traced = decode_envelope(&payload, &limits()).unwrap();
        assert_eq!(traced.delivery, delivery);
        assert_eq!(traced.trace_context, trace_context);
        // Without tracing the field stays empty on the wire.
        let untraced = proto::Delivery::decode(encode_delivery(&delivery).as_slice()).unwrap();
        assert!(untraced.trace_context.is_empty());
    }

    #[test]
    fn unknown_close_condition_still_closes() {
        let envelope = proto::Delivery {
            kind: Some(proto::delivery::Kind::Close(proto::CloseStream {
                conn: 4,
                condition: "made-up".into(),
                text: None,
            })),
            routed_at_unix_micros: 0,
            trace_context: HashMap::new(),
        };
        let decoded = decode_delivery(&envelope.encode_to_vec(), &limits()).unwrap();
        assert_eq!(
            decoded,
            Delivery::Close {
                conn: 4,
                condition: StreamErrorCondition::UndefinedCondition,
                text: None
            }
        );
    }

    fn stanza_envelope(stanza: &str) -> Vec<u8> {
        proto::Delivery {
            kind: Some(proto::delivery::Kind::Stanza(proto::StanzaDelivery {
                recipients: vec![proto::Recipient { conn: 1, to: None }],
                stanza: stanza.into(),
            })),
            routed_at_unix_micros: 0,
            trace_context: HashMap::new(),
        }
        .encode_to_vec()
    }

    /// The undecodable delivery a stanza becomes, with its start tag as XML.
    fn undecodable(stanza: &str, limits: &Limits) -> (Option<String>, StanzaErrorCondition) {
        match decode_delivery(&stanza_envelope(stanza), limits) {
            Ok(Delivery::Undecodable { stanza, error }) => {
                (stanza.map(|stanza| stanza.to_xml()), error.condition)
            }
            other => panic!("{stanza:?} gave {other:?}"),
        }
    }

    #[test]
    fn a_stanza_that_does_not_parse_is_undecodable_not_dropped() {
        assert_eq!(
            undecodable(
                "<message xmlns='jabber:client' from='a@example.com/r' id='m'><body>unclosed</message>",
                &limits()
            ),
            (
                Some("<message xmlns='jabber:client' from='a@example.com/r' id='m'/>".into()),
                StanzaErrorCondition::InternalServerError
            )
        );
        for stanza in [
            "<message xmlns='jabber:client'/><message xmlns='jabber:client'/>",
            "<!DOCTYPE x><message xmlns='jabber:client'/>",
            "<foo xmlns='urn:example'><bar>",
            "",
        ] {
            let (head, condition) = undecodable(stanza, &limits());
            assert_eq!(condition, StanzaErrorCondition::InternalServerError);
            // Only a stanza's start tag says whom to answer.
            if !stanza.starts_with("<message") {
                assert_eq!(head, None, "{stanza:?}");
            }
        }
    }

    #[test]
    fn a_stanza_over_the_limits_is_undecodable_with_policy_violation() {
        let big = format!(
            "<message xmlns='jabber:client' to='b@example.com'><body>{}</body></message>",
            "x".repeat(2048)
        );
        let small = Limits {
            max_stanza_bytes: 1024,
            ..Limits::default()
        };
        assert_eq!(
            undecodable(&big, &small),
            (
                Some("<message xmlns='jabber:client' to='b@example.com'/>".into()),
                StanzaErrorCondition::PolicyViolation
            )
        );
    }

    #[test]
    fn rejects_garbage_and_empty_envelopes() {
        assert!(matches!(
            decode_delivery(b"\xff\xff\xff", &limits()),
            Err(BusError::Envelope(_))
        ));
        assert!(matches!(
            decode_delivery(b"", &limits()),
            Err(BusError::InvalidEnvelope(_))
        ));
        let no_recipients = proto::Delivery {
            kind: Some(proto::delivery::Kind::Stanza(proto::StanzaDelivery {
                recipients: vec![],
                stanza: "<message xmlns='jabber:client'/>".into(),
            })),
            routed_at_unix_micros: 0,
            trace_context: HashMap::new(),
        };
        assert!(matches!(
            decode_delivery(&no_recipients.encode_to_vec(), &limits()),
            Err(BusError::InvalidEnvelope(_))
        ));
    }

    #[test]
    fn element_built_in_code_survives_the_trip() {
        let stanza = Element::new("message", ns::CLIENT)
            .with_attr("to", "b@example.org")
            .with_child(Element::new("body", ns::CLIENT).with_text("quote ' and \" and ]]>"));
        let delivery = Delivery::Stanza {
            recipients: vec![Recipient::conn(1)],
            stanza: Arc::new(stanza),
            routed_at: Some(
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_001),
            ),
        };
        assert_eq!(
            decode_delivery(&encode_delivery(&delivery), &limits()).unwrap(),
            delivery
        );
    }
}
