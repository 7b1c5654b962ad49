//! XEP-0203: Delayed Delivery, version 2.0: `<delay/>` with the `stamp` at
//! which a stanza was first sent (an XEP-0082 DateTime in UTC), the `from` of
//! the entity that delayed it and an optional reason (section 3).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, Payload, PayloadError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delay {
    /// XEP-0082 DateTime, e.g. `2002-09-10T23:08:25Z` or with fractions.
    pub stamp: String,
    pub from: Option<String>,
    pub reason: Option<String>,
}

impl Payload for Delay {
    const NAME: &'static str = "delay";
    const NAMESPACE: &'static str = ns::DELAY;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let Some(stamp) = element.attr("stamp") else {
            return Err(PayloadError("a delay needs a stamp"));
        };
        if !is_datetime(stamp) {
            return Err(PayloadError("the stamp is not an XEP-0082 DateTime"));
        }
        let reason = element.text();
        Ok(Delay {
            stamp: stamp.to_string(),
            from: element.attr("from").map(str::to_string),
            reason: (!reason.is_empty()).then_some(reason),
        })
    }

    fn to_element(&self) -> Element {
        let mut delay = Element::new(Self::NAME, Self::NAMESPACE);
        if let Some(from) = &self.from {
            delay.set_attr("from", from.clone());
        }
        delay.set_attr("stamp", self.stamp.clone());
        if let Some(reason) = &self.reason {
            delay.append_text(reason.clone());
        }
        delay
    }
}

/// XEP-0082 section 3.2 DateTime: `CCYY-MM-DDThh:mm:ss[.sss]TZD`, where TZD
/// is `Z` or `(+|-)hh:mm`.
fn is_datetime(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let at = |index: usize, byte: u8| bytes.get(index) == Some(&byte);
    if !(digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 {
            return false;
        }
        rest = &fraction[length..];
    }
    match rest.as_bytes() {
        b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|byte| byte.is_ascii_digit())
        }
        _ => false,
    }
}

/// `YYYY-MM-DDThh:mm:ssZ` for an instant (XEP-0082 DateTime profile, seconds
/// precision). Instants before 1970 are clamped to the epoch.
pub fn rfc3339_utc(instant: SystemTime) -> String {
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

    use crate::xep::testing::{rejected, round_trip};

    #[test]
    fn round_trips_with_from_and_reason() {
        let delay = round_trip::<Delay>(
            "<delay xmlns='urn:xmpp:delay' from='capulet.com' stamp='2002-09-10T23:08:25Z'>Offline Storage</delay>",
        );
        assert_eq!(delay.reason.as_deref(), Some("Offline Storage"));
    }

    #[test]
    fn round_trips_with_fractions_and_an_offset() {
        round_trip::<Delay>(
            "<delay xmlns='urn:xmpp:delay' stamp='2002-09-10T23:08:25.123456+02:00'/>",
        );
    }

    #[test]
    fn a_missing_stamp_is_rejected() {
        assert_eq!(
            rejected::<Delay>("<delay xmlns='urn:xmpp:delay'/>"),
            "a delay needs a stamp"
        );
    }

    #[test]
    fn a_stamp_that_is_not_a_datetime_is_rejected() {
        for stamp in [
            "2002-09-10",
            "2002-09-10T23:08:25",
            "2002-09-10 23:08:25Z",
            "2002-09-10T23:08:25.Z",
            "2002-09-10T23:08:25+0200",
            "yesterday",
        ] {
            assert_eq!(
                rejected::<Delay>(&format!("<delay xmlns='urn:xmpp:delay' stamp='{stamp}'/>")),
                "the stamp is not an XEP-0082 DateTime",
                "{stamp}"
            );
        }
    }
}
