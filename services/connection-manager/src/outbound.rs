//! The bounded outbound queue of one connection and the task that writes it.
//!
//! Deliveries never wait for a client: pushing is a lock and a notify. A
//! client that stops reading fills its queue and is disconnected with
//! `<policy-violation/>` (RFC 6120 section 4.9.3.14: it breaks the server's
//! local policy on how far behind a reader may fall); the stanzas it did not
//! receive go back through the router (DESIGN.md "Slow readers").
//!
//! The writer drains everything that is ready into one buffer and writes it
//! with one call, re-serialising each stanza from its parsed form (never the
//! bytes some client sent).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use starling_api::{ConnId, SessionAddr, SessionRecord};
use starling_jid::FullJid;
use starling_xmpp::{Element, Presence, PresenceType, StreamError, StreamErrorCondition};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use starling_xmpp::StanzaKind;

use crate::csi::{ClientState, CsiBuffer};
use crate::framing::Outgoing;
use crate::metrics::{CmMetrics, CsiMetrics};
use crate::outbound_bytes::OutboundBytes;
use crate::queued::QueuedStanza;
use crate::sm::SmState;
use crate::transport::TransportWriter;

/// A write that makes no progress for this long means the client is gone.
pub(crate) const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The last words of a closing stream get this long to be written.
pub(crate) const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// A backlog larger than this is written in several calls.
const MAX_WRITE_BYTES: usize = 256 * 1024;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue is at its bound: the client stopped reading.
    Full,
    /// The stream is closing; the connection is as good as gone.
    Closed,
}

#[derive(Debug, Clone)]
struct CloseRequest {
    error: Option<StreamError>,
    /// Drop what is queued (it goes back to the router) and write only the error.
    discard_pending: bool,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<QueuedStanza>,
    close: Option<CloseRequest>,
    /// Delivered after the close was decided: held back until the session is
    /// unbound, then rerouted (rerouting earlier could route them right back here).
    late: Vec<QueuedStanza>,
    /// Stream management (XEP-0198), under the queue's lock so that what is
    /// counted follows what is written.
    sm: SmState,
    /// XEP-0352: what an inactive client is not sent yet; in front of `items`.
    csi: CsiBuffer,
    /// Bytes of the stanzas `push` put in `items`, and of those the writer
    /// took and has not finished writing (`crate::outbound_bytes`).
    items_bytes: usize,
    batch_bytes: usize,
}

impl QueueState {
    /// Every byte the connection holds: queued, being written, held for an
    /// inactive client (XEP-0352) and written but not acknowledged
    /// (XEP-0198). Bounded by `limits.outbound_queue_bytes`.
    fn held_bytes(&self) -> usize {
        self.items_bytes + self.batch_bytes + self.csi.bytes() + self.sm.unacked_bytes
    }
}

/// What the rest of the node holds of one bound connection.
pub(crate) struct ConnectionHandle {
    pub conn: ConnId,
    capacity: usize,
    bytes: OutboundBytes,
    state: Mutex<QueueState>,
    notify: Notify,
    /// Cancelled when the stream is to end: the reader stops.
    stop_reading: CancellationToken,
    /// Cancelled to abandon a write that the client does not read.
    abort_write: CancellationToken,
    /// What the registry knows of this session, kept at the edge too so that
    /// the node can re-register its sessions after Redis lost them.
    registry_view: Mutex<Option<SessionRecord>>,
    /// Counts what the bus delivered into this queue, when set (an external
    /// component's `starling_component_stanzas_total{direction="out"}`).
    delivered: std::sync::OnceLock<prometheus::IntCounter>,
}

impl ConnectionHandle {
    #[cfg(test)]
    pub fn new(conn: ConnId, capacity: usize) -> Arc<Self> {
        Self::with_bytes(conn, capacity, OutboundBytes::unbounded())
    }

    /// A queue bounded in bytes too.
    pub fn with_bytes(conn: ConnId, capacity: usize, bytes: OutboundBytes) -> Arc<Self> {
        Arc::new(ConnectionHandle {
            conn,
            capacity: capacity.max(1),
            bytes,
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            stop_reading: CancellationToken::new(),
            abort_write: CancellationToken::new(),
            registry_view: Mutex::new(None),
            delivered: std::sync::OnceLock::new(),
        })
    }

    /// Count every stanza the bus delivers into this queue in `counter`.
    pub fn count_deliveries(&self, counter: prometheus::IntCounter) {
        let _ = self.delivered.set(counter);
    }

    /// The bus delivered a stanza into this queue.
    pub fn note_delivered(&self) {
        if let Some(counter) = self.delivered.get() {
            counter.inc();
        }
    }

    /// The session was bound: remember its registry record.
    pub fn set_bound(&self, jid: FullJid, addr: SessionAddr) {
        *self.registry_view.lock() = Some(SessionRecord::new(jid, addr));
    }

    /// The session was resumed here (XEP-0198): its record as the registry
    /// keeps it (presence, roster interest, carbons), now at this connection.
    pub fn set_resumed(&self, record: SessionRecord) {
        *self.registry_view.lock() = Some(record);
    }

    /// The client broadcast presence (RFC 6121 section 4.2/4.4/4.5): keep its
    /// availability, priority and last available presence.
    pub fn note_broadcast_presence(&self, presence: &Presence) {
        let mut view = self.registry_view.lock();
        let Some(record) = view.as_mut() else { return };
        match presence.presence_type() {
            PresenceType::Unavailable => {
                record.available = false;
                record.presence = None;
            }
            PresenceType::Available => {
                record.available = true;
                record.priority = presence.priority().value();
                record.presence = Some(presence.element().to_stanza_xml());
            }
            _ => {}
        }
    }

    /// The client requested its roster (an interested resource, RFC 6121 section 2.1.6).
    pub fn note_roster_requested(&self) {
        if let Some(record) = self.registry_view.lock().as_mut() {
            record.interested = true;
        }
    }

    /// The client enabled or disabled Message Carbons (XEP-0280 sections 4 and 5).
    pub fn note_carbons(&self, enabled: bool) {
        if let Some(record) = self.registry_view.lock().as_mut() {
            record.carbons = enabled;
        }
    }

    pub fn registry_view(&self) -> Option<SessionRecord> {
        self.registry_view.lock().clone()
    }

    /// Queue a stanza for the client. Once the stream is closing, the stanza
    /// is kept for rerouting after the unbind (up to the queue's bound).
    /// On error the stanza comes back to the caller.
    ///
    /// With stream management on, the bound counts the stanzas the client has
    /// not acknowledged too (`sm.max_unacked_stanzas`), and on a resumable
    /// stream every stanza is journaled as it enters the queue: from then on
    /// the resumption state holds it, and the stream's end reroutes nothing
    /// from memory (see [`SmState`]).
    pub fn push(&self, stanza: QueuedStanza) -> Result<(), (PushError, QueuedStanza)> {
        {
            let mut state = self.state.lock();
            if let Some(held) = state.sm.held.as_mut() {
                // A resumption in progress: after the replay, in order.
                if held.len() >= self.capacity {
                    return Err((PushError::Full, stanza));
                }
                held.push(stanza);
                return Ok(());
            }
            if state.close.is_some() {
                if state.late.len() >= self.capacity {
                    return Err((PushError::Closed, stanza));
                }
                if stanza.is_stanza() {
                    state.sm.journal_append(&stanza);
                }
                state.late.push(stanza);
                return Ok(());
            }
            // Held stanzas (XEP-0352) count against the bound as if they were
            // queued; with stream management, so do the unacknowledged ones.
            let pending = state.items.len() + state.csi.len();
            if pending >= self.capacity
                || (state.sm.enabled && pending + state.sm.unacked.len() >= state.sm.max_unacked)
            {
                return Err((PushError::Full, stanza));
            }
            let size = stanza.wire_len();
            let held_before = state.held_bytes();
            if !self.bytes.admits(held_before, size) {
                return Err((PushError::Full, stanza));
            }
            // While the client is inactive (XEP-0352) the stanza may be held
            // in front of the queue; what enters the queue comes out in order,
            // and is journaled as it enters (XEP-0198).
            let state = &mut *state;
            let queued_before = state.items.len();
            for (stanza, size) in state.csi.admit(stanza, size) {
                if stanza.is_stanza() {
                    state.sm.journal_append(&stanza);
                }
                state.items_bytes += size;
                state.items.push_back(stanza);
            }
            for superseded in state.csi.take_superseded() {
                state.sm.journal_consumed(&superseded);
            }
            // The stanza entered the queue or the held ones; a superseded one left.
            self.held_bytes_changed(held_before, state.held_bytes());
            if state.items.len() == queued_before {
                // Held: nothing to write.
                return Ok(());
            }
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Queue a nonza (`<a/>`, `<failed/>`), under the queue's bound: a client
    /// that asks (`<r/>` after `<r/>`) without reading the answers is closed
    /// with `<policy-violation/>` like one that does not read its stanzas.
    pub fn push_nonza(&self, nonza: QueuedStanza) {
        {
            let mut state = self.state.lock();
            if state.close.is_some() {
                return;
            }
            if state.items.len() >= self.capacity {
                drop(state);
                self.close_overflowed();
                return;
            }
            state.items.push_back(nonza);
        }
        self.notify.notify_one();
    }

    /// Stream management is on from here (XEP-0198 section 3): `<enabled/>`
    /// enters the queue in the same step, so that exactly the stanzas after
    /// it are counted and journaled.
    pub fn enable_sm(
        &self,
        journal: Option<crate::sm::JournalSink>,
        max_unacked: usize,
        enabled: QueuedStanza,
    ) {
        {
            let mut state = self.state.lock();
            state.sm.enabled = true;
            state.sm.max_unacked = max_unacked;
            state.sm.journal = journal;
            state.items.push_back(enabled);
        }
        self.notify.notify_one();
    }

    /// A session bound with Bind 2 (XEP-0386): `success` (the SASL2
    /// `<success/>`) and `features` go ahead of everything delivered since the
    /// bind, and, when `sm` is given (XEP-0198 enabled inline), stream
    /// management is on from `success`: what was queued meanwhile is counted
    /// and journaled like what comes next.
    pub fn start_bound(
        &self,
        success: Element,
        features: Element,
        sm: Option<(Option<crate::sm::JournalSink>, usize)>,
    ) {
        {
            let mut state = self.state.lock();
            let state = &mut *state;
            let counting_starts = sm.is_some();
            if let Some((journal, max_unacked)) = sm {
                state.sm.enabled = true;
                state.sm.max_unacked = max_unacked;
                state.sm.journal = journal;
                for queued in state.items.iter().filter(|queued| queued.is_stanza()) {
                    state.sm.journal_append(queued);
                }
            }
            state.items.push_front(QueuedStanza::nonza(features, false));
            state
                .items
                .push_front(QueuedStanza::nonza(success, counting_starts));
        }
        self.notify.notify_one();
    }

    /// The journal of a resumable stream, if this is one.
    pub fn journal_sender(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedSender<crate::sm::JournalOp>> {
        self.state
            .lock()
            .sm
            .journal
            .as_ref()
            .map(|sink| sink.tx.clone())
    }

    /// Run `change` on the stream management state (under the queue's lock).
    pub fn with_sm<R>(&self, change: impl FnOnce(&mut SmState) -> R) -> R {
        let mut state = self.state.lock();
        let before = state.held_bytes();
        let result = change(&mut state.sm);
        let after = state.held_bytes();
        drop(state);
        self.held_bytes_changed(before, after);
        result
    }

    /// The connection's held bytes changed from `before` to `after`: the
    /// node's count follows (`crate::outbound_bytes`).
    fn held_bytes_changed(&self, before: usize, after: usize) {
        if after > before {
            self.bytes.hold(after - before);
        } else {
            self.bytes.release(before - after);
        }
    }

    /// The resumption is done: queue `<resumed/>`, then the stanzas the client
    /// did not acknowledge (already journaled), then what was delivered
    /// meanwhile (journaled now), in that order.
    pub fn finish_resume(&self, resumed: QueuedStanza, replay: Vec<QueuedStanza>) {
        {
            let mut state = self.state.lock();
            state.items.push_back(resumed);
            state.items.extend(replay);
            let held = state.sm.held.take().unwrap_or_default();
            for stanza in held {
                if stanza.is_stanza() {
                    state.sm.journal_append(&stanza);
                }
                state.items.push_back(stanza);
            }
        }
        self.notify.notify_one();
    }

    /// XEP-0352: the client said it is active or inactive. Becoming active
    /// queues what was held, before anything the client asks next is
    /// answered (section 5.1, in-order processing).
    pub fn set_client_state(&self, client_state: ClientState, metrics: &CsiMetrics) {
        {
            let mut state = self.state.lock();
            let state = &mut *state;
            match client_state {
                // Half the queue's bound: as many contacts as that changed
                // presence, and the held ones go out rather than fill it.
                ClientState::Inactive => state.csi.become_inactive(
                    self.capacity / 2,
                    self.bytes.per_connection() / 2,
                    metrics,
                ),
                ClientState::Active => {
                    // Held bytes become queued bytes: the total is the same.
                    for (stanza, size) in state.csi.become_active() {
                        if stanza.is_stanza() {
                            state.sm.journal_append(&stanza);
                        }
                        state.items_bytes += size;
                        state.items.push_back(stanza);
                    }
                }
            }
        }
        self.notify.notify_one();
    }

    /// A resumable stream is ending: what an inactive client was not sent yet
    /// (XEP-0352) goes to the resumption journal too, so that a resumption
    /// gets it.
    pub fn journal_held(&self) {
        let mut state = self.state.lock();
        let state = &mut *state;
        let held_before = state.held_bytes();
        for (stanza, _) in state.csi.take() {
            if stanza.is_stanza() {
                state.sm.journal_append(&stanza);
            }
        }
        self.held_bytes_changed(held_before, state.held_bytes());
    }

    /// Everything the client was sent but did not acknowledge (stream
    /// management without resumption), for rerouting when the stream ends.
    pub fn take_unacked(&self) -> Vec<QueuedStanza> {
        let mut state = self.state.lock();
        let before = state.held_bytes();
        let unacked = state.sm.take_unacked();
        let after = state.held_bytes();
        drop(state);
        self.held_bytes_changed(before, after);
        unacked
    }

    /// Queue a stanza ahead of everything else, over the bound (the result of
    /// resource binding must precede what was delivered meanwhile).
    pub fn push_front(&self, stanza: QueuedStanza) {
        self.state.lock().items.push_front(stanza);
        self.notify.notify_one();
    }

    /// End the stream: write what is queued, then the stream error if any,
    /// then `</stream:stream>`. The first close wins.
    pub fn close(&self, error: Option<StreamError>) {
        self.request_close(CloseRequest {
            error,
            discard_pending: false,
        });
    }

    /// The client let its queue fill up: close with `<policy-violation/>`,
    /// abandon the write in progress, keep the queued stanzas for rerouting.
    pub fn close_overflowed(&self) {
        let error = StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too many stanzas waiting to be read by the client",
        );
        let closed_now = self.request_close(CloseRequest {
            error: Some(error),
            discard_pending: true,
        });
        if closed_now {
            self.abort_write.cancel();
        }
    }

    fn request_close(&self, request: CloseRequest) -> bool {
        let closed_now = {
            let mut state = self.state.lock();
            if state.close.is_some() {
                false
            } else {
                state.close = Some(request);
                true
            }
        };
        self.stop_reading.cancel();
        self.notify.notify_one();
        closed_now
    }

    /// The stream error the stream was closed with, if any.
    pub fn close_condition(&self) -> Option<StreamErrorCondition> {
        self.state
            .lock()
            .close
            .as_ref()
            .and_then(|close| close.error.as_ref().map(|error| error.condition))
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Resolves once the stream is to end.
    pub async fn reading_stopped(&self) {
        self.stop_reading.cancelled().await
    }

    /// Take a token of the stream's `bucket` before the next stanza is
    /// handled: a sender over its rate is read more slowly, never
    /// disconnected; `on_wait` runs when it must wait. False when the stream
    /// is to end meanwhile (closed, or the server shutting down, then with
    /// `<system-shutdown/>`).
    pub async fn wait_for_token(
        &self,
        bucket: Option<&mut crate::limits::TokenBucket>,
        shutdown: &CancellationToken,
        on_wait: impl FnOnce(),
    ) -> bool {
        let Some(bucket) = bucket else {
            return true;
        };
        let wait = bucket.reserve(std::time::Instant::now());
        if wait.is_zero() {
            return true;
        }
        on_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.reading_stopped() => false,
            _ = shutdown.cancelled() => {
                self.close(Some(StreamError::new(StreamErrorCondition::SystemShutdown)));
                false
            }
        }
    }

    /// Give up on the write in progress (the connection is being torn down).
    pub fn abandon_write(&self) {
        self.abort_write.cancel();
    }

    /// Everything still queued or held and everything delivered after the
    /// close (once the writer ended), in order; nonzas are left out.
    pub fn take_remaining(&self) -> Vec<QueuedStanza> {
        let mut state = self.state.lock();
        let mut remaining: Vec<QueuedStanza> = state.items.drain(..).collect();
        // Held for an inactive client: after everything queued, before the close.
        let held_before = state.held_bytes();
        remaining.extend(state.csi.take().map(|(stanza, _)| stanza));
        self.held_bytes_changed(held_before, state.held_bytes());
        remaining.append(&mut state.late);
        if let Some(held) = state.sm.held.take() {
            remaining.extend(held);
        }
        remaining.retain(QueuedStanza::is_stanza);
        remaining
    }

    /// A chunk is about to be written: stream management counts its stanzas
    /// (after `<enabled/>`/`<resumed/>`) and keeps them until acknowledged.
    /// Counted before the write, so that an ack that comes back faster than
    /// the writer task resumes finds them. Returns how many were counted.
    /// `sizes` are the items' lengths on the wire, in order.
    fn note_written(&self, written: &[QueuedStanza], sizes: &[usize]) -> usize {
        let mut state = self.state.lock();
        let before = state.held_bytes();
        let counted = written
            .iter()
            .zip(sizes)
            .filter(|(item, size)| state.sm.note_written(item, **size))
            .count();
        let after = state.held_bytes();
        drop(state);
        self.held_bytes_changed(before, after);
        counted
    }

    /// The write of a chunk failed: its stanzas were not sent after all.
    fn unnote_written(&self, count: usize) {
        let mut state = self.state.lock();
        let before = state.held_bytes();
        for _ in 0..count {
            state.sm.unnote_written();
        }
        let after = state.held_bytes();
        drop(state);
        self.held_bytes_changed(before, after);
    }

    /// Whether to ask the client for an ack after writing `stanzas` more.
    fn wants_ack_request(&self, stanzas: &[QueuedStanza], closing: bool) -> bool {
        self.state.lock().sm.wants_ack_request(stanzas, closing)
    }

    /// The writer wrote its whole batch: its bytes are no longer held.
    fn batch_written(&self) {
        let written = std::mem::take(&mut self.state.lock().batch_bytes);
        self.bytes.release(written);
    }

    /// Wait until there is something to write or the stream is to close.
    async fn next_batch(&self, batch: &mut Vec<QueuedStanza>) -> Option<CloseRequest> {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.state.lock();
                if !state.items.is_empty() || state.close.is_some() {
                    batch.extend(state.items.drain(..));
                    state.batch_bytes += std::mem::take(&mut state.items_bytes);
                    if state.items.capacity() > 16 {
                        state.items = Default::default();
                    }
                    return state.close.clone();
                }
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        let held = self.state.get_mut().held_bytes();
        self.bytes.release(held);
    }
}

/// Wait for the writer to finish what it was writing; what it did not write.
pub(crate) async fn join_writer(
    handle: &ConnectionHandle,
    writer_task: &mut tokio::task::JoinHandle<Vec<QueuedStanza>>,
) -> Vec<QueuedStanza> {
    match tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT + Duration::from_secs(1),
        &mut *writer_task,
    )
    .await
    {
        Ok(joined) => joined.unwrap_or_default(),
        Err(_) => {
            handle.abandon_write();
            match tokio::time::timeout(Duration::from_secs(1), &mut *writer_task).await {
                Ok(joined) => joined.unwrap_or_default(),
                Err(_) => {
                    writer_task.abort();
                    Vec::new()
                }
            }
        }
    }
}

/// Write to the client until the stream closes or breaks. Returns the stanzas
/// that were not (or not surely) written, for rerouting.
pub(crate) async fn run_writer<W: TransportWriter>(
    mut writer: W,
    handle: Arc<ConnectionHandle>,
    metrics: CmMetrics,
    wait_for_journal: bool,
) -> Vec<QueuedStanza> {
    let mut batch: Vec<QueuedStanza> = Vec::new();
    // The wire length of each item of a chunk (XEP-0198 holds the
    // unacknowledged ones in bytes); kept across batches like `batch`.
    let mut sizes: Vec<usize> = Vec::new();
    let mut buffer = Outgoing::new(writer.framing());
    loop {
        if batch.capacity() > 16 {
            // A burst is over: do not keep its slots while idle.
            batch = Vec::new();
            sizes = Vec::new();
        }
        batch.clear();
        buffer.clear();
        handle.batch_written();
        let close = handle.next_batch(&mut batch).await;
        // A resumable stream (XEP-0198): what is written must be in the
        // resumption store first, or a node killed right after the write
        // would leave the client holding stanzas the store never had (and
        // its `h` would not match on resumption). Each stanza was journaled
        // as it entered the queue; this waits until the journal task applied
        // them (one in-process wait per batch, no extra Redis command).
        if let Some(tx) = handle.journal_sender().filter(|_| wait_for_journal) {
            if batch.iter().any(QueuedStanza::is_stanza) {
                crate::sm::journal_barrier(&tx).await;
            }
        }
        if let Some(CloseRequest {
            error,
            discard_pending: true,
        }) = &close
        {
            // The client does not read: what it did not get goes back to the
            // router; the error is written only if the socket takes it at once.
            if let Some(error) = error {
                metrics.stream_error(error.condition.as_str());
                buffer.stream_error(error);
            }
            buffer.close();
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
                writer.send(&buffer).await?;
                writer.shutdown().await
            })
            .await;
            return batch;
        }
        let closing = close.is_some();
        let limit = if closing {
            CLOSE_WRITE_TIMEOUT
        } else {
            WRITE_STALL_TIMEOUT
        };
        // Everything ready goes out in one write, cut only past MAX_WRITE_BYTES
        // so that one huge backlog does not become one huge buffer.
        let mut next = 0;
        loop {
            buffer.clear();
            sizes.clear();
            let chunk_start = next;
            while next < batch.len() && buffer.len() < MAX_WRITE_BYTES {
                let before = buffer.len();
                buffer.queued_stanza(&batch[next]);
                sizes.push(buffer.len() - before);
                if let Some(kind) =
                    StanzaKind::of(&batch[next].stanza).filter(|_| batch[next].is_stanza())
                {
                    metrics.stanza_sent(kind);
                }
                next += 1;
            }
            let last_chunk = next == batch.len();
            let finishing = last_chunk && closing;
            if handle.wants_ack_request(&batch[chunk_start..next], finishing) {
                // XEP-0198 section 4: the server asks as its unacked queue
                // grows, and before it closes the stream.
                buffer.queued_stanza(&QueuedStanza::nonza(crate::sm::request(), false));
            }
            if finishing {
                if let Some(CloseRequest {
                    error: Some(error), ..
                }) = &close
                {
                    metrics.stream_error(error.condition.as_str());
                    buffer.stream_error(error);
                }
                buffer.close();
            }
            let counted = handle.note_written(&batch[chunk_start..next], &sizes);
            let write = async {
                writer.send(&buffer).await?;
                if finishing {
                    writer.shutdown().await?;
                }
                Ok::<(), std::io::Error>(())
            };
            let written = tokio::select! {
                result = tokio::time::timeout(limit, write) => matches!(result, Ok(Ok(()))),
                _ = handle.abort_write.cancelled() => false,
            };
            if !written {
                handle.unnote_written(counted);
                tracing::debug!(
                    conn = handle.conn,
                    stanzas = batch.len() - chunk_start,
                    "write to client failed or stalled"
                );
                // The connection is unusable: stop the reader, and make further
                // pushes fail over to rerouting instead of queueing.
                handle.close(None);
                // A client that does not read would not get the stream error
                // through its full socket either: just end the connection.
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, writer.shutdown()).await;
                return batch.split_off(chunk_start);
            }
            if last_chunk {
                break;
            }
        }
        if closing {
            return Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::ByteWriter;
    use starling_xmpp::{ns, Element};
    use tokio::io::AsyncReadExt;

    fn bytes(stream: tokio::io::DuplexStream) -> ByteWriter {
        ByteWriter(Box::new(stream))
    }

    fn message(body: &str) -> QueuedStanza {
        QueuedStanza::new(
            Element::new("message", ns::CLIENT)
                .with_attr("to", "juliet@example.com/balcony")
                .with_child(Element::new("body", ns::CLIENT).with_text(body)),
        )
    }

    #[test]
    fn push_is_bounded_and_refused_after_close() {
        let handle = ConnectionHandle::new(1, 2);
        handle.push(message("1")).unwrap();
        handle.push(message("2")).unwrap();
        assert_eq!(handle.push(message("3")).unwrap_err().0, PushError::Full);
        handle.close(None);
        // Kept for rerouting after the unbind, up to the bound.
        handle.push(message("4")).unwrap();
        handle.push(message("5")).unwrap();
        assert_eq!(handle.push(message("6")).unwrap_err().0, PushError::Closed);
        assert!(handle.is_closing());
        assert!(handle.stop_reading.is_cancelled());
        assert_eq!(handle.take_remaining().len(), 4);
    }

    #[tokio::test]
    async fn writes_everything_ready_in_one_batch_then_closes() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let handle = ConnectionHandle::new(7, 10);
        handle.push(message("1")).unwrap();
        handle.push(message("2")).unwrap();
        handle.push_front(QueuedStanza::new(
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "result")
                .with_attr("id", "b"),
        ));
        handle.close(Some(StreamError::new(StreamErrorCondition::SystemShutdown)));
        let unwritten = run_writer(
            bytes(server),
            Arc::clone(&handle),
            CmMetrics::default(),
            true,
        )
        .await;
        assert!(unwritten.is_empty());
        let mut written = String::new();
        let mut client = client;
        client.read_to_string(&mut written).await.unwrap();
        assert_eq!(
            written,
            "<iq type='result' id='b'/><message to='juliet@example.com/balcony'><body>1</body></message><message to='juliet@example.com/balcony'><body>2</body></message><stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        );
    }

    #[tokio::test]
    async fn a_large_backlog_is_written_in_bounded_chunks_in_order() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let handle = ConnectionHandle::new(8, 10);
        let big = "y".repeat(200 * 1024);
        for index in 0..3 {
            handle.push(message(&format!("{index}{big}"))).unwrap();
        }
        handle.close(None);
        let reader = tokio::spawn(async move {
            let mut written = String::new();
            client.read_to_string(&mut written).await.unwrap();
            written
        });
        assert!(run_writer(
            bytes(server),
            Arc::clone(&handle),
            CmMetrics::default(),
            true
        )
        .await
        .is_empty());
        let written = reader.await.unwrap();
        let bodies: Vec<char> = written
            .split("<body>")
            .skip(1)
            .map(|body| body.chars().next().unwrap())
            .collect();
        assert_eq!(bodies, vec!['0', '1', '2']);
        assert!(written.ends_with("</message></stream:stream>"));
    }

    #[tokio::test]
    async fn overflow_abandons_the_stalled_write_and_returns_the_queue() {
        // A pipe of 16 bytes that nobody reads: the first write stalls.
        let (_client, server) = tokio::io::duplex(16);
        let handle = ConnectionHandle::new(9, 2);
        let writer = tokio::spawn(run_writer(
            bytes(server),
            Arc::clone(&handle),
            CmMetrics::default(),
            true,
        ));
        handle.push(message("first")).unwrap();
        tokio::task::yield_now().await;
        handle.push(message("2")).unwrap();
        handle.push(message("3")).unwrap();
        assert_eq!(handle.push(message("4")).unwrap_err().0, PushError::Full);
        handle.close_overflowed();
        let unwritten = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
        let body = |stanza: QueuedStanza| {
            stanza
                .stanza
                .get_child("body", ns::CLIENT)
                .map(Element::text)
        };
        let mut rerouted: Vec<Option<String>> = unwritten.into_iter().map(body).collect();
        rerouted.extend(handle.take_remaining().into_iter().map(body));
        // The abandoned batch first, then what was still queued, in order.
        assert_eq!(
            rerouted,
            vec![Some("first".into()), Some("2".into()), Some("3".into())]
        );
        assert!(handle.is_closing());
    }
}

#[cfg(test)]
mod registry_view_tests {
    use super::*;
    use starling_xmpp::parse_element;

    fn presence(xml: &str) -> Presence {
        let element =
            parse_element(xml.as_bytes(), &Default::default()).expect("test presence parses");
        Presence::try_from_element(element).expect("a valid presence")
    }

    #[test]
    fn the_edge_keeps_what_the_registry_needs_to_be_rebuilt() {
        let handle = ConnectionHandle::new(3, 4);
        let jid: FullJid = "juliet@example.com/balcony".parse().unwrap();
        let addr = SessionAddr {
            node: "cm-1".into(),
            conn: 3,
        };
        assert!(handle.registry_view().is_none());
        handle.set_bound(jid.clone(), addr.clone());
        handle.note_roster_requested();
        handle.note_carbons(true);
        handle.note_broadcast_presence(&presence(
            "<presence xmlns='jabber:client'><priority>-100</priority><show>away</show></presence>",
        ));
        let record = handle.registry_view().unwrap();
        assert_eq!((record.jid, record.addr), (jid, addr));
        assert!(record.available && record.interested && record.carbons);
        assert_eq!(record.priority, -100);
        assert!(record.presence.unwrap().contains("<show>away</show>"));
        // A subscription stanza is not a broadcast; unavailable clears it.
        handle.note_broadcast_presence(&presence(
            "<presence xmlns='jabber:client' type='subscribe'/>",
        ));
        assert!(handle.registry_view().unwrap().available);
        handle.note_broadcast_presence(&presence(
            "<presence xmlns='jabber:client' type='unavailable'/>",
        ));
        let record = handle.registry_view().unwrap();
        assert!(!record.available && record.presence.is_none());
        handle.note_carbons(false);
        assert!(!handle.registry_view().unwrap().carbons);
    }
}

#[cfg(test)]
mod csi_tests {
    use super::*;
    use starling_xmpp::{ns, Element};

    fn presence(from: &str, show: &str) -> QueuedStanza {
        QueuedStanza::new(
            Element::new("presence", ns::CLIENT)
                .with_attr("from", from)
                .with_child(Element::new("show", ns::CLIENT).with_text(show)),
        )
    }

    fn message(body: &str) -> QueuedStanza {
        QueuedStanza::new(
            Element::new("message", ns::CLIENT)
                .with_attr("from", "romeo@example.net/orchard")
                .with_child(Element::new("body", ns::CLIENT).with_text(body)),
        )
    }

    fn queued(handle: &ConnectionHandle) -> Vec<String> {
        handle
            .state
            .lock()
            .items
            .iter()
            .map(|stanza| stanza.stanza.to_stanza_xml())
            .collect()
    }

    #[test]
    fn held_stanzas_stay_out_of_the_queue_until_released_in_order() {
        let handle = ConnectionHandle::new(1, 10);
        let metrics = CsiMetrics::default();
        handle.push(message("before")).unwrap();
        handle.set_client_state(ClientState::Inactive, &metrics);
        handle
            .push(presence("romeo@example.net/a", "away"))
            .unwrap();
        handle.push(presence("romeo@example.net/a", "xa")).unwrap();
        handle
            .push(presence("mercutio@example.net/b", "dnd"))
            .unwrap();
        assert_eq!(queued(&handle).len(), 1);
        handle.push(message("wake up")).unwrap();
        assert_eq!(
            queued(&handle),
            vec![
                "<message from='romeo@example.net/orchard'><body>before</body></message>",
                "<presence from='romeo@example.net/a'><show>xa</show></presence>",
                "<presence from='mercutio@example.net/b'><show>dnd</show></presence>",
                "<message from='romeo@example.net/orchard'><body>wake up</body></message>",
            ]
        );
        handle
            .push(presence("romeo@example.net/a", "chat"))
            .unwrap();
        assert_eq!(queued(&handle).len(), 4);
        handle.set_client_state(ClientState::Active, &metrics);
        assert_eq!(queued(&handle).len(), 5);
        assert_eq!(metrics.superseded.get(), 1);
    }

    #[test]
    fn held_stanzas_count_against_the_bound_and_go_back_with_the_queue() {
        let handle = ConnectionHandle::new(2, 4);
        let metrics = CsiMetrics::default();
        handle.set_client_state(ClientState::Inactive, &metrics);
        handle.push(message("1")).unwrap();
        handle.push(message("2")).unwrap();
        handle.push(presence("a@example.net/1", "away")).unwrap();
        handle.push(presence("b@example.net/1", "away")).unwrap();
        // Two queued and two held: the queue is full.
        assert_eq!(handle.push(message("3")).unwrap_err().0, PushError::Full);
        handle.close(None);
        handle.push(message("late")).unwrap();
        let remaining: Vec<String> = handle
            .take_remaining()
            .into_iter()
            .map(|stanza| stanza.stanza.to_stanza_xml())
            .collect();
        assert_eq!(remaining.len(), 5);
        assert!(remaining[2].contains("a@example.net") && remaining[3].contains("b@example.net"));
        assert!(remaining[4].contains("late"));
    }

    #[test]
    fn a_queue_refuses_past_its_bytes_and_gives_them_back_when_dropped() {
        use crate::outbound_bytes::OutboundBytes;
        use prometheus::{IntCounter, IntGauge};

        let gauge = IntGauge::new("g", "g").unwrap();
        let bytes = OutboundBytes::new(
            1000,
            10_000,
            gauge.clone(),
            IntCounter::new("c", "c").unwrap(),
        );
        let handle = ConnectionHandle::with_bytes(1, 100, bytes);
        let message = || {
            QueuedStanza::new(
                Element::new("message", ns::CLIENT)
                    .with_child(Element::new("body", ns::CLIENT).with_text("x".repeat(580))),
            )
        };
        let size = message().wire_len();
        handle.push(message()).unwrap();
        assert_eq!(handle.push(message()).unwrap_err().0, PushError::Full);
        assert_eq!(gauge.get(), size as i64);
        drop(handle);
        assert_eq!(gauge.get(), 0);
    }
}
