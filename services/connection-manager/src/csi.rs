//! Client State Indication (XEP-0352, `urn:xmpp:csi:0`): a client says it
//! is `<inactive/>` (nobody looks at the screen) or `<active/>` again, and
//! while it is inactive the connection holds what can wait.
//!
//! What waits (section 2.2 lists it as what a server may do): presence updates,
//! only the latest per sender full JID (an unavailable replaces the available
//! one), and messages whose only payload is a XEP-0085 chat state, only the
//! latest per conversation. Everything else goes out at once, after what was
//! held (in its order: the client never sees stanzas of one sender
//! reordered, RFC 6120 section 10.1). Subscription presence is never held: it
//! asks the user something.
//!
//! The [`CsiBuffer`] sits in front of the connection's queue
//! (`crate::outbound`): a held stanza is not in the queue until it is
//! released, and it counts against the queue's bounds all the same, in
//! stanzas and in bytes. At half those bounds (as many contacts as half the
//! stanza bound changed presence, or half the byte bound is held) it is
//! released rather than grown; a superseded stanza is counted, never
//! silently lost.

use std::collections::{btree_map, BTreeMap, HashMap};

use starling_api::{FeatureSpec, StreamFeature, StreamStage};
use starling_xmpp::{ns, stanza, Element, StanzaKind};

use crate::metrics::{CsiFlush, CsiMetrics};
use crate::queued::QueuedStanza;

/// The XEP-0352 namespace.
pub(crate) const NS: &str = ns::CSI;
/// XEP-0085 chat state notifications.
const CHAT_STATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0334 message processing hints (`<no-store/>` often rides on a chat state).
const HINTS: &str = "urn:xmpp:hints";
/// XEP-0359 unique and stable stanza ids (`<origin-id/>`).
const STANZA_IDS: &str = "urn:xmpp:sid:0";
/// XEP-0280 message carbons, and the XEP-0297 forwarding that wraps the copy.
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

/// XEP-0352 section 3.1: offered in the stream features after authentication.
/// It has no disco#info feature.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "csi",
    specification: "XEP-0352",
    disco_features: &[],
    iq_namespaces: &[],
    stream_features: &[StreamFeature {
        name: "csi",
        namespace: NS,
        stage: StreamStage::AfterAuthentication,
    }],
};

/// What the client said of itself (XEP-0352 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientState {
    Active,
    Inactive,
}

impl ClientState {
    /// The state a top-level `<active/>` or `<inactive/>` nonza indicates.
    pub fn of(element: &Element) -> Option<Self> {
        if element.namespace() != NS {
            return None;
        }
        match element.name() {
            "active" => Some(ClientState::Active),
            "inactive" => Some(ClientState::Inactive),
            _ => None,
        }
    }
}

/// What may wait while the client is inactive, and whose newer copy
/// replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HoldKey {
    /// The presence of one sender full JID.
    Presence(String),
    /// The chat state of one conversation: its sender, or for a carbon copy
    /// the wrapped message's sender and recipient.
    ChatState(String),
}

/// Whether `stanza` may wait for an inactive client, and under which key.
fn hold_key(stanza: &Element) -> Option<HoldKey> {
    let sender = || stanza.attr("from").unwrap_or_default().to_string();
    match StanzaKind::of(stanza)? {
        // Available and unavailable only: subscription requests and answers,
        // errors (and probes, never sent to clients) go out at once.
        StanzaKind::Presence => match stanza::stanza_type(stanza) {
            "" | "unavailable" => Some(HoldKey::Presence(sender())),
            _ => None,
        },
        StanzaKind::Message if is_chat_state_only(stanza) => Some(HoldKey::ChatState(sender())),
        StanzaKind::Message => carbon_of_chat_state(stanza).map(HoldKey::ChatState),
        StanzaKind::Iq => None,
    }
}

/// A message whose only payload is a XEP-0085 chat state: besides it, only a
/// `<thread/>`, XEP-0334 hints and XEP-0359 ids, which say nothing to the
/// user. An error, a body, a subject, a receipt, an encrypted payload or
/// anything unknown makes it worth sending now.
pub(crate) fn is_chat_state_only(message: &Element) -> bool {
    if stanza::stanza_type(message) == "error" {
        return false;
    }
    let mut chat_state = false;
    for child in message.children() {
        match child.namespace() {
            CHAT_STATES => chat_state = true,
            HINTS | STANZA_IDS => {}
            ns::CLIENT if child.name() == "thread" => {}
            _ => return false,
        }
    }
    chat_state
}

/// A XEP-0280 carbon copy (`<sent/>` or `<received/>` and nothing else) of a
/// chat-state-only message: the key of its conversation.
fn carbon_of_chat_state(message: &Element) -> Option<String> {
    let mut children = message.children();
    let carbon = children.next()?;
    if children.next().is_some()
        || carbon.namespace() != CARBONS
        || !matches!(carbon.name(), "sent" | "received")
    {
        return None;
    }
    let inner = carbon
        .get_child("forwarded", FORWARD)?
        .get_child("message", ns::CLIENT)?;
    if !is_chat_state_only(inner) {
        return None;
    }
    Some(format!(
        "{} {} {}",
        carbon.name(),
        inner.attr("from").unwrap_or_default(),
        inner.attr("to").unwrap_or_default()
    ))
}

/// The stanzas that enter the connection's queue now, in this order: what
/// was released, then the stanza that released it.
/// Each with its size in bytes (`QueuedStanza::wire_len`).
pub(crate) struct Admitted {
    released: btree_map::IntoValues<u64, (QueuedStanza, usize)>,
    then: Option<(QueuedStanza, usize)>,
}

impl Admitted {
    fn only(stanza: QueuedStanza, size: usize) -> Self {
        Admitted {
            released: BTreeMap::new().into_values(),
            then: Some((stanza, size)),
        }
    }

    fn nothing() -> Self {
        Admitted {
            released: BTreeMap::new().into_values(),
            then: None,
        }
    }
}

impl Iterator for Admitted {
    type Item = (QueuedStanza, usize);

    fn next(&mut self) -> Option<(QueuedStanza, usize)> {
        self.released.next().or_else(|| self.then.take())
    }
}

/// The stanzas held for one inactive client, in front of its queue.
#[derive(Default)]
pub(crate) struct CsiBuffer {
    inactive: bool,
    /// The held stanzas by arrival (their sequence number), with their sizes.
    held: BTreeMap<u64, (QueuedStanza, usize)>,
    /// The sum of the held stanzas' sizes: they count against the
    /// connection's byte bound as if queued (issue 18).
    bytes: usize,
    /// The sequence number of the held stanza of each key.
    latest: HashMap<HoldKey, u64>,
    next_seq: u64,
    /// Past this many held stanzas, they are released rather than grown.
    limit: usize,
    /// Past this many held bytes, likewise.
    byte_limit: usize,
    /// Set when the client first becomes inactive.
    metrics: Option<CsiMetrics>,
    /// Replaced by a newer stanza of the same key and never to be sent:
    /// collected for the stream management journal (they were in flight).
    superseded: Vec<QueuedStanza>,
}

impl CsiBuffer {
    /// Stanzas held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn is_inactive(&self) -> bool {
        self.inactive
    }

    /// The client became inactive: hold from now on, at most `limit`
    /// stanzas (one per contact) and `byte_limit` bytes at a time (one
    /// stanza of any size).
    pub fn become_inactive(&mut self, limit: usize, byte_limit: usize, metrics: &CsiMetrics) {
        self.limit = limit.max(1);
        self.byte_limit = byte_limit;
        let metrics = self.metrics.get_or_insert_with(|| metrics.clone());
        if !self.inactive {
            self.inactive = true;
            metrics.inactive_sessions.inc();
        }
    }

    /// The client became active: everything held goes out, in order, ahead
    /// of whatever the client asks next (XEP-0352 section 5.1).
    pub fn become_active(&mut self) -> Admitted {
        if self.inactive {
            self.inactive = false;
            if let Some(metrics) = &self.metrics {
                metrics.inactive_sessions.dec();
            }
        }
        self.release(CsiFlush::Active, None)
    }

    /// A stanza for the client, `size` bytes: what enters the queue now
    /// because of it (nothing when it is held).
    pub fn admit(&mut self, stanza: QueuedStanza, size: usize) -> Admitted {
        if !self.inactive {
            return Admitted::only(stanza, size);
        }
        let Some(key) = hold_key(&stanza.stanza) else {
            // Worth waking the client: what waited goes first.
            return self.release(CsiFlush::Important, Some((stanza, size)));
        };
        let full = (!self.latest.contains_key(&key) && self.held.len() >= self.limit)
            || (self.bytes > 0 && self.bytes.saturating_add(size) > self.byte_limit);
        let released = if full {
            self.release(CsiFlush::Limit, None)
        } else {
            Admitted::nothing()
        };
        self.hold(key, stanza, size);
        released
    }

    /// The stream ended: what is still held, in order, goes back with the
    /// queue (for rerouting, as if it had been queued).
    pub fn take(&mut self) -> Admitted {
        self.release(CsiFlush::StreamEnd, None)
    }

    /// The stanzas superseded since the last call.
    pub fn take_superseded(&mut self) -> Vec<QueuedStanza> {
        std::mem::take(&mut self.superseded)
    }

    fn hold(&mut self, key: HoldKey, stanza: QueuedStanza, size: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let superseded = self
            .latest
            .insert(key, seq)
            .and_then(|older| self.held.remove(&older))
            .map(|(superseded, superseded_size)| {
                self.bytes -= superseded_size;
                superseded
            });
        self.held.insert(seq, (stanza, size));
        self.bytes += size;
        if let Some(metrics) = &self.metrics {
            metrics.held.inc();
            if superseded.is_some() {
                metrics.superseded.inc();
            }
        }
        self.superseded.extend(superseded);
    }

    fn release(&mut self, reason: CsiFlush, then: Option<(QueuedStanza, usize)>) -> Admitted {
        if !self.held.is_empty() {
            if let Some(metrics) = &self.metrics {
                metrics.flushed(reason, self.held.len());
            }
        }
        self.latest.clear();
        self.bytes = 0;
        Admitted {
            released: std::mem::take(&mut self.held).into_values(),
            then,
        }
    }
}

impl Drop for CsiBuffer {
    fn drop(&mut self) {
        if self.inactive {
            if let Some(metrics) = &self.metrics {
                metrics.inactive_sessions.dec();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::parse_element;

    fn element(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Default::default()).expect("test stanza parses")
    }

    fn queued(xml: &str) -> QueuedStanza {
        QueuedStanza::new(element(xml))
    }

    fn presence(from: &str, show: &str) -> QueuedStanza {
        queued(&format!(
            "<presence xmlns='jabber:client' from='{from}' to='juliet@example.com/balcony'><show>{show}</show></presence>"
        ))
    }

    fn composing(from: &str) -> QueuedStanza {
        queued(&format!(
            "<message xmlns='jabber:client' from='{from}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ))
    }

    fn chat(from: &str, body: &str) -> QueuedStanza {
        queued(&format!(
            "<message xmlns='jabber:client' from='{from}' type='chat'><body>{body}</body></message>"
        ))
    }

    fn xml(stanzas: impl IntoIterator<Item = (QueuedStanza, usize)>) -> Vec<String> {
        stanzas
            .into_iter()
            .map(|(stanza, _)| stanza.stanza.to_stanza_xml())
            .collect()
    }

    #[test]
    fn held_bytes_are_counted_and_freed() {
        let (mut buffer, _metrics) = inactive(10);
        assert!(xml(buffer.admit(presence("romeo@example.net/a", "away"), 100)).is_empty());
        assert!(xml(buffer.admit(presence("romeo@example.net/b", "away"), 50)).is_empty());
        assert_eq!(buffer.bytes(), 150);
        // A superseded stanza's bytes are freed with it.
        assert!(xml(buffer.admit(presence("romeo@example.net/a", "xa"), 30)).is_empty());
        assert_eq!(buffer.bytes(), 80);
        let released: Vec<usize> = buffer.become_active().map(|(_, size)| size).collect();
        assert_eq!(released, vec![50, 30]);
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn past_its_byte_limit_the_buffer_releases_rather_than_grows() {
        let (mut buffer, _metrics) = inactive(10);
        // One stanza of any size is held.
        assert!(xml(buffer.admit(presence("a@example.net/1", "away"), 5000)).is_empty());
        // Another that would pass 1000 bytes releases the first.
        let out = xml(buffer.admit(presence("b@example.net/1", "away"), 600));
        assert_eq!(out.len(), 1);
        assert!(out[0].contains("a@example.net/1"));
        assert_eq!(buffer.bytes(), 600);
        assert!(xml(buffer.admit(presence("c@example.net/1", "away"), 400)).is_empty());
        assert_eq!(
            xml(buffer.admit(presence("d@example.net/1", "away"), 1)).len(),
            2
        );
        assert_eq!(buffer.bytes(), 1);
    }

    fn inactive(limit: usize) -> (CsiBuffer, CsiMetrics) {
        let metrics = CsiMetrics::default();
        let mut buffer = CsiBuffer::default();
        buffer.become_inactive(limit, 1000, &metrics);
        (buffer, metrics)
    }

    #[test]
    fn nonzas_are_read_by_name_and_namespace() {
        assert_eq!(
            ClientState::of(&element("<inactive xmlns='urn:xmpp:csi:0'/>")),
            Some(ClientState::Inactive)
        );
        assert_eq!(
            ClientState::of(&element("<active xmlns='urn:xmpp:csi:0'/>")),
            Some(ClientState::Active)
        );
        assert_eq!(
            ClientState::of(&element("<csi xmlns='urn:xmpp:csi:0'/>")),
            None
        );
        assert_eq!(
            ClientState::of(&element("<active xmlns='jabber:client'/>")),
            None
        );
    }

    #[test]
    fn an_active_client_gets_everything_at_once() {
        let mut buffer = CsiBuffer::default();
        assert_eq!(
            xml(buffer.admit(presence("romeo@example.net/a", "away"), 10)).len(),
            1
        );
        assert_eq!(buffer.len(), 0);
    }

    #[test]
    fn only_the_latest_presence_per_full_jid_is_kept() {
        let (mut buffer, metrics) = inactive(100);
        for show in ["away", "xa", "dnd"] {
            assert!(xml(buffer.admit(presence("romeo@example.net/a", show), 10)).is_empty());
        }
        assert!(xml(buffer.admit(presence("romeo@example.net/b", "chat"), 10)).is_empty());
        // An unavailable replaces the available one.
        assert!(xml(buffer.admit(queued(
            "<presence xmlns='jabber:client' from='mercutio@example.net/c'><show>away</show></presence>"
        ), 10))
        .is_empty());
        assert!(xml(buffer.admit(queued(
            "<presence xmlns='jabber:client' from='mercutio@example.net/c' type='unavailable'/>"
        ), 10))
        .is_empty());
        assert_eq!(buffer.len(), 3);
        assert_eq!(
            xml(buffer.become_active()),
            vec![
                "<presence from='romeo@example.net/a' to='juliet@example.com/balcony'><show>dnd</show></presence>",
                "<presence from='romeo@example.net/b' to='juliet@example.com/balcony'><show>chat</show></presence>",
                "<presence from='mercutio@example.net/c' type='unavailable'/>",
            ]
        );
        assert_eq!(metrics.held.get(), 6);
        assert_eq!(metrics.superseded.get(), 3);
        assert_eq!(metrics.flushed_count(CsiFlush::Active), 3);
        assert_eq!(metrics.inactive_sessions.get(), 0);
        // Active again: nothing is held any more.
        assert_eq!(
            xml(buffer.admit(presence("romeo@example.net/a", "away"), 10)).len(),
            1
        );
    }

    #[test]
    fn an_important_stanza_releases_the_held_ones_first_in_their_order() {
        let (mut buffer, metrics) = inactive(100);
        buffer.admit(presence("romeo@example.net/a", "away"), 10);
        buffer.admit(composing("mercutio@example.net/c"), 10);
        // Romeo's newer presence comes after Mercutio's chat state: the
        // superseded one's place is not kept.
        buffer.admit(presence("romeo@example.net/a", "xa"), 10);
        let out = xml(buffer.admit(chat("mercutio@example.net/c", "hi"), 10));
        assert_eq!(out.len(), 3);
        assert!(out[0].contains("<composing"), "{out:?}");
        assert!(out[1].contains("<show>xa</show>"), "{out:?}");
        assert!(out[2].contains("<body>hi</body>"), "{out:?}");
        assert_eq!(buffer.len(), 0);
        assert!(buffer.is_inactive());
        assert_eq!(metrics.flushed_count(CsiFlush::Important), 2);
        // Still inactive: the next presence is held again.
        assert!(xml(buffer.admit(presence("romeo@example.net/a", "dnd"), 10)).is_empty());
    }

    #[test]
    fn subscription_presence_and_errors_are_not_held() {
        for stanza in [
            "<presence xmlns='jabber:client' from='romeo@example.net' type='subscribe'/>",
            "<presence xmlns='jabber:client' from='romeo@example.net' type='subscribed'/>",
            "<presence xmlns='jabber:client' from='romeo@example.net' type='unsubscribe'/>",
            "<presence xmlns='jabber:client' from='romeo@example.net' type='unsubscribed'/>",
            "<presence xmlns='jabber:client' from='romeo@example.net' type='error'/>",
            "<iq xmlns='jabber:client' from='romeo@example.net/a' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        ] {
            let (mut buffer, _) = inactive(100);
            buffer.admit(presence("romeo@example.net/a", "away"), 10);
            let out = xml(buffer.admit(queued(stanza), 10));
            assert_eq!(out.len(), 2, "{stanza}");
            assert_eq!(out[1], element(stanza).to_stanza_xml());
        }
    }

    #[test]
    fn chat_state_only_messages() {
        let only = |xml: &str| is_chat_state_only(&element(xml));
        assert!(only("<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"));
        assert!(only("<message xmlns='jabber:client' type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/><thread>t1</thread><no-store xmlns='urn:xmpp:hints'/><origin-id xmlns='urn:xmpp:sid:0' id='x'/></message>"));
        assert!(only("<message xmlns='jabber:client' type='groupchat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"));
        // A body, a receipt, an error or no chat state at all: not held.
        assert!(!only("<message xmlns='jabber:client' type='chat'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"));
        assert!(!only("<message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/><received xmlns='urn:xmpp:receipts' id='m1'/></message>"));
        assert!(!only("<message xmlns='jabber:client' type='error'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"));
        assert!(!only("<message xmlns='jabber:client' type='chat'/>"));
        assert!(!only(
            "<message xmlns='jabber:client' type='chat'><thread>t1</thread></message>"
        ));
    }

    #[test]
    fn chat_states_keep_the_latest_per_conversation_and_carbons_are_unwrapped() {
        let (mut buffer, metrics) = inactive(100);
        buffer.admit(composing("romeo@example.net/a"), 10);
        buffer.admit(queued(
            "<message xmlns='jabber:client' from='romeo@example.net/a' type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/></message>",
        ), 10);
        let carbon = |state: &str, to: &str| {
            queued(&format!(
                "<message xmlns='jabber:client' from='juliet@example.com' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='juliet@example.com/desk' to='{to}' type='chat'><{state} xmlns='http://jabber.org/protocol/chatstates'/></message></forwarded></sent></message>"
            ))
        };
        buffer.admit(carbon("composing", "romeo@example.net"), 10);
        buffer.admit(carbon("composing", "mercutio@example.net"), 10);
        buffer.admit(carbon("active", "romeo@example.net"), 10);
        assert_eq!(buffer.len(), 3);
        assert_eq!(metrics.superseded.get(), 2);
        let out = xml(buffer.become_active());
        assert!(out[0].contains("<paused"), "{out:?}");
        assert!(out[1].contains("mercutio"), "{out:?}");
        assert!(
            out[2].contains("<active") && out[2].contains("to='romeo"),
            "{out:?}"
        );
        // A carbon of a message with a body is important.
        let (mut buffer, _) = inactive(100);
        let with_body = "<message xmlns='jabber:client' from='juliet@example.com' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='juliet@example.com/desk' to='romeo@example.net' type='chat'><body>hi</body></message></forwarded></sent></message>";
        assert_eq!(xml(buffer.admit(queued(with_body), 10)).len(), 1);
    }

    #[test]
    fn the_buffer_is_bounded_by_releasing_not_by_dropping() {
        let (mut buffer, metrics) = inactive(2);
        assert!(xml(buffer.admit(presence("a@example.net/1", "away"), 10)).is_empty());
        assert!(xml(buffer.admit(presence("b@example.net/1", "away"), 10)).is_empty());
        // A newer presence of a held contact does not grow the buffer.
        assert!(xml(buffer.admit(presence("b@example.net/1", "xa"), 10)).is_empty());
        assert_eq!(buffer.len(), 2);
        // A third contact: the two held go out, the third is held.
        let out = xml(buffer.admit(presence("c@example.net/1", "away"), 10));
        assert_eq!(out.len(), 2);
        assert!(out[0].contains("a@example.net") && out[1].contains("<show>xa</show>"));
        assert_eq!(buffer.len(), 1);
        assert_eq!(metrics.flushed_count(CsiFlush::Limit), 2);
        // The stream ends: what is held goes back with the queue.
        let rest = xml(buffer.take());
        assert_eq!(rest.len(), 1);
        assert!(rest[0].contains("c@example.net"));
        assert_eq!(metrics.flushed_count(CsiFlush::StreamEnd), 1);
        assert_eq!(metrics.inactive_sessions.get(), 1);
        drop(buffer);
        assert_eq!(metrics.inactive_sessions.get(), 0);
    }
}
