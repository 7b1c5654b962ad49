//! The one delivery path from the router and the presence service to the
//! connection-managers (DESIGN.md "Fan-out cost", `deliver:{node}`).
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

use starling_api::{origin_time, SessionRecord};
use starling_bus::{Bus, Delivery, Recipient};
use starling_xmpp::Element;

/// Publish `stanza` to every target session, one envelope per node.
///
/// Each target is a session and an optional `to` rewrite for that recipient
/// (`None` keeps the stanza's own `to`; a presence broadcast shares one
/// envelope between contacts by rewriting it). Returns the sessions that
/// could not be reached: their node had no subscriber or the publish failed.
pub async fn deliver_to_sessions(
    bus: &dyn Bus,
    stanza: Arc<Element>,
    targets: &[(SessionRecord, Option<String>)],
) -> Vec<SessionRecord> {
    let mut node_index: HashMap<&str, usize> = HashMap::new();
    let mut envelopes: Vec<NodeEnvelope<'_>> = Vec::new();
    for (session, to) in targets {
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
        envelope.sessions.push(session);
    }

    let mut unreached = Vec::new();
    // The stanza being routed entered the cluster then (the connection-manager's clock).
    let routed_at = origin_time::current();
    for envelope in envelopes {
        let recipient_count = envelope.recipients.len();
        let delivery = Delivery::Stanza {
            recipients: envelope.recipients,
            stanza: stanza.clone(),
            routed_at,
        };
        match bus.publish(envelope.node, delivery).await {
            Ok(0) => {
                tracing::debug!(node = %envelope.node, recipients = recipient_count, "no subscriber on the delivery channel");
                unreached.extend(envelope.sessions.into_iter().cloned());
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(node = %envelope.node, recipients = recipient_count, %error, "delivery publish failed");
                unreached.extend(envelope.sessions.into_iter().cloned());
            }
        }
    }
    unreached
}

/// Publish `stanza` to one session, keeping its `to`; whether it was reached.
pub async fn deliver_to_session(
    bus: &dyn Bus,
    stanza: Arc<Element>,
    session: &SessionRecord,
) -> bool {
    deliver_to_sessions(bus, stanza, &[(session.clone(), None)])
        .await
        .is_empty()
}

/// The recipients one node receives in its envelope.
struct NodeEnvelope<'a> {
    node: &'a str,
    recipients: Vec<Recipient>,
    sessions: Vec<&'a SessionRecord>,
}
