//! Stream resumption (XEP-0198 section 5) in place of resource binding: after
//! SASL, `<resume previd h/>` takes over a stream that was detached (or whose
//! old connection has not noticed its loss yet) on any connection-manager.
//!
//! The order makes the hand-over lose nothing and send nothing twice: the new
//! connection's queue is registered and holds deliveries; the session record
//! moves here (new deliveries now come here); the store hands over the
//! stanzas the client did not acknowledge (atomically, with the counters);
//! then `<resumed/>`, those stanzas, and what was held, in that order.

use std::sync::Arc;

use starling_api::resumption::{is_detached, ResumeRefused};
use starling_api::SessionAddr;
use starling_bus::Delivery;
use starling_jid::{BareJid, FullJid};
use starling_xmpp::{ns, Element, StreamErrorCondition};

use super::bind::BoundStream;
use super::stream::{stream_error, NegotiatingStream, StreamEnd};
use crate::outbound::ConnectionHandle;
use crate::queued::QueuedStanza;
use crate::sm::{self, JournalSink};
use crate::transport::Transport;

/// What a `<resume/>` came to: the resumed stream, or the `<failed/>` the
/// client gets (it may bind instead).
pub(crate) type Resumption<T> = Result<BoundStream<T>, Element>;

/// Answer `<resume/>`. `answer` makes what the client gets from the
/// `<resumed/>` and the session's full JID: the `<resumed/>` itself, or a
/// SASL2 `<success/>` carrying it (XEP-0198 section 5 with XEP-0388).
pub(crate) async fn resume_stream<T: Transport>(
    stream: &mut NegotiatingStream<T>,
    user: Option<&BareJid>,
    element: Element,
    answer: impl FnOnce(Element, &FullJid) -> Element,
) -> Result<Resumption<T>, StreamEnd> {
    let Some(user) = user.cloned() else {
        return Err(stream_error(
            StreamErrorCondition::NotAuthorized,
            "authenticate first",
        ));
    };
    let shared = Arc::clone(&stream.shared);
    let (Some(resumption), Some(tx)) = (shared.resumption.clone(), shared.journal.clone()) else {
        return Ok(Err(sm::failed("feature-not-implemented", None)));
    };
    if !shared.resumption_offered() {
        return Ok(Err(sm::failed("feature-not-implemented", None)));
    }
    let Ok(h) = sm::parse_h(&element) else {
        return Ok(Err(sm::failed("bad-request", None)));
    };
    let Some(id) = element.attr("previd").map(str::to_string) else {
        return Ok(Err(sm::failed("item-not-found", None)));
    };
    let refused = |stream: &NegotiatingStream<T>, refused: ResumeRefused| {
        shared.metrics.sm_event("resume_failed");
        let failure = match refused {
            ResumeRefused::NotFound => sm::failed("item-not-found", None),
            // Section 6: the client acks more than the server sent.
            ResumeRefused::HandledCountTooHigh { h, sent, h_in } => {
                sm::failed("undefined-condition", Some(h_in))
                    .with_child(sm::handled_count_too_high(h, sent))
            }
        };
        tracing::debug!(conn = stream.conn, "resumption refused");
        failure
    };
    let (jid, previous) = match resumption.store.peek(&id, &user, h).await {
        Ok(Ok(found)) => found,
        Ok(Err(refusal)) => {
            return Ok(Err(refused(stream, refusal)));
        }
        Err(error) => {
            tracing::warn!(%error, "resumption state unreadable");
            return Ok(Err(sm::failed("internal-server-error", None)));
        }
    };
    let conn = stream.conn;
    let addr = SessionAddr {
        node: shared.node_id.clone(),
        conn,
    };
    let handle = ConnectionHandle::with_bytes(
        conn,
        shared.limits.outbound_queue_stanzas,
        shared.outbound_bytes.clone(),
    );
    handle.with_sm(|state| state.held = Some(Vec::new()));
    shared.add_connection(conn, Arc::clone(&handle));
    let moved = resumption.registry.relocate(&jid, &previous, &addr).await;
    if !matches!(moved, Ok(true)) {
        // Resumed by another connection meanwhile, or expired, or replaced.
        shared.remove_connection(conn);
        return Ok(Err(refused(stream, ResumeRefused::NotFound)));
    }
    // A stream still attached to another node that is not listening to its
    // bus any more (killed): what was in flight to it is taken over too.
    let previous_node_dead = !is_detached(&previous)
        && previous.node != shared.node_id
        && !shared
            .bus
            .is_listening(&previous.node)
            .await
            .unwrap_or(true);
    let resumed = match resumption
        .store
        .resume(&id, &user, h, &addr, previous_node_dead)
        .await
    {
        Ok(Ok(resumed)) if resumed.previous == previous => resumed,
        outcome => {
            // Changed between the look and the take: put the session back.
            tracing::info!(jid = %jid, ?outcome, "resumption raced, refused");
            let _ = resumption.registry.relocate(&jid, &addr, &previous).await;
            shared.remove_connection(conn);
            for held in handle.take_remaining() {
                crate::delivery::reroute(&shared, conn, held.into_element());
            }
            return Ok(Err(refused(stream, ResumeRefused::NotFound)));
        }
    };
    if !is_detached(&previous) && previous != addr {
        // Section 5: the old stream, if still open, is terminated.
        let close = Delivery::Close {
            conn: previous.conn,
            condition: StreamErrorCondition::Conflict,
            text: Some("the stream was resumed on another connection".to_string()),
        };
        if let Err(error) = shared.bus.publish(&previous.node, close).await {
            tracing::warn!(%error, "could not close the resumed stream's old connection");
        }
    }
    handle.set_bound(jid.clone(), addr.clone());
    // The edge's copy of the record follows the registry's (carbons included),
    // so that a re-registration after a Redis loss keeps them.
    match resumption.registry.session(&jid).await {
        Ok(Some(record)) if record.addr == addr => handle.set_resumed(record),
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(jid = %jid, %error, "resumed session's record unreadable, the edge keeps a fresh one")
        }
    }
    let replay: Vec<QueuedStanza> = resumed
        .unacked
        .iter()
        .filter_map(|xml| sm::parse_journaled(xml, &shared.parser_limits.for_server_copies()))
        .map(QueuedStanza::new)
        .collect();
    let replayed = replay.len();
    handle.with_sm(|state| {
        state.enabled = true;
        state.h_in = resumed.h_in;
        state.acked = resumed.acked;
        state.sent = resumed.acked;
        state.max_unacked = resumed.max_unacked;
        state.journal = Some(JournalSink {
            id: id.clone(),
            addr: addr.clone(),
            tx,
        });
    });
    let resumed_nonza = Element::new("resumed", ns::SM)
        .with_attr("previd", id.clone())
        .with_attr("h", resumed.h_in.to_string());
    handle.finish_resume(
        QueuedStanza::nonza(answer(resumed_nonza, &jid), true),
        replay,
    );
    shared.metrics.sm_event("resumed");
    tracing::info!(conn, jid = %jid, replayed, from = %previous.node, "stream resumed");
    match BoundStream::take(stream, jid.clone(), addr.clone(), Arc::clone(&handle)) {
        Some(bound) => Ok(Ok(bound)),
        None => {
            // The new connection is gone too: the stream is detached again.
            handle.close(None);
            let sink = JournalSink {
                id,
                addr,
                tx: shared.journal.clone().expect("journal"),
            };
            crate::sm_session::detach(&shared, &jid, &handle, &sink).await;
            Err(StreamEnd::ConnectionLost)
        }
    }
}
