//! Stream management (XEP-0198) on a bound session: the `<enable/>`, `<r/>`
//! and `<a/>` nonzas, and how a stream with stream management ends: detached
//! for resumption, or ended for good with what the client did not
//! acknowledge rerouted (section 4: as if sent to an unavailable resource).

use std::sync::Arc;

use starling_api::resumption::{detached_addr, ResumableStream};
use starling_api::SessionAddr;
use starling_jid::FullJid;

use starling_xmpp::{ns, Element, StreamError, StreamErrorCondition};

use crate::delivery::is_reroutable;
use crate::outbound::{join_writer, ConnectionHandle};
use crate::queued::QueuedStanza;
use crate::shared::Shared;
use crate::sm::{self, JournalSink};

/// Handle a nonza of `urn:xmpp:sm:3` on a bound session; an error ends the stream.
pub(crate) async fn handle_nonza(
    shared: &Arc<Shared>,
    handle: &Arc<ConnectionHandle>,
    jid: &FullJid,
    addr: &SessionAddr,
    element: Element,
) -> Result<(), StreamError> {
    match element.name() {
        "enable" => {
            enable(shared, handle, jid, addr, &element).await;
            Ok(())
        }
        "r" => {
            // Section 4: answer at once with the count of handled stanzas,
            // persisted for a resumption elsewhere.
            let answered = handle.with_sm(|sm| {
                sm.enabled.then(|| {
                    sm.journal_counters(0);
                    sm.h_in
                })
            });
            match answered {
                Some(h) => handle.push_nonza(QueuedStanza::nonza(sm::answer(h), false)),
                None => unexpected(handle),
            }
            Ok(())
        }
        "a" => {
            let Ok(Some(h)) = sm::parse_h(&element) else {
                return Err(StreamError::with_text(
                    StreamErrorCondition::InvalidXml,
                    "an <a/> needs an 'h' that is an unsigned 32-bit number",
                ));
            };
            let acknowledged = handle.with_sm(|sm| sm.enabled.then(|| sm.acknowledge(h)));
            match acknowledged {
                None | Some(Ok(())) => Ok(()),
                // Section 6: acking more than was sent ends the stream.
                Some(Err((h, sent))) => Err(StreamError::with_text(
                    StreamErrorCondition::UndefinedCondition,
                    format!("acknowledged {h} stanzas, {sent} were sent"),
                )
                .with_application(&sm::handled_count_too_high(h, sent))),
            }
        }
        // A resource is bound already: a resumption would have to come first.
        "resume" => {
            unexpected(handle);
            Ok(())
        }
        other => Err(StreamError::with_text(
            StreamErrorCondition::UnsupportedStanzaType,
            format!("<{other}/> of stream management is not a request"),
        )),
    }
}

fn unexpected(handle: &ConnectionHandle) {
    handle.push_nonza(QueuedStanza::nonza(
        sm::failed("unexpected-request", None),
        false,
    ));
}

/// `<enable/>` (section 3): once per stream; resumable when asked and offered.
async fn enable(
    shared: &Arc<Shared>,
    handle: &Arc<ConnectionHandle>,
    jid: &FullJid,
    addr: &SessionAddr,
    element: &Element,
) {
    if handle.with_sm(|sm| sm.enabled) {
        unexpected(handle);
        return;
    }
    let (journal, enabled) = negotiate_enable(shared, jid, addr, element).await;
    handle.enable_sm(
        journal,
        shared.sm.max_unacked_stanzas,
        QueuedStanza::nonza(enabled, true),
    );
}

/// What `<enable/>` (section 3) turns on for a bound session: the
/// `<enabled/>` answer, and the journal when the stream is resumable (asked
/// for and offered). The caller turns it on in the connection's queue, with
/// the answer where counting starts (alone, or inside a Bind 2 `<bound/>`).
pub(crate) async fn negotiate_enable(
    shared: &Arc<Shared>,
    jid: &FullJid,
    addr: &SessionAddr,
    element: &Element,
) -> (Option<JournalSink>, Element) {
    let wants_resume = matches!(element.attr("resume"), Some("true") | Some("1"));
    // The client's preferred maximum, when lower than ours (section 5).
    let timeout = element
        .attr("max")
        .and_then(|max| max.parse::<u64>().ok())
        .filter(|max| *max > 0)
        .map_or(shared.sm.resume_timeout_secs, |max| {
            max.min(shared.sm.resume_timeout_secs)
        });
    let mut journal = None;
    if wants_resume && shared.resumption_offered() {
        journal = start_resumable(shared, jid, addr, timeout).await;
    }
    let mut enabled = Element::new("enabled", ns::SM);
    if let Some(sink) = &journal {
        enabled.set_attr("id", sink.id.clone());
        enabled.set_attr("resume", "true");
        enabled.set_attr("max", timeout.to_string());
    }
    shared.metrics.sm_event(if journal.is_some() {
        "enabled_resumable"
    } else {
        "enabled"
    });
    (journal, enabled)
}

/// Record a resumable stream in the store and mark its session resumable.
async fn start_resumable(
    shared: &Arc<Shared>,
    jid: &FullJid,
    addr: &SessionAddr,
    timeout_secs: u64,
) -> Option<JournalSink> {
    let resumption = shared.resumption.as_ref()?;
    let tx = shared.journal.clone()?;
    let id = sm::new_resumption_id();
    let stream = ResumableStream {
        id: id.clone(),
        jid: jid.clone(),
        addr: addr.clone(),
        timeout_secs,
        max_unacked: shared.sm.max_unacked_stanzas,
    };
    if let Err(error) = resumption.store.enable(stream).await {
        tracing::warn!(jid = %jid, %error, "resumption state not recorded: stream management without resumption");
        return None;
    }
    match resumption.registry.set_resumption(jid, addr, &id).await {
        Ok(true) => Some(JournalSink {
            id,
            addr: addr.clone(),
            tx,
        }),
        outcome => {
            tracing::warn!(jid = %jid, ?outcome, "session not marked resumable: stream management without resumption");
            let _ = resumption.store.end(&id, addr).await;
            None
        }
    }
}

/// Detach a resumable stream whose connection is gone (its journal applied):
/// false when that failed and the stream is to be ended instead.
pub(crate) async fn detach(
    shared: &Arc<Shared>,
    jid: &FullJid,
    handle: &ConnectionHandle,
    sink: &JournalSink,
) -> bool {
    let Some(resumption) = shared.resumption.as_ref() else {
        return false;
    };
    match resumption.store.detach(&sink.id, &sink.addr, false).await {
        Ok(true) => {
            let detached = detached_addr(sink.addr.conn);
            match resumption
                .registry
                .relocate(jid, &sink.addr, &detached)
                .await
            {
                Ok(true) => {}
                outcome => {
                    tracing::info!(jid = %jid, ?outcome, "detached stream's session was not at its address; the stream expires unresumed")
                }
            }
            shared.remove_connection(handle.conn);
            shared.note_ended_stream(handle.conn, sink.clone());
            shared.metrics.sm_event("detached");
            tracing::info!(conn = handle.conn, jid = %jid, "stream detached, resumable");
            true
        }
        Ok(false) => {
            // Resumed on another connection already: nothing here is ours.
            shared.remove_connection(handle.conn);
            shared.note_ended_stream(handle.conn, sink.clone());
            tracing::info!(conn = handle.conn, jid = %jid, "stream ended, resumed elsewhere");
            true
        }
        Err(error) => {
            tracing::warn!(jid = %jid, %error, "detaching failed, ending the stream");
            false
        }
    }
}

/// The end of a resumable stream. Its connection was lost (or the node is
/// shutting down): detach it, the session stays bound and available and its
/// stanzas wait in the store. The client closed it, or it ended with a stream
/// error: end it for good, unbind, and reroute what the store held for it.
pub(crate) async fn end_resumable(
    shared: &Arc<Shared>,
    jid: &FullJid,
    handle: &Arc<ConnectionHandle>,
    sink: &JournalSink,
    clean_close: bool,
    writer_task: &mut tokio::task::JoinHandle<Vec<QueuedStanza>>,
) {
    let unwritten = join_writer(handle, writer_task).await;
    let Some(resumption) = shared.resumption.as_ref() else {
        return;
    };
    // Everything that entered the queue (or was held for an inactive
    // client) is in the store before we decide.
    handle.journal_held();
    sm::journal_barrier(&sink.tx).await;
    let resumable = !clean_close
        && matches!(
            handle.close_condition(),
            None | Some(StreamErrorCondition::SystemShutdown)
        );
    if resumable && detach(shared, jid, handle, sink).await {
        return;
    }
    shared.metrics.sm_event("ended");
    let leftovers: Vec<Element> = match resumption.store.end(&sink.id, &sink.addr).await {
        Ok(Some(stanzas)) => stanzas
            .iter()
            .filter_map(|xml| sm::parse_journaled(xml, &shared.parser_limits.for_server_copies()))
            .collect(),
        Ok(None) => {
            shared.remove_connection(handle.conn);
            shared.note_ended_stream(handle.conn, sink.clone());
            tracing::info!(conn = handle.conn, jid = %jid, "stream ended, resumed elsewhere");
            return;
        }
        Err(error) => {
            tracing::warn!(jid = %jid, %error, "resumption state unreadable: rerouting from memory");
            let mut memory = handle.take_unacked();
            memory.extend(unwritten);
            memory.extend(handle.take_remaining());
            memory.into_iter().map(QueuedStanza::into_element).collect()
        }
    };
    tracing::debug!(jid = %jid, stanzas = leftovers.len(), "stream management ended, rerouting what was not acknowledged");
    if let Err(error) = shared.router.unbind(jid, &sink.addr).await {
        tracing::warn!(jid = %jid, %error, "unbind failed");
    }
    shared.remove_connection(handle.conn);
    shared.note_ended_stream(handle.conn, sink.clone());
    for stanza in leftovers {
        if !is_reroutable(&stanza) {
            continue;
        }
        if let Err(error) = shared.router.undeliverable(stanza, &sink.addr).await {
            tracing::warn!(jid = %jid, %error, "rerouting an unacknowledged stanza failed");
        }
    }
    tracing::info!(conn = handle.conn, jid = %jid, "session ended");
}
