//! Delivery from the bus (DESIGN.md `deliver:{node}`): each envelope's stanza
//! goes to every recipient connection's bounded queue. The dispatcher never
//! waits on a client; what cannot be delivered goes back to the router.

use std::sync::Arc;

use starling_api::{ConnId, Origin};
use starling_bus::{Delivery, DeliveryReceiver, TracedDelivery};
use starling_telemetry::SPAN_TARGET;
use starling_xmpp::{stanza, Element, StanzaError, StanzaKind, StreamError};
use tracing::Instrument;

use crate::outbound::PushError;
use crate::queued::QueuedStanza;
use crate::shared::Shared;

/// Read the node's deliveries until the bus closes.
pub(crate) async fn dispatch(shared: Arc<Shared>, mut deliveries: DeliveryReceiver) {
    while let Some(TracedDelivery {
        delivery,
        trace_context,
    }) = deliveries.recv_traced().await
    {
        // The last hop of the stanza's trace: a child of the bus.publish span
        // whose context the envelope carries.
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            parent: None,
            "connection_manager.deliver",
            otel.kind = "consumer",
            node.id = %shared.node_id,
            delivery.kind = tracing::field::Empty,
            delivery.recipients = tracing::field::Empty,
            stanza.kind = tracing::field::Empty,
            stanza.type = tracing::field::Empty,
        );
        trace_context.set_parent_of(&span);
        let _entered = span.enter();
        match delivery {
            Delivery::Stanza {
                recipients,
                stanza,
                routed_at,
            } => {
                let kind = StanzaKind::of(&stanza);
                if !span.is_disabled() {
                    span.record("delivery.kind", "stanza");
                    span.record("delivery.recipients", recipients.len());
                    span.record("stanza.kind", stanza.name());
                    span.record("stanza.type", stanza.attr("type"));
                }
                for recipient in recipients {
                    // A remote domain's outbound stream owned by this node.
                    if recipient.conn == starling_api::S2S_OUTBOUND_CONN {
                        crate::s2s::outbound::enqueue(&shared, (*stanza).clone());
                        continue;
                    }
                    let queued = QueuedStanza {
                        stanza: Arc::clone(&stanza),
                        to: recipient.to,
                        marker: crate::queued::Marker::Stanza,
                    };
                    let Some(handle) = shared.connection(recipient.conn) else {
                        // The connection ended since the router looked (a race with disconnect).
                        let journal = shared.ended_stream_journal(recipient.conn);
                        reroute_in_flight(&shared, recipient.conn, queued, journal);
                        continue;
                    };
                    match handle.push(queued) {
                        Ok(()) => {
                            handle.note_delivered();
                            if let (Some(kind), Some(routed_at)) = (kind, routed_at) {
                                shared.metrics.delivered(kind, routed_at);
                            }
                        }
                        Err((PushError::Full, queued)) => {
                            tracing::info!(
                                conn = recipient.conn,
                                "outbound queue full, closing the stream"
                            );
                            shared
                                .metrics
                                .limit_hit(crate::metrics::Limit::OutboundQueue);
                            handle.close_overflowed();
                            let journal = handle.with_sm(|sm| sm.journal.clone());
                            reroute_in_flight(&shared, recipient.conn, queued, journal);
                        }
                        Err((PushError::Closed, queued)) => {
                            let journal = handle.with_sm(|sm| sm.journal.clone());
                            reroute_in_flight(&shared, recipient.conn, queued, journal);
                        }
                    }
                }
            }
            Delivery::Close {
                conn,
                condition,
                text,
            } => {
                span.record("delivery.kind", "close");
                if let Some(handle) = shared.connection(conn) {
                    tracing::debug!(conn, condition = %condition, "closing stream on request");
                    handle.close(Some(StreamError {
                        condition,
                        text,
                        application: None,
                    }));
                }
            }
            Delivery::Drain { window } => {
                span.record("delivery.kind", "drain");
                crate::drain::start(&shared, window);
            }
            Delivery::Undecodable { stanza, error } => {
                span.record("delivery.kind", "undecodable");
                answer_undecodable(&shared, stanza, error);
            }
        }
    }
    tracing::debug!(node = %shared.node_id, "delivery channel closed");
}

/// Whether a stanza that was not written to its session goes back to the
/// router: messages (to other resources or offline storage) and IQ requests
/// (so that the requester gets an error instead of waiting). Presence is
/// state, re-sent as it changes: it is dropped.
pub(crate) fn is_reroutable(stanza: &Element) -> bool {
    match StanzaKind::of(stanza) {
        Some(StanzaKind::Message) => true,
        Some(StanzaKind::Iq) => matches!(stanza.attr("type"), Some("get") | Some("set")),
        _ => false,
    }
}

/// A stanza delivery this node could not decode (the bus counted it): its
/// sender gets `error` (RFC 6120 section 8.3.1) from the intended recipient,
/// through the router, off the dispatcher's path. Errors and results are not
/// answered; a stanza whose start tag could not be read has no known sender.
fn answer_undecodable(shared: &Arc<Shared>, stanza: Option<Element>, error: StanzaError) {
    let Some(reply) = stanza.and_then(|stanza| stanza::error_reply(&stanza, &error)) else {
        tracing::warn!(condition = %error.condition, "an undecodable delivery has nobody to answer");
        return;
    };
    let router = Arc::clone(&shared.router);
    tokio::spawn(
        async move {
            if let Err(error) = router.route(Origin::Server, reply, None).await {
                tracing::warn!(%error, "answering the sender of an undecodable delivery failed");
            }
        }
        .in_current_span(),
    );
}

/// [`reroute`] a stanza that did not enter a resumable stream's queue
/// (XEP-0198): it is first marked as no longer in flight to the stream, so
/// that a resumption or expiry does not also send it.
fn reroute_in_flight(
    shared: &Arc<Shared>,
    conn: ConnId,
    queued: QueuedStanza,
    journal: Option<crate::sm::JournalSink>,
) {
    let journal = journal.map(|sink| {
        crate::sm::SmState::consume_in_flight(&sink, &queued);
        sink.tx
    });
    shared.reroute(conn, queued.into_element(), journal);
}

/// Hand a stanza whose connection is gone back to the router, off the
/// dispatcher's path; one connection's stanzas keep their order.
pub(crate) fn reroute(shared: &Arc<Shared>, conn: ConnId, stanza: Element) {
    shared.reroute(conn, stanza, None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::ns;

    #[test]
    fn which_stanzas_are_rerouted() {
        let stanza = |name: &str, kind: Option<&str>| {
            let element = Element::new(name, ns::CLIENT);
            match kind {
                Some(kind) => element.with_attr("type", kind),
                None => element,
            }
        };
        assert!(is_reroutable(&stanza("message", None)));
        assert!(is_reroutable(&stanza("message", Some("chat"))));
        assert!(is_reroutable(&stanza("iq", Some("get"))));
        assert!(is_reroutable(&stanza("iq", Some("set"))));
        assert!(!is_reroutable(&stanza("iq", Some("result"))));
        assert!(!is_reroutable(&stanza("presence", None)));
    }
}
