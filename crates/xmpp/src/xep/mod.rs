//! Typed payloads, one module per specification: each module's first line
//! names the XEP (or RFC section) and the version it implements. A payload
//! reads itself from an [`Element`] with every rule checked (a broken one is a
//! [`PayloadError`], which its sender gets as `bad-request`) and writes itself
//! back; every module round-trips literal XML in its tests.

pub mod avatar;
pub mod blocking;
pub mod caps;
pub mod carbons;
pub mod delay;
pub mod disco;
pub mod forward;
pub mod http_upload;
pub mod mam;
pub mod ping;
pub mod push;
pub mod rsm;
pub mod version;

use crate::element::Element;
use crate::error::{StanzaError, StanzaErrorCondition};

/// A payload element of one name and namespace.
pub trait Payload: Sized {
    const NAME: &'static str;
    const NAMESPACE: &'static str;

    /// Read the payload; the element's name and namespace are checked first.
    fn from_element(element: &Element) -> Result<Self, PayloadError>;

    fn to_element(&self) -> Element;

    /// Whether `element` is this payload (by name and namespace).
    fn is(element: &Element) -> bool {
        element.is(Self::NAME, Self::NAMESPACE)
    }
}

/// Why a payload does not read: the text its sender gets with `bad-request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub &'static str);

impl PayloadError {
    /// The stanza error for the payload's sender (RFC 6120 section 8.3.3.1).
    pub fn to_stanza_error(&self) -> StanzaError {
        StanzaError::new(StanzaErrorCondition::BadRequest).with_text(self.0)
    }
}

/// Check the name and namespace of a payload's element.
pub(crate) fn expect<P: Payload>(element: &Element) -> Result<(), PayloadError> {
    if P::is(element) {
        Ok(())
    } else {
        Err(PayloadError("unexpected payload element"))
    }
}

/// The text of the only child `name` in `namespace`; an error when repeated.
pub(crate) fn single_child_text(
    element: &Element,
    name: &str,
    namespace: &str,
    repeated: &'static str,
) -> Result<Option<String>, PayloadError> {
    let mut found = element.children().filter(|child| child.is(name, namespace));
    let first = found.next().map(Element::text);
    if found.next().is_some() {
        return Err(PayloadError(repeated));
    }
    Ok(first)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Payload;
    use crate::element::Element;
    use crate::parser::{parse_element, Limits};

    pub fn element(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Limits::default()).expect("test XML parses")
    }

    /// Read `xml` as `P` and write it back: the same XML.
    pub fn round_trip<P: Payload + std::fmt::Debug>(xml: &str) -> P {
        let payload = P::from_element(&element(xml)).expect("the payload reads");
        assert_eq!(payload.to_element().to_xml(), xml);
        payload
    }

    pub fn rejected<P: Payload + std::fmt::Debug>(xml: &str) -> &'static str {
        P::from_element(&element(xml))
            .expect_err("the payload is rejected")
            .0
    }
}
