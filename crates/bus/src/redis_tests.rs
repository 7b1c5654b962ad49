//! The Redis bus against the real Redis, a restarted Redis and a throw-away
//! 3-master Redis Cluster (sharded pub/sub).

use std::sync::Arc;
use std::time::Duration;

use starling_redis_client::testing::{test_client, RedisClusterHarness, RedisServerHarness};
use starling_redis_client::RedisClient;
use starling_testing::{wait_for, wait_until};
use starling_xmpp::{parse_element, Limits, StreamErrorCondition};

use starling_xmpp::{Element, StanzaErrorCondition};

use crate::{
    Bus, BusMetrics, Delivery, DeliveryReceiver, Recipient, RedisBus, DEFAULT_BUS_BUFFER_BYTES,
};

/// A bus with the parser's default limits and metrics nobody scrapes.
async fn bus(client: RedisClient) -> Result<RedisBus, crate::BusError> {
    RedisBus::new(
        client,
        Limits::default(),
        DEFAULT_BUS_BUFFER_BYTES,
        BusMetrics::default(),
    )
    .await
}

/// A chat message whose body makes the stanza about `bytes` long.
fn large_message(bytes: usize) -> Element {
    let xml = format!(
        "<message xmlns='jabber:client' from='a@example.com/pc' to='b@example.com' id='big' type='chat'><body>{}</body></message>",
        "x".repeat(bytes)
    );
    parse_element(
        xml.as_bytes(),
        &Limits {
            max_stanza_bytes: 4 * 1024 * 1024,
            ..Limits::default()
        },
    )
    .unwrap()
}

fn presence_to_contacts() -> Delivery {
    let xml =
        "<presence xmlns='jabber:client' from='a@example.com/pc'><status>here</status></presence>";
    Delivery::Stanza {
        recipients: vec![
            Recipient {
                conn: 11,
                to: Some("b@example.org/phone".into()),
            },
            Recipient {
                conn: 12,
                to: Some("c@example.org/tablet".into()),
            },
        ],
        stanza: Arc::new(parse_element(xml.as_bytes(), &Limits::default()).unwrap()),
        routed_at: None,
    }
}

async fn receive(receiver: &mut DeliveryReceiver) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("the delivery channel is open")
}

/// Publish until a subscriber counts it (subscriptions propagate
/// asynchronously after a reconnect), bounded.
async fn publish_until_received(bus: &RedisBus, node: &str, delivery: Delivery) -> usize {
    wait_for(
        &format!("a subscriber to receive the delivery on {node}"),
        Duration::from_secs(10),
        async || {
            let receivers = bus.publish(node, delivery.clone()).await.unwrap_or(0);
            (receivers > 0).then_some(receivers)
        },
    )
    .await
}

async fn round_trip(publisher: &RedisBus, subscriber: &RedisBus, node: &str) {
    let mut receiver = subscriber.subscribe(node).await.unwrap();
    let delivery = presence_to_contacts();
    assert_eq!(publisher.publish(node, delivery.clone()).await.unwrap(), 1);
    assert_eq!(receive(&mut receiver).await, delivery);
    let close = Delivery::Close {
        conn: 11,
        condition: StreamErrorCondition::Conflict,
        text: Some("replaced".into()),
    };
    assert_eq!(publisher.publish(node, close.clone()).await.unwrap(), 1);
    assert_eq!(receive(&mut receiver).await, close);
    assert_eq!(
        publisher
            .publish(&format!("{node}-nobody"), delivery)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "current_thread")]
async fn redis_envelopes_carry_the_publish_span_context() {
    let Some(client) = test_client().await else {
        return;
    };
    let (recorded, subscriber) = starling_telemetry::testing::recording();
    let _default = tracing::subscriber::set_default(subscriber);
    let publisher = bus(client.clone()).await.unwrap();
    let subscriber = bus(client).await.unwrap();
    let mut receiver = subscriber.subscribe("cm-traced").await.unwrap();
    let delivery = presence_to_contacts();
    assert_eq!(
        publisher
            .publish("cm-traced", delivery.clone())
            .await
            .unwrap(),
        1
    );
    let traced = tokio::time::timeout(Duration::from_secs(5), receiver.recv_traced())
        .await
        .expect("a delivery within 5 s")
        .expect("the delivery channel is open");
    assert_eq!(traced.delivery, delivery);
    let publish = recorded.span("bus.publish");
    assert_eq!(
        traced.trace_context.get(starling_telemetry::TRACEPARENT),
        Some(
            format!(
                "00-{}-{}-01",
                publish.span_context.trace_id(),
                publish.span_context.span_id()
            )
            .as_str()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trip_between_two_buses() {
    let Some(client) = test_client().await else {
        return;
    };
    let publisher = bus(client.clone()).await.unwrap();
    let subscriber = bus(client).await.unwrap();
    round_trip(&publisher, &subscriber, "cm1").await;
    // Deliveries for two nodes subscribed on one bus stay apart.
    let mut second = subscriber.subscribe("cm2").await.unwrap();
    let close = Delivery::Close {
        conn: 5,
        condition: StreamErrorCondition::SystemShutdown,
        text: None,
    };
    assert_eq!(publisher.publish("cm2", close.clone()).await.unwrap(), 1);
    assert_eq!(receive(&mut second).await, close);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_stops_counting_as_a_subscriber() {
    let Some(client) = test_client().await else {
        return;
    };
    let bus = bus(client).await.unwrap();
    drop(bus.subscribe("cm-gone").await.unwrap());
    wait_until(
        "a publish to the dropped receiver's node to reach nobody",
        Duration::from_secs(5),
        async || {
            bus.publish("cm-gone", presence_to_contacts())
                .await
                .unwrap()
                == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_dropped_and_delivery_goes_on() {
    let Some(client) = test_client().await else {
        return;
    };
    let bus = bus(client.clone()).await.unwrap();
    let mut receiver = bus.subscribe("cm-garbage").await.unwrap();
    let channel = client.delivery_channel("cm-garbage");
    assert_eq!(
        client
            .publish(&channel, b"\xff\xfe not protobuf")
            .await
            .unwrap(),
        1
    );
    let delivery = presence_to_contacts();
    assert_eq!(
        bus.publish("cm-garbage", delivery.clone()).await.unwrap(),
        1
    );
    assert_eq!(receive(&mut receiver).await, delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_a_redis_restart() {
    let Some(mut server) = RedisServerHarness::start().await else {
        return;
    };
    let client = RedisClient::connect(&server.config()).await.unwrap();
    let bus = bus(client).await.unwrap();
    let mut receiver = bus.subscribe("cm-restart").await.unwrap();
    assert_eq!(
        bus.publish("cm-restart", presence_to_contacts())
            .await
            .unwrap(),
        1
    );
    receive(&mut receiver).await;
    server.restart().await;
    let delivery = presence_to_contacts();
    assert_eq!(
        publish_until_received(&bus, "cm-restart", delivery.clone()).await,
        1
    );
    assert_eq!(receive(&mut receiver).await, delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_round_trip_with_sharded_pub_sub() {
    let Some(cluster) = RedisClusterHarness::start().await else {
        return;
    };
    let config = cluster.config();
    let publisher = bus(RedisClient::connect(&config).await.unwrap())
        .await
        .unwrap();
    let subscriber = bus(RedisClient::connect(&config).await.unwrap())
        .await
        .unwrap();
    // The channels' hash tags fall in slots 5897, 10090, 14155 and 1964: with
    // `redis-cli --cluster create` splitting the slots in three, every master holds one.
    for node in ["cm-a", "cm-b", "cm-c", "cm-d"] {
        round_trip(&publisher, &subscriber, node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_up_to_the_configured_limit_crosses_the_bus() {
    let Some(client) = test_client().await else {
        return;
    };
    // `limits.max_stanza_bytes` raised to 2 MiB: a 400 KB message decodes on the
    // receiving node (with the parser's 256 KiB default it was dropped there).
    let limits = Limits {
        max_stanza_bytes: 2 * 1024 * 1024,
        ..Limits::default()
    };
    let publisher = RedisBus::new(
        client.clone(),
        limits,
        DEFAULT_BUS_BUFFER_BYTES,
        BusMetrics::default(),
    )
    .await
    .unwrap();
    let subscriber = RedisBus::new(
        client,
        limits,
        DEFAULT_BUS_BUFFER_BYTES,
        BusMetrics::default(),
    )
    .await
    .unwrap();
    let mut receiver = subscriber.subscribe("cm-large").await.unwrap();
    let delivery = Delivery::Stanza {
        recipients: vec![Recipient::conn(3)],
        stanza: Arc::new(large_message(400_000)),
        routed_at: None,
    };
    assert_eq!(
        publisher
            .publish("cm-large", delivery.clone())
            .await
            .unwrap(),
        1
    );
    assert_eq!(receive(&mut receiver).await, delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_the_receiver_cannot_parse_arrives_as_undecodable_with_its_addresses() {
    let Some(client) = test_client().await else {
        return;
    };
    let registry = prometheus::Registry::new();
    let metrics = BusMetrics::register(&registry).unwrap();
    let publisher = bus(client.clone()).await.unwrap();
    // The receiving node's limits are smaller than the stanza.
    let subscriber = RedisBus::new(client, Limits::default(), DEFAULT_BUS_BUFFER_BYTES, metrics)
        .await
        .unwrap();
    let mut receiver = subscriber.subscribe("cm-small").await.unwrap();
    let delivery = Delivery::Stanza {
        recipients: vec![Recipient::conn(3)],
        stanza: Arc::new(large_message(400_000)),
        routed_at: None,
    };
    assert_eq!(publisher.publish("cm-small", delivery).await.unwrap(), 1);
    let Delivery::Undecodable { stanza, error } = receive(&mut receiver).await else {
        panic!("an undecodable delivery expected");
    };
    assert_eq!(error.condition, StanzaErrorCondition::PolicyViolation);
    assert_eq!(
        stanza.expect("the start tag is read").to_xml(),
        "<message xmlns='jabber:client' from='a@example.com/pc' to='b@example.com' id='big' type='chat'/>"
    );
    let invalid = registry
        .gather()
        .into_iter()
        .find(|family| family.name() == "starling_bus_messages_invalid_total")
        .expect("the invalid counter is registered");
    assert_eq!(invalid.get_metric()[0].get_counter().get_value(), 1.0);
}

#[tokio::test(flavor = "current_thread")]
async fn an_undecodable_delivery_is_never_published() {
    let Some(client) = test_client().await else {
        return;
    };
    let publisher = bus(client).await.unwrap();
    let undecodable = Delivery::Undecodable {
        stanza: None,
        error: starling_xmpp::StanzaError::new(StanzaErrorCondition::InternalServerError),
    };
    assert!(publisher.publish("cm-any", undecodable).await.is_err());
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .into_iter()
        .find(|family| family.name() == name)
        .map_or(0.0, |family| {
            let metric = &family.get_metric()[0];
            if family.get_field_type() == prometheus::proto::MetricType::GAUGE {
                metric.get_gauge().get_value()
            } else {
                metric.get_counter().get_value()
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_buffer_bound_a_stanza_is_refused_with_resource_constraint_and_its_sender_named() {
    let Some(client) = test_client().await else {
        return;
    };
    let registry = prometheus::Registry::new();
    let metrics = BusMetrics::register(&registry).unwrap();
    let publisher = bus(client.clone()).await.unwrap();
    // Room for three 2 KB messages; the node takes none of them until all arrived.
    let subscriber = RedisBus::new(client, Limits::default(), 3 * 2_300, metrics)
        .await
        .unwrap();
    let mut receiver = subscriber.subscribe("cm-slow").await.unwrap();
    for index in 0..10 {
        let mut stanza = large_message(2_000);
        stanza.set_attr("id", format!("m{index}"));
        let delivery = Delivery::Stanza {
            recipients: vec![Recipient::conn(3)],
            stanza: Arc::new(stanza),
            routed_at: None,
        };
        assert_eq!(publisher.publish("cm-slow", delivery).await.unwrap(), 1);
    }
    wait_until(
        "the ten deliveries to be received",
        Duration::from_secs(5),
        async || counter(&registry, "starling_bus_messages_received_total") == 10.0,
    )
    .await;
    assert!(subscriber.buffer.held() <= 3 * 2_300);
    assert_eq!(
        counter(&registry, "starling_bus_buffer_bytes") as usize,
        subscriber.buffer.held()
    );
    let (mut kept, mut refused) = (0, 0);
    for index in 0..10 {
        match receive(&mut receiver).await {
            Delivery::Stanza { stanza, .. } => {
                assert_eq!(refused, 0, "what was kept came before what was refused");
                assert_eq!(stanza.attr("id"), Some(format!("m{index}").as_str()));
                kept += 1;
            }
            Delivery::Undecodable { stanza, error } => {
                assert_eq!(error.condition, StanzaErrorCondition::ResourceConstraint);
                let head = stanza.expect("the sender is known");
                assert_eq!(head.attr("from"), Some("a@example.com/pc"));
                assert_eq!(head.attr("id"), Some(format!("m{index}").as_str()));
                refused += 1;
            }
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    assert!((1..=3).contains(&kept), "{kept} kept");
    assert_eq!(refused, 10 - kept);
    assert_eq!(
        counter(&registry, "starling_bus_messages_refused_total"),
        refused as f64
    );
    assert_eq!(subscriber.buffer.held(), 0);
    assert_eq!(counter(&registry, "starling_bus_buffer_bytes"), 0.0);
    // Taken, the buffer has room again.
    let delivery = presence_to_contacts();
    assert_eq!(
        publisher
            .publish("cm-slow", delivery.clone())
            .await
            .unwrap(),
        1
    );
    assert_eq!(receive(&mut receiver).await, delivery);
}
