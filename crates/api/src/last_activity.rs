//! Last activity (XEP-0012 section 3): when an account's last available
//! resource went away, and the status it left with. The presence service
//! records it as one of the account's documents
//! ([`crate::AccountDataStore`], key [`KEY`]) when the account becomes
//! unavailable; the router answers `jabber:iq:last` queries from it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_xmpp::{ns, Element};

/// The account document holding the last activity.
pub const KEY: &str = "last-activity";

/// The stored form: `<query xmlns='jabber:iq:last' stamp='UNIX SECONDS'>status</query>`.
pub fn document(at: SystemTime, status: &str) -> Element {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let query = Element::new("query", ns::LAST).with_attr("stamp", seconds.to_string());
    if status.is_empty() {
        query
    } else {
        query.with_text(status)
    }
}

/// When the account went away and its status then, from the stored form.
pub fn parse(document: &Element) -> Option<(SystemTime, String)> {
    if !document.is("query", ns::LAST) {
        return None;
    }
    let seconds: u64 = document.attr("stamp")?.parse().ok()?;
    Some((UNIX_EPOCH + Duration::from_secs(seconds), document.text()))
}

/// The `jabber:iq:last` answer: `seconds` since `since` (0 when in the future).
pub fn answer(now: SystemTime, since: SystemTime, status: &str) -> Element {
    let seconds = now.duration_since(since).unwrap_or_default().as_secs();
    let query = Element::new("query", ns::LAST).with_attr("seconds", seconds.to_string());
    if status.is_empty() {
        query
    } else {
        query.with_text(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_round_trips_and_answers_in_seconds() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let stored = document(at, "Heading Home");
        assert_eq!(
            stored.to_xml(),
            "<query xmlns='jabber:iq:last' stamp='1000000'>Heading Home</query>"
        );
        assert_eq!(parse(&stored), Some((at, "Heading Home".to_string())));
        assert_eq!(
            answer(at + Duration::from_secs(903), at, "Heading Home").to_xml(),
            "<query xmlns='jabber:iq:last' seconds='903'>Heading Home</query>"
        );
        assert_eq!(
            answer(at, at + Duration::from_secs(5), "").to_xml(),
            "<query xmlns='jabber:iq:last' seconds='0'/>"
        );
        assert_eq!(parse(&Element::new("query", ns::LAST)), None);
    }
}
