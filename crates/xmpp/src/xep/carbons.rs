//! XEP-0280: Message Carbons, version 1.0.1: the `<enable/>` and `<disable/>`
//! IQ payloads (sections 4 and 5), the `<private/>` opt-out of one message
//! (section 8), and the `<sent/>` and `<received/>` wrappers of a copy, each
//! holding the original message in a XEP-0297 `<forwarded/>` (sections 6 and 7).

use crate::element::Element;
use crate::ns;
use crate::xep::forward::Forwarded;
use crate::xep::{expect, Payload, PayloadError};

/// `<enable xmlns='urn:xmpp:carbons:2'/>`, the payload of an IQ set (section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Enable;

/// `<disable xmlns='urn:xmpp:carbons:2'/>`, the payload of an IQ set (section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Disable;

/// `<private xmlns='urn:xmpp:carbons:2'/>`: no copies of this message (section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Private;

macro_rules! empty_payload {
    ($type:ident, $name:literal) => {
        impl Payload for $type {
            const NAME: &'static str = $name;
            const NAMESPACE: &'static str = ns::CARBONS;

            fn from_element(element: &Element) -> Result<Self, PayloadError> {
                expect::<Self>(element)?;
                if element.children().next().is_some() {
                    return Err(PayloadError("the element is empty in XEP-0280"));
                }
                Ok($type)
            }

            fn to_element(&self) -> Element {
                Element::new(Self::NAME, Self::NAMESPACE)
            }
        }
    };
}

empty_payload!(Enable, "enable");
empty_payload!(Disable, "disable");
empty_payload!(Private, "private");

/// Which side of a conversation a copy shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A message another resource of the account sent (section 7).
    Sent,
    /// A message the account received on another resource (section 6).
    Received,
}

impl Direction {
    pub fn element_name(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// `<sent/>` or `<received/>` around the forwarded original (sections 6 and 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carbon {
    pub direction: Direction,
    pub forwarded: Forwarded,
}

impl Carbon {
    pub fn from_element(element: &Element) -> Result<Self, PayloadError> {
        let direction = match (element.name(), element.namespace()) {
            ("sent", ns::CARBONS) => Direction::Sent,
            ("received", ns::CARBONS) => Direction::Received,
            _ => return Err(PayloadError("unexpected payload element")),
        };
        let mut children = element.children();
        let (Some(forwarded), None) = (children.next(), children.next()) else {
            return Err(PayloadError("a carbon holds exactly one forwarded"));
        };
        Ok(Carbon {
            direction,
            forwarded: Forwarded::from_element(forwarded)?,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::new(self.direction.element_name(), ns::CARBONS)
            .with_child(self.forwarded.to_element())
    }

    /// The message that carries the copy of `original` to the account
    /// `account`'s resources: from the account's bare JID, of the original's
    /// type (sections 6 and 7). Its `to`, the receiving resource's full JID,
    /// is set per recipient.
    pub fn wrap(direction: Direction, account: &str, original: Element) -> Element {
        let mut wrapper = Element::new("message", ns::CLIENT).with_attr("from", account);
        if let Some(message_type) = original.attr("type") {
            wrapper.set_attr("type", message_type.to_string());
        }
        wrapper.with_child(
            Carbon {
                direction,
                forwarded: Forwarded {
                    delay: None,
                    stanza: original,
                },
            }
            .to_element(),
        )
    }
}

/// Whether a message carries a carbon wrapper (`<sent/>` or `<received/>`).
pub fn is_carbon(message: &Element) -> bool {
    message.children().any(|child| {
        child.namespace() == ns::CARBONS && matches!(child.name(), "sent" | "received")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{element, rejected, round_trip};

    #[test]
    fn the_empty_payloads_round_trip() {
        assert_eq!(
            round_trip::<Enable>("<enable xmlns='urn:xmpp:carbons:2'/>"),
            Enable
        );
        assert_eq!(
            round_trip::<Disable>("<disable xmlns='urn:xmpp:carbons:2'/>"),
            Disable
        );
        assert_eq!(
            round_trip::<Private>("<private xmlns='urn:xmpp:carbons:2'/>"),
            Private
        );
        assert_eq!(
            rejected::<Enable>("<enable xmlns='urn:xmpp:carbons:1'/>"),
            "unexpected payload element"
        );
        assert_eq!(
            rejected::<Enable>("<enable xmlns='urn:xmpp:carbons:2'><x/></enable>"),
            "the element is empty in XEP-0280"
        );
    }

    #[test]
    fn a_carbon_round_trips_and_holds_one_forwarded() {
        let xml = "<received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='juliet@capulet.example/balcony' to='romeo@montague.example/garden' type='chat'><body>What man art thou?</body></message></forwarded></received>";
        let carbon = Carbon::from_element(&element(xml)).expect("reads");
        assert_eq!(carbon.direction, Direction::Received);
        assert_eq!(carbon.to_element().to_xml(), xml);
        assert!(Carbon::from_element(&element("<sent xmlns='urn:xmpp:carbons:2'/>")).is_err());
        assert!(Carbon::from_element(&element("<private xmlns='urn:xmpp:carbons:2'/>")).is_err());
    }

    #[test]
    fn the_wrapper_is_from_the_bare_jid_with_the_original_type() {
        // XEP-0280 section 7, example 11 (the `to` is set per recipient).
        let original = element(
            "<message xmlns='jabber:client' from='romeo@montague.example/home' to='juliet@capulet.example/balcony' type='chat'><body>Neither, fair saint, if either thee dislike.</body></message>",
        );
        let wrapper = Carbon::wrap(Direction::Sent, "romeo@montague.example", original);
        assert_eq!(
            wrapper.to_stanza_xml(),
            "<message from='romeo@montague.example' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='romeo@montague.example/home' to='juliet@capulet.example/balcony' type='chat'><body>Neither, fair saint, if either thee dislike.</body></message></forwarded></sent></message>"
        );
        assert!(is_carbon(&wrapper));
        let untyped = Carbon::wrap(
            Direction::Received,
            "romeo@montague.example",
            element("<message xmlns='jabber:client'><body>x</body></message>"),
        );
        assert_eq!(untyped.attr("type"), None);
        assert!(!is_carbon(&element(
            "<message xmlns='jabber:client'><private xmlns='urn:xmpp:carbons:2'/></message>"
        )));
    }
}
