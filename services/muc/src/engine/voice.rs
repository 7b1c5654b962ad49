//! Voice requests (XEP-0045 section 7.13): a visitor of a moderated room
//! submits a `muc#request` form to the room; every moderator gets the
//! approval form (section 8.6, with the requester's nick and real JID:
//! moderators may see it); a moderator who submits it with
//! `muc#request_allow` true grants the occupant the participant role, as a
//! role change of section 8.4 does. Requests count against the occupant's
//! `muc.max_requests_per_minute` (past it: `policy-violation`).

use starling_xmpp::{ns, Element, StanzaError, StanzaErrorCondition};

use super::Context;
use crate::state::{Role, Room};

pub const MUC_REQUEST: &str = "http://jabber.org/protocol/muc#request";

/// The `muc#request` data form of a message, if it carries one.
pub(super) fn request_form(message: &Element) -> Option<&Element> {
    message.children().find(|child| {
        child.is("x", ns::DATA_FORMS)
            && field_value(child, "FORM_TYPE").as_deref() == Some(MUC_REQUEST)
    })
}

fn field_value(form: &Element, var: &str) -> Option<String> {
    form.children()
        .find(|field| field.is("field", ns::DATA_FORMS) && field.attr("var") == Some(var))?
        .get_child("value", ns::DATA_FORMS)
        .map(Element::text)
}

fn field(var: &str, kind: &str, label: &str, value: &str) -> Element {
    let mut field = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        field.set_attr("label", label);
    }
    field.with_child(Element::new("value", ns::DATA_FORMS).with_text(value.to_string()))
}

impl Context<'_> {
    pub(super) fn voice_form(&mut self, room: &mut Room, message: &Element, form: &Element) {
        let Some(index) = room.occupant_index_by_jid(self.sender) else {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::NotAcceptable);
        };
        let occupant = room.occupants[index].clone();
        let allow = field_value(form, "muc#request_allow");
        if occupant.role == Role::Moderator && allow.is_some() {
            return self.approve_voice(room, message, form, allow.as_deref());
        }
        // Section 7.13: a visitor asks for the participant role.
        if occupant.role != Role::Visitor {
            let error = StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("only a visitor requests voice");
            return self.effects.error_with(message, self.sender, error);
        }
        if field_value(form, "muc#role").is_some_and(|role| role != "participant") {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::BadRequest);
        }
        if !self.take_request(room, index, message) {
            return;
        }
        // Section 8.6: the approval form, to every moderator.
        let approval = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(Element::new("title", ns::DATA_FORMS).with_text("Voice request"))
            .with_child(Element::new("instructions", ns::DATA_FORMS).with_text(
                "To approve this request for voice, select the \"Grant voice to this person?\" checkbox and click OK. To skip this request, click the cancel button.",
            ))
            .with_child(field("FORM_TYPE", "hidden", "", MUC_REQUEST))
            .with_child(field("muc#role", "list-single", "Requested role", "participant"))
            .with_child(field("muc#jid", "jid-single", "User ID", &occupant.jid))
            .with_child(field("muc#roomnick", "text-single", "Room Nickname", &occupant.nick))
            .with_child(field(
                "muc#request_allow",
                "boolean",
                "Grant voice to this person?",
                "false",
            ));
        let notice = Element::new("message", ns::CLIENT)
            .with_attr("from", self.room_jid.to_string())
            .with_attr("id", uuid::Uuid::new_v4().to_string())
            .with_child(approval);
        let moderators = room
            .occupants
            .iter()
            .filter(|other| other.role == Role::Moderator)
            .map(|other| other.jid.clone())
            .collect::<Vec<_>>();
        if moderators.is_empty() {
            // Nobody could approve it: the requester learns so.
            let error = StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
                .with_text("no moderator is in the room");
            return self.effects.error_with(message, self.sender, error);
        }
        self.effects.send(notice, moderators);
    }

    /// Section 8.6: the submitted approval form; `muc#request_allow` true
    /// makes the named visitor a participant (a declined request changes nothing).
    fn approve_voice(
        &mut self,
        room: &mut Room,
        message: &Element,
        form: &Element,
        allow: Option<&str>,
    ) {
        if !matches!(allow, Some("1" | "true")) {
            return;
        }
        let Some(nick) = field_value(form, "muc#roomnick") else {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::BadRequest);
        };
        let Some(index) = room
            .occupants
            .iter()
            .position(|occupant| occupant.nick == nick)
        else {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::ItemNotFound);
        };
        if room.occupants[index].role == Role::Visitor {
            room.occupants[index].role = Role::Participant;
            self.effects.changed = true;
            self.broadcast_occupant(room, index, None, &["110"]);
        }
    }
}
