//! Stream resumption state (XEP-0198 section 5), kept outside the edge
//! process (DESIGN.md `smres:{id}`): what a stream needs to be resumed on any
//! connection-manager, even after the one that held it was killed.
//!
//! One resumable stream is one entry: its session (account, full JID, where
//! it is), the count of stanzas the server handled from the client (`h_in`),
//! the count of stanzas the client acknowledged (`acked`) and, in order, every
//! stanza sent or to be sent to the client after `acked` (the unacked queue).
//! The connection-manager appends to the queue as stanzas enter the
//! connection's outbound queue and trims it as the client acks; while the
//! stream is detached (no connection) the router appends to it instead
//! ([`ResumptionStore::park`]). Every write by a connection-manager names the
//! address it holds the stream at and is refused once another one resumed it.
//! The counters are modulo 2^32 as the XEP says.
//!
//! In flight: a stanza published to the node of a resumable stream is also
//! recorded as in flight for that stream (in the cluster, by the publish
//! itself: see `starling_bus`), until that node journals it (or says it will
//! not). What is still in flight when the node is found dead (it was killed
//! before its bus subscription read it) joins the unacked queue on
//! resumption (or when the janitor detaches it, or at expiry), after what the
//! node journaled and before what was parked meanwhile: pub/sub alone would
//! have lost it. A live node marks what it will not journal as consumed.

use async_trait::async_trait;
use starling_jid::{BareJid, FullJid};

use crate::error::ApiResult;
use crate::registry::SessionAddr;

/// The pseudo-node of detached streams: a session record at this node has no
/// connection; stanzas for it are parked in its resumption queue.
pub const DETACHED_NODE: &str = "~detached";

/// The address of a detached session (its connection id is kept, so that an
/// unbind names the exact record).
pub fn detached_addr(conn: u64) -> SessionAddr {
    SessionAddr {
        node: DETACHED_NODE.to_string(),
        conn,
    }
}

/// Whether a session's stream is detached.
pub fn is_detached(addr: &SessionAddr) -> bool {
    addr.node == DETACHED_NODE
}

/// A new resumable stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableStream {
    pub id: String,
    pub jid: FullJid,
    pub addr: SessionAddr,
    /// The resumption timeout in seconds (the `max` of `<enabled/>`).
    pub timeout_secs: u64,
    /// The bound of the unacked queue.
    pub max_unacked: usize,
}

/// One connection-manager's update of one stream, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: String,
    /// Where the writer holds the stream; refused if that is no longer so.
    pub addr: SessionAddr,
    /// Stanzas acknowledged since the last entry: dropped from the queue's front.
    pub newly_acked: u32,
    /// The client's `h` after them.
    pub acked: u32,
    /// Stanzas handled from the client so far.
    pub h_in: u32,
    /// Stanzas that entered the outbound queue, serialised, in order.
    pub appended: Vec<String>,
    /// Stanzas that were in flight to this stream and will not enter its
    /// queue (superseded for an inactive client, or rerouted): no longer in flight.
    pub consumed: Vec<String>,
}

/// What became of a stanza parked for a detached stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Queued: the client gets it when it resumes, or the timeout reroutes it.
    Queued,
    /// The queue is at its bound: the caller treats the session as unreachable.
    Full,
    /// No such resumable stream (it ended or expired).
    Gone,
}

/// What a resumption gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    pub jid: FullJid,
    /// Where the stream was before (a detached address, or a live connection
    /// that has not noticed its loss yet and is to be closed).
    pub previous: SessionAddr,
    pub timeout_secs: u64,
    pub max_unacked: usize,
    /// Stanzas handled from the client in the previous stream.
    pub h_in: u32,
    /// The client's `h`, now the count of acknowledged stanzas.
    pub acked: u32,
    /// The stanzas the client did not acknowledge, to send again, in order.
    pub unacked: Vec<String>,
}

/// Why a resumption was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeRefused {
    /// Unknown, expired, or another account's id (XEP-0198: `<item-not-found/>`,
    /// the same answer for all three so that ids cannot be probed).
    NotFound,
    /// The client acknowledges more than was sent (`<handled-count-too-high/>`).
    HandledCountTooHigh { h: u32, sent: u32, h_in: u32 },
}

/// A stream whose timeout passed: what it left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub id: String,
    pub jid: FullJid,
    pub addr: SessionAddr,
    /// Unacknowledged and parked stanzas, in order: they go where a stanza
    /// for an unavailable resource goes (RFC 6121 section 8.5).
    pub stanzas: Vec<String>,
}

#[async_trait]
pub trait ResumptionStore: Send + Sync + 'static {
    /// Record a stream that was just enabled with resumption.
    async fn enable(&self, stream: ResumableStream) -> ApiResult<()>;
    /// Apply entries in order; returns, per entry, whether the writer still
    /// holds the stream (a refused entry's stanzas are for the caller to reroute).
    async fn journal(&self, entries: &[JournalEntry]) -> ApiResult<Vec<bool>>;
    /// Append a stanza for a detached stream (or one whose node is gone).
    async fn park(&self, id: &str, stanza: &str) -> ApiResult<Parked>;
    /// The stream lost its connection at `addr`: it is detached and expires
    /// `timeout` from now unless resumed. False when `addr` no longer holds it.
    /// `node_dead`: its node is gone (the janitor detaches it), so what was in
    /// flight to it joins the queue now.
    async fn detach(&self, id: &str, addr: &SessionAddr, node_dead: bool) -> ApiResult<bool>;
    /// Resume a stream for `owner` (after SASL) at `addr`, the client having
    /// handled `h` stanzas (`None`: it does not say, nothing more is acked):
    /// atomically takes it over, drops what `h` acknowledges and returns the
    /// rest to send again.
    /// `previous_node_dead`: the node that held the stream is gone (its bus
    /// subscription is), so what was in flight to it joins the queue.
    async fn resume(
        &self,
        id: &str,
        owner: &BareJid,
        h: Option<u32>,
        addr: &SessionAddr,
        previous_node_dead: bool,
    ) -> ApiResult<Result<Resumed, ResumeRefused>>;
    /// Read a stream's owner-visible state without changing it: where it is,
    /// whose it is, and whether `h` is acceptable. `NotFound` for another
    /// account's id, as for an unknown one.
    async fn peek(
        &self,
        id: &str,
        owner: &BareJid,
        h: Option<u32>,
    ) -> ApiResult<Result<(FullJid, SessionAddr), ResumeRefused>>;
    /// The stream ended for good at `addr` (a clean close, or an error that
    /// ends stream management): forget it and return its unacked and parked
    /// stanzas, which the caller reroutes. `None` when `addr` no longer holds it.
    async fn end(&self, id: &str, addr: &SessionAddr) -> ApiResult<Option<Vec<String>>>;
    /// Take, at most `limit`, the detached streams whose timeout passed; each
    /// is removed atomically, so that exactly one caller gets it.
    async fn take_expired(&self, limit: usize) -> ApiResult<Vec<Expired>>;
}

/// The `h` arithmetic of XEP-0198 section 4: counters wrap at 2^32.
pub fn acked_since(acked_before: u32, h: u32) -> u32 {
    h.wrapping_sub(acked_before)
}
