//! XEP-0203: Delayed Delivery, version 2.0: `<delay/>` with the `stamp` at
//! which a stanza was first sent (an XEP-0082 DateTime in UTC), the `from` of
//! the entity that delayed it and an optional reason (section 3).

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

#[cfg(test)]
mod tests {
    use super::*;
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
