//! The state of one room (XEP-0045): its configuration, affiliations,
//! occupants, subject and recent history. The room without its history is
//! one record, so that any replica can load a room, apply a stanza and
//! write it back; the history is a list of its own, appended to (docs/muc.md).

use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A long-lived association with the room (XEP-0045 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// A temporary position in the room, for one visit (XEP-0045 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`, XEP-0045 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Whois {
    /// Semi-anonymous: moderators only.
    Moderators,
    /// Non-anonymous: every occupant.
    Anyone,
}

/// The room configuration (XEP-0045 section 10.2, the `muc#roomconfig` form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    /// `muc#roomconfig_roomsecret`; `None`: no password.
    pub password: Option<String>,
    pub moderated: bool,
    pub whois: Whois,
    /// `muc#roomconfig_maxusers`; never above the service's limit.
    pub max_users: u32,
    /// Whether participants (not only moderators) may change the subject.
    pub change_subject: bool,
    /// Whether participants (not only moderators) may invite (section 7.8.2).
    pub allow_invites: bool,
    /// `muc#roomconfig_enablearchiving` (Prosody's field): whether a
    /// persistent room keeps a XEP-0313 archive; on by default.
    #[serde(default = "enabled")]
    pub archiving: bool,
}

fn enabled() -> bool {
    true
}

impl RoomConfig {
    /// The defaults of a new room: temporary, public, open, unmoderated,
    /// semi-anonymous (XEP-0045 section 10.1.2, instant room).
    pub fn defaults(max_users: u32) -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            password: None,
            moderated: false,
            whois: Whois::Moderators,
            max_users,
            change_subject: false,
            allow_invites: true,
            archiving: true,
        }
    }
}

/// What an occupant last said about its availability (`<show/>`, `<status/>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub show: Option<String>,
    pub status: Option<String>,
}

/// One occupant: one real full JID under one nick (XEP-0045 section 7.2;
/// one nick per session, multi-session nicks are not supported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occupant {
    pub nick: String,
    /// The occupant's real full JID.
    pub jid: String,
    pub role: Role,
    pub availability: Availability,
    /// The occupant's recent requests to the room that reach others
    /// (invitations, voice requests), bounded per minute.
    #[serde(default)]
    pub requests: RequestWindow,
}

/// How many requests an occupant made in the current minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestWindow {
    /// The minute (seconds since the epoch / 60) being counted.
    pub minute: u64,
    pub count: u32,
}

impl Occupant {
    /// The occupant's bare real JID.
    pub fn bare(&self) -> &str {
        self.jid.split('/').next().unwrap_or(&self.jid)
    }
}

/// One message of the discussion history (XEP-0045 section 7.2.15), as reflected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The reflected message (from `room@service/nick`, without `to`).
    pub xml: String,
    /// When the room accepted it, seconds since the Unix epoch.
    pub at: u64,
    /// The sender's real bare JID (for the delay's `from` in non-anonymous rooms).
    pub sender: String,
}

/// The subject (XEP-0045 section 8.1): its text and who set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub text: String,
    pub nick: String,
}

/// The whole state of one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// The room's bare JID (`room@service`).
    pub jid: String,
    pub config: RoomConfig,
    /// A new room stays locked until its owner configures it (XEP-0045 section 10.1.1).
    pub locked: bool,
    /// Affiliations by bare JID; `none` is not stored.
    pub affiliations: BTreeMap<String, Affiliation>,
    /// The reason given with an affiliation (section 9.1: a ban's), by bare JID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub affiliation_reasons: BTreeMap<String, String>,
    /// Occupants in joining order.
    pub occupants: Vec<Occupant>,
    pub subject: Subject,
    /// The history as loaded (only for the stanzas that read it: presence),
    /// not part of the record: the store keeps it as a list of its own.
    #[serde(default, skip_serializing)]
    pub history: VecDeque<HistoryEntry>,
    /// The bytes `history` holds (its XML).
    #[serde(default, skip_serializing)]
    pub history_bytes: usize,
    /// The messages added to the history by the stanza being applied, for
    /// the store to append.
    #[serde(skip)]
    pub appended_history: Vec<HistoryEntry>,
    /// The salt of the room's occupant ids (XEP-0421 section 3: stable per
    /// room and real bare JID, not linkable across rooms).
    pub salt: String,
    /// The number of the room's last durable change (configuration,
    /// affiliations, subject) written to the database; a persistent room's
    /// older write is ignored by the database.
    #[serde(default)]
    pub revision: i64,
    /// The last XEP-0359 stanza-id (an archive id) the room stamped: ids
    /// only grow in a room, whichever replica applies its stanzas. Kept by
    /// the room store beside the history, not in the record (a message moves
    /// it and must not rewrite the record).
    #[serde(skip)]
    pub last_stanza_id: i64,
}

impl Room {
    /// A new room created by `creator` (bare JID), who becomes its owner.
    pub fn new(jid: &str, creator: &str, max_users: u32) -> Self {
        let mut affiliations = BTreeMap::new();
        affiliations.insert(creator.to_string(), Affiliation::Owner);
        Room {
            jid: jid.to_string(),
            config: RoomConfig::defaults(max_users),
            locked: true,
            affiliations,
            affiliation_reasons: BTreeMap::new(),
            occupants: Vec::new(),
            subject: Subject::default(),
            history: VecDeque::new(),
            history_bytes: 0,
            appended_history: Vec::new(),
            salt: uuid::Uuid::new_v4().simple().to_string(),
            last_stanza_id: 0,
            revision: 0,
        }
    }

    /// A persistent room as the database keeps it: no occupants, no history,
    /// configured (so unlocked).
    pub fn stored(
        jid: &str,
        config: RoomConfig,
        subject: Subject,
        salt: String,
        revision: i64,
    ) -> Self {
        Room {
            jid: jid.to_string(),
            config,
            locked: false,
            affiliations: BTreeMap::new(),
            affiliation_reasons: BTreeMap::new(),
            occupants: Vec::new(),
            subject,
            history: VecDeque::new(),
            history_bytes: 0,
            appended_history: Vec::new(),
            salt,
            revision,
            last_stanza_id: 0,
        }
    }

    pub fn affiliation(&self, bare: &str) -> Affiliation {
        self.affiliations
            .get(bare)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// Set an affiliation; a reason given before goes with the change.
    pub fn set_affiliation(&mut self, bare: &str, affiliation: Affiliation) {
        self.set_affiliation_with_reason(bare, affiliation, None);
    }

    /// Set an affiliation with the reason given for it (section 9.1, 9.3).
    pub fn set_affiliation_with_reason(
        &mut self,
        bare: &str,
        affiliation: Affiliation,
        reason: Option<String>,
    ) {
        self.affiliation_reasons.remove(bare);
        if affiliation == Affiliation::None {
            self.affiliations.remove(bare);
            return;
        }
        self.affiliations.insert(bare.to_string(), affiliation);
        if let Some(reason) = reason.filter(|reason| !reason.is_empty()) {
            self.affiliation_reasons.insert(bare.to_string(), reason);
        }
    }

    /// The reason given with `bare`'s affiliation, if any.
    pub fn affiliation_reason(&self, bare: &str) -> Option<&str> {
        self.affiliation_reasons.get(bare).map(String::as_str)
    }

    pub fn occupant_by_nick(&self, nick: &str) -> Option<&Occupant> {
        self.occupants.iter().find(|occupant| occupant.nick == nick)
    }

    pub fn occupant_by_jid(&self, jid: &str) -> Option<&Occupant> {
        self.occupants.iter().find(|occupant| occupant.jid == jid)
    }

    pub fn occupant_index_by_jid(&self, jid: &str) -> Option<usize> {
        self.occupants
            .iter()
            .position(|occupant| occupant.jid == jid)
    }

    /// The XEP-0421 occupant id of a real bare JID in this room.
    pub fn occupant_id(&self, bare: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.salt.as_bytes());
        hasher.update([0]);
        hasher.update(bare.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hasher.finalize()[..18])
    }

    /// The default role of an occupant with `affiliation` (XEP-0045 section 5.1.2).
    pub fn default_role(&self, affiliation: Affiliation) -> Role {
        match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    /// Append to the history, dropping the oldest past either limit (the
    /// store bounds the list it keeps the same way).
    pub fn push_history(&mut self, entry: HistoryEntry, max_stanzas: usize, max_bytes: usize) {
        if max_stanzas == 0 || entry.xml.len() > max_bytes {
            return;
        }
        self.appended_history.push(entry.clone());
        self.history_bytes += entry.xml.len();
        self.history.push_back(entry);
        while self.history.len() > max_stanzas || self.history_bytes > max_bytes {
            match self.history.pop_front() {
                Some(dropped) => self.history_bytes -= dropped.xml.len(),
                None => break,
            }
        }
    }

    /// Whether the room keeps a XEP-0313 archive: persistent rooms that
    /// enable archiving (a temporary room is gone with its last occupant,
    /// and whoever creates a room of that name next must not read it).
    pub fn archives(&self) -> bool {
        self.config.persistent && self.config.archiving
    }

    pub fn localpart(&self) -> &str {
        self.jid.split('@').next().unwrap_or(&self.jid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_by_count_and_bytes() {
        let mut room = Room::new("r@muc.example", "a@example", 10);
        for number in 0..10 {
            room.push_history(
                HistoryEntry {
                    xml: format!("<m>{number:04}</m>"),
                    at: number,
                    sender: "a@example".into(),
                },
                5,
                1000,
            );
        }
        assert_eq!(room.history.len(), 5);
        assert_eq!(room.history.front().map(|entry| entry.at), Some(5));
        room.push_history(
            HistoryEntry {
                xml: "x".repeat(30),
                at: 99,
                sender: "a@example".into(),
            },
            5,
            40,
        );
        assert!(room.history_bytes <= 40);
        assert_eq!(room.history.back().map(|entry| entry.at), Some(99));
    }

    #[test]
    fn occupant_ids_are_stable_per_room_and_differ_across_rooms() {
        let one = Room::new("r@muc.example", "a@example", 10);
        let two = Room::new("s@muc.example", "a@example", 10);
        assert_eq!(one.occupant_id("b@example"), one.occupant_id("b@example"));
        assert_ne!(one.occupant_id("b@example"), one.occupant_id("c@example"));
        assert_ne!(one.occupant_id("b@example"), two.occupant_id("b@example"));
    }
}
