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

/// Read an XEP-0082 section 3.2 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`)
/// as microseconds since the Unix epoch (negative before it); digits past
/// the microsecond are dropped. `None` for anything else, or for a date or
/// time out of range (month 13, 25:00, February 30th, a year before 1 or an
/// offset of 24 hours or more).
pub fn parse_datetime_micros(text: &str) -> Option<i64> {
    if !is_datetime(text) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> i64 {
        text[range]
            .bytes()
            .fold(0, |value, digit| value * 10 + i64::from(digit - b'0'))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let (hour, minute, second) = (number(11..13), number(14..16), number(17..19));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    // XEP-0082 allows no leap second beyond :59 in practice; 60 is refused.
    if year == 0 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        for (position, digit) in fraction.bytes().take(length).enumerate() {
            if position < 6 {
                micros += i64::from(digit - b'0') * 10i64.pow(5 - position as u32);
            }
        }
        rest = &fraction[length..];
    }
    let offset_seconds = match rest.as_bytes() {
        [sign @ (b'+' | b'-'), ..] => {
            let hours = number(text.len() - 5..text.len() - 3);
            let minutes = number(text.len() - 2..text.len());
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => 0,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(1_000_000)?.checked_add(micros)
}

/// The day count since 1970-01-01 of a proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`, the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    #[test]
    fn parses_datetimes_to_microseconds() {
        assert_eq!(parse_datetime_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime_micros("2002-09-10T23:08:25Z"),
            Some(1_031_699_305_000_000)
        );
        assert_eq!(
            parse_datetime_micros("2002-09-10T23:08:25.123456789Z"),
            Some(1_031_699_305_123_456)
        );
        assert_eq!(
            parse_datetime_micros("2002-09-10T23:08:25.5Z"),
            Some(1_031_699_305_500_000)
        );
        // The same instant with an offset.
        assert_eq!(
            parse_datetime_micros("2002-09-11T01:08:25+02:00"),
            Some(1_031_699_305_000_000)
        );
        assert_eq!(
            parse_datetime_micros("2002-09-10T20:38:25-02:30"),
            Some(1_031_699_305_000_000)
        );
        assert_eq!(
            parse_datetime_micros("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000)
        );
        assert_eq!(
            parse_datetime_micros("1969-12-31T23:59:59Z"),
            Some(-1_000_000)
        );
        for seconds in [0u64, 951_782_400, 1_735_689_599, 4_107_542_400] {
            assert_eq!(
                parse_datetime_micros(&rfc3339_utc(at(seconds))),
                Some(seconds as i64 * 1_000_000)
            );
        }
    }

    #[test]
    fn refuses_datetimes_out_of_range() {
        for text in [
            "2002-13-10T23:08:25Z",
            "2002-00-10T23:08:25Z",
            "2001-02-29T00:00:00Z",
            "2002-09-31T00:00:00Z",
            "2002-09-10T24:00:00Z",
            "2002-09-10T23:60:00Z",
            "2002-09-10T23:08:60Z",
            "0000-01-01T00:00:00Z",
            "2002-09-10T23:08:25+24:00",
            "2002-09-10",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_datetime_micros(text), None, "{text}");
        }
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
