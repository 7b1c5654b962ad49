//! The outbound streams this node owns, one per remote domain.
//!
//! A stanza delivered to [`starling_api::S2S_OUTBOUND_CONN`] goes to its
//! `to` domain's link: a bounded channel to the task that owns the stream.
//! While the stream opens, stanzas wait in the task's queue, bounded by
//! `s2s.queue_stanzas` and `s2s.queue_bytes` (past them a stanza bounces at
//! once); when it cannot be opened within `s2s.connect_timeout_secs`, each
//! bounces with `remote-server-not-found` (the domain did not resolve or
//! nothing accepted a connection) or `remote-server-timeout` (it took too
//! long, or the peer refused us), RFC 6120 section 10.4.3; an error is
//! never answered (section 8.3.1). The stream closes after
//! `s2s.idle_timeout_secs` with nothing to send, and the node's claim on the
//! domain is released (`RouterApi::unbind`), so the next stanza may open it
//! on any node.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use starling_api::{Origin, SessionAddr, S2S_OUTBOUND_CONN, S2S_RESOURCE_PREFIX};
use starling_jid::{BareJid, Jid};
use starling_xmpp::{ns, stanza, Element, StanzaError, StanzaErrorCondition, StreamEvent};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::connect::{OpenError, OpenStream};
use super::state::{Direction, Link};
use crate::shared::Shared;
use crate::transport::tcp::receive_bytes;
use crate::transport::Received;

/// Hand a stanza to its remote domain's outbound stream, opening it if
/// needed; it bounces when federation is off on this node or the queue is full.
pub(crate) fn enqueue(shared: &Arc<Shared>, stanza_element: Element) {
    let Some(s2s) = shared.s2s.as_ref() else {
        bounce(
            shared,
            stanza_element,
            StanzaErrorCondition::RemoteServerNotFound,
        );
        return;
    };
    let Some(domain) = stanza_element
        .attr("to")
        .and_then(|to| to.parse::<Jid>().ok())
        .map(|to| to.domain().to_string())
    else {
        return;
    };
    if !s2s.settings().allows(&domain) {
        bounce(
            shared,
            stanza_element,
            StanzaErrorCondition::RemoteServerNotFound,
        );
        return;
    }
    let mut stanza_element = stanza_element;
    let mut links = s2s.links.lock();
    if let Some(link) = links.get(&domain) {
        match link.tx.try_send(stanza_element) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(returned)) => {
                drop(links);
                shared.metrics.s2s().stanza("queue_full");
                bounce_counted(shared, returned, StanzaErrorCondition::ResourceConstraint);
                return;
            }
            // The task ended since: a new one.
            Err(mpsc::error::TrySendError::Closed(returned)) => {
                links.remove(&domain);
                stanza_element = returned;
            }
        }
    }
    let (tx, rx) = mpsc::channel(s2s.settings().queue_stanzas.max(1));
    let generation = s2s.next_link.fetch_add(1, Ordering::Relaxed);
    let _ = tx.try_send(stanza_element);
    links.insert(domain.clone(), Link { generation, tx });
    drop(links);
    tokio::spawn(run_domain(Arc::clone(shared), domain, generation, rx));
}

/// The error reply for a stanza that could not go on, routed to its sender.
fn bounce(shared: &Arc<Shared>, stanza_element: Element, condition: StanzaErrorCondition) {
    let outcome = match condition {
        StanzaErrorCondition::RemoteServerTimeout => "remote_server_timeout",
        StanzaErrorCondition::ResourceConstraint => "queue_full",
        _ => "remote_server_not_found",
    };
    shared.metrics.s2s().stanza(outcome);
    bounce_counted(shared, stanza_element, condition);
}

fn bounce_counted(shared: &Arc<Shared>, stanza_element: Element, condition: StanzaErrorCondition) {
    // RFC 6120 section 8.3.1: never an error in reply to an error.
    let Some(reply) = stanza::error_reply(&stanza_element, &StanzaError::new(condition)) else {
        return;
    };
    let router = Arc::clone(&shared.router);
    tokio::spawn(async move {
        if let Err(error) = router.route(Origin::Server, reply, None).await {
            tracing::debug!(%error, "bouncing an s2s stanza failed");
        }
    });
}

/// The stanza's size in the queue's byte bound.
fn size_of(stanza_element: &Element) -> usize {
    stanza_element.stanza_xml_len()
}

/// The task of one remote domain: open the stream, write what comes, close
/// it when idle, release the claim.
async fn run_domain(
    shared: Arc<Shared>,
    domain: String,
    generation: u64,
    mut rx: mpsc::Receiver<Element>,
) {
    let Some(s2s) = shared.s2s.as_ref() else {
        return;
    };
    let settings = s2s.settings().clone();
    let mut queue: VecDeque<Element> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let opened = {
        let open = s2s.connector.open(&domain, &settings.dialback_secret);
        tokio::pin!(open);
        loop {
            tokio::select! {
                opened = &mut open => break opened,
                received = rx.recv() => {
                    let Some(stanza_element) = received else { continue };
                    let size = size_of(&stanza_element);
                    if queued_bytes + size > settings.queue_bytes && !queue.is_empty() {
                        bounce(&shared, stanza_element, StanzaErrorCondition::ResourceConstraint);
                        continue;
                    }
                    queued_bytes += size;
                    queue.push_back(stanza_element);
                }
                _ = shared.shutdown.cancelled() => break Err(OpenError::Timeout),
            }
        }
    };
    let stream = match opened {
        Ok(stream) => stream,
        Err(error) => {
            tracing::info!(domain = %domain, %error, "s2s stream could not be opened");
            shared.metrics.s2s().stream("out", "failed");
            let condition = match error {
                OpenError::NotFound(_) => StanzaErrorCondition::RemoteServerNotFound,
                OpenError::Timeout | OpenError::Refused(_) => {
                    StanzaErrorCondition::RemoteServerTimeout
                }
            };
            end_link(&shared, &domain, generation, &mut rx, &mut queue);
            for stanza_element in queue {
                bounce(&shared, stanza_element, condition);
            }
            release(&shared, &domain).await;
            return;
        }
    };
    shared.metrics.s2s().stream("out", stream.method);
    tracing::info!(domain = %domain, method = stream.method, "s2s stream opened");
    let leftovers = write_until_idle(&shared, &domain, stream, &mut rx, queue).await;
    let mut remaining = VecDeque::new();
    end_link(&shared, &domain, generation, &mut rx, &mut remaining);
    release(&shared, &domain).await;
    // What came after the stream ended goes through the router again (a
    // new stream, on whichever node claims the domain).
    for stanza_element in leftovers.into_iter().chain(remaining) {
        let router = Arc::clone(&shared.router);
        if let Err(error) = router.route(Origin::Server, stanza_element, None).await {
            tracing::debug!(domain = %domain, %error, "rerouting an s2s stanza failed");
        }
    }
    tracing::info!(domain = %domain, "s2s stream closed");
}

/// Remove this task's link (only if still this generation's), then take what
/// the channel still holds.
fn end_link(
    shared: &Arc<Shared>,
    domain: &str,
    generation: u64,
    rx: &mut mpsc::Receiver<Element>,
    into: &mut VecDeque<Element>,
) {
    if let Some(s2s) = shared.s2s.as_ref() {
        let mut links = s2s.links.lock();
        if links
            .get(domain)
            .is_some_and(|link| link.generation == generation)
        {
            links.remove(domain);
        }
    }
    rx.close();
    while let Ok(stanza_element) = rx.try_recv() {
        into.push_back(stanza_element);
    }
}

/// Release the node's claim on the domain (the router's record).
async fn release(shared: &Arc<Shared>, domain: &str) {
    let Ok(jid) = BareJid::domain_jid(domain)
        .and_then(|bare| bare.with_resource(&format!("{S2S_RESOURCE_PREFIX}{}", shared.node_id)))
    else {
        return;
    };
    let addr = SessionAddr {
        node: shared.node_id.clone(),
        conn: S2S_OUTBOUND_CONN,
    };
    if let Err(error) = shared.router.unbind(&jid, &addr).await {
        tracing::warn!(domain, %error, "releasing the s2s claim failed");
    }
}

/// A stanza as written on a server stream: in `jabber:server`.
fn serialise(mut stanza_element: Element, out: &mut String) {
    stanza_element.set_namespace_deep(ns::SERVER);
    stanza_element.write_to(out, ns::SERVER);
}

/// Write the queue, then every stanza that comes, until the stream is idle
/// for `s2s.idle_timeout_secs`, the peer closes it, or the node shuts down.
/// Returns what was taken from the channel but not written.
async fn write_until_idle(
    shared: &Arc<Shared>,
    domain: &str,
    stream: OpenStream,
    rx: &mut mpsc::Receiver<Element>,
    queue: VecDeque<Element>,
) -> Vec<Element> {
    let settings = match shared.s2s.as_ref() {
        Some(s2s) => s2s.settings().clone(),
        None => return queue.into(),
    };
    let OpenStream {
        io,
        mut parser,
        method,
        tls,
    } = stream;
    let Some(s2s) = shared.s2s.as_ref() else {
        return queue.into();
    };
    let registration = s2s.streams.register(domain, Direction::Out, method, tls);
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut pending: Vec<Element> = queue.into();
    loop {
        if !pending.is_empty() {
            let mut out = String::new();
            let count = pending.len();
            for stanza_element in pending.drain(..) {
                serialise(stanza_element, &mut out);
            }
            let written = tokio::time::timeout(settings.connect_timeout, async {
                writer.write_all(out.as_bytes()).await?;
                writer.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    for _ in 0..count {
                        shared.metrics.s2s().stanza("sent");
                    }
                    registration.entry().sent(count as u64);
                }
                _ => {
                    tracing::info!(domain, "s2s stream write failed");
                    return Vec::new();
                }
            }
        }
        tokio::select! {
            received = rx.recv() => {
                let Some(stanza_element) = received else { break };
                pending.push(stanza_element);
                while pending.len() < 64 {
                    match rx.try_recv() {
                        Ok(more) => pending.push(more),
                        Err(_) => break,
                    }
                }
            }
            received = receive_bytes(&mut reader, &mut parser) => {
                match received {
                    Received::Fed => {
                        // An outbound stream carries nothing to us but its
                        // end (RFC 6120 section 4.4) or a stream error.
                        loop {
                            match parser.next_event() {
                                Ok(Some(StreamEvent::Element(element))) if element.is("error", ns::STREAM) => {
                                    tracing::info!(domain, condition = element.children().next().map(|child| child.name()).unwrap_or(""), "s2s peer sent a stream error");
                                    return Vec::new();
                                }
                                Ok(Some(StreamEvent::Close)) | Err(_) => {
                                    let _ = writer.write_all(crate::xml::STREAM_CLOSE.as_bytes()).await;
                                    return Vec::new();
                                }
                                Ok(Some(_)) => {}
                                Ok(None) => break,
                            }
                        }
                    }
                    Received::Lost | Received::Invalid(_) => return Vec::new(),
                }
            }
            _ = tokio::time::sleep(settings.idle_timeout) => break,
            _ = shared.shutdown.cancelled() => break,
        }
    }
    // RFC 6120 section 4.4: close our side.
    let _ = tokio::time::timeout(crate::outbound::CLOSE_WRITE_TIMEOUT, async {
        writer
            .write_all(crate::xml::STREAM_CLOSE.as_bytes())
            .await?;
        writer.shutdown().await
    })
    .await;
    pending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_are_written_in_the_server_namespace() {
        let mut message = Element::new("message", ns::CLIENT)
            .with_attr("to", "romeo@example.net")
            .with_attr("from", "juliet@example.com/balcony");
        message.append_child(Element::new("body", ns::CLIENT));
        let mut out = String::new();
        serialise(message, &mut out);
        assert_eq!(
            out,
            "<message to='romeo@example.net' from='juliet@example.com/balcony'><body/></message>"
        );
    }
}
