//! XMPP Ping, XEP-0199: a `urn:xmpp:ping` get addressed to the server is
//! answered with an empty result (section 4.2, client-to-server ping).

use async_trait::async_trait;
use starling_api::FeatureSpec;
use starling_xmpp::{ns, stanza, Element};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;
use starling_xmpp::IqType;

/// XEP-0199 version 2.0.1.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "ping",
    specification: "XEP-0199",
    disco_features: &[ns::PING],
    iq_namespaces: &[ns::PING],
    stream_features: &[],
};

/// Answers a ping to the server, or sent without `to` (section 4.2).
pub(crate) struct Ping;

#[async_trait]
impl IqHandler for Ping {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, _router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        match request.addressee {
            Addressee::Server | Addressee::OwnAccount { .. } if request.is(IqType::Get, "ping") => {
                Some(pong(&request.iq))
            }
            _ => request.unsupported(),
        }
    }
}

/// The pong: an empty IQ result (XEP-0199 section 4.2).
pub(crate) fn pong(request: &Element) -> Element {
    stanza::iq_result(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_is_an_empty_result() {
        let ping = Element::new("iq", ns::CLIENT)
            .with_attr("from", "juliet@example.com/balcony")
            .with_attr("to", "example.com")
            .with_attr("id", "c2s1")
            .with_attr("type", "get")
            .with_child(Element::new("ping", ns::PING));
        assert_eq!(
            pong(&ping).to_stanza_xml(),
            "<iq type='result' id='c2s1' to='juliet@example.com/balcony' from='example.com'/>"
        );
    }
}
