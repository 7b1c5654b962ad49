//! Retracting room messages: a moderator's (XEP-0425 Message Moderation,
//! `urn:xmpp:message-moderate:1`) and an occupant's own (XEP-0424 Message
//! Retraction, `urn:xmpp:message-retract:1`, whose `id` in a room is the
//! room's XEP-0359 stanza-id). The room tells every occupant, keeps the
//! message out of the history it replays, and replaces the archived copy
//! with a tombstone (XEP-0425 section "Tombstones"): the original's
//! addresses, occupant id and stanza-id, and a `<retracted/>` marker.

use starling_api::ArchiveId;
use starling_xmpp::xep::delay::rfc3339_utc;
use starling_xmpp::{
    ns, parse_element, stanza, Element, Limits, StanzaError, StanzaErrorCondition,
};

use super::archive::history_message;
use super::{Context, MUC_USER, OCCUPANT_ID, STANZA_ID};
use crate::state::{Occupant, Role, Room};

pub const MODERATE: &str = "urn:xmpp:message-moderate:1";
pub const RETRACT: &str = "urn:xmpp:message-retract:1";

fn occupant_id_of(message: &Element) -> Option<&str> {
    message.get_child("occupant-id", OCCUPANT_ID)?.attr("id")
}

/// The archived or replayed form of a retracted message: its `from`,
/// `type` and `id`, its occupant id, stanza-id and the room's `<x/>`, then
/// `marker` (every other child, the body first, goes).
fn tombstone(original: &Element, marker: Element) -> Element {
    let mut kept = Element::new(original.name(), original.namespace());
    for name in ["from", "type", "id"] {
        if let Some(value) = original.attr(name) {
            kept.set_attr(name, value.to_string());
        }
    }
    for child in original.children() {
        if child.is("occupant-id", OCCUPANT_ID)
            || child.is("stanza-id", STANZA_ID)
            || child.is("x", MUC_USER)
        {
            kept.append_child(child.clone());
        }
    }
    kept.append_child(marker);
    kept
}

impl Context<'_> {
    /// The message stanza-id `id` names, as archived (what the service
    /// read, [`super::Known::target`]) or else as the history replays it;
    /// with its place in the history.
    fn retraction_target(&self, room: &Room, id: ArchiveId) -> Option<(Option<usize>, Element)> {
        let in_history = history_message(room, id);
        let archived = self
            .known
            .target
            .as_ref()
            .filter(|target| target.id == id)
            .and_then(|target| {
                parse_element(
                    target.stanza_xml.as_bytes(),
                    &Limits::default().for_server_copies(),
                )
                .ok()
            });
        match (in_history, archived) {
            (Some((index, _)), Some(archived)) => Some((Some(index), archived)),
            (Some((index, replayed)), None) => Some((Some(index), replayed)),
            (None, Some(archived)) => Some((None, archived)),
            (None, None) => None,
        }
    }

    /// Forget a retracted message: out of the history, a tombstone in the archive.
    fn bury(
        &mut self,
        room: &mut Room,
        id: ArchiveId,
        history_index: Option<usize>,
        original: &Element,
        marker: Element,
    ) {
        if let Some(index) = history_index {
            if let Some(entry) = room.history.remove(index) {
                room.history_bytes -= entry.xml.len();
            }
            self.effects.changed = true;
        }
        if self.settings.archives && room.archives() {
            let buried = tombstone(original, marker);
            self.effects.tombstones.push((id, buried.to_stanza_xml()));
        }
    }

    /// XEP-0425: `<iq type='set'><moderate id xmlns='…moderate:1'><retract
    /// xmlns='…retract:1'/><reason/></moderate></iq>` from a moderator.
    pub(super) fn moderate(&mut self, room: &mut Room, iq: &Element) {
        let Some(moderator) = room.occupant_by_jid(self.sender).cloned() else {
            let error = StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("only moderators moderate messages");
            return self.effects.error_with(iq, self.sender, error);
        };
        if moderator.role != Role::Moderator {
            let error = StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("only moderators moderate messages");
            return self.effects.error_with(iq, self.sender, error);
        }
        let Some(moderate) = stanza::iq_payload(iq) else {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::BadRequest);
        };
        if !moderate.has_child("retract", RETRACT) {
            // Retraction is the one moderation action the XEP defines.
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::BadRequest);
        }
        let found = moderate
            .attr("id")
            .and_then(ArchiveId::from_text)
            .and_then(|id| self.retraction_target(room, id).map(|found| (id, found)));
        let Some((id, (history_index, original))) = found else {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::ItemNotFound);
        };
        let reason = moderate
            .get_child("reason", MODERATE)
            .map(Element::text)
            .map(|text| text.chars().take(1024).collect::<String>());
        self.result(iq, None);
        let moderated = Element::new("moderated", MODERATE)
            .with_attr("by", self.occupant_jid(&moderator.nick))
            .with_child(
                Element::new("occupant-id", OCCUPANT_ID)
                    .with_attr("id", room.occupant_id(moderator.bare())),
            );
        // The notice every occupant gets (from the room's bare JID).
        let mut retract = Element::new("retract", RETRACT)
            .with_attr("id", id.to_text())
            .with_child(moderated.clone());
        let mut retracted = Element::new("retracted", RETRACT)
            .with_attr("stamp", rfc3339_utc(self.now))
            .with_child(moderated);
        if let Some(reason) = reason {
            retract.append_child(Element::new("reason", RETRACT).with_text(reason.clone()));
            retracted.append_child(Element::new("reason", RETRACT).with_text(reason));
        }
        let notice_id = self.next_stanza_id(room);
        let notice = Element::new("message", ns::CLIENT)
            .with_attr("from", self.room_jid.to_string())
            .with_attr("type", "groupchat")
            .with_attr("id", uuid::Uuid::new_v4().to_string())
            .with_child(retract)
            .with_child(
                Element::new("stanza-id", STANZA_ID)
                    .with_attr("id", notice_id.to_text())
                    .with_attr("by", self.room_jid.to_string()),
            );
        // Archived too, so that a client catching up from the archive
        // learns of the retraction.
        self.archive_entry(room, None, &notice, notice_id);
        self.bury(room, id, history_index, &original, retracted);
        let everyone = room
            .occupants
            .iter()
            .map(|occupant| occupant.jid.clone())
            .collect();
        self.effects.send(notice, everyone);
    }

    /// XEP-0424 in a room: a groupchat message with `<retract id/>` retracts
    /// the sender's own message (same occupant id, XEP-0421). `Err(())`:
    /// refused, the sender has its error and nothing is reflected.
    pub(super) fn own_retraction(
        &mut self,
        room: &mut Room,
        sender: &Occupant,
        message: &Element,
    ) -> Result<(), ()> {
        let Some(retract) = message.get_child("retract", RETRACT) else {
            return Ok(());
        };
        let found = retract
            .attr("id")
            .and_then(ArchiveId::from_text)
            .and_then(|id| self.retraction_target(room, id).map(|found| (id, found)));
        let Some((id, (history_index, original))) = found else {
            self.effects
                .error(message, self.sender, StanzaErrorCondition::ItemNotFound);
            return Err(());
        };
        if occupant_id_of(&original) != Some(room.occupant_id(sender.bare()).as_str()) {
            let error = StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("only the author retracts a message; moderators moderate it");
            self.effects.error_with(message, self.sender, error);
            return Err(());
        }
        let marker = Element::new("retracted", RETRACT).with_attr("stamp", rfc3339_utc(self.now));
        self.bury(room, id, history_index, &original, marker);
        Ok(())
    }
}
