//! What a persistent room keeps in the database (XEP-0045 section 10.2,
//! `muc#roomconfig_persistentroom`): its configuration, affiliations (with
//! their reasons), subject and occupant-id salt, written when they change,
//! read back when the room store does not hold the room. Occupants and the
//! history are not durable.

use std::collections::BTreeMap;

use starling_api::{ApiError, ApiResult, MucAffiliation, MucRoomRecord};
use starling_jid::BareJid;

use crate::state::{Affiliation, Room, RoomConfig, Subject};

/// The durable part of a persistent room, to tell whether a stanza changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    config: RoomConfig,
    affiliations: BTreeMap<String, Affiliation>,
    reasons: BTreeMap<String, String>,
    subject: Subject,
    salt: String,
}

/// The durable part of `room`, `None` unless it is persistent (and configured).
pub fn durable_part(room: &Room) -> Option<Durable> {
    (room.config.persistent && !room.locked).then(|| Durable {
        config: room.config.clone(),
        affiliations: room.affiliations.clone(),
        reasons: room.affiliation_reasons.clone(),
        subject: room.subject.clone(),
        salt: room.salt.clone(),
    })
}

pub fn parse_room(room_jid: &str) -> ApiResult<BareJid> {
    room_jid
        .parse()
        .map_err(|error| ApiError::Invalid(format!("{room_jid:?} is not a room JID: {error:?}")))
}

/// The database's record of a persistent room.
pub fn durable_record(room: &Room) -> ApiResult<MucRoomRecord> {
    Ok(MucRoomRecord {
        jid: parse_room(&room.jid)?,
        revision: room.revision,
        name: room.config.name.clone(),
        public: room.config.public,
        config: serde_json::to_string(&room.config)
            .map_err(|error| ApiError::Internal(format!("room {}: {error}", room.jid)))?,
        subject: room.subject.text.clone(),
        subject_nick: room.subject.nick.clone(),
        occupant_id_salt: room.salt.clone(),
        affiliations: room
            .affiliations
            .iter()
            .map(|(jid, affiliation)| MucAffiliation {
                jid: jid.clone(),
                affiliation: affiliation.as_str().to_string(),
                reason: room.affiliation_reason(jid).map(str::to_string),
            })
            .collect(),
    })
}

/// A persistent room from its record: no occupants, no history.
pub fn room_of_durable(room_jid: &str, record: MucRoomRecord) -> ApiResult<Room> {
    let config: RoomConfig = serde_json::from_str(&record.config).map_err(|error| {
        ApiError::Internal(format!("stored room {room_jid} unreadable: {error}"))
    })?;
    let subject = Subject {
        text: record.subject,
        nick: record.subject_nick,
    };
    let mut room = Room::stored(
        room_jid,
        config,
        subject,
        record.occupant_id_salt,
        record.revision,
    );
    for affiliation in record.affiliations {
        let Some(value) = Affiliation::from_name(&affiliation.affiliation) else {
            return Err(ApiError::Internal(format!(
                "stored room {room_jid}: unknown affiliation {:?}",
                affiliation.affiliation
            )));
        };
        room.set_affiliation_with_reason(&affiliation.jid, value, affiliation.reason);
    }
    Ok(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persistent_room_reads_back_as_it_was_written() {
        let mut room = Room::new("coven@chat.example", "owner@example", 20);
        room.locked = false;
        room.config.persistent = true;
        room.config.members_only = true;
        room.config.name = "The Coven".into();
        room.config.password = Some("cauldron".into());
        room.set_affiliation("member@example", Affiliation::Member);
        room.set_affiliation_with_reason(
            "troll@example",
            Affiliation::Outcast,
            Some("Treason".into()),
        );
        room.subject = Subject {
            text: "Fire Burn".into(),
            nick: "witch".into(),
        };
        room.revision = 4;
        let record = durable_record(&room).unwrap();
        assert_eq!(record.revision, 4);
        assert_eq!(record.name, "The Coven");
        assert_eq!(
            record
                .affiliations
                .iter()
                .find(|affiliation| affiliation.jid == "troll@example")
                .and_then(|affiliation| affiliation.reason.as_deref()),
            Some("Treason")
        );
        let back = room_of_durable("coven@chat.example", record).unwrap();
        assert_eq!(durable_part(&back), durable_part(&room));
        assert!(durable_part(&back).is_some());
        assert_eq!(back.revision, 4);
        assert!(back.occupants.is_empty());
    }

    #[test]
    fn only_configured_persistent_rooms_are_durable() {
        let mut room = Room::new("r@chat.example", "owner@example", 20);
        room.config.persistent = true;
        // Locked: being created, not yet configured (section 10.1).
        assert!(durable_part(&room).is_none());
        room.locked = false;
        assert!(durable_part(&room).is_some());
        room.config.persistent = false;
        assert!(durable_part(&room).is_none());
    }
}
