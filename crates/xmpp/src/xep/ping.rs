//! XEP-0199: XMPP Ping, version 2.0.1: the `<ping/>` payload of an IQ get
//! (section 3), answered with an empty result.

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, Payload, PayloadError};

/// `<ping xmlns='urn:xmpp:ping'/>`: no attributes or children of meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ping;

impl Payload for Ping {
    const NAME: &'static str = "ping";
    const NAMESPACE: &'static str = ns::PING;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        Ok(Ping)
    }

    fn to_element(&self) -> Element {
        Element::new(Self::NAME, Self::NAMESPACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{rejected, round_trip};

    #[test]
    fn round_trips() {
        assert_eq!(round_trip::<Ping>("<ping xmlns='urn:xmpp:ping'/>"), Ping);
    }

    #[test]
    fn another_element_is_not_a_ping() {
        assert_eq!(
            rejected::<Ping>("<pong xmlns='urn:xmpp:ping'/>"),
            "unexpected payload element"
        );
        assert_eq!(
            rejected::<Ping>("<ping xmlns='urn:xmpp:pong'/>"),
            "unexpected payload element"
        );
    }
}
