//! Stanzas (RFC 6120 section 8): the three kinds, addressing, the error
//! replies of section 8.3.1, and the typed [`Message`], [`Presence`] and [`Iq`]
//! that a parsed element becomes once its rules are checked, so that every
//! service reads a stanza's type, show or priority through one type.

mod iq;
mod message;
mod presence;

pub use iq::{Iq, IqType};
pub use message::{Message, MessageType};
pub use presence::{Presence, PresenceType, Priority, Show};

use starling_jid::{Jid, JidError};

use crate::element::Element;
use crate::error::StanzaError;
use crate::ns;

/// The three stanza kinds of RFC 6120 section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    /// The kind of a top-level element of a client or server stream, if it is a stanza.
    pub fn of(element: &Element) -> Option<Self> {
        if element.namespace() != ns::CLIENT && element.namespace() != ns::SERVER {
            return None;
        }
        match element.name() {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StanzaKind::Message => "message",
            StanzaKind::Presence => "presence",
            StanzaKind::Iq => "iq",
        }
    }
}

/// A stanza that breaks a rule of its kind, with the error its sender gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStanza {
    pub stanza: Element,
    pub error: StanzaError,
}

impl InvalidStanza {
    /// Boxed: a rejection is the cold path, and it keeps every `Result` small.
    pub(crate) fn bad_request(stanza: Element, text: &'static str) -> Box<Self> {
        Box::new(InvalidStanza {
            stanza,
            error: StanzaError::new(crate::error::StanzaErrorCondition::BadRequest).with_text(text),
        })
    }

    /// The error reply to the sender (RFC 6120 section 8.3.1); `None` when the
    /// stanza must not be answered (it is itself an error, or a result).
    pub fn error_reply(&self) -> Option<Element> {
        error_reply(&self.stanza, &self.error)
    }
}

impl std::fmt::Display for InvalidStanza {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "invalid {}: {}", self.stanza.name(), self.error)
    }
}

impl std::error::Error for InvalidStanza {}

/// The parsed `to` address; `Ok(None)` when absent.
pub fn to(stanza: &Element) -> Result<Option<Jid>, JidError> {
    stanza.attr("to").map(str::parse).transpose()
}

/// The parsed `from` address; `Ok(None)` when absent.
pub fn from(stanza: &Element) -> Result<Option<Jid>, JidError> {
    stanza.attr("from").map(str::parse).transpose()
}

/// The stanza's `type` attribute, or "" when absent.
pub fn stanza_type(stanza: &Element) -> &str {
    stanza.attr("type").unwrap_or("")
}

/// Whether an error reply may be generated for this stanza: never for a stanza
/// of type `error` (RFC 6120 section 8.3.1), nor for an IQ result.
pub fn may_bounce(stanza: &Element) -> bool {
    !matches!(stanza_type(stanza), "error" | "result")
}

/// The error reply to `stanza` (RFC 6120 section 8.3.1): addresses swapped, type
/// `error`, the original payload kept, and the `<error/>` element appended.
/// Returns `None` for stanzas that must not be bounced.
pub fn error_reply(stanza: &Element, error: &StanzaError) -> Option<Element> {
    if !may_bounce(stanza) {
        return None;
    }
    let mut reply = Element::new(stanza.name(), stanza.namespace());
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    reply.set_attr("type", "error");
    // An IQ error carries its original child; messages and presences keep the
    // payload too so that the sender can tell which stanza failed.
    for child in stanza.children() {
        if child.name() != "error" {
            reply.append_child(child.clone());
        }
    }
    reply.append_child(error.to_element());
    Some(reply)
}

/// An empty IQ result for a request (RFC 6120 section 8.2.3).
pub fn iq_result(request: &Element) -> Element {
    let mut reply = Element::new("iq", request.namespace()).with_attr("type", "result");
    if let Some(id) = request.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = request.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = request.attr("to") {
        reply.set_attr("from", to);
    }
    reply
}

/// The single payload child of an IQ get or set (RFC 6120 section 8.2.3 requires exactly one).
pub fn iq_payload(iq: &Element) -> Option<&Element> {
    let mut children = iq.children();
    let first = children.next()?;
    if children.next().is_some() {
        return None;
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StanzaErrorCondition;

    #[test]
    fn error_reply_swaps_addresses_and_keeps_payload() {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("id", "q1")
            .with_attr("type", "get")
            .with_attr("from", "a@example.com/r")
            .with_attr("to", "example.com")
            .with_child(Element::new("query", "urn:unknown"));
        let reply = error_reply(
            &iq,
            &StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
        )
        .unwrap();
        assert_eq!(
            reply.to_stanza_xml(),
            "<iq id='q1' to='a@example.com/r' from='example.com' type='error'><query xmlns='urn:unknown'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }

    #[test]
    fn errors_are_never_bounced() {
        let message = Element::new("message", ns::CLIENT).with_attr("type", "error");
        assert!(error_reply(
            &message,
            &StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
        )
        .is_none());
        let result = Element::new("iq", ns::CLIENT).with_attr("type", "result");
        assert!(error_reply(
            &result,
            &StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
        )
        .is_none());
    }

    #[test]
    fn kinds() {
        assert_eq!(
            StanzaKind::of(&Element::new("iq", ns::CLIENT)),
            Some(StanzaKind::Iq)
        );
        assert_eq!(StanzaKind::of(&Element::new("iq", "urn:other")), None);
        assert_eq!(StanzaKind::of(&Element::new("foo", ns::CLIENT)), None);
    }
}
