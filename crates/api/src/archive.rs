//! The message archive (XEP-0313 Message Archive Management, with the
//! XEP-0441 preferences): what the session-router writes for every archived
//! message and reads for every archive query, implemented by the storage
//! service (SQLite and PostgreSQL, and over gRPC in the cluster).
//!
//! Archive ids are 64-bit numbers that the router assigns before delivery
//! (so that the XEP-0359 `<stanza-id/>` of the delivered message is the
//! archive id): the microseconds since the Unix epoch shifted left by 8
//! bits, with 8 bits of the assigning process in the low byte
//! ([`ArchiveId`]). Id order is therefore time order, and a time range is an
//! id range: every query is a range scan of one index.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use starling_jid::{BareJid, Jid};

use crate::error::ApiResult;

/// Bits of an archive id below the timestamp.
pub const ARCHIVE_ID_NODE_BITS: u32 = 8;

/// One message's id in an archive (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArchiveId(pub i64);

impl ArchiveId {
    /// The smallest id of a message archived at `micros` since the epoch.
    pub fn first_at(micros: i64) -> ArchiveId {
        ArchiveId(micros.saturating_mul(1 << ARCHIVE_ID_NODE_BITS))
    }

    /// The largest id of a message archived at `micros` since the epoch.
    pub fn last_at(micros: i64) -> ArchiveId {
        ArchiveId(
            micros
                .saturating_mul(1 << ARCHIVE_ID_NODE_BITS)
                .saturating_add((1 << ARCHIVE_ID_NODE_BITS) - 1),
        )
    }

    /// When the message was archived, in microseconds since the epoch.
    pub fn micros(self) -> i64 {
        self.0 >> ARCHIVE_ID_NODE_BITS
    }

    /// When the message was archived.
    pub fn time(self) -> SystemTime {
        let micros = u64::try_from(self.micros()).unwrap_or(0);
        UNIX_EPOCH + Duration::from_micros(micros)
    }

    /// The id as it travels in XML (`<stanza-id id/>`, `<result id/>`,
    /// RSM): decimal digits.
    pub fn to_text(self) -> String {
        self.0.to_string()
    }

    /// Read an id a client sent; `None` for anything that is not one of ours
    /// (such an id is in no archive: `item-not-found`).
    pub fn from_text(text: &str) -> Option<ArchiveId> {
        if text.is_empty() || text.len() > 19 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(ArchiveId)
    }
}

/// A message to archive in one account's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// Whose archive.
    pub owner: BareJid,
    pub id: ArchiveId,
    /// The other party: the recipient of an outgoing message, the sender of
    /// an incoming one, as addressed (bare or full).
    pub with: Jid,
    /// The message as delivered (serialised top-level stanza).
    pub stanza_xml: String,
}

/// The default rule of an account's archive (XEP-0441 section 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveDefault {
    #[default]
    Always,
    Never,
    Roster,
}

/// An account's archiving preferences (XEP-0441): the default rule and the
/// addresses always or never archived (matched as given: a bare JID
/// matches its every resource, a full JID that resource).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePrefs {
    pub default: ArchiveDefault,
    pub always: Vec<Jid>,
    pub never: Vec<Jid>,
}

impl ArchivePrefs {
    /// Whether a message with `with` is archived, given whether `with`'s
    /// bare JID is in the roster: `never` wins over `always`, both over the
    /// default (XEP-0441 section 2.1).
    pub fn archives(&self, with: &Jid, in_roster: bool) -> bool {
        let matches = |listed: &Jid| match listed {
            Jid::Bare(bare) => bare == with.bare(),
            full @ Jid::Full(_) => full == with,
        };
        if self.never.iter().any(matches) {
            return false;
        }
        if self.always.iter().any(matches) {
            return true;
        }
        match self.default {
            ArchiveDefault::Always => true,
            ArchiveDefault::Never => false,
            ArchiveDefault::Roster => in_roster,
        }
    }
}

/// Where a page starts (XEP-0059 with XEP-0313 section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageStart {
    /// The oldest matching messages.
    #[default]
    First,
    /// The newest matching messages (`<before/>` empty).
    Last,
    /// The messages after this one (`<after/>`), which must be in the archive.
    After(ArchiveId),
    /// The messages before this one (`<before/>`), which must be in the archive.
    Before(ArchiveId),
}

/// An archive query, already read and checked by the router.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// `with`: a bare JID matches every resource, a full JID that resource.
    pub with: Option<Jid>,
    /// Inclusive id bounds from `start`/`end`.
    pub start: Option<ArchiveId>,
    pub end: Option<ArchiveId>,
    /// `after-id`/`before-id` (exclusive); they must be in the archive.
    pub after_id: Option<ArchiveId>,
    pub before_id: Option<ArchiveId>,
    /// `ids`: only these messages; each must be in the archive.
    pub ids: Vec<ArchiveId>,
    pub page: PageStart,
    /// At most this many messages (already clamped by the router).
    pub max: u32,
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    pub id: ArchiveId,
    pub stanza_xml: String,
}

/// One page of an archive query, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePage {
    pub messages: Vec<ArchivedMessage>,
    /// The page reaches the end of the result set in its direction
    /// (XEP-0313 section 4.3: `complete='true'`).
    pub complete: bool,
}

/// The message archive (XEP-0313) and its preferences (XEP-0441).
#[async_trait]
pub trait ArchiveStore: Send + Sync + 'static {
    /// For each `(owner, with)`: whether `owner`'s preferences archive a
    /// message exchanged with `with` (false for an owner without an
    /// account), in the order given. One round trip for all.
    async fn archive_decisions(&self, pairs: &[(BareJid, Jid)]) -> ApiResult<Vec<bool>>;
    /// Add messages to their owners' archives, in one transaction; an
    /// owner without an account, or an id already archived for that owner,
    /// is skipped. Past the per-account bound the oldest messages go.
    /// Returns how many were added.
    async fn archive_messages(&self, entries: &[ArchiveEntry]) -> ApiResult<u64>;
    /// One page of `owner`'s archive; `NotFound` when an id the query
    /// names (`after-id`, `before-id`, `ids`, the page's `after`/`before`)
    /// is not in it.
    async fn query_archive(&self, owner: &BareJid, query: &ArchiveQuery) -> ApiResult<ArchivePage>;
    /// The first and last message of `owner`'s archive (XEP-0313 section 6), `None` when empty.
    async fn archive_bounds(&self, owner: &BareJid) -> ApiResult<Option<(ArchiveId, ArchiveId)>>;
    /// The account's preferences (the default ones when never set).
    async fn archive_prefs(&self, owner: &BareJid) -> ApiResult<ArchivePrefs>;
    /// Replace the account's preferences; `NotFound` without the account.
    async fn set_archive_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> ApiResult<()>;
}

/// The archives of multi-user chat rooms (XEP-0313 section 5.1.2 "MUC
/// Archives", kept by the MUC service of XEP-0045): one archive per room,
/// its owner the room's bare JID (never an account), `with` the sender's
/// occupant JID (`room@service/nick`), the id the room's XEP-0359
/// `<stanza-id/>`. Who may read a room's archive is the room's rule.
#[async_trait]
pub trait RoomArchiveStore: Send + Sync + 'static {
    /// Add messages to their rooms' archives in one transaction; an id
    /// already archived for that room is skipped. Returns how many were added.
    async fn archive_room_messages(&self, entries: &[ArchiveEntry]) -> ApiResult<u64>;
    /// One page of `room`'s archive (`with`: an occupant JID, or the room's
    /// bare JID for every message); `NotFound` when an id the query names
    /// is not in it.
    async fn query_room_archive(
        &self,
        room: &BareJid,
        query: &ArchiveQuery,
    ) -> ApiResult<ArchivePage>;
    /// One message of `room`'s archive, `None` when it is not there.
    async fn room_archive_message(
        &self,
        room: &BareJid,
        id: ArchiveId,
    ) -> ApiResult<Option<ArchivedMessage>>;
    /// Replace one archived message (a XEP-0424/XEP-0425 tombstone);
    /// `false` when it is not there.
    async fn replace_room_archive_message(
        &self,
        room: &BareJid,
        id: ArchiveId,
        stanza_xml: &str,
    ) -> ApiResult<bool>;
    /// Remove a room's whole archive (the room was destroyed: a room created
    /// later under the same name does not show it); returns how many went.
    async fn remove_room_archive(&self, room: &BareJid) -> ApiResult<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(text: &str) -> Jid {
        text.parse().unwrap()
    }

    #[test]
    fn ids_carry_their_time_and_read_back() {
        let id = ArchiveId(1_700_000_000_123_456 << 8 | 7);
        assert_eq!(id.micros(), 1_700_000_000_123_456);
        assert_eq!(ArchiveId::from_text(&id.to_text()), Some(id));
        assert!(ArchiveId::first_at(5) <= ArchiveId(5 << 8 | 3));
        assert!(ArchiveId::last_at(5) >= ArchiveId(5 << 8 | 255));
        assert_eq!(ArchiveId::from_text("12a"), None);
        assert_eq!(ArchiveId::from_text("-1"), None);
        assert_eq!(ArchiveId::from_text(""), None);
        assert_eq!(ArchiveId::from_text("99999999999999999999"), None);
    }

    #[test]
    fn never_wins_then_always_then_the_default() {
        let prefs = ArchivePrefs {
            default: ArchiveDefault::Roster,
            always: vec![jid("romeo@montague.lit"), jid("nurse@capulet.lit")],
            never: vec![jid("romeo@montague.lit/orchard")],
        };
        assert!(prefs.archives(&jid("romeo@montague.lit/balcony"), false));
        assert!(!prefs.archives(&jid("romeo@montague.lit/orchard"), true));
        assert!(prefs.archives(&jid("nurse@capulet.lit"), false));
        assert!(prefs.archives(&jid("tybalt@capulet.lit"), true));
        assert!(!prefs.archives(&jid("tybalt@capulet.lit"), false));
        assert!(ArchivePrefs::default().archives(&jid("anyone@example.org"), false));
    }
}
