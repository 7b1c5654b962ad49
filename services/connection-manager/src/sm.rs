//! Stream management (XEP-0198, `urn:xmpp:sm:3`): acks in both directions,
//! and resumption on any connection-manager.
//!
//! The counters live with the connection's outbound queue ([`SmState`], under
//! its lock): `h_in` counts the stanzas handled from the client, `sent` the
//! stanzas written to it after `<enabled/>` (or `<resumed/>`), `acked` the
//! client's last `h`; all modulo 2^32 (section 4). A written stanza stays in
//! `unacked` until the client acks it.
//!
//! A resumable stream is journaled to the [`ResumptionStore`] (Redis in the
//! cluster) as stanzas enter the queue and as acks arrive, by one task per
//! node that sends everything ready as one pipeline ([`spawn_journal`]); so
//! the unacked queue outlives this process. When the connection is lost the
//! stream is detached: its session stays bound and available (the registry
//! record moves to the detached pseudo-node, where routers park stanzas for
//! it in the store), and a `<resume/>` on any node takes it over. A stream
//! that is not resumed within its timeout is expired by the session-router
//! (RFC 6121 section 8.5 for what it left behind).

use std::collections::VecDeque;
use std::sync::Arc;

use starling_api::resumption::{acked_since, JournalEntry};
use starling_api::{ResumptionStore, RouterApi, SessionAddr, SessionRegistry};
use starling_xmpp::{ns, parse_element, Element, Limits};
use tokio::sync::{mpsc, oneshot};

use crate::queued::QueuedStanza;

/// The declaration of stream management: the `<sm/>` stream feature after
/// authentication (section 3), and the namespace in the server's disco#info.
pub(crate) const FEATURE: starling_api::FeatureSpec = starling_api::FeatureSpec {
    name: "stream-management",
    specification: "XEP-0198",
    disco_features: &[ns::SM],
    iq_namespaces: &[],
    stream_features: &[starling_api::StreamFeature {
        name: "sm",
        namespace: ns::SM,
        stage: starling_api::StreamStage::AfterAuthentication,
    }],
};

/// Ask for an ack once this many stanzas are unacknowledged.
pub(crate) const ACK_REQUEST_EVERY: usize = 5;

/// Stream management settings of a node (`[sm]` in the configuration).
#[derive(Debug, Clone)]
pub struct SmSettings {
    /// Offer XEP-0198 at all.
    pub enabled: bool,
    /// Offer resumption, kept this long after a connection is lost (the
    /// `max` of `<enabled/>`); 0 turns resumption off.
    pub resume_timeout_secs: u64,
    /// Unacknowledged stanzas a client may let pile up; past it the stream
    /// ends with `<policy-violation/>` and nothing is dropped.
    pub max_unacked_stanzas: usize,
}

impl Default for SmSettings {
    fn default() -> Self {
        SmSettings {
            enabled: true,
            resume_timeout_secs: 300,
            max_unacked_stanzas: 1000,
        }
    }
}

/// What the node needs to journal and resume streams.
#[derive(Clone)]
pub struct StreamResumption {
    pub store: Arc<dyn ResumptionStore>,
    pub registry: Arc<dyn SessionRegistry>,
    /// The store outlives this process (Redis): a stanza is written to a
    /// client only once the store has it, so that a killed node never leaves
    /// a client ahead of the store. In one process (memory) the store dies
    /// with the streams, and the writer does not wait.
    pub outlives_process: bool,
}

/// Where a resumable stream's journal goes.
#[derive(Clone)]
pub(crate) struct JournalSink {
    pub id: String,
    pub addr: SessionAddr,
    pub tx: mpsc::UnboundedSender<JournalOp>,
}

pub(crate) enum JournalOp {
    Entry(JournalEntry, Vec<QueuedStanza>),
    /// Answered once everything submitted before it was applied.
    Barrier(oneshot::Sender<()>),
}

/// A stanza written to the client and not yet acknowledged.
pub(crate) struct Unacked {
    pub stanza: QueuedStanza,
    /// What it took on the wire.
    pub bytes: usize,
}

/// The stream management state of one connection.
#[derive(Default)]
pub(crate) struct SmState {
    /// `<enabled/>` was sent (or `<resumed/>`): acks are answered and counted.
    pub enabled: bool,
    /// The writer passed `<enabled/>`/`<resumed/>`: written stanzas count.
    counting: bool,
    pub sent: u32,
    pub acked: u32,
    pub h_in: u32,
    /// Written and not yet acknowledged, oldest first.
    pub unacked: VecDeque<Unacked>,
    /// The bytes `unacked` took on the wire: with the outbound queue they
    /// count against `limits.outbound_queue_bytes` and the node's total
    /// (issue 18), held until the client acknowledges them.
    pub unacked_bytes: usize,
    ack_requested: bool,
    /// The bound of `unacked` plus the queue (0 until enabled).
    pub max_unacked: usize,
    /// While a resumption is completing: what was delivered meanwhile.
    pub held: Option<Vec<QueuedStanza>>,
    pub journal: Option<JournalSink>,
}

impl SmState {
    /// Journal a stanza entering the queue of a resumable stream.
    pub fn journal_append(&self, stanza: &QueuedStanza) {
        if let Some(sink) = &self.journal {
            let entry = self.entry(sink, 0, vec![stanza.to_xml()]);
            let _ = sink.tx.send(JournalOp::Entry(entry, vec![stanza.clone()]));
        }
    }

    /// A stanza in flight to this stream will not enter its queue (superseded
    /// for an inactive client): no longer in flight.
    pub fn journal_consumed(&self, stanza: &QueuedStanza) {
        if let Some(sink) = &self.journal {
            Self::consume_in_flight(sink, stanza);
        }
    }

    /// Mark `stanza` as no longer in flight to the stream of `sink` (it will
    /// not enter the stream's queue); only the in-flight record changes.
    pub fn consume_in_flight(sink: &JournalSink, stanza: &QueuedStanza) {
        let entry = JournalEntry {
            id: sink.id.clone(),
            // No stream is at this address: the entry changes nothing else.
            addr: starling_api::resumption::detached_addr(u64::MAX),
            newly_acked: 0,
            acked: 0,
            h_in: 0,
            appended: Vec::new(),
            consumed: vec![stanza.to_xml()],
        };
        let _ = sink.tx.send(JournalOp::Entry(entry, Vec::new()));
    }

    /// Journal the counters alone (after acks, or before answering `<r/>`).
    pub fn journal_counters(&self, newly_acked: u32) {
        if let Some(sink) = &self.journal {
            let entry = self.entry(sink, newly_acked, Vec::new());
            let _ = sink.tx.send(JournalOp::Entry(entry, Vec::new()));
        }
    }

    fn entry(&self, sink: &JournalSink, newly_acked: u32, appended: Vec<String>) -> JournalEntry {
        JournalEntry {
            id: sink.id.clone(),
            addr: sink.addr.clone(),
            newly_acked,
            acked: self.acked,
            h_in: self.h_in,
            appended,
            consumed: Vec::new(),
        }
    }

    /// A stanza from the client was handled (section 4: `h` counts it).
    pub fn stanza_handled(&mut self) {
        if self.enabled {
            self.h_in = self.h_in.wrapping_add(1);
        }
    }

    /// Journal `h` once a stanza from the client was handled (routed, or
    /// answered), when it counted one: a resumption elsewhere answers
    /// `<resumed h/>` from the store, even before this connection noticed its
    /// loss, and a stanza it does not count the client sends again (section
    /// 5), delivered twice. After handling, not before: should this process
    /// die in between, the stanza comes again rather than never.
    pub fn journal_handled(&self, h_before: u32) {
        if self.h_in != h_before {
            self.journal_counters(0);
        }
    }

    /// An item is written, `bytes` long on the wire; true when it is a counted stanza.
    pub(crate) fn note_written(&mut self, item: &QueuedStanza, bytes: usize) -> bool {
        match item.marker {
            crate::queued::Marker::CountingStarts => {
                self.counting = true;
                false
            }
            crate::queued::Marker::Stanza if self.counting => {
                self.sent = self.sent.wrapping_add(1);
                self.unacked.push_back(Unacked {
                    stanza: item.clone(),
                    bytes,
                });
                self.unacked_bytes += bytes;
                true
            }
            _ => false,
        }
    }

    /// The last counted stanza was not written after all.
    pub(crate) fn unnote_written(&mut self) {
        if let Some(last) = self.unacked.pop_back() {
            self.unacked_bytes -= last.bytes;
            self.sent = self.sent.wrapping_sub(1);
        }
    }

    /// Every unacknowledged stanza, oldest first, out of the state.
    pub(crate) fn take_unacked(&mut self) -> Vec<QueuedStanza> {
        self.unacked_bytes = 0;
        self.unacked
            .drain(..)
            .map(|unacked| unacked.stanza)
            .collect()
    }

    pub(crate) fn wants_ack_request(&mut self, chunk: &[QueuedStanza], closing: bool) -> bool {
        let starts = chunk
            .iter()
            .any(|item| item.marker == crate::queued::Marker::CountingStarts);
        if !(self.counting || starts) || self.ack_requested {
            return false;
        }
        let pending = self.unacked.len() + chunk.iter().filter(|item| item.is_stanza()).count();
        if pending >= ACK_REQUEST_EVERY || (closing && pending > 0) {
            self.ack_requested = true;
            return true;
        }
        false
    }

    /// The client acknowledged `h` (section 4). Err((h, sent)) when it acks
    /// more than was sent (section 6: `<handled-count-too-high/>`).
    pub fn acknowledge(&mut self, h: u32) -> Result<(), (u32, u32)> {
        let newly_acked = acked_since(self.acked, h);
        if newly_acked as usize > self.unacked.len() {
            return Err((h, self.sent));
        }
        for acked in self.unacked.drain(..newly_acked as usize) {
            self.unacked_bytes -= acked.bytes;
        }
        self.acked = h;
        self.ack_requested = false;
        if newly_acked > 0 {
            self.journal_counters(newly_acked);
        }
        Ok(())
    }
}

/// An unguessable resumption id: 128 random bits from the thread's CSPRNG
/// (XEP-0198 section 5: generated by the server, opaque to the client).
pub(crate) fn new_resumption_id() -> String {
    use rand::Rng;
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// `<r/>`.
pub(crate) fn request() -> Element {
    Element::new("r", ns::SM)
}

/// `<a h='...'/>`.
pub(crate) fn answer(h: u32) -> Element {
    Element::new("a", ns::SM).with_attr("h", h.to_string())
}

/// `<failed/>` with a stanza error condition (section 6) and, when known, `h`.
pub(crate) fn failed(condition: &str, h: Option<u32>) -> Element {
    let mut failed =
        Element::new("failed", ns::SM).with_child(Element::new(condition, ns::STANZAS_ERROR));
    if let Some(h) = h {
        failed.set_attr("h", h.to_string());
    }
    failed
}

/// `<handled-count-too-high/>` (section 6), inside a stream error or `<failed/>`.
pub(crate) fn handled_count_too_high(h: u32, sent: u32) -> Element {
    Element::new("handled-count-too-high", ns::SM)
        .with_attr("h", h.to_string())
        .with_attr("send-count", sent.to_string())
}

/// An unsigned 32-bit `h` attribute (section 4: unsignedInt).
pub(crate) fn parse_h(element: &Element) -> Result<Option<u32>, ()> {
    match element.attr("h") {
        None => Ok(None),
        Some(value) => value.trim().parse::<u32>().map(Some).map_err(|_| ()),
    }
}

/// Parse a journaled stanza back for sending again or rerouting.
pub(crate) fn parse_journaled(xml: &str, limits: &Limits) -> Option<Element> {
    match parse_element(xml.as_bytes(), limits) {
        Ok(element) => Some(element),
        Err(error) => {
            tracing::warn!(%error, "a journaled stanza does not parse, dropped");
            None
        }
    }
}

/// The node's journal task: applies entries in order, as pipelines of
/// everything ready; the stanzas of an entry the store refused (the stream
/// was resumed elsewhere meanwhile) or could not take go back to the router,
/// which finds where the session is now.
pub(crate) fn spawn_journal(
    store: Arc<dyn ResumptionStore>,
    router: Arc<dyn RouterApi>,
    metrics: crate::metrics::CmMetrics,
) -> mpsc::UnboundedSender<JournalOp> {
    let (tx, mut rx) = mpsc::unbounded_channel::<JournalOp>();
    tokio::spawn(async move {
        let mut ops = Vec::new();
        while let Some(first) = rx.recv().await {
            ops.push(first);
            while ops.len() < 512 {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut entries: Vec<JournalEntry> = Vec::with_capacity(ops.len());
            let mut stanzas: Vec<Vec<QueuedStanza>> = Vec::with_capacity(ops.len());
            let mut barriers = Vec::new();
            let mut index_of: std::collections::HashMap<(String, SessionAddr), usize> =
                std::collections::HashMap::new();
            for op in ops.drain(..) {
                match op {
                    JournalOp::Entry(entry, queued) => {
                        // One entry per stream per batch: see `coalesce`.
                        let key = (entry.id.clone(), entry.addr.clone());
                        match index_of.get(&key) {
                            Some(&index) => {
                                coalesce(&mut entries[index], entry);
                                stanzas[index].extend(queued);
                            }
                            None => {
                                index_of.insert(key, entries.len());
                                entries.push(entry);
                                stanzas.push(queued);
                            }
                        }
                    }
                    JournalOp::Barrier(done) => barriers.push(done),
                }
            }
            let held = match store.journal(&entries).await {
                Ok(held) => held,
                Err(error) => {
                    tracing::warn!(%error, entries = entries.len(), "journaling stream management state failed");
                    vec![false; entries.len()]
                }
            };
            metrics.sm_journaled(entries.len());
            for ((entry, queued), held) in entries.iter().zip(stanzas).zip(held) {
                if held || queued.is_empty() {
                    continue;
                }
                for stanza in queued {
                    let router = Arc::clone(&router);
                    let failed = entry.addr.clone();
                    let element = stanza.into_element();
                    tokio::spawn(async move {
                        if let Err(error) = router.undeliverable(element, &failed).await {
                            tracing::warn!(%error, "rerouting a stanza of a moved stream failed");
                        }
                    });
                }
            }
            for done in barriers {
                let _ = done.send(());
            }
        }
    });
    tx
}

/// Fold `later` into `earlier`, two entries of one stream in one batch: the
/// acks add up, the stanzas follow each other, the counters are the later
/// ones. Applying the fold (trim, then append) equals applying both in order
/// because an ack never covers a stanza appended in the same batch: the
/// writer writes a stanza only once the batch that journaled it was applied
/// (`run_writer`), and the client acks only what it was written.
fn coalesce(earlier: &mut JournalEntry, later: JournalEntry) {
    earlier.newly_acked = earlier.newly_acked.wrapping_add(later.newly_acked);
    earlier.acked = later.acked;
    earlier.h_in = later.h_in;
    earlier.appended.extend(later.appended);
    earlier.consumed.extend(later.consumed);
}

/// Wait until everything journaled so far was applied.
pub(crate) async fn journal_barrier(tx: &mpsc::UnboundedSender<JournalOp>) {
    let (done, applied) = oneshot::channel();
    if tx.send(JournalOp::Barrier(done)).is_ok() {
        let _ = applied.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(newly_acked: u32, acked: u32, h_in: u32, appended: &[&str]) -> JournalEntry {
        JournalEntry {
            id: "s".into(),
            addr: SessionAddr {
                node: "cm-1".into(),
                conn: 1,
            },
            newly_acked,
            acked,
            h_in,
            appended: appended.iter().map(|s| s.to_string()).collect(),
            consumed: Vec::new(),
        }
    }

    #[test]
    fn entries_of_one_stream_fold_into_one() {
        let mut first = entry(2, u32::MAX, 4, &["<a/>"]);
        coalesce(&mut first, entry(0, u32::MAX, 5, &[]));
        coalesce(&mut first, entry(3, 2, 5, &["<b/>", "<c/>"]));
        assert_eq!(first, entry(5, 2, 5, &["<a/>", "<b/>", "<c/>"]));
    }

    #[test]
    fn acks_too_high_are_refused_and_counters_wrap() {
        let mut state = SmState {
            enabled: true,
            acked: u32::MAX,
            ..SmState::default()
        };
        state.counting = true;
        let message = QueuedStanza::new(Element::new("message", ns::CLIENT));
        assert!(state.note_written(&message, 10));
        assert!(state.note_written(&message, 20));
        state.sent = 1;
        assert_eq!(state.acknowledge(2), Err((2, 1)));
        assert_eq!(state.acknowledge(0), Ok(()));
        assert_eq!((state.acked, state.unacked.len()), (0, 1));
        assert_eq!(
            state.unacked_bytes, 20,
            "the acked stanza's bytes are freed"
        );
        state.unnote_written();
        assert_eq!((state.unacked_bytes, state.sent), (0, 0));
        assert_eq!(
            parse_h(&Element::new("a", ns::SM).with_attr("h", "4294967296")),
            Err(())
        );
        assert_eq!(
            parse_h(&Element::new("a", ns::SM).with_attr("h", "4294967295")),
            Ok(Some(u32::MAX))
        );
    }
}
