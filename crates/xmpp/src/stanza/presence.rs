//! Presence stanzas, RFC 6121 section 4.7: the `type` attribute (4.7.1) and the
//! `<show/>` (4.7.2.1) and `<priority/>` (4.7.2.3) children, checked once when a
//! stanza becomes a [`Presence`], so that every service reads the same values.

use std::fmt;

use crate::element::Element;
use crate::stanza::{stanza_type, InvalidStanza, StanzaKind};

/// The `type` of a presence stanza (RFC 6121 section 4.7.1); absent is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceType {
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Error,
}

impl PresenceType {
    /// The type named by a `type` attribute value ("" when absent).
    pub fn from_attr(value: &str) -> Option<Self> {
        Some(match value {
            "" => PresenceType::Available,
            "unavailable" => PresenceType::Unavailable,
            "subscribe" => PresenceType::Subscribe,
            "subscribed" => PresenceType::Subscribed,
            "unsubscribe" => PresenceType::Unsubscribe,
            "unsubscribed" => PresenceType::Unsubscribed,
            "probe" => PresenceType::Probe,
            "error" => PresenceType::Error,
            _ => return None,
        })
    }

    /// The attribute value; "" for available (no attribute).
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceType::Available => "",
            PresenceType::Unavailable => "unavailable",
            PresenceType::Subscribe => "subscribe",
            PresenceType::Subscribed => "subscribed",
            PresenceType::Unsubscribe => "unsubscribe",
            PresenceType::Unsubscribed => "unsubscribed",
            PresenceType::Probe => "probe",
            PresenceType::Error => "error",
        }
    }

    /// The four subscription types of RFC 6121 section 3.
    pub fn is_subscription(self) -> bool {
        matches!(
            self,
            PresenceType::Subscribe
                | PresenceType::Subscribed
                | PresenceType::Unsubscribe
                | PresenceType::Unsubscribed
        )
    }
}

/// The availability sub-state of RFC 6121 section 4.7.2.1: exactly these four
/// values (an `xs:token`, so surrounding white space is folded); anything else,
/// an empty `<show/>` included, makes the stanza a bad request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Show {
    Away,
    Chat,
    Dnd,
    Xa,
}

impl Show {
    pub fn from_text(text: &str) -> Option<Self> {
        Some(match text {
            "away" => Show::Away,
            "chat" => Show::Chat,
            "dnd" => Show::Dnd,
            "xa" => Show::Xa,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Show::Away => "away",
            Show::Chat => "chat",
            Show::Dnd => "dnd",
            Show::Xa => "xa",
        }
    }
}

/// A presence priority (RFC 6121 section 4.7.2.3): an integer from -128 to
/// +127, zero when absent. The one type every service reads a priority with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(i8);

impl Priority {
    pub const ZERO: Priority = Priority(0);

    pub fn new(value: i8) -> Self {
        Priority(value)
    }

    pub fn value(self) -> i8 {
        self.0
    }

    /// Parse the text of a `<priority/>` element. XML Schema's `xs:byte`
    /// allows surrounding white space and a leading `+`; a value outside the
    /// range, or not an integer, is `None` (never clamped: section 4.7.2.3 says
    /// the value MUST be in range, so an out-of-range priority is a bad request).
    pub fn parse(text: &str) -> Option<Self> {
        text.trim().parse::<i8>().ok().map(Priority)
    }
}

impl From<Priority> for i8 {
    fn from(priority: Priority) -> i8 {
        priority.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

/// A presence stanza whose type, show and priority are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    element: Element,
    presence_type: PresenceType,
    show: Option<Show>,
    priority: Priority,
}

impl Presence {
    /// Check a `<presence/>` element. Errors carry the element back with the
    /// `bad-request` the sender gets (RFC 6120 section 8.3.3.1).
    pub fn try_from_element(element: Element) -> Result<Self, Box<InvalidStanza>> {
        if StanzaKind::of(&element) != Some(StanzaKind::Presence) {
            return Err(InvalidStanza::bad_request(element, "not a presence stanza"));
        }
        let Some(presence_type) = PresenceType::from_attr(stanza_type(&element)) else {
            return Err(InvalidStanza::bad_request(element, "unknown presence type"));
        };
        let (show, priority) = match show_and_priority(&element) {
            Ok(values) => values,
            Err(text) => return Err(InvalidStanza::bad_request(element, text)),
        };
        Ok(Presence {
            element,
            presence_type,
            show,
            priority,
        })
    }

    pub fn presence_type(&self) -> PresenceType {
        self.presence_type
    }

    pub fn show(&self) -> Option<Show> {
        self.show
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    pub fn element(&self) -> &Element {
        &self.element
    }

    pub fn into_element(self) -> Element {
        self.element
    }
}

/// The `<show/>` and `<priority/>` of a presence, or why they are invalid.
fn show_and_priority(presence: &Element) -> Result<(Option<Show>, Priority), &'static str> {
    let namespace = presence.namespace();
    let mut show = None;
    let mut priority = None;
    for child in presence
        .children()
        .filter(|child| child.namespace() == namespace)
    {
        match child.name() {
            // Section 4.7.2.1: at most one <show/>, one of four values.
            "show" => match (show, Show::from_text(child.text().trim())) {
                (None, Some(value)) => show = Some(value),
                _ => return Err("show must be one of away, chat, dnd, xa, at most once"),
            },
            // Section 4.7.2.3: at most one <priority/>, an integer in -128..=127.
            "priority" => match (priority, Priority::parse(&child.text())) {
                (None, Some(value)) => priority = Some(value),
                _ => return Err("priority must be one integer from -128 to 127"),
            },
            _ => {}
        }
    }
    Ok((show, priority.unwrap_or_default()))
}

impl TryFrom<Element> for Presence {
    type Error = Box<InvalidStanza>;

    fn try_from(element: Element) -> Result<Self, Box<InvalidStanza>> {
        Presence::try_from_element(element)
    }
}

impl From<Presence> for Element {
    fn from(presence: Presence) -> Element {
        presence.element
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StanzaErrorCondition;
    use crate::parser::{parse_element, Limits};

    fn parse(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Limits::default()).unwrap()
    }

    fn presence(xml: &str) -> Presence {
        Presence::try_from(parse(xml)).unwrap()
    }

    fn rejected(xml: &str) -> Box<InvalidStanza> {
        Presence::try_from(parse(xml)).unwrap_err()
    }

    #[test]
    fn available_presence_with_show_and_priority_round_trips() {
        let xml = "<presence xmlns='jabber:client' id='p1'><show>away</show><status>at lunch</status><priority>-1</priority></presence>";
        let presence = presence(xml);
        assert_eq!(presence.presence_type(), PresenceType::Available);
        assert_eq!(presence.show(), Some(Show::Away));
        assert_eq!(presence.priority(), Priority::new(-1));
        assert_eq!(presence.into_element().to_xml(), xml);
    }

    #[test]
    fn absent_priority_is_zero_and_absent_show_is_none() {
        let presence = presence("<presence xmlns='jabber:client'/>");
        assert_eq!(presence.priority(), Priority::ZERO);
        assert_eq!(presence.show(), None);
    }

    #[test]
    fn every_type_is_read() {
        for value in [
            "unavailable",
            "subscribe",
            "subscribed",
            "unsubscribe",
            "unsubscribed",
            "probe",
            "error",
        ] {
            let presence = presence(&format!("<presence xmlns='jabber:client' type='{value}'/>"));
            assert_eq!(presence.presence_type().as_str(), value);
        }
    }

    #[test]
    fn every_show_value_is_read() {
        for value in ["away", "chat", "dnd", "xa"] {
            let presence = presence(&format!(
                "<presence xmlns='jabber:client'><show>{value}</show></presence>"
            ));
            assert_eq!(presence.show().map(Show::as_str), Some(value));
        }
    }

    #[test]
    fn priority_extremes_and_xs_byte_forms_are_accepted() {
        for (text, value) in [("127", 127), ("-128", -128), (" +5 ", 5), ("0", 0)] {
            let presence = presence(&format!(
                "<presence xmlns='jabber:client'><priority>{text}</priority></presence>"
            ));
            assert_eq!(presence.priority().value(), value, "{text}");
        }
    }

    #[test]
    fn out_of_range_or_non_integer_priority_is_a_bad_request() {
        // Section 4.7.2.3: the edge and the presence service used to read these
        // differently (i32 vs i64, one clamping, one ignoring); now nobody accepts them.
        for text in ["128", "-129", "1000", "-3000000000", "high", "", "1.5"] {
            let invalid = rejected(&format!(
                "<presence xmlns='jabber:client'><priority>{text}</priority></presence>"
            ));
            assert_eq!(
                invalid.error.condition,
                StanzaErrorCondition::BadRequest,
                "{text}"
            );
        }
    }

    #[test]
    fn two_priorities_are_a_bad_request() {
        rejected("<presence xmlns='jabber:client'><priority>1</priority><priority>2</priority></presence>");
    }

    #[test]
    fn empty_or_unknown_show_is_a_bad_request() {
        for show in [
            "<show/>",
            "<show>busy</show>",
            "<show>Away</show>",
            "<show>a way</show>",
        ] {
            let invalid = rejected(&format!(
                "<presence xmlns='jabber:client'>{show}</presence>"
            ));
            assert_eq!(invalid.error.condition, StanzaErrorCondition::BadRequest);
        }
    }

    #[test]
    fn two_shows_are_a_bad_request() {
        rejected("<presence xmlns='jabber:client'><show>away</show><show>xa</show></presence>");
    }

    #[test]
    fn unknown_type_is_a_bad_request() {
        let invalid = rejected("<presence xmlns='jabber:client' type='online'/>");
        assert_eq!(invalid.error.condition, StanzaErrorCondition::BadRequest);
        assert_eq!(
            invalid.error_reply().unwrap().to_stanza_xml(),
            "<presence type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>unknown presence type</text></error></presence>"
        );
    }

    #[test]
    fn show_in_another_namespace_is_an_extension_not_a_show() {
        let presence = presence(
            "<presence xmlns='jabber:client'><show xmlns='urn:example'>whatever</show></presence>",
        );
        assert_eq!(presence.show(), None);
    }

    #[test]
    fn a_message_is_not_a_presence() {
        rejected("<message xmlns='jabber:client'/>");
    }
}
