//! The shared delivery path: one envelope per node, unreached targets reported.

use starling_api::SessionRecord;
use starling_bus::{Bus, Delivery, Recipient};
use starling_xmpp::Element;

use super::*;
use crate::delivery::{deliver_to_session, deliver_to_sessions};

fn session(jid: &str, node: &str, conn: u64) -> SessionRecord {
    SessionRecord::new(full(jid), addr(node, conn))
}

#[tokio::test]
async fn groups_targets_by_node_with_their_to_rewrites() {
    let bus = InProcessBus::new();
    let mut cm_one = bus.subscribe("cm-1").await.unwrap();
    let mut cm_two = bus.subscribe("cm-2").await.unwrap();
    let stanza = Arc::new(xml(
        "<presence from='juliet@example.com/balcony'><show>away</show></presence>",
    ));
    let targets = vec![
        (
            session("romeo@example.com/orchard", "cm-1", 1),
            Some("romeo@example.com/orchard".to_string()),
        ),
        (
            session("nurse@example.com/kitchen", "cm-2", 2),
            Some("nurse@example.com/kitchen".to_string()),
        ),
        (session("romeo@example.com/mobile", "cm-1", 3), None),
        (
            session("tybalt@example.com/street", "cm-gone", 4),
            Some("tybalt@example.com/street".to_string()),
        ),
    ];

    let unreached = deliver_to_sessions(&bus, stanza.clone(), &targets).await;

    assert_eq!(
        unreached,
        vec![session("tybalt@example.com/street", "cm-gone", 4)]
    );
    assert_eq!(
        cm_one.try_recv().ok(),
        Some(Delivery::Stanza {
            recipients: vec![
                Recipient {
                    conn: 1,
                    to: Some("romeo@example.com/orchard".into())
                },
                Recipient { conn: 3, to: None },
            ],
            stanza: stanza.clone(),
            routed_at: None,
        })
    );
    assert_eq!(
        cm_two.try_recv().ok(),
        Some(Delivery::Stanza {
            recipients: vec![Recipient {
                conn: 2,
                to: Some("nurse@example.com/kitchen".into())
            }],
            stanza,
            routed_at: None,
        })
    );
    assert!(cm_one.try_recv().is_err(), "one envelope per node");
    assert!(cm_two.try_recv().is_err(), "one envelope per node");
}

#[tokio::test]
async fn no_targets_publishes_nothing() {
    let bus = InProcessBus::new();
    let mut cm_one = bus.subscribe("cm-1").await.unwrap();
    let unreached = deliver_to_sessions(
        &bus,
        Arc::new(Element::new("message", "jabber:client")),
        &[],
    )
    .await;
    assert!(unreached.is_empty());
    assert!(cm_one.try_recv().is_err());
}

#[tokio::test]
async fn a_single_session_reports_whether_it_was_reached() {
    let bus = InProcessBus::new();
    let _cm_one = bus.subscribe("cm-1").await.unwrap();
    let stanza = Arc::new(xml("<message to='juliet@example.com/balcony'/>"));
    assert!(
        deliver_to_session(
            &bus,
            stanza.clone(),
            &session("juliet@example.com/balcony", "cm-1", 1)
        )
        .await
    );
    assert!(
        !deliver_to_session(
            &bus,
            stanza,
            &session("juliet@example.com/balcony", "cm-9", 1)
        )
        .await
    );
}

/// A bus whose publishes fail: the targets count as unreached.
struct BrokenBus;

#[async_trait]
impl Bus for BrokenBus {
    async fn publish(&self, _node: &str, _delivery: Delivery) -> starling_api::ApiResult<usize> {
        Err(ApiError::Unavailable("redis down".into()))
    }

    async fn subscribe(&self, _node: &str) -> starling_api::ApiResult<DeliveryReceiver> {
        Err(ApiError::Unavailable("redis down".into()))
    }
}

#[tokio::test]
async fn a_failed_publish_counts_as_unreached() {
    let targets = vec![(session("juliet@example.com/balcony", "cm-1", 1), None)];
    let unreached = deliver_to_sessions(&BrokenBus, Arc::new(xml("<message/>")), &targets).await;
    assert_eq!(
        unreached,
        vec![session("juliet@example.com/balcony", "cm-1", 1)]
    );
}
