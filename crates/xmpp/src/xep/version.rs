//! XEP-0092: Software Version, version 1.1: the `jabber:iq:version` query,
//! empty in a get, with `<name/>`, `<version/>` and an optional `<os/>` in a
//! result (section 2). Section 6 advises withholding `<os/>`.

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, single_child_text, Payload, PayloadError};

/// The software an entity runs; `None` fields are the empty query of a get.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SoftwareVersion {
    pub name: Option<String>,
    pub version: Option<String>,
    pub os: Option<String>,
}

impl SoftwareVersion {
    /// The answer naming `name` and `version`, without the operating system.
    pub fn named(name: impl Into<String>, version: impl Into<String>) -> Self {
        SoftwareVersion {
            name: Some(name.into()),
            version: Some(version.into()),
            os: None,
        }
    }

    /// The empty query of a request.
    pub fn is_request(&self) -> bool {
        self.name.is_none() && self.version.is_none() && self.os.is_none()
    }
}

impl Payload for SoftwareVersion {
    const NAME: &'static str = "query";
    const NAMESPACE: &'static str = ns::VERSION;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let text = |name, repeated| single_child_text(element, name, ns::VERSION, repeated);
        let version = SoftwareVersion {
            name: text("name", "more than one name")?,
            version: text("version", "more than one version")?,
            os: text("os", "more than one os")?,
        };
        // Section 2: a result carries both the name and the version, or neither (a get).
        if version.name.is_some() != version.version.is_some() {
            return Err(PayloadError("name and version go together"));
        }
        Ok(version)
    }

    fn to_element(&self) -> Element {
        let mut query = Element::new(Self::NAME, Self::NAMESPACE);
        for (name, value) in [
            ("name", &self.name),
            ("version", &self.version),
            ("os", &self.os),
        ] {
            if let Some(value) = value {
                query.append_child(Element::new(name, ns::VERSION).with_text(value.clone()));
            }
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{rejected, round_trip};

    #[test]
    fn the_empty_get_round_trips() {
        let query = round_trip::<SoftwareVersion>("<query xmlns='jabber:iq:version'/>");
        assert!(query.is_request());
    }

    #[test]
    fn a_result_round_trips() {
        let version = round_trip::<SoftwareVersion>(
            "<query xmlns='jabber:iq:version'><name>Starling</name><version>0.1.0</version><os>Linux</os></query>",
        );
        assert_eq!(version.name.as_deref(), Some("Starling"));
        assert_eq!(version.os.as_deref(), Some("Linux"));
        assert_eq!(
            SoftwareVersion::named("Starling", "0.1.0").to_element().to_xml(),
            "<query xmlns='jabber:iq:version'><name>Starling</name><version>0.1.0</version></query>"
        );
    }

    #[test]
    fn a_name_without_version_is_rejected() {
        assert_eq!(
            rejected::<SoftwareVersion>("<query xmlns='jabber:iq:version'><name>x</name></query>"),
            "name and version go together"
        );
    }

    #[test]
    fn a_repeated_field_is_rejected() {
        assert_eq!(
            rejected::<SoftwareVersion>(
                "<query xmlns='jabber:iq:version'><name>a</name><name>b</name><version>1</version></query>"
            ),
            "more than one name"
        );
    }

    #[test]
    fn another_namespace_is_rejected() {
        assert_eq!(
            rejected::<SoftwareVersion>("<query xmlns='jabber:iq:roster'/>"),
            "unexpected payload element"
        );
    }
}
