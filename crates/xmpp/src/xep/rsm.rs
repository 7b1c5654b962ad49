//! XEP-0059: Result Set Management, version 1.0: the `<set/>` a request
//! carries to ask for one page (`<max/>`, `<after/>`, `<before/>`,
//! `<index/>`, section 2) and the `<set/>` of the answer (`<first/>`,
//! `<last/>`, `<count/>`, section 2.6).

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, single_child_text, Payload, PayloadError};

/// A page request (section 2): every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// `<max/>`: at most this many items; a number too large for 64 bits
    /// reads as `u64::MAX` (the server clamps it to its own bound anyway).
    pub max: Option<u64>,
    /// `<after>id</after>`: the page after the item with this id.
    pub after: Option<String>,
    /// `<before>id</before>`: the page before that item; `<before/>` (an
    /// empty string) is the last page (section 2.5).
    pub before: Option<String>,
    /// `<index/>` (section 2.4): a page by its position.
    pub index: Option<u64>,
}

fn read_number(text: &str, what: &'static str) -> Result<u64, PayloadError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(PayloadError(what));
    }
    // All digits: only the size can fail, and a huge number means "as many as you allow".
    Ok(text.parse().unwrap_or(u64::MAX))
}

impl Payload for PageRequest {
    const NAME: &'static str = "set";
    const NAMESPACE: &'static str = ns::RSM;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let max = single_child_text(element, "max", ns::RSM, "one <max/> only")?
            .map(|text| read_number(&text, "<max/> is not a non-negative integer"))
            .transpose()?;
        let index = single_child_text(element, "index", ns::RSM, "one <index/> only")?
            .map(|text| read_number(&text, "<index/> is not a non-negative integer"))
            .transpose()?;
        let after = single_child_text(element, "after", ns::RSM, "one <after/> only")?;
        if after.as_deref() == Some("") {
            // Section 2.2: <after/> names an item; only <before/> may be empty.
            return Err(PayloadError("<after/> needs the id of an item"));
        }
        let before = single_child_text(element, "before", ns::RSM, "one <before/> only")?;
        if after.is_some() && before.is_some() {
            return Err(PayloadError("<after/> and <before/> cannot be combined"));
        }
        Ok(PageRequest {
            max,
            after,
            before,
            index,
        })
    }

    fn to_element(&self) -> Element {
        let mut set = Element::new(Self::NAME, Self::NAMESPACE);
        if let Some(max) = self.max {
            set.append_child(Element::new("max", ns::RSM).with_text(max.to_string()));
        }
        if let Some(after) = &self.after {
            set.append_child(Element::new("after", ns::RSM).with_text(after.clone()));
        }
        if let Some(before) = &self.before {
            let mut element = Element::new("before", ns::RSM);
            if !before.is_empty() {
                element.append_text(before.clone());
            }
            set.append_child(element);
        }
        if let Some(index) = self.index {
            set.append_child(Element::new("index", ns::RSM).with_text(index.to_string()));
        }
        set
    }
}

/// The `<set/>` of an answer (section 2.6): the ids of the first and last
/// items returned (absent for an empty page) and, when known, how many
/// items the whole result set holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageResult {
    pub first: Option<String>,
    pub last: Option<String>,
    pub count: Option<u64>,
}

impl PageResult {
    pub fn to_element(&self) -> Element {
        let mut set = Element::new("set", ns::RSM);
        if let Some(first) = &self.first {
            set.append_child(Element::new("first", ns::RSM).with_text(first.clone()));
        }
        if let Some(last) = &self.last {
            set.append_child(Element::new("last", ns::RSM).with_text(last.clone()));
        }
        if let Some(count) = self.count {
            set.append_child(Element::new("count", ns::RSM).with_text(count.to_string()));
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{element, rejected, round_trip};

    #[test]
    fn round_trips_a_forward_page() {
        let page = round_trip::<PageRequest>(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>09af3</after></set>",
        );
        assert_eq!(page.max, Some(10));
        assert_eq!(page.after.as_deref(), Some("09af3"));
    }

    #[test]
    fn an_empty_before_asks_for_the_last_page() {
        let page = round_trip::<PageRequest>(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>5</max><before/></set>",
        );
        assert_eq!(page.before.as_deref(), Some(""));
    }

    #[test]
    fn a_huge_max_reads_as_the_largest_number() {
        let page = PageRequest::from_element(&element(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>99999999999999999999999999</max></set>",
        ))
        .unwrap();
        assert_eq!(page.max, Some(u64::MAX));
    }

    #[test]
    fn broken_pages_are_rejected() {
        assert_eq!(
            rejected::<PageRequest>(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set>"
            ),
            "<max/> is not a non-negative integer"
        );
        assert_eq!(
            rejected::<PageRequest>(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>ten</max></set>"
            ),
            "<max/> is not a non-negative integer"
        );
        assert_eq!(
            rejected::<PageRequest>(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>1</max><max>2</max></set>"
            ),
            "one <max/> only"
        );
        assert_eq!(
            rejected::<PageRequest>("<set xmlns='http://jabber.org/protocol/rsm'><after/></set>"),
            "<after/> needs the id of an item"
        );
        assert_eq!(
            rejected::<PageRequest>(
                "<set xmlns='http://jabber.org/protocol/rsm'><after>a</after><before>b</before></set>"
            ),
            "<after/> and <before/> cannot be combined"
        );
    }

    #[test]
    fn writes_the_answer() {
        let result = PageResult {
            first: Some("1".into()),
            last: Some("9".into()),
            count: Some(9),
        };
        assert_eq!(
            result.to_element().to_xml(),
            "<set xmlns='http://jabber.org/protocol/rsm'><first>1</first><last>9</last><count>9</count></set>"
        );
        assert_eq!(
            PageResult::default().to_element().to_xml(),
            "<set xmlns='http://jabber.org/protocol/rsm'/>"
        );
    }
}
