//! Offline message storage (XEP-0160): a message kept for an account with no
//! available resource carries a delay stamp (XEP-0203) naming the server and
//! the time it was stored, in the UTC date-time profile of XEP-0082
//! (RFC 3339 with `Z`).

use std::time::SystemTime;

use starling_api::FeatureSpec;
use starling_xmpp::xep::delay::rfc3339_utc;
use starling_xmpp::{ns, Element};

/// XEP-0160 (offline storage, section 5: the `msgoffline` feature): the
/// router stores, the presence service delivers at login. No IQ, no stream feature.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "offline",
    specification: "XEP-0160",
    disco_features: &[MSGOFFLINE],
    iq_namespaces: &[],
    stream_features: &[],
};

/// The XEP-0160 disco feature: messages to an offline account are stored.
const MSGOFFLINE: &str = "msgoffline";

/// `<delay xmlns='urn:xmpp:delay' from='{domain}' stamp='{stored_at}'/>` (XEP-0203 section 4).
pub(crate) fn delay_element(domain: &str, stored_at: SystemTime) -> Element {
    Element::new("delay", ns::DELAY)
        .with_attr("from", domain)
        .with_attr("stamp", rfc3339_utc(stored_at))
}

/// The message as it goes to the offline queue: a copy with the delay stamp
/// appended, serialised as a top-level stanza.
pub(crate) fn offline_stanza_xml(message: &Element, domain: &str, stored_at: SystemTime) -> String {
    let mut stored = message.clone();
    stored.append_child(delay_element(domain, stored_at));
    stored.to_stanza_xml()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn offline_copy_carries_the_delay_stamp() {
        let message = Element::new("message", ns::CLIENT)
            .with_attr("from", "romeo@example.net/orchard")
            .with_attr("to", "juliet@example.com")
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text("O blessed night"));
        assert_eq!(
            offline_stanza_xml(&message, "example.com", at(1_031_699_305)),
            "<message from='romeo@example.net/orchard' to='juliet@example.com' type='chat'><body>O blessed night</body><delay xmlns='urn:xmpp:delay' from='example.com' stamp='2002-09-10T23:08:25Z'/></message>"
        );
    }
}
