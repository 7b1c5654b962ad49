//! The room's archive (XEP-0313 section 5.1.2, "MUC Archives"): every
//! groupchat message the room accepts with a body, a subject change, or a
//! `<store/>` hint (XEP-0334) is archived once, under the room's XEP-0359
//! stanza-id, from the sender's occupant JID; the archived copy carries the
//! sender's real JID in `<x xmlns='…muc#user'><item jid/></x>` (after any
//! such element the client sent is removed, section 9 "MUC message
//! spoofing"), which a query shows only to those who may see real JIDs.
//!
//! Rooms that archive: persistent ones with `muc#roomconfig_enablearchiving`
//! on (the default), when `mam.enabled`. Who may query: whoever may enter
//! the room now (section 5.1.2): not an outcast; a member or above in a
//! members-only room; an occupant or a member or above in a
//! password-protected room. Others get `forbidden` (section 9.1).

use std::time::UNIX_EPOCH;

use starling_api::{ArchiveEntry, ArchiveId};
use starling_jid::{BareJid, Jid};
use starling_xmpp::xep::mam::query_form;
use starling_xmpp::{ns, parse_element, stanza, Element, Limits, StanzaErrorCondition};

use super::moderation::{MODERATE, RETRACT};
use super::{ArchiveRequest, Context, MUC_USER};
use crate::state::{Affiliation, Occupant, Role, Room, Whois};

/// Whether a reflected groupchat message goes to the archive (section
/// 5.1.2: a body or a subject; XEP-0334 hints decide either way).
fn archivable(message: &Element) -> bool {
    if message.has_child("no-store", ns::HINTS)
        || message.has_child("no-permanent-store", ns::HINTS)
    {
        return false;
    }
    message.has_child("store", ns::HINTS)
        || message.has_child("body", ns::CLIENT)
        || message.has_child("subject", ns::CLIENT)
}

/// The stanza-id a moderation (XEP-0425 `<moderate id/>` in an IQ set) or a
/// retraction (XEP-0424 `<retract id/>` in a groupchat message) names, when
/// it is one of the room's: the service reads that message from the archive
/// before the stanza is applied.
pub fn referenced_stanza_id(stanza_element: &Element) -> Option<ArchiveId> {
    let id = match stanza_element.name() {
        "iq" if stanza::stanza_type(stanza_element) == "set" => stanza::iq_payload(stanza_element)
            .filter(|payload| payload.is("moderate", MODERATE))?
            .attr("id"),
        "message" if stanza::stanza_type(stanza_element) == "groupchat" => {
            stanza_element.get_child("retract", RETRACT)?.attr("id")
        }
        _ => None,
    }?;
    ArchiveId::from_text(id)
}

/// An archived room message as one querier sees it: without the sender's
/// real JID unless `show_jids` (section 5.1.2). `None`: it does not parse.
pub fn archived_view(xml: &str, show_jids: bool, limits: &Limits) -> Option<Element> {
    let mut message = starling_api::mam::parse_archived(xml, limits)?;
    if !show_jids {
        message.remove_children("x", MUC_USER);
    }
    // Section 5.1.2: the forwarded stanza has no 'to'.
    message.remove_attr("to");
    Some(message)
}

/// The reflected message that carries stanza-id `id`, read from the room's
/// history (its XML as the room sent it).
pub(super) fn history_message(room: &Room, id: ArchiveId) -> Option<(usize, Element)> {
    let id_text = id.to_text();
    room.history.iter().enumerate().find_map(|(index, entry)| {
        if !entry.xml.contains(&id_text) {
            return None;
        }
        let message =
            parse_element(entry.xml.as_bytes(), &Limits::default().for_server_copies()).ok()?;
        let stamped = message.children().any(|child| {
            child.is("stanza-id", super::STANZA_ID)
                && child.attr("id") == Some(id_text.as_str())
                && child.attr("by") == Some(room.jid.as_str())
        });
        stamped.then_some((index, message))
    })
}

impl Context<'_> {
    /// The room's next stanza-id (XEP-0359), which is also the message's
    /// archive id: the time in microseconds, past the room's last id, so
    /// that id order is the room's order on any replica.
    pub(super) fn next_stanza_id(&mut self, room: &mut Room) -> ArchiveId {
        let micros = self.now.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX >> 9)
        });
        let last = ArchiveId(room.last_stanza_id).micros();
        let id = ArchiveId::first_at(micros.max(last.saturating_add(1)));
        room.last_stanza_id = id.0;
        self.effects.changed = true;
        id
    }

    /// Archive a reflected groupchat message when the room keeps an
    /// archive and the message is one it keeps.
    pub(super) fn archive(
        &mut self,
        room: &Room,
        sender: &Occupant,
        reflected: &Element,
        id: ArchiveId,
    ) {
        if archivable(reflected) {
            self.archive_entry(room, Some(sender), reflected, id);
        }
    }

    /// Archive `message` (from `sender`, or from the room itself) as is.
    pub(super) fn archive_entry(
        &mut self,
        room: &Room,
        sender: Option<&Occupant>,
        message: &Element,
        id: ArchiveId,
    ) {
        if !self.settings.archives || !room.archives() {
            return;
        }
        let Ok(owner) = room.jid.parse::<BareJid>() else {
            return;
        };
        let mut copy = message.clone();
        copy.remove_attr("to");
        // Section 9: the room's own <x/> is the only one kept.
        copy.remove_children("x", MUC_USER);
        let with = match sender {
            Some(occupant) => {
                copy.append_child(
                    Element::new("x", MUC_USER).with_child(
                        Element::new("item", MUC_USER)
                            .with_attr("affiliation", room.affiliation(occupant.bare()).as_str())
                            .with_attr("jid", occupant.jid.clone())
                            .with_attr("role", occupant.role.as_str()),
                    ),
                );
                format!("{}/{}", room.jid, occupant.nick)
                    .parse::<Jid>()
                    .unwrap_or_else(|_| Jid::Bare(owner.clone()))
            }
            None => Jid::Bare(owner.clone()),
        };
        self.effects.archive.push(ArchiveEntry {
            owner,
            id,
            with,
            stanza_xml: copy.to_stanza_xml(),
        });
    }

    /// An archive query to the room (section 5.1.2): the form (a get), or
    /// the query for the service to run (a set), for whoever may enter.
    pub(super) fn archive_query(&mut self, room: &Room, iq: &Element) {
        if !self.settings.archives || !room.archives() {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::ServiceUnavailable);
        }
        let affiliation = room.affiliation(&self.sender_bare);
        let occupant = room.occupant_by_jid(self.sender);
        let may_enter = affiliation != Affiliation::Outcast
            && !room.locked
            && (!room.config.members_only || affiliation >= Affiliation::Member)
            && (room.config.password.is_none()
                || occupant.is_some()
                || affiliation >= Affiliation::Member);
        if !may_enter {
            // Section 9.1: an archive the requester may not read is `forbidden`.
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::Forbidden);
        }
        if stanza::stanza_type(iq) == "get" {
            // Section 4.1.5: the fields a query may use.
            return self.result(iq, Some(query_form()));
        }
        let show_jids = room.config.whois == Whois::Anyone
            || affiliation >= Affiliation::Admin
            || occupant.is_some_and(|occupant| occupant.role == Role::Moderator);
        self.effects.archive_query = Some(ArchiveRequest {
            iq: iq.clone(),
            show_jids,
        });
    }
}
