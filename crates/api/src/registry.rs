//! The session registry: where every bound resource lives (DESIGN.md "Redis
//! layout": `sess:{bare}`, `pres:{full}`). In the cluster it is Redis; in one
//! process it is a map. Updates are single atomic operations, never
//! read-then-write, so two logins racing for one resource end with one session.

use async_trait::async_trait;
use starling_jid::{BareJid, FullJid, Jid};

use crate::error::ApiResult;

/// A connection-manager's identity, unique in the cluster.
pub type NodeId = String;

/// A connection's identity, unique within its connection-manager.
pub type ConnId = u64;

/// Where a session's stream ends: which node, which connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionAddr {
    pub node: NodeId,
    pub conn: ConnId,
}

/// One bound resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub jid: FullJid,
    pub addr: SessionAddr,
    /// Presence priority (RFC 6121 section 4.7.2.3); 0 until the first presence.
    pub priority: i8,
    /// Sent initial presence and not yet unavailable (RFC 6121 section 4.2).
    pub available: bool,
    /// Requested the roster: an "interested resource" for roster pushes (RFC 6121 section 2.1.6).
    pub interested: bool,
    /// Last available presence broadcast by the session, serialised (`pres:{full}`).
    pub presence: Option<String>,
    /// Enabled Message Carbons (XEP-0280 section 4): receives copies of the
    /// account's messages sent and received by its other resources.
    pub carbons: bool,
    /// Requested the block list: an "interested" resource for block and
    /// unblock pushes (XEP-0191 sections 3.3 and 3.4).
    pub blocklist_interest: bool,
    /// The XEP-0198 resumption id when the stream is resumable: while the
    /// stream is detached, stanzas for it are parked under this id.
    pub resumption: Option<String>,
}

impl SessionRecord {
    pub fn new(jid: FullJid, addr: SessionAddr) -> Self {
        SessionRecord {
            jid,
            addr,
            priority: 0,
            available: false,
            interested: false,
            presence: None,
            carbons: false,
            blocklist_interest: false,
            resumption: None,
        }
    }
}

/// The result of binding a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOutcome {
    /// The session that held this full JID before and was replaced by the new
    /// one (the conflict policy: the newest login wins, RFC 6120 section 7.7.2.2).
    pub replaced: Option<SessionRecord>,
}

#[async_trait]
pub trait SessionRegistry: Send + Sync + 'static {
    /// Record a new session atomically, replacing any session with the same full JID.
    async fn bind(&self, record: SessionRecord) -> ApiResult<BindOutcome> {
        self.bind_limited(record, 0).await
    }
    /// [`Self::bind`], refused with `ApiError::LimitReached` when the account
    /// already has `max_resources` other sessions (0: no limit). The count and
    /// the write are one atomic step, so simultaneous binds on different nodes
    /// cannot exceed the limit (RFC 6120 section 7.6.2.1); replacing a bound
    /// full JID does not count as a new resource.
    async fn bind_limited(
        &self,
        record: SessionRecord,
        max_resources: usize,
    ) -> ApiResult<BindOutcome>;
    /// Remove a session if it is still the one at `addr` (a replaced session's
    /// late unbind must not remove its successor). Returns the removed record.
    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<Option<SessionRecord>>;
    /// Every session of an account.
    async fn sessions(&self, user: &BareJid) -> ApiResult<Vec<SessionRecord>>;
    /// One session.
    async fn session(&self, jid: &FullJid) -> ApiResult<Option<SessionRecord>>;
    /// Record a session's presence state (only if still at `addr`); `presence` is
    /// the last available presence, `None` when unavailable. Returns whether the session exists.
    async fn set_presence(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
        available: bool,
        priority: i8,
        presence: Option<String>,
    ) -> ApiResult<bool>;
    /// Mark a session as interested in roster pushes.
    async fn set_interested(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<bool>;
    /// Enable or disable Message Carbons for a session (XEP-0280 sections 4
    /// and 5), only if it is still at `addr`. Returns whether the session exists.
    async fn set_carbons(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
        enabled: bool,
    ) -> ApiResult<bool>;
    /// Mark a session as interested in block list pushes (XEP-0191: it
    /// requested the block list), only if still at `addr`. Returns whether
    /// the session exists.
    async fn set_blocklist_interest(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<bool>;
    /// Remember that the session sent directed presence to `to` (RFC 6121 section 4.6),
    /// or forget it when `available` is false. The session remembers at most
    /// `max_entries` addressees (issue 18: bounded per session): `false`
    /// when `to` is new and that many are remembered already (nothing added).
    async fn set_directed_presence(
        &self,
        jid: &FullJid,
        to: &Jid,
        available: bool,
        max_entries: usize,
    ) -> ApiResult<bool>;
    /// The entities the session sent directed presence to; the set is cleared.
    async fn take_directed_presence(&self, jid: &FullJid) -> ApiResult<Vec<Jid>>;
    /// Mark a session's stream as resumable under `id` (XEP-0198), only if
    /// still at `addr`. Returns whether the session exists.
    async fn set_resumption(&self, jid: &FullJid, addr: &SessionAddr, id: &str) -> ApiResult<bool>;
    /// Move a session to another address (its stream was detached, or resumed
    /// on another connection), only if still at `from`; everything else of the
    /// record is kept, so contacts see no change. Returns whether it moved.
    async fn relocate(
        &self,
        jid: &FullJid,
        from: &SessionAddr,
        to: &SessionAddr,
    ) -> ApiResult<bool>;
    /// Every session on one node (for the janitor and for re-registration).
    async fn node_sessions(&self, node: &str) -> ApiResult<Vec<SessionRecord>>;
    /// The connection-managers alive and not draining, ordered: where the
    /// server may open a stream of its own (an s2s stream for a stanza no
    /// session of the sender's can carry). Empty when none is known.
    async fn live_nodes(&self) -> ApiResult<Vec<String>> {
        Ok(Vec::new())
    }
}
