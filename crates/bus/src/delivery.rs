//! Delivery grouping, the one path from the router and the presence service
//! to the connection-managers (DESIGN.md "Fan-out cost", `deliver:{node}`).
//!
//! Targets are grouped by the node that holds their stream and one
//! [`Delivery::Stanza`] envelope is published per node, carrying every
//! recipient connection on it: a fan-out to 500 sessions on 3 nodes costs 3
//! bus messages. Nodes are published to in the order they first appear in the
//! target list, and each publish is awaited before the next, so a caller that
//! delivers stanza after stanza keeps their order on every node (RFC 6120
//! section 10.1).
//!
//! The bus is at-most-once: a publish that reached no subscriber (the node is
//! gone) or failed leaves its targets unreached, and they are handed back so
//! the caller can fall back (offline storage for a message, an error for an IQ).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use starling_api::resumption::{is_detached, Parked};
use starling_api::SessionRecord;
use starling_xmpp::Element;

use crate::{Bus, Delivery, Recipient};

/// Publish `stanza` to every target session, one envelope per node.
///
/// Each target is a session and an optional `to` rewrite for that recipient
/// (`None` keeps the stanza's own `to`; a presence broadcast shares one
/// envelope between contacts by rewriting it). `routed_at` is when the stanza
/// being routed entered the cluster (the sending connection-manager's clock),
/// for the delivery latency; `None` for what no client sent. Returns the
/// sessions that could not be reached: their node had no subscriber or the
/// publish failed.
pub async fn deliver_to_sessions(
    bus: &dyn Bus,
    stanza: Arc<Element>,
    targets: &[(SessionRecord, Option<String>)],
    routed_at: Option<SystemTime>,
) -> Vec<SessionRecord> {
    let mut node_index: HashMap<&str, usize> = HashMap::new();
    let mut envelopes: Vec<NodeEnvelope<'_>> = Vec::new();
    let mut unreached = Vec::new();
    for (session, to) in targets {
        if is_detached(&session.addr) {
            // No connection holds the stream: the stanza waits in its
            // resumption queue (XEP-0198), not on the bus.
            if !park(bus, &stanza, session, to.as_deref()).await {
                unreached.push(session.clone());
            }
            continue;
        }
        let node = session.addr.node.as_str();
        let index = *node_index.entry(node).or_insert_with(|| {
            envelopes.push(NodeEnvelope {
                node,
                recipients: Vec::new(),
                sessions: Vec::new(),
            });
            envelopes.len() - 1
        });
        let envelope = &mut envelopes[index];
        envelope.recipients.push(Recipient {
            conn: session.addr.conn,
            to: to.clone(),
        });
        envelope.sessions.push((session, to.as_deref()));
    }

    for envelope in envelopes {
        let recipient_count = envelope.recipients.len();
        let delivery = Delivery::Stanza {
            recipients: envelope.recipients,
            stanza: stanza.clone(),
            routed_at,
        };
        // Resumable recipients (XEP-0198): the stanza is recorded as in
        // flight to them with the publish, as each gets it.
        let in_flight: Vec<(&str, String)> = if bus.resumption().is_some() {
            envelope
                .sessions
                .iter()
                .filter_map(|(session, to)| {
                    let id = session.resumption.as_deref()?;
                    Some((id, addressed_xml(&stanza, *to)))
                })
                .collect()
        } else {
            Vec::new()
        };
        let missed = match bus
            .publish_in_flight(envelope.node, delivery, &in_flight)
            .await
        {
            Ok(0) => {
                tracing::debug!(node = %envelope.node, recipients = recipient_count, "no subscriber on the delivery channel");
                envelope.sessions
            }
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::warn!(node = %envelope.node, recipients = recipient_count, %error, "delivery publish failed");
                envelope.sessions
            }
        };
        for (session, to) in missed {
            // A resumable stream whose node is gone (killed, before the
            // janitor detached it): its stanzas wait for the resumption too.
            if session.resumption.is_none() || !park(bus, &stanza, session, to).await {
                unreached.push(session.clone());
            }
        }
    }
    unreached
}

/// Park `stanza` (readdressed to `to`) for a resumable session; whether it was queued.
async fn park(bus: &dyn Bus, stanza: &Element, session: &SessionRecord, to: Option<&str>) -> bool {
    let (Some(store), Some(id)) = (bus.resumption(), session.resumption.as_deref()) else {
        return false;
    };
    match store.park(id, &addressed_xml(stanza, to)).await {
        Ok(Parked::Queued) => true,
        Ok(outcome) => {
            tracing::debug!(jid = %session.jid, ?outcome, "not parked for a detached stream");
            false
        }
        Err(error) => {
            tracing::warn!(jid = %session.jid, %error, "parking for a detached stream failed");
            false
        }
    }
}

/// Publish `stanza` to one session, keeping its `to`; whether it was reached.
pub async fn deliver_to_session(
    bus: &dyn Bus,
    stanza: Arc<Element>,
    session: &SessionRecord,
    routed_at: Option<SystemTime>,
) -> bool {
    deliver_to_sessions(bus, stanza, &[(session.clone(), None)], routed_at)
        .await
        .is_empty()
}

/// `stanza` readdressed to `to` and serialised with its namespace, as the
/// recipient's connection-manager journals it (`QueuedStanza::to_xml`).
fn addressed_xml(stanza: &Element, to: Option<&str>) -> String {
    match to {
        Some(to) if stanza.attr("to") != Some(to) => {
            let mut readdressed = stanza.clone();
            readdressed.set_attr("to", to.to_string());
            readdressed.to_xml()
        }
        _ => stanza.to_xml(),
    }
}

/// The recipients one node receives in its envelope.
struct NodeEnvelope<'a> {
    node: &'a str,
    recipients: Vec<Recipient>,
    sessions: Vec<(&'a SessionRecord, Option<&'a str>)>,
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use starling_api::{ApiError, ApiResult, SessionAddr};

    use super::*;
    use crate::{DeliveryReceiver, InProcessBus};

    fn xml(text: &str) -> Element {
        starling_xmpp::parse_element(text.as_bytes(), &Default::default())
            .expect("test stanza parses")
    }

    fn session(jid: &str, node: &str, conn: u64) -> SessionRecord {
        let jid = jid.parse().expect("a valid full jid");
        SessionRecord::new(
            jid,
            SessionAddr {
                node: node.into(),
                conn,
            },
        )
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

        let unreached = deliver_to_sessions(&bus, stanza.clone(), &targets, None).await;

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
            None,
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
                &session("juliet@example.com/balcony", "cm-1", 1),
                None,
            )
            .await
        );
        assert!(
            !deliver_to_session(
                &bus,
                stanza,
                &session("juliet@example.com/balcony", "cm-9", 1),
                None,
            )
            .await
        );
    }

    /// A bus whose publishes fail: the targets count as unreached.
    struct BrokenBus;

    #[async_trait]
    impl Bus for BrokenBus {
        async fn publish(&self, _node: &str, _delivery: Delivery) -> ApiResult<usize> {
            Err(ApiError::Unavailable("redis down".into()))
        }

        async fn subscribe(&self, _node: &str) -> ApiResult<DeliveryReceiver> {
            Err(ApiError::Unavailable("redis down".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_publish_counts_as_unreached() {
        let targets = vec![(session("juliet@example.com/balcony", "cm-1", 1), None)];
        let unreached =
            deliver_to_sessions(&BrokenBus, Arc::new(xml("<message/>")), &targets, None).await;
        assert_eq!(
            unreached,
            vec![session("juliet@example.com/balcony", "cm-1", 1)]
        );
    }

    #[tokio::test]
    async fn every_envelope_carries_the_origin_time() {
        let bus = InProcessBus::new();
        let mut cm_one = bus.subscribe("cm-1").await.unwrap();
        let mut cm_two = bus.subscribe("cm-2").await.unwrap();
        let routed_at =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let targets = vec![
            (session("juliet@example.com/balcony", "cm-1", 1), None),
            (session("romeo@example.com/orchard", "cm-2", 2), None),
        ];
        let unreached =
            deliver_to_sessions(&bus, Arc::new(xml("<message/>")), &targets, Some(routed_at)).await;
        assert!(unreached.is_empty());
        for receiver in [&mut cm_one, &mut cm_two] {
            match receiver.try_recv() {
                Ok(Delivery::Stanza {
                    routed_at: carried, ..
                }) => assert_eq!(carried, Some(routed_at)),
                other => panic!("expected a stanza envelope, got {other:?}"),
            }
        }
    }
}
