//! The room engine (XEP-0045): one stanza addressed to a room, the room's
//! state before it, and what follows: the state after it and the stanzas
//! the room sends. No I/O: the service loads and stores the room and
//! delivers what the engine returns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_jid::{normalize_resourcepart, FullJid};
use starling_xmpp::xep::delay::{parse_datetime_micros, rfc3339_utc};
use starling_xmpp::{
    ns, parse_element, stanza, Element, Limits, StanzaError, StanzaErrorCondition,
};

use starling_api::{ArchiveEntry, ArchiveId, ArchivedMessage};

use crate::form;
use crate::state::{
    Affiliation, Availability, HistoryEntry, Occupant, RequestWindow, Role, Room, Subject, Whois,
};

mod archive;
mod moderation;
mod relay;
mod voice;

pub use archive::{archived_view, referenced_stanza_id};

pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const STANZA_ID: &str = "urn:xmpp:sid:0";

/// The service's limits and names (the `muc.*` configuration keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The MUC service's domain (`muc.domain`).
    pub domain: String,
    /// The most occupants one room may hold (`muc.max_occupants`); a room's
    /// `maxusers` is never above it.
    pub max_occupants: u32,
    /// The most messages a room's history keeps (`muc.history_max_stanzas`).
    pub history_max_stanzas: usize,
    /// The most bytes of XML a room's history keeps (`muc.history_max_bytes`).
    pub history_max_bytes: usize,
    /// The most bytes a nick may have (`muc.max_nick_bytes`).
    pub max_nick_bytes: usize,
    /// The most invitations and voice requests one occupant sends in a
    /// minute (`muc.max_requests_per_minute`).
    pub max_requests_per_minute: u32,
    /// Whether rooms keep XEP-0313 archives (`mam.enabled`).
    pub archives: bool,
}

impl Settings {
    pub fn for_domain(domain: &str) -> Self {
        Settings {
            domain: domain.to_string(),
            max_occupants: 500,
            history_max_stanzas: 50,
            history_max_bytes: 256 * 1024,
            max_nick_bytes: 64,
            max_requests_per_minute: 30,
            archives: true,
        }
    }
}

/// One stanza the room sends, to one or more real JIDs: the stanza's `to`
/// is rewritten for each (one bus envelope per node, `deliver_to_sessions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub stanza: Element,
    pub recipients: Vec<String>,
}

/// What applying one stanza did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// In the order they must be sent (XEP-0045 section 7.2.3 orders the join).
    pub outbound: Vec<Outbound>,
    /// Whether the room's state changed and must be written back.
    pub changed: bool,
    /// Why a stanza was refused, for the metrics (`None`: accepted or ignored).
    pub refused: Option<&'static str>,
    /// Messages for the room's archive (XEP-0313), written before they go out.
    pub archive: Vec<ArchiveEntry>,
    /// Archived messages replaced by a tombstone (XEP-0424, XEP-0425).
    pub tombstones: Vec<(ArchiveId, String)>,
    /// An archive query the room allowed, for the service to run (it reads storage).
    pub archive_query: Option<ArchiveRequest>,
    /// The room was destroyed: its archive goes with it.
    pub archive_removed: bool,
}

/// An archive query to the room (XEP-0313 section 5.1.2) that its sender
/// may make: the service reads the page and sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRequest {
    /// The `<iq type='set'><query xmlns='urn:xmpp:mam:2'/></iq>`.
    pub iq: Element,
    /// Whether the results show the senders' real JIDs (section 5.1.2:
    /// non-anonymous rooms, or a querier who may see them).
    pub show_jids: bool,
}

/// What the service read for the engine before a stanza is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The archived message a moderation or a retraction names
    /// ([`referenced_stanza_id`]), when the room's archive holds it.
    pub target: Option<ArchivedMessage>,
    /// The sender is an occupant of `muc.max_rooms_per_user` rooms already.
    pub at_room_limit: bool,
}

impl Effects {
    fn send(&mut self, stanza: Element, recipients: Vec<String>) {
        if !recipients.is_empty() {
            self.outbound.push(Outbound { stanza, recipients });
        }
    }

    fn send_one(&mut self, stanza: Element, to: &str) {
        self.send(stanza, vec![to.to_string()]);
    }

    /// The error reply to `request` from its sender's point of view.
    fn error(&mut self, request: &Element, sender: &str, condition: StanzaErrorCondition) {
        self.error_with(request, sender, StanzaError::new(condition));
    }

    fn error_with(&mut self, request: &Element, sender: &str, error: StanzaError) {
        self.refused = Some(error.condition.as_str());
        if let Some(mut reply) = stanza::error_reply(request, &error) {
            reply.set_attr("to", sender.to_string());
            self.send_one(reply, sender);
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Apply `stanza` (addressed to the room or one of its occupants, `from`
/// the real full JID `sender`) to the room. `room` is `None` when it does
/// not exist; it is `None` afterwards when the room was destroyed. `known`:
/// what the service read for the stanza (an archived message it names, the
/// sender's room count).
pub fn handle(
    room: &mut Option<Room>,
    room_jid: &str,
    stanza_element: &Element,
    sender: &FullJid,
    now: SystemTime,
    settings: &Settings,
    known: &Known,
) -> Effects {
    let mut effects = Effects::default();
    let sender_text = sender.to_string();
    let nick = stanza_element
        .attr("to")
        .and_then(|to| to.split_once('/'))
        .map(|(_, nick)| nick.to_string());
    let mut context = Context {
        room_jid,
        sender: &sender_text,
        sender_bare: sender.bare().to_string(),
        now,
        settings,
        known,
        effects: &mut effects,
    };
    match stanza_element.name() {
        "presence" => context.presence(room, stanza_element, nick),
        "message" => context.message(room, stanza_element, nick),
        "iq" => context.iq(room, stanza_element, nick),
        _ => {}
    }
    effects
}

struct Context<'a> {
    room_jid: &'a str,
    sender: &'a str,
    sender_bare: String,
    now: SystemTime,
    settings: &'a Settings,
    known: &'a Known,
    effects: &'a mut Effects,
}

/// A nick as XEP-0045 section 7.2 allows it: a valid resourcepart (RFC 7622,
/// PRECIS OpaqueString) of at most `max_bytes`, without control or bidi
/// formatting characters (the PRECIS Nickname profile of RFC 8266 section
/// 2.2 disallows them; they let one occupant impersonate another on screen).
pub fn valid_nick(nick: &str, max_bytes: usize) -> Option<String> {
    let normalized = normalize_resourcepart(nick).ok()?;
    let trimmed = normalized.trim();
    if trimmed.is_empty() || trimmed.len() != normalized.len() || normalized.len() > max_bytes {
        return None;
    }
    let forbidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    if normalized.chars().any(forbidden) {
        return None;
    }
    Some(normalized)
}

impl Context<'_> {
    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.room_jid, nick)
    }

    // ----- presence: join, update, nick change, leave (XEP-0045 sections 7.2, 7.6, 7.7, 7.14)

    fn presence(&mut self, room: &mut Option<Room>, presence: &Element, nick: Option<String>) {
        match stanza::stanza_type(presence) {
            "unavailable" | "error" => {
                if let Some(current) = room.as_mut() {
                    if let Some(index) = current.occupant_index_by_jid(self.sender) {
                        self.leave(current, index, presence);
                        self.destroy_if_empty_temporary(room);
                    }
                }
            }
            "" => {
                let Some(nick) = nick else {
                    // Section 7.2.1: presence to the bare room JID carries no nick.
                    return self.effects.error(
                        presence,
                        self.sender,
                        StanzaErrorCondition::JidMalformed,
                    );
                };
                let Some(nick) = valid_nick(&nick, self.settings.max_nick_bytes) else {
                    let error = StanzaError::new(StanzaErrorCondition::JidMalformed)
                        .with_text("this nick is not allowed");
                    return self.effects.error_with(presence, self.sender, error);
                };
                match room.as_mut().and_then(|current| {
                    current
                        .occupant_index_by_jid(self.sender)
                        .map(|index| (current, index))
                }) {
                    Some((current, index))
                        if current.occupants[index].nick == nick
                            && presence.get_child("x", MUC).is_some() =>
                    {
                        // A client that lost its session and came back with
                        // the same full JID before the room heard of it
                        // joins again: it gets the whole entry (section
                        // 7.2.3), the others see a presence update.
                        current.occupants[index].availability = availability_of(presence);
                        self.effects.changed = true;
                        self.send_entry(current, index, presence.get_child("x", MUC), false);
                    }
                    Some((current, index)) if current.occupants[index].nick == nick => {
                        self.presence_update(current, index, presence)
                    }
                    Some((current, index)) => self.nick_change(current, index, presence, nick),
                    None => self.join(room, presence, nick),
                }
            }
            // Subscriptions and probes mean nothing to a room.
            _ => {}
        }
    }

    fn join(&mut self, room: &mut Option<Room>, presence: &Element, nick: String) {
        let created = room.is_none();
        let current = room.get_or_insert_with(|| {
            Room::new(
                self.room_jid,
                &self.sender_bare,
                self.settings.max_occupants,
            )
        });
        let affiliation = current.affiliation(&self.sender_bare);
        let muc = presence.get_child("x", MUC);
        let refusal = if current.locked && affiliation != Affiliation::Owner {
            // Section 10.1.1: a room being created is not entered by others.
            Some(StanzaErrorCondition::ItemNotFound)
        } else if self.known.at_room_limit {
            // `muc.max_rooms_per_user`: a per-user limit of the service, not
            // of this room (which section 7.2.10 answers service-unavailable):
            // RFC 6120 section 8.3.3.18, resource-constraint, type wait.
            Some(StanzaErrorCondition::ResourceConstraint)
        } else if affiliation == Affiliation::Outcast {
            // Section 7.2.8.
            Some(StanzaErrorCondition::Forbidden)
        } else if current.config.members_only && affiliation < Affiliation::Member {
            // Section 7.2.7.
            Some(StanzaErrorCondition::RegistrationRequired)
        } else if current.occupant_by_nick(&nick).is_some() {
            // Section 7.2.9: the nick is another's.
            Some(StanzaErrorCondition::Conflict)
        } else if current.occupants.len() as u64
            >= u64::from(current.config.max_users.min(self.settings.max_occupants))
            && affiliation < Affiliation::Admin
            || current.occupants.len() as u64 >= u64::from(self.settings.max_occupants)
        {
            // Section 7.2.10: the room is full.
            Some(StanzaErrorCondition::ServiceUnavailable)
        } else if let Some(secret) = &current.config.password {
            // Section 7.2.6.
            let given = muc
                .and_then(|x| x.get_child("password", MUC))
                .map(Element::text);
            (given.as_deref() != Some(secret.as_str()))
                .then_some(StanzaErrorCondition::NotAuthorized)
        } else {
            None
        };
        if let Some(condition) = refusal {
            if created {
                *room = None;
            }
            return self.effects.error(presence, self.sender, condition);
        }
        let role = current.default_role(affiliation);
        let occupant = Occupant {
            nick: nick.clone(),
            jid: self.sender.to_string(),
            role,
            availability: availability_of(presence),
            requests: RequestWindow::default(),
        };
        current.occupants.push(occupant);
        self.effects.changed = true;
        let index = current.occupants.len() - 1;
        self.send_entry(current, index, muc, created);
    }

    /// What entering the room shows the occupant at `index` (section 7.2.3):
    /// the presence of every other occupant, then its own to everyone, itself
    /// last, with 110 (its own), 100 (non-anonymous room), 201 (room
    /// created); then the history (7.2.15) and the subject (7.2.16).
    fn send_entry(&mut self, room: &Room, index: usize, muc: Option<&Element>, created: bool) {
        let role = room.occupants[index].role;
        for (other_index, existing) in room.occupants.iter().enumerate() {
            if other_index != index {
                let stanza =
                    occupant_presence(room, existing, None, self.sees_jids(room, role), &[]);
                self.effects.send_one(stanza, self.sender);
            }
        }
        let mut codes: Vec<&str> = vec!["110"];
        if room.config.whois == Whois::Anyone {
            codes.push("100");
        }
        if created {
            codes.push("201");
        }
        self.broadcast_occupant(room, index, None, &codes);
        self.send_history(room, muc);
        let mut subject = Element::new("message", ns::CLIENT)
            .with_attr(
                "from",
                if room.subject.nick.is_empty() {
                    self.room_jid.to_string()
                } else {
                    self.occupant_jid(&room.subject.nick)
                },
            )
            .with_attr("type", "groupchat")
            .with_attr("id", uuid::Uuid::new_v4().to_string());
        subject
            .append_child(Element::new("subject", ns::CLIENT).with_text(room.subject.text.clone()));
        self.effects.send_one(subject, self.sender);
    }

    /// Whether an occupant with `role` sees real JIDs (section 4.2).
    fn sees_jids(&self, room: &Room, role: Role) -> bool {
        room.config.whois == Whois::Anyone || role == Role::Moderator
    }

    /// Send the presence of occupant `index` to every occupant: those who
    /// may see real JIDs get the `jid`, the occupant itself gets `self_codes`.
    fn broadcast_occupant(
        &mut self,
        room: &Room,
        index: usize,
        unavailable: Option<(&[&str], Option<&str>)>,
        self_codes: &[&str],
    ) {
        let occupant = &room.occupants[index];
        let (codes, new_nick) = unavailable.unwrap_or((&[], None));
        let mut with_jid = Vec::new();
        let mut without_jid = Vec::new();
        for other in room
            .occupants
            .iter()
            .filter(|other| other.jid != occupant.jid)
        {
            if self.sees_jids(room, other.role) {
                with_jid.push(other.jid.clone());
            } else {
                without_jid.push(other.jid.clone());
            }
        }
        let make = |show_jid: bool, extra: &[&str]| {
            let all: Vec<&str> = codes.iter().chain(extra).copied().collect();
            let mut stanza = occupant_presence(room, occupant, new_nick, show_jid, &all);
            if unavailable.is_some() {
                stanza.set_attr("type", "unavailable");
            }
            stanza
        };
        self.effects.send(make(true, &[]), with_jid);
        self.effects.send(make(false, &[]), without_jid);
        let own = make(true, self_codes);
        self.effects.send_one(own, &occupant.jid);
    }

    fn send_history(&mut self, room: &Room, muc: Option<&Element>) {
        let request = muc.and_then(|x| x.get_child("history", MUC));
        let number = |name: &str| {
            request
                .and_then(|history| history.attr(name))
                .and_then(|value| value.parse::<u64>().ok())
        };
        let max_stanzas = number("maxstanzas").unwrap_or(u64::MAX);
        let max_chars = number("maxchars").unwrap_or(u64::MAX);
        let now = unix_seconds(self.now);
        let oldest = number("seconds").map(|seconds| now.saturating_sub(seconds));
        let since = request
            .and_then(|history| history.attr("since"))
            .and_then(parse_datetime_micros)
            .map(|micros| u64::try_from(micros.div_euclid(1_000_000)).unwrap_or(0));
        // Section 7.2.15: the newest messages that fit every limit, sent oldest first.
        let mut chosen = Vec::new();
        let mut chars = 0u64;
        for entry in room.history.iter().rev() {
            if chosen.len() as u64 >= max_stanzas
                || oldest.is_some_and(|oldest| entry.at < oldest)
                || since.is_some_and(|since| entry.at < since)
            {
                break;
            }
            chars += entry.xml.chars().count() as u64;
            if chars > max_chars {
                break;
            }
            chosen.push(entry);
        }
        for entry in chosen.into_iter().rev() {
            let Ok(mut message) =
                parse_element(entry.xml.as_bytes(), &Limits::default().for_server_copies())
            else {
                continue;
            };
            // Section 7.2.15: stamped by the room (XEP-0203).
            message.append_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", self.room_jid.to_string())
                    .with_attr(
                        "stamp",
                        rfc3339_utc(UNIX_EPOCH + Duration::from_secs(entry.at)),
                    ),
            );
            self.effects.send_one(message, self.sender);
        }
    }

    fn presence_update(&mut self, room: &mut Room, index: usize, presence: &Element) {
        // Section 7.7: a changed availability is broadcast.
        room.occupants[index].availability = availability_of(presence);
        self.effects.changed = true;
        self.broadcast_occupant(room, index, None, &["110"]);
    }

    fn nick_change(&mut self, room: &mut Room, index: usize, presence: &Element, nick: String) {
        // Section 7.6: refused when the new nick is another's.
        if room.occupant_by_nick(&nick).is_some() {
            return self
                .effects
                .error(presence, self.sender, StanzaErrorCondition::Conflict);
        }
        self.broadcast_occupant(room, index, Some((&["303"], Some(&nick))), &["110"]);
        room.occupants[index].nick = nick;
        room.occupants[index].availability = availability_of(presence);
        self.effects.changed = true;
        self.broadcast_occupant(room, index, None, &["110"]);
    }

    fn leave(&mut self, room: &mut Room, index: usize, presence: &Element) {
        // Section 7.14: the leaving occupant's status goes with its unavailable presence.
        room.occupants[index].availability = availability_of(presence);
        self.remove_occupant(room, index, &[]);
    }

    /// Section 7.14 (leave), 9.1 (kick, 307), 9.2 (ban, 301), 9.4 (members-only, 321).
    fn remove_occupant(&mut self, room: &mut Room, index: usize, codes: &[&str]) {
        room.occupants[index].role = Role::None;
        self.broadcast_occupant(room, index, Some((codes, None)), &["110"]);
        room.occupants.remove(index);
        self.effects.changed = true;
    }

    fn destroy_if_empty_temporary(&mut self, room: &mut Option<Room>) {
        if room
            .as_ref()
            .is_some_and(|current| current.occupants.is_empty() && !current.config.persistent)
        {
            // Section 10.1.3 (temporary room): gone with its last occupant.
            *room = None;
            self.effects.changed = true;
        }
    }

    // ----- messages: groupchat, subject, private messages, invitations (sections 7.4, 7.5, 7.8, 8.1)

    fn message(&mut self, room: &mut Option<Room>, message: &Element, nick: Option<String>) {
        let Some(current) = room.as_mut() else {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::ItemNotFound);
        };
        if stanza::stanza_type(message) == "error" {
            // Section 7.14 (and Prosody, ejabberd): an occupant whose client
            // bounces the room's messages is removed from the room.
            if let Some(index) = current.occupant_index_by_jid(self.sender) {
                self.remove_occupant(current, index, &["333"]);
                self.destroy_if_empty_temporary(room);
            }
            return;
        }
        if let (None, Some(form)) = (&nick, voice::request_form(message)) {
            let form = form.clone();
            return self.voice_form(current, message, &form);
        }
        match nick {
            Some(nick) => self.private_message(current, message, &nick),
            None if message
                .get_child("x", MUC_USER)
                .is_some_and(|x| x.get_child("invite", MUC_USER).is_some()) =>
            {
                self.invite(current, message)
            }
            None => self.groupchat(current, message),
        }
    }

    fn groupchat(&mut self, room: &mut Room, message: &Element) {
        if stanza::stanza_type(message) != "groupchat" {
            // Section 7.4: only groupchat goes to the room itself.
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::BadRequest);
        }
        let Some(occupant) = room.occupant_by_jid(self.sender).cloned() else {
            // Section 7.4: not an occupant.
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::NotAcceptable);
        };
        let subject = message.get_child("subject", ns::CLIENT);
        if let Some(subject) = subject.filter(|_| message.get_child("body", ns::CLIENT).is_none()) {
            // Section 8.1: moderators, or participants when the room lets them.
            let allowed = occupant.role == Role::Moderator
                || (occupant.role == Role::Participant && room.config.change_subject);
            if !allowed {
                return self
                    .effects
                    .error(message, self.sender, StanzaErrorCondition::Forbidden);
            }
            room.subject = Subject {
                text: subject.text(),
                nick: occupant.nick.clone(),
            };
        } else if occupant.role < Role::Participant {
            // Section 7.4: a visitor has no voice in a moderated room.
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::Forbidden);
        }
        if self.own_retraction(room, &occupant, message).is_err() {
            return;
        }
        let mut reflected = Element::new("message", ns::CLIENT)
            .with_attr("from", self.occupant_jid(&occupant.nick))
            .with_attr("type", "groupchat");
        if let Some(id) = message.attr("id") {
            reflected.set_attr("id", id.to_string());
        }
        for child in message.children() {
            // The room stamps its own ids (XEP-0359 section 3, XEP-0421 section 3).
            if child.is("stanza-id", STANZA_ID) || child.is("occupant-id", OCCUPANT_ID) {
                continue;
            }
            reflected.append_child(child.clone());
        }
        // XEP-0359: the room's stanza-id is the message's archive id (XEP-0313).
        let stanza_id = self.next_stanza_id(room);
        reflected.append_child(
            Element::new("stanza-id", STANZA_ID)
                .with_attr("id", stanza_id.to_text())
                .with_attr("by", self.room_jid.to_string()),
        );
        reflected.append_child(
            Element::new("occupant-id", OCCUPANT_ID)
                .with_attr("id", room.occupant_id(occupant.bare())),
        );
        if message.get_child("body", ns::CLIENT).is_some() {
            room.push_history(
                HistoryEntry {
                    xml: reflected.to_xml(),
                    at: unix_seconds(self.now),
                    sender: occupant.bare().to_string(),
                },
                self.settings.history_max_stanzas,
                self.settings.history_max_bytes,
            );
        }
        self.archive(room, &occupant, &reflected, stanza_id);
        self.effects.changed = true;
        let everyone = room
            .occupants
            .iter()
            .map(|occupant| occupant.jid.clone())
            .collect();
        self.effects.send(reflected, everyone);
    }

    /// Count one request of the occupant at `index` that reaches others
    /// (an invitation, a voice request) against `muc.max_requests_per_minute`;
    /// past it the sender gets `policy-violation` (RFC 6120 section
    /// 8.3.3.12: a local service policy) and `false`.
    fn take_request(&mut self, room: &mut Room, index: usize, request: &Element) -> bool {
        let minute = unix_seconds(self.now) / 60;
        let window = &mut room.occupants[index].requests;
        if window.minute != minute {
            *window = RequestWindow { minute, count: 0 };
        }
        if window.count >= self.settings.max_requests_per_minute {
            let error = StanzaError::new(StanzaErrorCondition::PolicyViolation).with_text(format!(
                "at most {} invitations and voice requests a minute",
                self.settings.max_requests_per_minute
            ));
            self.effects.error_with(request, self.sender, error);
            return false;
        }
        window.count += 1;
        self.effects.changed = true;
        true
    }

    fn private_message(&mut self, room: &Room, message: &Element, nick: &str) {
        let Some(sender) = room.occupant_by_jid(self.sender) else {
            // Section 7.5: only occupants send private messages.
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::NotAcceptable);
        };
        if stanza::stanza_type(message) == "groupchat" {
            // Section 7.5: a private message of type groupchat is refused with bad-request.
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::BadRequest);
        }
        let Some(recipient) = room.occupant_by_nick(nick) else {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::ItemNotFound);
        };
        let mut forwarded = message.clone();
        forwarded.set_attr("from", self.occupant_jid(&sender.nick));
        forwarded.remove_children("x", MUC_USER);
        forwarded.append_child(Element::new("x", MUC_USER));
        forwarded.remove_children("occupant-id", OCCUPANT_ID);
        forwarded.append_child(
            Element::new("occupant-id", OCCUPANT_ID)
                .with_attr("id", room.occupant_id(sender.bare())),
        );
        let to = recipient.jid.clone();
        self.effects.send_one(forwarded, &to);
    }

    fn invite(&mut self, room: &mut Room, message: &Element) {
        // Section 7.8.2: mediated invitations, by occupants the room lets invite.
        let Some(inviter) = room.occupant_by_jid(self.sender).cloned() else {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::NotAcceptable);
        };
        let affiliation = room.affiliation(inviter.bare());
        let may_invite = inviter.role == Role::Moderator
            || (room.config.allow_invites && !room.config.members_only)
            || affiliation >= Affiliation::Admin;
        if !may_invite {
            return self
                .effects
                .error(message, self.sender, StanzaErrorCondition::Forbidden);
        }
        let Some(index) = room.occupant_index_by_jid(self.sender) else {
            return;
        };
        if !self.take_request(room, index, message) {
            return;
        }
        let invites: Vec<Element> = message
            .get_child("x", MUC_USER)
            .map(|x| {
                x.children()
                    .filter(|child| child.is("invite", MUC_USER))
                    .take(10)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for invite in invites {
            let Some(invitee) = invite
                .attr("to")
                .and_then(|to| to.parse::<starling_jid::Jid>().ok())
            else {
                return self.effects.error(
                    message,
                    self.sender,
                    StanzaErrorCondition::JidMalformed,
                );
            };
            if room.config.members_only && affiliation >= Affiliation::Admin {
                // Section 7.8.2: an admin's invitation to a members-only room
                // makes the invitee a member.
                let invitee_bare = invitee.bare().to_string();
                if room.affiliation(&invitee_bare) < Affiliation::Member {
                    room.set_affiliation(&invitee_bare, Affiliation::Member);
                    self.effects.changed = true;
                }
            }
            let mut forwarded_invite =
                Element::new("invite", MUC_USER).with_attr("from", self.sender.to_string());
            if let Some(reason) = invite.get_child("reason", MUC_USER) {
                forwarded_invite
                    .append_child(Element::new("reason", MUC_USER).with_text(reason.text()));
            }
            let mut x = Element::new("x", MUC_USER).with_child(forwarded_invite);
            if let Some(secret) = &room.config.password {
                x.append_child(Element::new("password", MUC_USER).with_text(secret.clone()));
            }
            let notice = Element::new("message", ns::CLIENT)
                .with_attr("from", self.room_jid.to_string())
                .with_attr("id", uuid::Uuid::new_v4().to_string())
                .with_child(x);
            self.effects.send_one(notice, &invitee.to_string());
        }
    }

    // ----- IQs: disco, self-ping, admin and owner (sections 6, 9, 10; XEP-0410)

    fn iq(&mut self, room: &mut Option<Room>, iq: &Element, nick: Option<String>) {
        let request = matches!(stanza::stanza_type(iq), "get" | "set");
        if !request && nick.is_none() {
            return;
        }
        let Some(current) = room.as_mut() else {
            if !request {
                return;
            }
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::ItemNotFound);
        };
        if let Some(nick) = nick {
            return self.occupant_iq(current, iq, &nick);
        }
        let payload = stanza::iq_payload(iq);
        let payload_key =
            payload.map(|payload| (payload.name().to_string(), payload.namespace().to_string()));
        let kind = stanza::stanza_type(iq);
        match payload_key
            .as_ref()
            .map(|(name, space)| (name.as_str(), space.as_str(), kind))
        {
            Some(("query", ns::DISCO_INFO, "get")) => {
                let info = room_info(current, self.settings.archives);
                self.result(iq, Some(info))
            }
            Some(("query", ns::DISCO_ITEMS, "get")) => {
                // Section 6.5: the occupants are not listed.
                self.result(iq, Some(Element::new("query", ns::DISCO_ITEMS)))
            }
            Some(("ping", ns::PING, "get")) => self.result(iq, None),
            Some(("query", MUC_ADMIN, "get")) => self.admin_get(current, iq),
            Some(("query", MUC_ADMIN, "set")) => {
                self.admin_set(current, iq);
                self.destroy_if_empty_temporary(room);
            }
            Some(("query", MUC_OWNER, "get")) => self.owner_get(current, iq),
            Some(("query", ns::MAM, "get" | "set")) => self.archive_query(current, iq),
            Some(("moderate", moderation::MODERATE, "set")) => self.moderate(current, iq),
            Some(("query", MUC_OWNER, "set")) => self.owner_set(room, iq),
            _ => self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::ServiceUnavailable),
        }
    }

    fn result(&mut self, iq: &Element, payload: Option<Element>) {
        let mut reply = stanza::iq_result(iq);
        reply.set_attr("from", iq.attr("to").unwrap_or(self.room_jid).to_string());
        reply.set_attr("to", self.sender.to_string());
        if let Some(payload) = payload {
            reply.append_child(payload);
        }
        self.effects.send_one(reply, self.sender);
    }

    fn admin_get(&mut self, room: &Room, iq: &Element) {
        // Section 9.5 and 10.5: lists of an affiliation (admins and owners
        // read them; moderators read the role lists too).
        let requester = room.affiliation(&self.sender_bare);
        let item = stanza::iq_payload(iq).and_then(|query| query.get_child("item", MUC_ADMIN));
        let mut query = Element::new("query", MUC_ADMIN);
        if let Some(affiliation) = item
            .and_then(|item| item.attr("affiliation"))
            .and_then(Affiliation::from_name)
        {
            if requester < Affiliation::Admin {
                return self
                    .effects
                    .error(iq, self.sender, StanzaErrorCondition::Forbidden);
            }
            for (jid, _) in room
                .affiliations
                .iter()
                .filter(|(_, value)| **value == affiliation)
            {
                let mut listed = Element::new("item", MUC_ADMIN)
                    .with_attr("affiliation", affiliation.as_str())
                    .with_attr("jid", jid.clone());
                // Section 9.5 (the ban list): each item with its reason.
                if let Some(reason) = room.affiliation_reason(jid) {
                    listed.append_child(Element::new("reason", MUC_ADMIN).with_text(reason));
                }
                query.append_child(listed);
            }
        } else if let Some(role) = item
            .and_then(|item| item.attr("role"))
            .and_then(Role::from_name)
        {
            if room
                .occupant_by_jid(self.sender)
                .is_none_or(|occupant| occupant.role != Role::Moderator)
            {
                return self
                    .effects
                    .error(iq, self.sender, StanzaErrorCondition::Forbidden);
            }
            for occupant in room
                .occupants
                .iter()
                .filter(|occupant| occupant.role == role)
            {
                query.append_child(
                    Element::new("item", MUC_ADMIN)
                        .with_attr("role", role.as_str())
                        .with_attr("nick", occupant.nick.clone())
                        .with_attr("jid", occupant.jid.clone())
                        .with_attr("affiliation", room.affiliation(occupant.bare()).as_str()),
                );
            }
        } else {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::BadRequest);
        }
        self.result(iq, Some(query))
    }

    /// Sections 8 (moderator: kick, voice) and 9 (admin: ban, members,
    /// moderators) and 10 (owner: owners, admins): each item is checked
    /// first, then all apply (section 9.5: the change is atomic).
    fn admin_set(&mut self, room: &mut Room, iq: &Element) {
        let items: Vec<Element> = stanza::iq_payload(iq)
            .map(|query| {
                query
                    .children()
                    .filter(|child| child.is("item", MUC_ADMIN))
                    .take(100)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if items.is_empty() {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::BadRequest);
        }
        let Some(requester_role) = room
            .occupant_by_jid(self.sender)
            .map(|occupant| occupant.role)
            .or_else(|| {
                (room.affiliation(&self.sender_bare) >= Affiliation::Admin).then_some(Role::None)
            })
        else {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::Forbidden);
        };
        let requester = room.affiliation(&self.sender_bare);
        enum Change {
            Role(String, Role),
            Affiliation(String, Affiliation, Option<String>),
        }
        let mut changes = Vec::new();
        for item in &items {
            if let Some(role) = item.attr("role") {
                let (Some(role), Some(nick)) = (Role::from_name(role), item.attr("nick")) else {
                    return self
                        .effects
                        .error(iq, self.sender, StanzaErrorCondition::BadRequest);
                };
                let Some(target) = room.occupant_by_nick(nick) else {
                    return self
                        .effects
                        .error(iq, self.sender, StanzaErrorCondition::ItemNotFound);
                };
                let target_affiliation = room.affiliation(target.bare());
                // Section 8.2/8.4: moderators change roles, never of an
                // admin or owner (section 9.6), nor grant moderator (admins do).
                let allowed = (requester_role == Role::Moderator
                    && target_affiliation < Affiliation::Admin
                    && (role != Role::Moderator || requester >= Affiliation::Admin))
                    || (requester > target_affiliation && requester >= Affiliation::Admin);
                if !allowed {
                    return self
                        .effects
                        .error(iq, self.sender, StanzaErrorCondition::NotAllowed);
                }
                changes.push(Change::Role(nick.to_string(), role));
            } else if let Some(affiliation) = item.attr("affiliation") {
                let (Some(affiliation), Some(jid)) = (
                    Affiliation::from_name(affiliation),
                    item.attr("jid")
                        .and_then(|jid| jid.parse::<starling_jid::Jid>().ok()),
                ) else {
                    return self
                        .effects
                        .error(iq, self.sender, StanzaErrorCondition::BadRequest);
                };
                let target = jid.bare().to_string();
                let current = room.affiliation(&target);
                // Section 9: admins manage members and outcasts below
                // them; section 10: owners manage everyone.
                let allowed = requester == Affiliation::Owner
                    || (requester == Affiliation::Admin
                        && current < Affiliation::Admin
                        && affiliation < Affiliation::Admin);
                if !allowed {
                    return self
                        .effects
                        .error(iq, self.sender, StanzaErrorCondition::NotAllowed);
                }
                if current == Affiliation::Owner
                    && affiliation != Affiliation::Owner
                    && room
                        .affiliations
                        .values()
                        .filter(|value| **value == Affiliation::Owner)
                        .count()
                        == 1
                {
                    // Section 10.9: the last owner stays.
                    return self
                        .effects
                        .error(iq, self.sender, StanzaErrorCondition::Conflict);
                }
                let reason = item
                    .get_child("reason", MUC_ADMIN)
                    .map(|reason| reason.text());
                changes.push(Change::Affiliation(target, affiliation, reason));
            } else {
                return self
                    .effects
                    .error(iq, self.sender, StanzaErrorCondition::BadRequest);
            }
        }
        self.result(iq, None);
        for change in changes {
            match change {
                Change::Role(nick, Role::None) => {
                    // Section 8.2: a kick, 307.
                    if let Some(index) = room
                        .occupants
                        .iter()
                        .position(|occupant| occupant.nick == nick)
                    {
                        self.remove_occupant(room, index, &["307"]);
                    }
                }
                Change::Role(nick, role) => {
                    if let Some(index) = room
                        .occupants
                        .iter()
                        .position(|occupant| occupant.nick == nick)
                    {
                        room.occupants[index].role = role;
                        self.effects.changed = true;
                        self.broadcast_occupant(room, index, None, &["110"]);
                    }
                }
                Change::Affiliation(jid, affiliation, reason) => {
                    room.set_affiliation_with_reason(&jid, affiliation, reason);
                    self.effects.changed = true;
                    let present: Vec<usize> = room
                        .occupants
                        .iter()
                        .enumerate()
                        .filter(|(_, occupant)| occupant.bare() == jid)
                        .map(|(index, _)| index)
                        .collect();
                    for index in present.into_iter().rev() {
                        if affiliation == Affiliation::Outcast {
                            // Section 9.1: a ban, 301.
                            self.remove_occupant(room, index, &["301"]);
                        } else if room.config.members_only && affiliation < Affiliation::Member {
                            // Section 9.4: no longer a member of a members-only room, 321.
                            self.remove_occupant(room, index, &["321"]);
                        } else {
                            room.occupants[index].role = room.default_role(affiliation);
                            self.broadcast_occupant(room, index, None, &["110"]);
                        }
                    }
                }
            }
        }
    }

    fn owner_get(&mut self, room: &Room, iq: &Element) {
        // Section 10.2: the configuration form, for owners.
        if room.affiliation(&self.sender_bare) != Affiliation::Owner {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::Forbidden);
        }
        let query =
            Element::new("query", MUC_OWNER).with_child(form::config_form(room, self.settings));
        self.result(iq, Some(query))
    }

    fn owner_set(&mut self, room: &mut Option<Room>, iq: &Element) {
        let Some(current) = room.as_mut() else {
            return;
        };
        if current.affiliation(&self.sender_bare) != Affiliation::Owner {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::Forbidden);
        }
        let Some(query) = stanza::iq_payload(iq) else {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::BadRequest);
        };
        if let Some(destroy) = query.get_child("destroy", MUC_OWNER) {
            // Section 10.9: every occupant leaves with the destroy notice.
            self.result(iq, None);
            let mut x = Element::new("x", MUC_USER).with_child(
                Element::new("item", MUC_USER)
                    .with_attr("affiliation", "none")
                    .with_attr("role", "none"),
            );
            let mut notice = Element::new("destroy", MUC_USER);
            if let Some(reason) = destroy.get_child("reason", MUC_OWNER) {
                notice.append_child(Element::new("reason", MUC_USER).with_text(reason.text()));
            }
            x.append_child(notice);
            for occupant in &current.occupants {
                let stanza = Element::new("presence", ns::CLIENT)
                    .with_attr("from", self.occupant_jid(&occupant.nick))
                    .with_attr("type", "unavailable")
                    .with_child(x.clone());
                self.effects.send_one(stanza, &occupant.jid.clone());
            }
            *room = None;
            self.effects.changed = true;
            self.effects.archive_removed = true;
            return;
        }
        let Some(x) = query.get_child("x", ns::DATA_FORMS) else {
            return self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::BadRequest);
        };
        match x.attr("type") {
            Some("cancel") => {
                // Section 10.1.3: cancelling the first configuration destroys a locked room.
                self.result(iq, None);
                if current.locked {
                    for index in (0..current.occupants.len()).rev() {
                        self.remove_occupant(current, index, &[]);
                    }
                    *room = None;
                    self.effects.changed = true;
                }
            }
            Some("submit") => match form::apply_form(current, x, self.settings) {
                Ok(()) => {
                    current.locked = false;
                    self.effects.changed = true;
                    self.result(iq, None);
                    // Section 10.2: members-only now: non-members leave (322).
                    if current.config.members_only {
                        for index in (0..current.occupants.len()).rev() {
                            let bare = current.occupants[index].bare().to_string();
                            if current.affiliation(&bare) < Affiliation::Member {
                                self.remove_occupant(current, index, &["322"]);
                            }
                        }
                    }
                }
                Err(text) => {
                    let error =
                        StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text);
                    self.effects.error_with(iq, self.sender, error)
                }
            },
            _ => self
                .effects
                .error(iq, self.sender, StanzaErrorCondition::BadRequest),
        }
    }
}

fn availability_of(presence: &Element) -> Availability {
    let text = |name: &str| {
        presence
            .get_child(name, ns::CLIENT)
            .map(Element::text)
            .map(|text| text.chars().take(1024).collect::<String>())
    };
    Availability {
        show: text("show").filter(|show| matches!(show.as_str(), "away" | "chat" | "dnd" | "xa")),
        status: text("status"),
    }
}

/// The presence of `occupant` as the room sends it (section 7.2.3): from
/// its occupant JID, with its role and affiliation, its real JID when
/// `show_jid`, its XEP-0421 occupant id.
fn occupant_presence(
    room: &Room,
    occupant: &Occupant,
    new_nick: Option<&str>,
    show_jid: bool,
    codes: &[&str],
) -> Element {
    let mut presence = Element::new("presence", ns::CLIENT)
        .with_attr("from", format!("{}/{}", room.jid, occupant.nick));
    if let Some(show) = &occupant.availability.show {
        presence.append_child(Element::new("show", ns::CLIENT).with_text(show.clone()));
    }
    if let Some(status) = &occupant.availability.status {
        presence.append_child(Element::new("status", ns::CLIENT).with_text(status.clone()));
    }
    let mut item = Element::new("item", MUC_USER)
        .with_attr("affiliation", room.affiliation(occupant.bare()).as_str())
        .with_attr("role", occupant.role.as_str());
    if show_jid {
        item.set_attr("jid", occupant.jid.clone());
    }
    if let Some(nick) = new_nick {
        item.set_attr("nick", nick.to_string());
    }
    let mut x = Element::new("x", MUC_USER).with_child(item);
    for code in codes {
        x.append_child(Element::new("status", MUC_USER).with_attr("code", code.to_string()));
    }
    presence.append_child(x);
    presence.append_child(
        Element::new("occupant-id", OCCUPANT_ID).with_attr("id", room.occupant_id(occupant.bare())),
    );
    presence
}

/// The room's disco#info (section 6.4): identity, features and the
/// `muc#roominfo` form; `archiving`: whether the service keeps room
/// archives at all (`mam.enabled`).
pub fn room_info(room: &Room, archiving: bool) -> Element {
    let archives = archiving && room.archives();
    let config = &room.config;
    let mut query = Element::new("query", ns::DISCO_INFO);
    let name = if config.name.is_empty() {
        room.localpart().to_string()
    } else {
        config.name.clone()
    };
    query.append_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text")
            .with_attr("name", name),
    );
    let mut features = vec![
        MUC,
        ns::DISCO_INFO,
        OCCUPANT_ID,
        STANZA_ID,
        moderation::MODERATE,
        moderation::RETRACT,
        voice::MUC_REQUEST,
        if config.persistent {
            "muc_persistent"
        } else {
            "muc_temporary"
        },
        if config.public {
            "muc_public"
        } else {
            "muc_hidden"
        },
        if config.members_only {
            "muc_membersonly"
        } else {
            "muc_open"
        },
        if config.password.is_some() {
            "muc_passwordprotected"
        } else {
            "muc_unsecured"
        },
        if config.moderated {
            "muc_moderated"
        } else {
            "muc_unmoderated"
        },
        if config.whois == Whois::Anyone {
            "muc_nonanonymous"
        } else {
            "muc_semianonymous"
        },
    ];
    if archives {
        // XEP-0313 section 7: the room's JID hosts an archive.
        features.push(ns::MAM);
    }
    for feature in features {
        query.append_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", feature));
    }
    query.append_child(form::room_info_form(room));
    query
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
