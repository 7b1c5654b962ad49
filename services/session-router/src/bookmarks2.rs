//! Bookmarks 2, XEP-0402 version 1.1, section 5 "Compatibility": the
//! room bookmarks of an account are one set, whether a client keeps them as
//! XEP-0402 items (one per room in the `urn:xmpp:bookmarks:1` PEP node, the
//! item id the room JID) or as the single XEP-0048 `<storage
//! xmlns='storage:bookmarks'/>`, in private XML storage (XEP-0049, announced
//! by `urn:xmpp:bookmarks:1#compat`) or in the `storage:bookmarks` PEP node
//! (XEP-0223, `urn:xmpp:bookmarks:1#compat-pep`; those two are kept in step
//! by XEP-0411, `bookmarks.rs`).
//!
//! - **Publishing via XEP-0402** (section 5.3.1): after a client publishes
//!   or retracts a room item, the server collates all items into one
//!   `storage:bookmarks` element, each `<conference/>` with the item id as
//!   its `jid` (and the `<url/>` bookmarks of the old storage kept, which
//!   XEP-0402 does not store), and writes it to private XML and to the
//!   `storage:bookmarks` PEP node (notifying that node's subscribers).
//! - **Publishing via XEP-0048** (section 5.3.2): after a client writes a
//!   whole storage (private XML or the PEP node), the server compares it
//!   with the room items and publishes the new or changed rooms and retracts
//!   the removed ones, each with its notification; unchanged items get none
//!   ("SHOULD NOT send notifications for unchanged items"). An item's
//!   `<extensions/>`, which XEP-0048 has no place for, is kept.
//! - **Before the first XEP-0402 read**: when the owner reads the node and
//!   it does not exist yet, bookmarks kept only in the XEP-0048 form are
//!   converted first.
//!
//! Both XEP-0402 writes use the node configuration of XEP-0402 section
//! 3.2 (whitelist access, `max` items, `send_last_published_item` never);
//! a node someone made readable by others is not written (`not_private`),
//! and then the compatibility features are not announced on the account.
//! Outcomes: `starling_router_conversions_total{conversion="bookmarks2"}`.

use std::collections::HashMap;

use starling_api::{
    AccessModel, ApiResult, MaxItems, PepConfigPatch, PepNode, PepNodeConfig, SendLastPublished,
};
use starling_jid::BareJid;
use starling_xmpp::{ns, Element};

use crate::bookmarks;
use crate::handlers::documents;
use crate::pep::{retract_event, stored_payload};
use crate::router::SessionRouter;

/// The XEP-0402 node, and the namespace of its `<conference/>` payloads.
pub(crate) const NODE: &str = "urn:xmpp:bookmarks:1";
/// Section 5: the XEP-0049 (private XML) and XEP-0402 bookmarks are one.
pub(crate) const COMPAT_FEATURE: &str = "urn:xmpp:bookmarks:1#compat";
/// Section 5: the XEP-0223 (`storage:bookmarks` PEP node) and XEP-0402 bookmarks are one.
pub(crate) const COMPAT_PEP_FEATURE: &str = "urn:xmpp:bookmarks:1#compat-pep";

const TO_LEGACY: &str = "to_legacy";
const FROM_LEGACY: &str = "from_legacy";

/// The configuration XEP-0402 section 3.2 asks clients to publish with.
fn node_config() -> PepNodeConfig {
    PepNodeConfig {
        access_model: AccessModel::Whitelist,
        max_items: MaxItems::Max,
        persist_items: true,
        send_last_published_item: SendLastPublished::Never,
        ..PepNodeConfig::default()
    }
}

/// The precondition of a server-side publish: the node is the owner's alone.
fn private_node() -> PepConfigPatch {
    PepConfigPatch {
        access_model: Some(AccessModel::Whitelist),
        ..PepConfigPatch::default()
    }
}

/// XEP-0048 section 3.2 / XEP-0402 section 2: `autojoin` is an xs:boolean.
fn boolean(value: &str) -> Option<&'static str> {
    match value {
        "true" | "1" => Some("true"),
        "false" | "0" => Some("false"),
        _ => None,
    }
}

/// The name, autojoin, nick and password of a `<conference/>` of either
/// namespace, copied onto `target`.
fn copy_room(source: &Element, source_namespace: &str, mut target: Element) -> Element {
    if let Some(name) = source.attr("name") {
        target.set_attr("name", name);
    }
    if let Some(autojoin) = source.attr("autojoin").and_then(boolean) {
        target.set_attr("autojoin", autojoin);
    }
    let target_namespace = target.namespace().to_string();
    for child_name in ["nick", "password"] {
        if let Some(child) = source.get_child(child_name, source_namespace) {
            target
                .append_child(Element::new(child_name, &target_namespace).with_text(child.text()));
        }
    }
    target
}

/// Section 5.3.1: the XEP-0402 items (room JID, `<conference/>`) collated
/// into one XEP-0048 storage, with the `<url/>` bookmarks of `previous`.
pub(crate) fn legacy_storage(rooms: &[(String, Element)], previous: Option<&Element>) -> Element {
    let mut storage = Element::new("storage", bookmarks::NODE);
    for (jid, conference) in rooms {
        let legacy = Element::new("conference", bookmarks::NODE).with_attr("jid", jid.clone());
        storage.append_child(copy_room(conference, NODE, legacy));
    }
    if let Some(previous) = previous {
        for url in previous
            .children()
            .filter(|child| child.is("url", bookmarks::NODE))
        {
            storage.append_child(url.clone());
        }
    }
    storage
}

/// Section 5.3.2: the rooms of a XEP-0048 storage as XEP-0402 items, in
/// order (a room named twice: the last); `existing` items keep their
/// `<extensions/>`. Conferences without a valid bare room JID are skipped.
pub(crate) fn room_items(
    storage: &Element,
    existing: &HashMap<String, Element>,
) -> Vec<(String, Element)> {
    let mut rooms: Vec<(String, Element)> = Vec::new();
    for conference in storage
        .children()
        .filter(|child| child.is("conference", bookmarks::NODE))
    {
        let Some(jid) = conference
            .attr("jid")
            .and_then(|jid| jid.parse::<BareJid>().ok())
            .map(|jid| jid.to_string())
        else {
            continue;
        };
        let mut item = copy_room(
            conference,
            bookmarks::NODE,
            Element::new("conference", NODE),
        );
        if let Some(extensions) = existing
            .get(&jid)
            .and_then(|previous| previous.get_child("extensions", NODE))
        {
            item.append_child(extensions.clone());
        }
        rooms.retain(|(known, _)| *known != jid);
        rooms.push((jid, item));
    }
    rooms
}

impl SessionRouter {
    /// After a client published or retracted an item of the XEP-0402 node:
    /// the XEP-0048 copies follow (section 5.3.1).
    pub(crate) async fn bookmarks2_changed(&self, owner: &BareJid, publisher: &str) {
        let outcome = self.write_legacy_bookmarks(owner, publisher).await;
        self.count_bookmarks2(owner, TO_LEGACY, outcome);
    }

    async fn write_legacy_bookmarks(
        &self,
        owner: &BareJid,
        publisher: &str,
    ) -> ApiResult<&'static str> {
        let rooms: Vec<(String, Element)> = self
            .storage
            .pep_items(owner, NODE, &[], None)
            .await?
            .iter()
            .rev()
            .filter_map(|item| {
                stored_payload(item)
                    .filter(|payload| payload.is("conference", NODE))
                    .map(|payload| (item.id.clone(), payload))
            })
            .collect();
        let key = bookmarks::private_key();
        let previous = documents::load(self, owner, &key).await?;
        let storage = legacy_storage(
            &rooms,
            previous
                .as_ref()
                .and_then(|query| query.get_child("storage", bookmarks::NODE)),
        );
        let query = Element::new("query", ns::PRIVATE).with_child(storage.clone());
        documents::store(self, owner, &key, &query).await?;
        let published = self
            .publish_on_behalf(
                owner,
                publisher,
                bookmarks::NODE,
                bookmarks::ITEM_ID,
                storage.to_xml(),
                private_node(),
            )
            .await?;
        Ok(if published {
            "converted"
        } else {
            "not_private"
        })
    }

    /// After a client wrote a whole XEP-0048 storage (to private XML or to
    /// the `storage:bookmarks` PEP node): the XEP-0402 items follow
    /// (section 5.3.2), changed ones only.
    pub(crate) async fn legacy_bookmarks_changed(
        &self,
        owner: &BareJid,
        publisher: &str,
        storage: &Element,
    ) {
        let outcome = self.write_room_items(owner, publisher, storage).await;
        self.count_bookmarks2(owner, FROM_LEGACY, outcome);
    }

    async fn write_room_items(
        &self,
        owner: &BareJid,
        publisher: &str,
        storage: &Element,
    ) -> ApiResult<&'static str> {
        let node = match self.storage.pep_node(owner, NODE).await? {
            Some(node) => node,
            None => {
                let node = PepNode {
                    name: NODE.to_string(),
                    config: node_config(),
                };
                self.storage
                    .create_pep_node(owner, &node, self.config.pep.limits())
                    .await?;
                node
            }
        };
        if node.config.access_model != AccessModel::Whitelist {
            return Ok("not_private");
        }
        let existing: HashMap<String, Element> = self
            .storage
            .pep_items(owner, NODE, &[], None)
            .await?
            .iter()
            .filter_map(|item| stored_payload(item).map(|payload| (item.id.clone(), payload)))
            .collect();
        let rooms = room_items(storage, &existing);
        let mut changed = false;
        for (jid, conference) in &rooms {
            let payload_xml = conference.to_xml();
            if existing
                .get(jid)
                .is_some_and(|previous| previous.to_xml() == payload_xml)
            {
                continue;
            }
            changed = true;
            if !self
                .publish_on_behalf(owner, publisher, NODE, jid, payload_xml, private_node())
                .await?
            {
                return Ok("not_private");
            }
        }
        for jid in existing.keys() {
            if rooms.iter().any(|(room, _)| room == jid) {
                continue;
            }
            changed = true;
            if self.storage.retract_pep_item(owner, NODE, jid).await? {
                // XEP-0402 section 3.4: retractions are notified.
                self.notify_pep(owner, &node, retract_event(NODE, jid))
                    .await;
            }
        }
        Ok(if changed { "converted" } else { "unchanged" })
    }

    /// Before the owner reads the XEP-0402 node: when it does not exist,
    /// the XEP-0048 bookmarks (private XML, the copy XEP-0411 keeps equal
    /// to the PEP one) become its items first.
    pub(crate) async fn bookmarks2_before_read(&self, owner: &BareJid, publisher: &str) {
        match self.storage.pep_node(owner, NODE).await {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(owner = %owner, %error, "bookmarks node lookup failed");
                return;
            }
        }
        match documents::load(self, owner, &bookmarks::private_key()).await {
            Ok(Some(query)) => {
                if let Some(storage) = query.get_child("storage", bookmarks::NODE) {
                    self.legacy_bookmarks_changed(owner, publisher, storage)
                        .await;
                }
            }
            Ok(None) => {}
            Err(error) => self.count_bookmarks2(owner, FROM_LEGACY, Err(error)),
        }
    }

    /// The compatibility features of section 5 that hold for `owner`: both,
    /// unless a node the conversion writes was made readable by others
    /// (the conversion then leaves it alone); `#compat-pep` also needs the
    /// `storage:bookmarks` PEP node to be private.
    pub(crate) async fn bookmarks2_features(
        &self,
        owner: &BareJid,
    ) -> ApiResult<Vec<&'static str>> {
        let private = |node: Option<PepNode>| {
            node.is_none_or(|node| node.config.access_model == AccessModel::Whitelist)
        };
        if !private(self.storage.pep_node(owner, NODE).await?) {
            return Ok(Vec::new());
        }
        let mut features = vec![COMPAT_FEATURE];
        if private(self.storage.pep_node(owner, bookmarks::NODE).await?) {
            features.push(COMPAT_PEP_FEATURE);
        }
        Ok(features)
    }

    fn count_bookmarks2(&self, owner: &BareJid, direction: &str, outcome: ApiResult<&'static str>) {
        self.count_bookmark_conversion("bookmarks2", owner, direction, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::{parse_element, Limits};

    fn element(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Limits::default()).expect("test XML parses")
    }

    #[test]
    fn room_items_collate_into_one_legacy_storage_keeping_its_urls() {
        let rooms = vec![
            (
                "theplay@conference.shakespeare.lit".to_string(),
                element("<conference xmlns='urn:xmpp:bookmarks:1' name='The Play&apos;s the Thing' autojoin='1'><nick>JC</nick><extensions><state xmlns='http://myclient.example/bookmark/state' minimized='true'/></extensions></conference>"),
            ),
            (
                "orchard@conference.shakespeare.lit".to_string(),
                element("<conference xmlns='urn:xmpp:bookmarks:1'/>"),
            ),
        ];
        let previous = element("<storage xmlns='storage:bookmarks'><conference jid='old@conference.shakespeare.lit'/><url name='Complete Works' url='http://the-tech.mit.edu/Shakespeare/'/></storage>");
        assert_eq!(
            legacy_storage(&rooms, Some(&previous)).to_xml(),
            "<storage xmlns='storage:bookmarks'><conference jid='theplay@conference.shakespeare.lit' name='The Play&apos;s the Thing' autojoin='true'><nick>JC</nick></conference><conference jid='orchard@conference.shakespeare.lit'/><url name='Complete Works' url='http://the-tech.mit.edu/Shakespeare/'/></storage>"
        );
    }

    #[test]
    fn a_legacy_storage_becomes_one_item_per_room() {
        let storage = element("<storage xmlns='storage:bookmarks'>\
            <conference name='Council of Oberon' autojoin='true' jid='council@conference.underhill.org'><nick>Puck</nick><password>titania</password></conference>\
            <conference jid='not a jid@@'/>\
            <conference jid='garden@conference.underhill.org' autojoin='maybe'/>\
            <url name='x' url='http://example.org/'/></storage>");
        let mut existing = HashMap::new();
        existing.insert(
            "council@conference.underhill.org".to_string(),
            element("<conference xmlns='urn:xmpp:bookmarks:1'><extensions><x xmlns='urn:example'/></extensions></conference>"),
        );
        let items = room_items(&storage, &existing);
        let xml: Vec<(String, String)> = items
            .iter()
            .map(|(jid, conference)| (jid.clone(), conference.to_xml()))
            .collect();
        assert_eq!(
            xml,
            vec![
                (
                    "council@conference.underhill.org".to_string(),
                    "<conference xmlns='urn:xmpp:bookmarks:1' name='Council of Oberon' autojoin='true'><nick>Puck</nick><password>titania</password><extensions><x xmlns='urn:example'/></extensions></conference>".to_string()
                ),
                (
                    "garden@conference.underhill.org".to_string(),
                    "<conference xmlns='urn:xmpp:bookmarks:1'/>".to_string()
                ),
            ]
        );
        // And back: the same storage, but for what XEP-0402 does not keep.
        let back = legacy_storage(&items, None).to_xml();
        assert_eq!(back, "<storage xmlns='storage:bookmarks'><conference jid='council@conference.underhill.org' name='Council of Oberon' autojoin='true'><nick>Puck</nick><password>titania</password></conference><conference jid='garden@conference.underhill.org'/></storage>");
    }
}
