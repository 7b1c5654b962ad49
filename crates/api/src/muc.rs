//! Durable multi-user chat rooms (XEP-0045): the configuration and the
//! affiliations of **persistent** rooms, kept by the storage service so that
//! a room outlives the room store (Redis in the cluster, the process in
//! `starling serve`). Occupants and the recent history are not durable.

use async_trait::async_trait;
use starling_jid::BareJid;

use crate::ApiResult;

/// One long-lived association with a room (XEP-0045 section 5.2): `owner`,
/// `admin`, `member` or `outcast` (`none` is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MucAffiliation {
    /// The bare JID affiliated.
    pub jid: String,
    /// `owner`, `admin`, `member` or `outcast`.
    pub affiliation: String,
    /// The reason given when it was granted (section 9.1, a ban's reason).
    pub reason: Option<String>,
}

/// The names `MucAffiliation::affiliation` may take.
pub const MUC_AFFILIATIONS: [&str; 4] = ["owner", "admin", "member", "outcast"];

/// A persistent room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MucRoomRecord {
    /// The room's bare JID (`room@conference.example`).
    pub jid: BareJid,
    /// Increases with each durable change: a write that is not newer than
    /// the stored one is ignored (a stalled replica's late write).
    pub revision: i64,
    /// `muc#roomconfig_roomname`, shown in the service's disco#items.
    pub name: String,
    /// Listed in the service's disco#items (`muc#roomconfig_publicroom`).
    pub public: bool,
    /// The whole configuration, as the MUC service serialises it (JSON),
    /// kept as is by the storage service.
    pub config: String,
    /// The subject (XEP-0045 section 8.1) and the nick that set it.
    pub subject: String,
    pub subject_nick: String,
    /// The salt of the room's occupant ids (XEP-0421: stable per room).
    pub occupant_id_salt: String,
    /// Every affiliation of the room.
    pub affiliations: Vec<MucAffiliation>,
}

/// A room the service's disco#items lists (XEP-0045 section 6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMucRoom {
    pub jid: BareJid,
    pub name: String,
}

/// The persistent rooms of MUC services.
#[async_trait]
pub trait MucRoomStore: Send + Sync + 'static {
    /// The stored room with its affiliations (by JID), `None` when not stored.
    async fn muc_room(&self, room: &BareJid) -> ApiResult<Option<MucRoomRecord>>;
    /// Write the room whole (its affiliations replace the stored ones),
    /// unless the stored one has a revision at least as high; returns
    /// whether it was written. `Invalid` for an unknown affiliation name.
    async fn put_muc_room(&self, room: &MucRoomRecord) -> ApiResult<bool>;
    /// Remove the room and its affiliations; returns whether it existed.
    async fn remove_muc_room(&self, room: &BareJid) -> ApiResult<bool>;
    /// The public rooms of the service `domain`, by JID, at most `limit`.
    async fn listed_muc_rooms(&self, domain: &str, limit: u32) -> ApiResult<Vec<ListedMucRoom>>;
}
