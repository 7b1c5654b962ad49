//! IQ stanzas, RFC 6120 section 8.2.3: a required `id`, a required `type` of
//! four values; a get or set carries exactly one payload child, a result at
//! most one.

use crate::element::Element;
use crate::stanza::{stanza_type, InvalidStanza, StanzaKind};

/// The `type` of an IQ (RFC 6120 section 8.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqType {
    Get,
    Set,
    Result,
    Error,
}

impl IqType {
    pub fn from_attr(value: &str) -> Option<Self> {
        Some(match value {
            "get" => IqType::Get,
            "set" => IqType::Set,
            "result" => IqType::Result,
            "error" => IqType::Error,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IqType::Get => "get",
            IqType::Set => "set",
            IqType::Result => "result",
            IqType::Error => "error",
        }
    }

    /// A get or a set: a request that must be answered.
    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// An IQ whose type is known and, for a request, with an `id` and one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iq {
    element: Element,
    iq_type: IqType,
}

impl Iq {
    /// Check an `<iq/>` element (RFC 6120 section 8.2.3): every rule broken is
    /// a `bad-request` (which a result or an error, never answered with an
    /// error per section 8.3.1, does not get: it is not routed).
    pub fn try_from_element(element: Element) -> Result<Self, Box<InvalidStanza>> {
        if StanzaKind::of(&element) != Some(StanzaKind::Iq) {
            return Err(InvalidStanza::bad_request(element, "not an iq stanza"));
        }
        if element.attr("id").is_none_or(str::is_empty) {
            return Err(InvalidStanza::bad_request(element, "an iq needs an id"));
        }
        let Some(iq_type) = IqType::from_attr(stanza_type(&element)) else {
            return Err(InvalidStanza::bad_request(
                element,
                "an iq type is get, set, result or error",
            ));
        };
        let children = element.children().count();
        if iq_type.is_request() && children != 1 {
            return Err(InvalidStanza::bad_request(
                element,
                "an iq get or set needs exactly one child",
            ));
        }
        if iq_type == IqType::Result && children > 1 {
            return Err(InvalidStanza::bad_request(
                element,
                "an iq result has at most one child",
            ));
        }
        Ok(Iq { element, iq_type })
    }

    pub fn iq_type(&self) -> IqType {
        self.iq_type
    }

    pub fn id(&self) -> Option<&str> {
        self.element.attr("id")
    }

    /// The payload: the one child of a request or result; the first child of an error.
    pub fn payload(&self) -> Option<&Element> {
        self.element.children().next()
    }

    /// The payload's name and namespace, for dispatch to a handler.
    pub fn payload_name(&self) -> Option<(&str, &str)> {
        self.payload()
            .map(|payload| (payload.name(), payload.namespace()))
    }

    pub fn element(&self) -> &Element {
        &self.element
    }

    pub fn into_element(self) -> Element {
        self.element
    }
}

impl TryFrom<Element> for Iq {
    type Error = Box<InvalidStanza>;

    fn try_from(element: Element) -> Result<Self, Box<InvalidStanza>> {
        Iq::try_from_element(element)
    }
}

impl From<Iq> for Element {
    fn from(iq: Iq) -> Element {
        iq.element
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

    fn rejected(xml: &str) -> Box<InvalidStanza> {
        let invalid = Iq::try_from(parse(xml)).unwrap_err();
        assert_eq!(invalid.error.condition, StanzaErrorCondition::BadRequest);
        invalid
    }

    #[test]
    fn a_get_round_trips_with_its_payload() {
        let xml = "<iq xmlns='jabber:client' id='p1' type='get' to='example.com'><ping xmlns='urn:xmpp:ping'/></iq>";
        let iq = Iq::try_from(parse(xml)).unwrap();
        assert_eq!(iq.iq_type(), IqType::Get);
        assert_eq!(iq.id(), Some("p1"));
        assert_eq!(iq.payload_name(), Some(("ping", "urn:xmpp:ping")));
        assert_eq!(iq.into_element().to_xml(), xml);
    }

    #[test]
    fn an_empty_result_is_an_iq() {
        let iq = Iq::try_from(parse("<iq xmlns='jabber:client' id='p1' type='result'/>")).unwrap();
        assert_eq!(iq.iq_type(), IqType::Result);
        assert!(iq.payload().is_none());
    }

    #[test]
    fn an_error_with_the_original_payload_is_an_iq() {
        let iq = Iq::try_from(parse(
            "<iq xmlns='jabber:client' id='e' type='error'><ping xmlns='urn:xmpp:ping'/><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        ))
        .unwrap();
        assert_eq!(iq.iq_type(), IqType::Error);
    }

    #[test]
    fn an_iq_without_or_with_an_empty_id_is_a_bad_request() {
        rejected("<iq xmlns='jabber:client' type='get'><ping xmlns='urn:xmpp:ping'/></iq>");
        rejected("<iq xmlns='jabber:client' type='result'/>");
        rejected("<iq xmlns='jabber:client' id='' type='result'/>");
        let invalid = rejected("<iq xmlns='jabber:client' type='error'/>");
        // Never answered: an error is not bounced (RFC 6120 section 8.3.1).
        assert!(invalid.error_reply().is_none());
    }

    #[test]
    fn a_result_with_two_payloads_is_a_bad_request() {
        rejected("<iq xmlns='jabber:client' id='r' type='result'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>");
    }

    #[test]
    fn a_missing_or_unknown_type_is_a_bad_request() {
        rejected("<iq xmlns='jabber:client' id='a'><ping xmlns='urn:xmpp:ping'/></iq>");
        rejected(
            "<iq xmlns='jabber:client' id='a' type='query'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
    }

    #[test]
    fn a_request_with_no_or_two_payloads_is_a_bad_request() {
        rejected("<iq xmlns='jabber:client' id='a' type='set'/>");
        rejected("<iq xmlns='jabber:client' id='a' type='get'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>");
    }

    #[test]
    fn the_error_reply_keeps_the_id_and_swaps_addresses() {
        let invalid = rejected(
            "<iq xmlns='jabber:client' id='a' type='set' from='a@example.com/r' to='example.com'/>",
        );
        assert_eq!(
            invalid.error_reply().unwrap().to_stanza_xml(),
            "<iq id='a' to='a@example.com/r' from='example.com' type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>an iq get or set needs exactly one child</text></error></iq>"
        );
    }

    #[test]
    fn a_presence_is_not_an_iq() {
        rejected("<presence xmlns='jabber:client'/>");
    }
}
