//! Offline message storage (XEP-0160): a message kept for an account with no
//! available resource carries a delay stamp (XEP-0203) naming the server and
//! the time it was stored, in the UTC date-time profile of XEP-0082
//! (RFC 3339 with `Z`).

use std::time::{SystemTime, UNIX_EPOCH};

use starling_api::FeatureSpec;
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

/// `YYYY-MM-DDThh:mm:ssZ` for an instant (XEP-0082 DateTime profile, seconds
/// precision). Instants before 1970 are clamped to the epoch.
pub(crate) fn rfc3339_utc(instant: SystemTime) -> String {
    let seconds = instant
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3_600,
        (second_of_day % 3_600) / 60,
        second_of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact for every day count).
fn civil_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    let shifted = days_since_epoch + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339_utc(at(0)), "1970-01-01T00:00:00Z");
        // The stamp of the XEP-0203 examples.
        assert_eq!(rfc3339_utc(at(1_031_699_305)), "2002-09-10T23:08:25Z");
        assert_eq!(rfc3339_utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(at(1_735_689_599)), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(at(4_107_542_400)), "2100-03-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
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
