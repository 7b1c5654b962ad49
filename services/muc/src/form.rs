//! The room configuration form (XEP-0045 section 10.2, `muc#roomconfig`
//! fields of section 16.5.3, XEP-0004 data forms) and the room information
//! form of disco#info (section 6.4, `muc#roominfo`).

use starling_xmpp::{ns, Element};

use crate::engine::Settings;
use crate::state::{Room, Whois};

const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

fn field(var: &str, kind: &str, label: &str, values: &[&str]) -> Element {
    let mut field = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        field.set_attr("label", label);
    }
    for value in values {
        field.append_child(Element::new("value", ns::DATA_FORMS).with_text(value.to_string()));
    }
    field
}

fn boolean(value: bool) -> &'static str {
    if value {
        "1"
    } else {
        "0"
    }
}

/// The form an owner fills in (section 10.2), with the room's current values.
pub fn config_form(room: &Room, settings: &Settings) -> Element {
    let config = &room.config;
    let max_users = config.max_users.to_string();
    let limit = settings.max_occupants.to_string();
    let mut whois = field(
        "muc#roomconfig_whois",
        "list-single",
        "Who may discover real JIDs",
        &[match config.whois {
            Whois::Moderators => "moderators",
            Whois::Anyone => "anyone",
        }],
    );
    for (label, value) in [("Moderators only", "moderators"), ("Anyone", "anyone")] {
        whois.append_child(
            Element::new("option", ns::DATA_FORMS)
                .with_attr("label", label)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(value)),
        );
    }
    let secret = config.password.clone().unwrap_or_default();
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(
            Element::new("title", ns::DATA_FORMS)
                .with_text(format!("Configuration of {}", room.jid)),
        )
        .with_child(field("FORM_TYPE", "hidden", "", &[ROOMCONFIG]))
        .with_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            "Room name",
            &[&config.name],
        ))
        .with_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            "Description",
            &[&config.description],
        ))
        .with_child(field(
            "muc#roomconfig_persistentroom",
            "boolean",
            "Persistent",
            &[boolean(config.persistent)],
        ))
        .with_child(field(
            "muc#roomconfig_publicroom",
            "boolean",
            "Listed in the directory",
            &[boolean(config.public)],
        ))
        .with_child(field(
            "muc#roomconfig_membersonly",
            "boolean",
            "Members only",
            &[boolean(config.members_only)],
        ))
        .with_child(field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            "Password protected",
            &[boolean(config.password.is_some())],
        ))
        .with_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            "Password",
            &[&secret],
        ))
        .with_child(field(
            "muc#roomconfig_moderatedroom",
            "boolean",
            "Moderated",
            &[boolean(config.moderated)],
        ))
        .with_child(whois)
        .with_child(field(
            "muc#roomconfig_maxusers",
            "text-single",
            &format!("Maximum occupants (at most {limit})"),
            &[&max_users],
        ))
        .with_child(field(
            "muc#roomconfig_changesubject",
            "boolean",
            "Participants may change the subject",
            &[boolean(config.change_subject)],
        ))
        .with_child(field(
            "muc#roomconfig_allowinvites",
            "boolean",
            "Participants may invite",
            &[boolean(config.allow_invites)],
        ))
        .with_child(field(
            "muc#roomconfig_enablearchiving",
            "boolean",
            "Archive the messages (XEP-0313, persistent rooms)",
            &[boolean(config.archiving)],
        ))
}

fn parse_boolean(var: &str, value: &str) -> Result<bool, String> {
    // XEP-0004 section 3.3: "0"/"false" and "1"/"true".
    match value {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(format!("{var}: not a boolean")),
    }
}

/// Apply a submitted form (section 10.2): fields left out keep their
/// value, an unknown field or a wrong value refuses the whole form.
pub fn apply_form(room: &mut Room, form: &Element, settings: &Settings) -> Result<(), String> {
    let mut config = room.config.clone();
    let mut protected = config.password.is_some();
    let mut secret = config.password.clone();
    for field in form
        .children()
        .filter(|child| child.is("field", ns::DATA_FORMS))
    {
        let var = field.attr("var").unwrap_or_default();
        let value = field
            .get_child("value", ns::DATA_FORMS)
            .map(Element::text)
            .unwrap_or_default();
        if value.len() > 1024 {
            return Err(format!("{var}: longer than 1024 bytes"));
        }
        match var {
            "FORM_TYPE" => {
                if value != ROOMCONFIG {
                    return Err("FORM_TYPE: not muc#roomconfig".into());
                }
            }
            "muc#roomconfig_roomname" => config.name = value,
            "muc#roomconfig_roomdesc" => config.description = value,
            "muc#roomconfig_persistentroom" => config.persistent = parse_boolean(var, &value)?,
            "muc#roomconfig_publicroom" => config.public = parse_boolean(var, &value)?,
            "muc#roomconfig_membersonly" => config.members_only = parse_boolean(var, &value)?,
            "muc#roomconfig_passwordprotectedroom" => protected = parse_boolean(var, &value)?,
            "muc#roomconfig_roomsecret" => secret = Some(value).filter(|secret| !secret.is_empty()),
            "muc#roomconfig_moderatedroom" => config.moderated = parse_boolean(var, &value)?,
            "muc#roomconfig_whois" => {
                config.whois = match value.as_str() {
                    "moderators" => Whois::Moderators,
                    "anyone" => Whois::Anyone,
                    _ => return Err(format!("{var}: moderators or anyone")),
                }
            }
            "muc#roomconfig_maxusers" => {
                let max_users: u32 = value.parse().map_err(|_| format!("{var}: not a number"))?;
                if max_users == 0 || max_users > settings.max_occupants {
                    return Err(format!("{var}: between 1 and {}", settings.max_occupants));
                }
                config.max_users = max_users;
            }
            "muc#roomconfig_changesubject" => config.change_subject = parse_boolean(var, &value)?,
            "muc#roomconfig_allowinvites" => config.allow_invites = parse_boolean(var, &value)?,
            "muc#roomconfig_enablearchiving" => config.archiving = parse_boolean(var, &value)?,
            other => return Err(format!("{other}: unknown field")),
        }
    }
    config.password = if protected {
        match secret {
            Some(secret) => Some(secret),
            None => {
                return Err("muc#roomconfig_roomsecret: a password protected room needs one".into())
            }
        }
    } else {
        None
    };
    room.config = config;
    Ok(())
}

/// The `muc#roominfo` form of the room's disco#info (section 6.4).
pub fn room_info_form(room: &Room) -> Element {
    let occupants = room.occupants.len().to_string();
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "result")
        .with_child(field("FORM_TYPE", "hidden", "", &[ROOMINFO]))
        .with_child(field(
            "muc#roominfo_description",
            "text-single",
            "Description",
            &[&room.config.description],
        ))
        .with_child(field(
            "muc#roominfo_occupants",
            "text-single",
            "Number of occupants",
            &[&occupants],
        ))
        .with_child(field(
            "muc#roominfo_subject",
            "text-single",
            "Subject",
            &[&room.subject.text],
        ))
}
