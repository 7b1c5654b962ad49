//! Software Version, XEP-0092: the server's name and version (section 2).
//! The operating system (`<os/>`) is optional and withheld by default, as
//! section 6 advises for security.

use async_trait::async_trait;
use starling_api::FeatureSpec;
use starling_xmpp::{ns, stanza, Element};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;
use starling_xmpp::IqType;

/// XEP-0092 version 1.1.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "version",
    specification: "XEP-0092",
    disco_features: &[ns::VERSION],
    iq_namespaces: &[ns::VERSION],
    stream_features: &[],
};

/// Answers a version query addressed to the server; an account's bare JID
/// does not answer it on the account's behalf.
pub(crate) struct Version;

#[async_trait]
impl IqHandler for Version {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        match request.addressee {
            Addressee::Server if request.is(IqType::Get, "query") => Some(version_result(
                &request.iq,
                &router.config.server_name,
                &router.config.server_version,
            )),
            _ => request.unsupported(),
        }
    }
}

/// The `jabber:iq:version` result naming the server software.
pub(crate) fn version_result(request: &Element, name: &str, version: &str) -> Element {
    let query = Element::new("query", ns::VERSION)
        .with_child(Element::new("name", ns::VERSION).with_text(name))
        .with_child(Element::new("version", ns::VERSION).with_text(version));
    stanza::iq_result(request).with_child(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_and_version_without_os() {
        let request = Element::new("iq", ns::CLIENT)
            .with_attr("from", "romeo@example.com/orchard")
            .with_attr("id", "version_1")
            .with_attr("to", "example.com")
            .with_attr("type", "get")
            .with_child(Element::new("query", ns::VERSION));
        assert_eq!(
            version_result(&request, "Starling", "0.1.0").to_stanza_xml(),
            "<iq type='result' id='version_1' to='romeo@example.com/orchard' from='example.com'><query xmlns='jabber:iq:version'><name>Starling</name><version>0.1.0</version></query></iq>"
        );
    }
}
