//! Roster management, RFC 6121 section 2: roster get with versioning (2.2,
//! 2.6), roster set (2.3, 2.4), roster remove (2.5) and roster pushes to
//! every interested resource (2.1.6). The feature is declared with the
//! presence contract ([`starling_api::presence::ROSTER_FEATURE`]): the router
//! forwards its IQs here and the connection-manager offers its stream feature.

use starling_api::{ApiResult, RosterItem, SessionAddr};
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{ns, stanza, Element};

use crate::error::PresenceError;
use crate::subscription::{SubscriptionStanza, SubscriptionState};
use crate::Call;

/// The longest roster item name accepted (RFC 6121 section 2.3.3: a
/// server-configured limit, `not-acceptable` beyond it).
pub const MAX_ROSTER_NAME_BYTES: usize = 1023;
/// The longest group name accepted (RFC 6121 section 2.3.3).
pub const MAX_ROSTER_GROUP_BYTES: usize = 1023;
/// The most groups one item may be in (a server limit against oversized items).
pub const MAX_ROSTER_GROUPS_PER_ITEM: usize = 128;

/// The `<item/>` of a roster result or push (RFC 6121 section 2.1.2): `jid`,
/// `name`, `subscription`, `ask='subscribe'` while Pending Out, `<group/>` children.
pub fn roster_item_element(item: &RosterItem) -> Element {
    let mut element = Element::new("item", ns::ROSTER).with_attr("jid", item.jid.to_string());
    if let Some(name) = &item.name {
        element.set_attr("name", name.clone());
    }
    element.set_attr("subscription", item.subscription.as_str());
    if item.pending_out && !item.subscription.has_to() {
        element.set_attr("ask", "subscribe");
    }
    for group in &item.groups {
        element.append_child(Element::new("group", ns::ROSTER).with_text(group.clone()));
    }
    element
}

/// The `<item/>` of a push announcing a removal (RFC 6121 section 2.5.2).
pub fn removed_item_element(jid: &BareJid) -> Element {
    Element::new("item", ns::ROSTER)
        .with_attr("jid", jid.to_string())
        .with_attr("subscription", "remove")
}

/// A roster push (RFC 6121 section 2.1.6): one item, the new roster version.
/// `to` is set per recipient at delivery.
pub fn roster_push(version: u64, item: Element) -> Element {
    let id = format!("push-{}", uuid::Uuid::new_v4().simple());
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_child(
            Element::new("query", ns::ROSTER)
                .with_attr("ver", version.to_string())
                .with_child(item),
        )
}

/// What a valid roster set asks for (RFC 6121 sections 2.3, 2.4 and 2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterSetRequest {
    /// Add or update an item. A `subscription` attribute other than `remove`
    /// is ignored (RFC 6121 section 2.1.2.5), as are `ask` and `approved`.
    Update {
        jid: BareJid,
        name: Option<String>,
        groups: Vec<String>,
    },
    /// `subscription='remove'` (RFC 6121 section 2.5).
    Remove { jid: BareJid },
}

/// Check a roster set's `<query/>` against RFC 6121 section 2.3.3.
pub fn parse_roster_set(query: &Element) -> Result<RosterSetRequest, PresenceError> {
    let mut items = query
        .children()
        .filter(|child| child.is("item", ns::ROSTER));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(PresenceError::BadRequest(
            "a roster set carries exactly one item".into(),
        ));
    };
    let Some(jid_text) = item.attr("jid") else {
        return Err(PresenceError::BadRequest(
            "the roster item has no jid".into(),
        ));
    };
    let jid = match jid_text.parse::<Jid>() {
        Ok(Jid::Bare(bare)) => bare,
        Ok(Jid::Full(_)) => {
            return Err(PresenceError::JidMalformed(
                "a roster item is a bare JID".into(),
            ));
        }
        Err(error) => return Err(PresenceError::JidMalformed(error.to_string())),
    };
    if item.attr("subscription") == Some("remove") {
        return Ok(RosterSetRequest::Remove { jid });
    }
    let name = match item.attr("name") {
        Some(name) if name.len() > MAX_ROSTER_NAME_BYTES => {
            return Err(PresenceError::NotAcceptable(
                "the item name is too long".into(),
            ));
        }
        Some("") | None => None,
        Some(name) => Some(name.to_string()),
    };
    let mut groups: Vec<String> = Vec::new();
    for group in item
        .children()
        .filter(|child| child.is("group", ns::ROSTER))
    {
        let group = group.text();
        if group.is_empty() {
            return Err(PresenceError::NotAcceptable("a group name is empty".into()));
        }
        if group.len() > MAX_ROSTER_GROUP_BYTES {
            return Err(PresenceError::NotAcceptable(
                "a group name is too long".into(),
            ));
        }
        if groups.contains(&group) {
            return Err(PresenceError::BadRequest(
                "the item lists a group twice".into(),
            ));
        }
        groups.push(group);
    }
    if groups.len() > MAX_ROSTER_GROUPS_PER_ITEM {
        return Err(PresenceError::NotAcceptable(
            "the item is in too many groups".into(),
        ));
    }
    Ok(RosterSetRequest::Update { jid, name, groups })
}

impl Call<'_> {
    /// A `jabber:iq:roster` IQ from a local session. Every request is answered
    /// (result or error) to the session here.
    pub(crate) async fn handle_roster_iq(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        iq: Element,
    ) -> ApiResult<()> {
        let iq_type = stanza::stanza_type(&iq).to_string();
        if iq_type != "get" && iq_type != "set" {
            // Answers to our roster pushes (RFC 6121 section 2.1.6): nothing to do.
            tracing::trace!(jid = %from, iq_type = %iq_type, "roster iq answer ignored");
            return Ok(());
        }
        let outcome = self.process_roster_request(from, addr, &iq, &iq_type).await;
        match outcome {
            Ok(Some(reply)) => self.reply_to_session(from, addr, reply).await,
            Ok(None) => Ok(()),
            Err(error) => {
                if let PresenceError::Api(api_error) = &error {
                    tracing::warn!(jid = %from, error = %api_error, "roster request failed");
                }
                match stanza::error_reply(&iq, &error.to_stanza_error()) {
                    Some(reply) => self.reply_to_session(from, addr, reply).await,
                    None => Ok(()),
                }
            }
        }
    }

    async fn process_roster_request(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        iq: &Element,
        iq_type: &str,
    ) -> Result<Option<Element>, PresenceError> {
        let user = from.to_bare();
        // RFC 6121 section 2.1.3/2.1.5: a roster is managed only by its owner; a
        // get or set addressed to another entity is refused.
        if let Some(to) = iq.attr("to") {
            match to.parse::<Jid>() {
                Ok(Jid::Bare(bare)) if bare == user => {}
                _ => return Err(PresenceError::Forbidden("another user's roster".into())),
            }
        }
        let Some(query) = stanza::iq_payload(iq).filter(|payload| payload.is("query", ns::ROSTER))
        else {
            return Err(PresenceError::BadRequest(
                "a roster iq carries one query".into(),
            ));
        };
        if iq_type == "get" {
            return self.roster_get(from, addr, iq, query).await.map(Some);
        }
        match parse_roster_set(query)? {
            RosterSetRequest::Update { jid, name, groups } => {
                self.roster_set(&user, jid, name, groups).await?;
                Ok(Some(stanza::iq_result(iq)))
            }
            RosterSetRequest::Remove { jid } => {
                self.roster_remove(from, addr, &jid, iq).await?;
                // The result was sent before the subscription stanzas went out.
                Ok(None)
            }
        }
    }

    /// RFC 6121 sections 2.2 and 2.6: the roster, or an empty result when the
    /// client's cached version is current (changes then arrive as pushes).
    async fn roster_get(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        iq: &Element,
        query: &Element,
    ) -> Result<Element, PresenceError> {
        // Section 2.1.6: requesting the roster makes the resource "interested"
        // in pushes; mark it before reading so that no change falls between.
        self.registry.set_interested(from, addr).await?;
        let (version, items) = self.storage.roster(from.bare()).await?;
        let mut result = stanza::iq_result(iq);
        let version_text = version.to_string();
        let client_version = query.attr("ver");
        if client_version == Some(version_text.as_str()) {
            return Ok(result);
        }
        let mut roster = Element::new("query", ns::ROSTER);
        if client_version.is_some() {
            roster.set_attr("ver", version_text);
        }
        // Placeholders that only remember a pending request are never shown (section 3.1.3).
        for item in items.iter().filter(|item| item.in_roster) {
            roster.append_child(roster_item_element(item));
        }
        result.append_child(roster);
        Ok(result)
    }

    /// RFC 6121 sections 2.3 and 2.4: add or update an item; the subscription
    /// state is kept as it is.
    async fn roster_set(
        &self,
        user: &BareJid,
        jid: BareJid,
        name: Option<String>,
        groups: Vec<String>,
    ) -> Result<(), PresenceError> {
        let _guard = self.user_locks.lock(user).await;
        let mut item = self
            .storage
            .roster_item(user, &jid)
            .await?
            .unwrap_or_else(|| RosterItem::new(jid.clone()));
        item.name = name;
        item.groups = groups;
        item.in_roster = true;
        let version = self.storage.put_roster_item(user, &item).await?;
        self.push_roster_change(user, version, roster_item_element(&item))
            .await?;
        Ok(())
    }

    /// RFC 6121 section 2.5: remove an item; cancel the subscriptions it
    /// carried with `unsubscribe` and `unsubscribed` to the contact (2.5.2).
    async fn roster_remove(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        contact: &BareJid,
        iq: &Element,
    ) -> Result<(), PresenceError> {
        let user = from.bare();
        let state = {
            let _guard = self.user_locks.lock(user).await;
            let existing = self.storage.roster_item(user, contact).await?;
            let Some(existing) = existing.filter(|item| item.in_roster) else {
                // Section 2.5.3: removing an item that is not in the roster.
                return Err(PresenceError::ItemNotFound(contact.to_string()));
            };
            let Some(version) = self.storage.remove_roster_item(user, contact).await? else {
                return Err(PresenceError::ItemNotFound(contact.to_string()));
            };
            self.push_roster_change(user, version, removed_item_element(contact))
                .await?;
            SubscriptionState::of(&existing)
        };
        self.reply_to_session(from, addr, stanza::iq_result(iq))
            .await?;
        if state.subscription.has_to() || state.pending_out {
            let unsubscribe = subscription_presence(user, contact, SubscriptionStanza::Unsubscribe);
            self.send_presence(unsubscribe).await?;
        }
        if state.subscription.has_from() || state.pending_in {
            let unsubscribed =
                subscription_presence(user, contact, SubscriptionStanza::Unsubscribed);
            self.send_presence(unsubscribed).await?;
        }
        if state.subscription.has_from() {
            // The contact no longer receives the user's presence (section 3.2.2).
            self.send_unavailable_from_each_resource(user, contact)
                .await?;
        }
        Ok(())
    }

    /// Send a roster push to every interested resource of the user, on every
    /// node (RFC 6121 section 2.1.6), one publish per node.
    pub(crate) async fn push_roster_change(
        &self,
        user: &BareJid,
        version: u64,
        item: Element,
    ) -> ApiResult<()> {
        let targets: Vec<_> = self
            .sessions_in_order(user)
            .await?
            .into_iter()
            .filter(|record| record.interested)
            .map(|record| {
                let to = Some(record.jid.to_string());
                (record, to)
            })
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        self.deliver(roster_push(version, item), &targets).await;
        Ok(())
    }
}

/// A subscription stanza generated by the server on behalf of `from`
/// (stamped with the bare JID, RFC 6121 section 3.1.2).
pub fn subscription_presence(from: &BareJid, to: &BareJid, stanza: SubscriptionStanza) -> Element {
    Element::new("presence", ns::CLIENT)
        .with_attr("from", from.to_string())
        .with_attr("to", to.to_string())
        .with_attr("type", stanza.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_api::Subscription;

    fn query(items_xml: Vec<Element>) -> Element {
        let mut query = Element::new("query", ns::ROSTER);
        for item in items_xml {
            query.append_child(item);
        }
        query
    }

    fn item(jid: &str) -> Element {
        Element::new("item", ns::ROSTER).with_attr("jid", jid)
    }

    fn group(name: &str) -> Element {
        Element::new("group", ns::ROSTER).with_text(name)
    }

    #[test]
    fn item_xml_carries_ask_and_groups() {
        let mut roster_item = RosterItem::new("nurse@example.com".parse().unwrap());
        roster_item.name = Some("Nurse".into());
        roster_item.pending_out = true;
        roster_item.groups = vec!["Servants".into(), "A & B".into()];
        assert_eq!(
            roster_item_element(&roster_item).to_xml(),
            "<item xmlns='jabber:iq:roster' jid='nurse@example.com' name='Nurse' subscription='none' ask='subscribe'><group>Servants</group><group>A &amp; B</group></item>"
        );
        roster_item.subscription = Subscription::Both;
        roster_item.groups.clear();
        assert_eq!(
            roster_item_element(&roster_item).to_xml(),
            "<item xmlns='jabber:iq:roster' jid='nurse@example.com' name='Nurse' subscription='both'/>"
        );
    }

    #[test]
    fn removal_and_push_xml() {
        let push = roster_push(
            7,
            removed_item_element(&"nurse@example.com".parse().unwrap()),
        );
        let mut push = push;
        assert!(push.attr("id").is_some_and(|id| id.starts_with("push-")));
        push.set_attr("id", "p");
        assert_eq!(
            push.to_stanza_xml(),
            "<iq type='set' id='p'><query xmlns='jabber:iq:roster' ver='7'><item jid='nurse@example.com' subscription='remove'/></query></iq>"
        );
    }

    #[test]
    fn a_set_names_an_item_with_groups() {
        let request = parse_roster_set(&query(vec![item("Nurse@Example.com")
            .with_attr("name", "Nurse")
            .with_attr("subscription", "both")
            .with_child(group("Servants"))]))
        .unwrap();
        assert_eq!(
            request,
            RosterSetRequest::Update {
                jid: "nurse@example.com".parse().unwrap(),
                name: Some("Nurse".into()),
                groups: vec!["Servants".into()],
            }
        );
        let remove = parse_roster_set(&query(vec![
            item("nurse@example.com").with_attr("subscription", "remove")
        ]));
        assert_eq!(
            remove.unwrap(),
            RosterSetRequest::Remove {
                jid: "nurse@example.com".parse().unwrap()
            }
        );
    }

    #[test]
    fn set_error_cases_of_section_2_3_3() {
        let condition = |query: Element| match parse_roster_set(&query) {
            Err(error) => error.to_stanza_error().condition.as_str(),
            Ok(_) => "ok",
        };
        assert_eq!(condition(query(vec![])), "bad-request");
        assert_eq!(
            condition(query(vec![item("a@example.com"), item("b@example.com")])),
            "bad-request"
        );
        assert_eq!(
            condition(query(vec![Element::new("item", ns::ROSTER)])),
            "bad-request"
        );
        assert_eq!(
            condition(query(vec![item("a@example.com/phone")])),
            "jid-malformed"
        );
        assert_eq!(
            condition(query(vec![item("@example.com")])),
            "jid-malformed"
        );
        assert_eq!(
            condition(query(vec![item("a@example.com")
                .with_child(group("x"))
                .with_child(group("x"))])),
            "bad-request"
        );
        assert_eq!(
            condition(query(vec![item("a@example.com").with_child(group(""))])),
            "not-acceptable"
        );
        let long = "n".repeat(MAX_ROSTER_NAME_BYTES + 1);
        assert_eq!(
            condition(query(vec![
                item("a@example.com").with_attr("name", long.clone())
            ])),
            "not-acceptable"
        );
        assert_eq!(
            condition(query(vec![item("a@example.com").with_child(group(&long))])),
            "not-acceptable"
        );
        // Groups compare case-sensitively: "X" and "x" are two groups.
        assert_eq!(
            condition(query(vec![item("a@example.com")
                .with_child(group("X"))
                .with_child(group("x"))])),
            "ok"
        );
    }
}
