//! XEP-0191: Blocking Command, version 1.1: the `<blocklist/>`, `<block/>`
//! and `<unblock/>` payloads (sections 3.2 to 3.5) and the
//! `<blocked xmlns='urn:xmpp:blocking:errors'/>` condition of an outbound
//! stanza to a blocked entity (section 3.3); with the XEP-0377 (Blocking
//! Command Reports, version 0.4.1) `<report/>` an item may carry (section
//! "Submitting Reports as Part of Blocking").
//!
//! Item addresses are kept as the text the client sent: reading them as JIDs
//! (and answering `jid-malformed` for one that is not) is the server's step,
//! which also normalises them.

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, single_child_text, Payload, PayloadError};

/// The reasons XEP-0377 defines ("Payload").
pub const REPORT_SPAM: &str = "urn:xmpp:reporting:spam";
pub const REPORT_ABUSE: &str = "urn:xmpp:reporting:abuse";

/// `<report xmlns='urn:xmpp:reporting:1' reason='...'><text>...</text></report>`
/// (XEP-0377 "Payload"): a reason is required; the optional text is kept.
/// Stanza ids and processing opt-ins are accepted and not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub reason: String,
    pub text: Option<String>,
}

impl Payload for Report {
    const NAME: &'static str = "report";
    const NAMESPACE: &'static str = ns::REPORTING;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        // "Abuse reports MUST include a reason for the report".
        let reason = match element.attr("reason") {
            Some(reason) if !reason.trim().is_empty() => reason.to_string(),
            _ => return Err(PayloadError("a report needs a reason (XEP-0377)")),
        };
        let text = single_child_text(element, "text", ns::REPORTING, "one report text only")?
            .map(|text| text.trim().to_string());
        Ok(Report { reason, text })
    }

    fn to_element(&self) -> Element {
        let mut report =
            Element::new(Self::NAME, Self::NAMESPACE).with_attr("reason", self.reason.clone());
        if let Some(text) = &self.text {
            report.append_child(Element::new("text", ns::REPORTING).with_text(text.clone()));
        }
        report
    }
}

/// One `<item jid='...'/>` of a block, unblock or block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockItem {
    /// The address as sent (not yet read as a JID).
    pub jid: String,
    /// A XEP-0377 report (only in a `<block/>`).
    pub report: Option<Report>,
}

impl BlockItem {
    pub fn new(jid: impl Into<String>) -> Self {
        BlockItem {
            jid: jid.into(),
            report: None,
        }
    }

    fn read(element: &Element, reports: bool) -> Result<Self, PayloadError> {
        if !element.is("item", ns::BLOCKING) {
            return Err(PayloadError("only <item/> children are allowed (XEP-0191)"));
        }
        let Some(jid) = element.attr("jid") else {
            return Err(PayloadError("an item needs a jid attribute (XEP-0191)"));
        };
        let mut found = element.children().filter(|child| Report::is(child));
        let report = found.next().map(Report::from_element).transpose()?;
        if found.next().is_some() {
            return Err(PayloadError("one report per item (XEP-0377)"));
        }
        if report.is_some() && !reports {
            return Err(PayloadError(
                "a report goes in a <block/> item only (XEP-0377)",
            ));
        }
        Ok(BlockItem {
            jid: jid.to_string(),
            report,
        })
    }

    pub fn to_element(&self) -> Element {
        let mut item = Element::new("item", ns::BLOCKING).with_attr("jid", self.jid.clone());
        if let Some(report) = &self.report {
            item.append_child(report.to_element());
        }
        item
    }
}

fn read_items(element: &Element, reports: bool) -> Result<Vec<BlockItem>, PayloadError> {
    element
        .children()
        .map(|child| BlockItem::read(child, reports))
        .collect()
}

fn with_items(name: &str, items: &[BlockItem]) -> Element {
    let mut element = Element::new(name, ns::BLOCKING);
    for item in items {
        element.append_child(item.to_element());
    }
    element
}

/// `<blocklist/>`: empty in a get (section 3.2), the items in its result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blocklist {
    pub items: Vec<BlockItem>,
}

impl Payload for Blocklist {
    const NAME: &'static str = "blocklist";
    const NAMESPACE: &'static str = ns::BLOCKING;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        Ok(Blocklist {
            items: read_items(element, false)?,
        })
    }

    fn to_element(&self) -> Element {
        with_items(Self::NAME, &self.items)
    }
}

/// `<block/>` (section 3.3): at least one item, else `bad-request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub items: Vec<BlockItem>,
}

impl Payload for Block {
    const NAME: &'static str = "block";
    const NAMESPACE: &'static str = ns::BLOCKING;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let items = read_items(element, true)?;
        // Section 3.3: "If the <block/> element does not contain at least one
        // <item/> child element, the server MUST return a <bad-request/> error."
        if items.is_empty() {
            return Err(PayloadError("a block needs at least one item (XEP-0191)"));
        }
        Ok(Block { items })
    }

    fn to_element(&self) -> Element {
        with_items(Self::NAME, &self.items)
    }
}

/// `<unblock/>` (section 3.4); with no item it unblocks everyone (section 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unblock {
    pub items: Vec<BlockItem>,
}

impl Payload for Unblock {
    const NAME: &'static str = "unblock";
    const NAMESPACE: &'static str = ns::BLOCKING;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        Ok(Unblock {
            items: read_items(element, false)?,
        })
    }

    fn to_element(&self) -> Element {
        with_items(Self::NAME, &self.items)
    }
}

/// Add the `<blocked xmlns='urn:xmpp:blocking:errors'/>` application
/// condition to the `<error/>` of an error reply (section 3.3: an outbound
/// stanza to a blocked entity gets `not-acceptable` with it).
pub fn add_blocked_condition(error_reply: &mut Element) {
    if let Some(error) = error_reply
        .children_mut()
        .find(|child| child.name() == "error")
    {
        error.append_child(Element::new("blocked", ns::BLOCKING_ERRORS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{element, rejected, round_trip};

    #[test]
    fn blocklist_round_trips_empty_and_with_items() {
        assert_eq!(
            round_trip::<Blocklist>("<blocklist xmlns='urn:xmpp:blocking'/>"),
            Blocklist::default()
        );
        let list = round_trip::<Blocklist>(
            "<blocklist xmlns='urn:xmpp:blocking'><item jid='romeo@montague.net'/><item jid='iago@shakespeare.lit'/></blocklist>",
        );
        assert_eq!(list.items.len(), 2);
        assert_eq!(list.items[1].jid, "iago@shakespeare.lit");
    }

    #[test]
    fn block_round_trips_with_a_report() {
        let block = round_trip::<Block>(
            "<block xmlns='urn:xmpp:blocking'><item jid='romeo@example.net'><report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'><text>Never came trouble to my house like this.</text></report></item></block>",
        );
        assert_eq!(
            block.items[0].report,
            Some(Report {
                reason: REPORT_SPAM.into(),
                text: Some("Never came trouble to my house like this.".into()),
            })
        );
        let plain =
            round_trip::<Block>("<block xmlns='urn:xmpp:blocking'><item jid='a@b'/></block>");
        assert_eq!(plain.items, vec![BlockItem::new("a@b")]);
    }

    #[test]
    fn report_stanza_ids_and_opt_ins_are_accepted() {
        let block = Block::from_element(&element(
            "<block xmlns='urn:xmpp:blocking'><item jid='romeo@example.net'><report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:abuse'><stanza-id xmlns='urn:xmpp:sid:0' by='romeo@example.net' id='1'/><third-party/></report></item></block>",
        ))
        .expect("reads");
        assert_eq!(
            block.items[0].report.as_ref().map(|r| r.reason.as_str()),
            Some(REPORT_ABUSE)
        );
    }

    #[test]
    fn unblock_with_and_without_items() {
        assert_eq!(
            round_trip::<Unblock>("<unblock xmlns='urn:xmpp:blocking'/>"),
            Unblock::default()
        );
        let one = round_trip::<Unblock>(
            "<unblock xmlns='urn:xmpp:blocking'><item jid='romeo@montague.net'/></unblock>",
        );
        assert_eq!(one.items, vec![BlockItem::new("romeo@montague.net")]);
    }

    #[test]
    fn rejections() {
        assert_eq!(
            rejected::<Block>("<block xmlns='urn:xmpp:blocking'/>"),
            "a block needs at least one item (XEP-0191)"
        );
        assert_eq!(
            rejected::<Block>("<block xmlns='urn:xmpp:blocking'><item/></block>"),
            "an item needs a jid attribute (XEP-0191)"
        );
        assert_eq!(
            rejected::<Block>("<block xmlns='urn:xmpp:blocking'><thing jid='a@b'/></block>"),
            "only <item/> children are allowed (XEP-0191)"
        );
        assert_eq!(
            rejected::<Block>(
                "<block xmlns='urn:xmpp:blocking'><item jid='a@b'><report xmlns='urn:xmpp:reporting:1'/></item></block>"
            ),
            "a report needs a reason (XEP-0377)"
        );
        assert_eq!(
            rejected::<Unblock>(
                "<unblock xmlns='urn:xmpp:blocking'><item jid='a@b'><report xmlns='urn:xmpp:reporting:1' reason='x'/></item></unblock>"
            ),
            "a report goes in a <block/> item only (XEP-0377)"
        );
        assert_eq!(
            rejected::<Blocklist>("<blocklist xmlns='urn:xmpp:blocked'/>"),
            "unexpected payload element"
        );
    }

    #[test]
    fn blocked_condition_goes_inside_the_error() {
        let mut reply = element(
            "<message xmlns='jabber:client' type='error'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        );
        add_blocked_condition(&mut reply);
        assert_eq!(
            reply.to_xml(),
            "<message xmlns='jabber:client' type='error'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><blocked xmlns='urn:xmpp:blocking:errors'/></error></message>"
        );
    }
}
