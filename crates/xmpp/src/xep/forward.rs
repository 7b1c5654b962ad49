//! XEP-0297: Stanza Forwarding, version 1.0: `<forwarded/>` carries a copy of
//! a stanza (section 3), optionally with the `<delay/>` of when it was first
//! sent. Message Carbons (XEP-0280) wrap their copies in it.

use crate::element::Element;
use crate::ns;
use crate::xep::delay::Delay;
use crate::xep::{expect, Payload, PayloadError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub delay: Option<Delay>,
    /// The forwarded stanza, with its own `from` and `to` (section 3).
    pub stanza: Element,
}

impl Payload for Forwarded {
    const NAME: &'static str = "forwarded";
    const NAMESPACE: &'static str = ns::FORWARD;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let mut delay = None;
        let mut stanza = None;
        for child in element.children() {
            if Delay::is(child) {
                if delay.is_some() {
                    return Err(PayloadError("a forwarded stanza has one delay"));
                }
                delay = Some(Delay::from_element(child)?);
            } else if matches!(child.name(), "message" | "presence" | "iq")
                && matches!(child.namespace(), ns::CLIENT | ns::SERVER)
            {
                if stanza.is_some() {
                    return Err(PayloadError("forwarded carries one stanza"));
                }
                stanza = Some(child.clone());
            } else {
                return Err(PayloadError("unexpected element in forwarded"));
            }
        }
        let Some(stanza) = stanza else {
            return Err(PayloadError("forwarded carries no stanza"));
        };
        Ok(Forwarded { delay, stanza })
    }

    fn to_element(&self) -> Element {
        let mut forwarded = Element::new(Self::NAME, Self::NAMESPACE);
        if let Some(delay) = &self.delay {
            forwarded.append_child(delay.to_element());
        }
        forwarded.append_child(self.stanza.clone());
        forwarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{rejected, round_trip};

    #[test]
    fn round_trips_with_and_without_delay() {
        let forwarded = round_trip::<Forwarded>(
            "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='a@example.com/x' to='b@example.com' type='chat'><body>hi</body></message></forwarded>",
        );
        assert_eq!(forwarded.stanza.attr("from"), Some("a@example.com/x"));
        assert_eq!(forwarded.delay, None);
        let forwarded = round_trip::<Forwarded>(
            "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/><message xmlns='jabber:client'/></forwarded>",
        );
        assert!(forwarded.delay.is_some());
    }

    #[test]
    fn carries_exactly_one_stanza() {
        assert_eq!(
            rejected::<Forwarded>("<forwarded xmlns='urn:xmpp:forward:0'/>"),
            "forwarded carries no stanza"
        );
        assert_eq!(
            rejected::<Forwarded>(
                "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/><message xmlns='jabber:client'/></forwarded>"
            ),
            "forwarded carries one stanza"
        );
        assert_eq!(
            rejected::<Forwarded>(
                "<forwarded xmlns='urn:xmpp:forward:0'><body xmlns='jabber:client'/></forwarded>"
            ),
            "unexpected element in forwarded"
        );
    }
}
