//! XMPP Ping, XEP-0199: a `urn:xmpp:ping` get addressed to the server is
//! answered with an empty result (section 4.2, client-to-server ping).

use starling_xmpp::{stanza, Element};

/// The pong: an empty IQ result (XEP-0199 section 4.2).
pub(crate) fn pong(request: &Element) -> Element {
    stanza::iq_result(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::ns;

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
