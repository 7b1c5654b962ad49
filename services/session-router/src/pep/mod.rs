//! Personal Eventing Protocol, XEP-0163 version 1.2, on the subset of
//! XEP-0060 (version 1.24) PEP needs: who may see a node (the access models
//! of XEP-0060 section 4.5), who gets an event notification (XEP-0163
//! section 4.3: the owner's resources and the contacts with a presence
//! subscription whose entity capabilities ask for `NODE+notify`), and the
//! last published item sent on presence (section 4.3.4).
//!
//! The IQ protocol is in `handlers/pep.rs`; the XEP-0115 capabilities the
//! `+notify` filter reads are in `caps.rs`. Nodes and items live in storage
//! (`PepStore`), so any router of the cluster serves any account.

pub(crate) mod caps;

use std::collections::HashSet;
use std::sync::Arc;

use starling_api::{
    AccessModel, ApiError, ApiResult, PepConfigPatch, PepItem, PepLimits, PepNode, PepPublish,
    PepPublishOutcome, SendLastPublished, SessionRecord,
};
use starling_bus::deliver_to_sessions;
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{ns, parse_element, Element, Limits};

use crate::router::SessionRouter;

/// The `NODE+notify` suffix of XEP-0163 section 4.3.2 (filtered notifications).
pub(crate) const NOTIFY_SUFFIX: &str = "+notify";

/// PEP limits, from the `pep.*` configuration keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PepSettings {
    /// The largest item payload, serialised, in bytes (`pep.max_item_bytes`);
    /// a larger one gets `not-acceptable` + `payload-too-big`.
    pub max_item_bytes: usize,
    /// The most items a node keeps, and what `max_items = max` means
    /// (`pep.max_items_per_node`).
    pub max_items_per_node: u32,
    /// The most nodes one account owns (`pep.max_nodes_per_account`).
    pub max_nodes_per_account: u32,
    /// The most JIDs on one node's whitelist (`pep.max_whitelist_per_node`).
    pub max_whitelist_per_node: u32,
}

impl Default for PepSettings {
    fn default() -> Self {
        PepSettings {
            max_item_bytes: 65_536,
            max_items_per_node: 256,
            max_nodes_per_account: 256,
            max_whitelist_per_node: 1000,
        }
    }
}

impl PepSettings {
    pub(crate) fn limits(&self) -> PepLimits {
        PepLimits {
            max_items_per_node: self.max_items_per_node,
            max_nodes_per_account: self.max_nodes_per_account,
        }
    }
}

/// Why a requester may not see a node (XEP-0060 section 6.5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// `presence` access without a subscription: `not-authorized` +
    /// `presence-subscription-required` (section 6.5.9.2).
    PresenceSubscriptionRequired,
    /// `whitelist` access, not on it: `not-allowed` + `closed-node` (section 6.5.9.5).
    NotOnWhitelist,
}

impl SessionRouter {
    /// Whether `requester` may retrieve the items of (and be notified
    /// about) `node` of `owner`, by its access model (XEP-0060 section 4.5).
    pub(crate) async fn pep_access(
        &self,
        owner: &BareJid,
        node: &PepNode,
        requester: &BareJid,
    ) -> ApiResult<Result<(), Denied>> {
        if owner == requester {
            return Ok(Ok(()));
        }
        Ok(match node.config.access_model {
            AccessModel::Open => Ok(()),
            AccessModel::Presence => {
                let subscribed = self
                    .storage
                    .roster_item(owner, requester)
                    .await?
                    .is_some_and(|item| item.subscription.has_from());
                if subscribed {
                    Ok(())
                } else {
                    Err(Denied::PresenceSubscriptionRequired)
                }
            }
            AccessModel::Whitelist => {
                let members = self.storage.pep_whitelist(owner, &node.name).await?;
                if members.contains(requester) {
                    Ok(())
                } else {
                    Err(Denied::NotOnWhitelist)
                }
            }
        })
    }

    /// The sessions that get the notifications of `node` of `owner`: the
    /// owner's available resources and those of its local contacts with a
    /// subscription `from` (or `both`) allowed by the access model, each
    /// only if its capabilities include `NODE+notify` (XEP-0163 section 4.3).
    pub(crate) async fn pep_recipients(
        &self,
        owner: &BareJid,
        node: &PepNode,
    ) -> ApiResult<Vec<SessionRecord>> {
        let interest = format!("{}{NOTIFY_SUFFIX}", node.name);
        let mut accounts = vec![owner.clone()];
        let roster = self.storage.subscriptions(owner).await?;
        let whitelist: Option<HashSet<BareJid>> = match node.config.access_model {
            AccessModel::Whitelist => Some(
                self.storage
                    .pep_whitelist(owner, &node.name)
                    .await?
                    .into_iter()
                    .collect(),
            ),
            AccessModel::Presence | AccessModel::Open => None,
        };
        for item in roster {
            // No server-to-server connections: only local contacts.
            if !item.subscription.has_from() || item.jid.domain() != self.config.domain {
                continue;
            }
            if whitelist
                .as_ref()
                .is_some_and(|members| !members.contains(&item.jid))
            {
                continue;
            }
            accounts.push(item.jid);
        }
        let mut recipients = Vec::new();
        let owner_address = Jid::from(owner.clone());
        for account in &accounts {
            // XEP-0191 section 3.3: nothing goes from a user to an address
            // it blocked, nor to a user who blocked it.
            if account != owner && self.blocklists.blocks(account, &owner_address).await? {
                continue;
            }
            for session in self.registry.sessions(account).await? {
                if account != owner
                    && self
                        .blocklists
                        .blocks(owner, &Jid::from(session.jid.clone()))
                        .await?
                {
                    continue;
                }
                if session.available && self.session_wants(&session, &interest).await {
                    recipients.push(session);
                }
            }
        }
        Ok(recipients)
    }

    /// Whether an available session's last presence announced capabilities
    /// that include `interest` (XEP-0115, resolved through the shared cache).
    pub(crate) async fn session_wants(&self, session: &SessionRecord, interest: &str) -> bool {
        self.session_features(session)
            .await
            .is_some_and(|features| features.iter().any(|feature| feature == interest))
    }

    /// The verified features of the capabilities a session's last presence
    /// announced (XEP-0115), if any are known.
    pub(crate) async fn session_features(
        &self,
        session: &SessionRecord,
    ) -> Option<Arc<Vec<String>>> {
        let presence = session.presence.as_deref()?;
        let limits = Limits {
            max_stanza_bytes: presence.len().max(1),
            ..Limits::default()
        };
        let presence = parse_element(presence.as_bytes(), &limits).ok()?;
        let caps = starling_xmpp::xep::caps::Caps::of_presence(&presence)?;
        match self.caps.features(&*self.storage, &caps).await {
            Ok(Some(features)) => {
                self.report_caps_sighting(&caps, &features).await;
                Some(features)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(jid = %session.jid, %error, "caps lookup failed, no notification");
                None
            }
        }
    }

    /// Send `event` (a `<event/>` of pubsub#event) from `owner` to every
    /// recipient, one envelope per node, each readdressed to its full JID.
    pub(crate) async fn send_pep_event(
        &self,
        owner: &BareJid,
        event: Element,
        recipients: &[SessionRecord],
    ) {
        if recipients.is_empty() {
            return;
        }
        let message = Element::new("message", ns::CLIENT)
            .with_attr("from", owner.to_string())
            .with_attr("type", "headline")
            .with_attr("id", new_id())
            .with_child(event);
        let targets: Vec<(SessionRecord, Option<String>)> = recipients
            .iter()
            .map(|session| (session.clone(), Some(session.jid.to_string())))
            .collect();
        let unreached = deliver_to_sessions(&*self.bus, Arc::new(message), &targets, None).await;
        if !unreached.is_empty() {
            tracing::debug!(owner = %owner, unreached = unreached.len(), "pep notification unreached");
        }
        self.metrics
            .count_pep_notifications(targets.len() - unreached.len(), unreached.len());
    }

    /// Notify the recipients of `node` (computed now) about `event`; a
    /// failure to compute them is counted and logged (the item is stored
    /// either way, and goes out again with the next presence).
    pub(crate) async fn notify_pep(&self, owner: &BareJid, node: &PepNode, event: Element) {
        match self.pep_recipients(owner, node).await {
            Ok(recipients) => self.send_pep_event(owner, event, &recipients).await,
            Err(error) => {
                self.metrics.pep_notifications_failed();
                tracing::warn!(owner = %owner, node = %node.name, %error, "pep notification recipients failed");
            }
        }
    }

    /// Publish `payload_xml` as item `id` of `owner`'s `node` on the owner's
    /// behalf (a server-side conversion, XEP-0398 and XEP-0411): the node is
    /// created with `options` when missing, and an existing one must match
    /// them (XEP-0060 section 7.1.5: `Ok(false)` when it does not, nothing
    /// stored); the subscribers are notified as for a publish of the owner.
    pub(crate) async fn publish_on_behalf(
        &self,
        owner: &BareJid,
        publisher: &str,
        node: &str,
        id: &str,
        payload_xml: String,
        options: PepConfigPatch,
    ) -> ApiResult<bool> {
        let item = PepItem {
            id: id.to_string(),
            publisher: publisher.to_string(),
            payload_xml,
        };
        let outcome = self
            .storage
            .publish_pep_item(
                owner,
                &PepPublish {
                    node: node.to_string(),
                    item: Some(item.clone()),
                    options,
                },
                self.config.pep.limits(),
            )
            .await?;
        match outcome {
            PepPublishOutcome::Published { node, .. } => {
                if let Some(event) = items_event(&node.name, &item) {
                    self.notify_pep(owner, &node, event).await;
                }
                Ok(true)
            }
            PepPublishOutcome::PreconditionNotMet => Ok(false),
            PepPublishOutcome::NodeLimitReached => Err(ApiError::LimitReached(format!(
                "{node}: the account owns pep.max_nodes_per_account nodes"
            ))),
        }
    }

    /// XEP-0163 section 4.3.4: a session that became available (or whose
    /// `+notify` interests were just learnt) gets the last published item of
    /// each node it is interested in: its own account's, and those of the
    /// local contacts it has a subscription to whose access model lets it see.
    pub(crate) async fn send_last_published_items(
        &self,
        session: &SessionRecord,
        features: &[String],
    ) -> ApiResult<()> {
        let interests = notify_interests(features);
        if interests.is_empty() {
            return Ok(());
        }
        let subscriber = session.jid.to_bare();
        let mut owners = vec![subscriber.clone()];
        let roster = self.storage.subscriptions(&subscriber).await?;
        owners.extend(
            roster
                .into_iter()
                .filter(|item| {
                    item.subscription.has_to() && item.jid.domain() == self.config.domain
                })
                .map(|item| item.jid),
        );
        for owner in &owners {
            self.send_last_items_of(owner, session, &interests, LastItemTrigger::Presence)
                .await?;
        }
        Ok(())
    }

    /// XEP-0163 section 4.3.4 ("a PEP service MUST send the last published
    /// item to all new subscribers"): `owner` just approved `contact`'s
    /// presence subscription (its item is now `from` or `both`, RFC 6121
    /// section 3.1.5), so each available resource of a local `contact` gets
    /// the last item of each of the owner's nodes its `+notify` interests
    /// name, its access model allows, and whose `send_last_published_item`
    /// is `on_sub` or `on_sub_and_presence` (XEP-0060 section 6.1.7).
    pub(crate) async fn send_last_items_to_new_subscriber(
        &self,
        owner: &BareJid,
        contact: &BareJid,
    ) -> ApiResult<()> {
        // No server-to-server connections: only local contacts.
        if contact == owner || contact.domain() != self.config.domain {
            return Ok(());
        }
        for session in self.registry.sessions(contact).await? {
            if !session.available {
                continue;
            }
            let Some(features) = self.session_features(&session).await else {
                continue;
            };
            let interests = notify_interests(&features);
            if !interests.is_empty() {
                self.send_last_items_of(owner, &session, &interests, LastItemTrigger::Subscription)
                    .await?;
            }
        }
        Ok(())
    }

    /// Before a session's presence is processed: when it is a `subscribed`
    /// (RFC 6121 section 3.1.5) to a local contact that has no subscription
    /// to the user yet, that contact, a possible new PEP subscriber.
    pub(crate) async fn subscription_to_approve(
        &self,
        jid: &FullJid,
        presence: &Element,
    ) -> Option<BareJid> {
        if presence.attr("type") != Some("subscribed") {
            return None;
        }
        let contact = presence.attr("to")?.parse::<Jid>().ok()?.to_bare();
        let owner = jid.to_bare();
        if contact == owner || contact.domain() != self.config.domain {
            return None;
        }
        match self.storage.roster_item(&owner, &contact).await {
            Ok(item) => (!item.is_some_and(|item| item.subscription.has_from())).then_some(contact),
            Err(error) => {
                tracing::debug!(jid = %jid, %error, "roster lookup before a subscribed failed");
                None
            }
        }
    }

    /// After the presence service processed a `subscribed` from `owner` to
    /// `contact` ([`Self::subscription_to_approve`]): if the contact is now
    /// a subscriber, it gets the last published items (errors are logged:
    /// the subscription stands either way).
    pub(crate) async fn pep_on_subscription_approved(&self, owner: &BareJid, contact: &BareJid) {
        let approved = match self.storage.roster_item(owner, contact).await {
            Ok(item) => item.is_some_and(|item| item.subscription.has_from()),
            Err(error) => {
                tracing::warn!(owner = %owner, contact = %contact, %error, "roster lookup after a subscribed failed");
                return;
            }
        };
        if !approved {
            return;
        }
        if let Err(error) = self.send_last_items_to_new_subscriber(owner, contact).await {
            tracing::warn!(owner = %owner, contact = %contact, %error, "sending the last published items to a new subscriber failed");
        }
    }

    /// Send `session` the last item of each node of `owner` among
    /// `interests` that `trigger` applies to (the node's
    /// `send_last_published_item`) and that the session's account may see,
    /// unless either side blocks the other (XEP-0163 section 4.3.3).
    async fn send_last_items_of(
        &self,
        owner: &BareJid,
        session: &SessionRecord,
        interests: &[String],
        trigger: LastItemTrigger,
    ) -> ApiResult<()> {
        let subscriber = session.jid.to_bare();
        if owner != &subscriber
            && (self
                .blocklists
                .blocks(owner, &Jid::from(session.jid.clone()))
                .await?
                || self
                    .blocklists
                    .blocks(&subscriber, &Jid::from(owner.clone()))
                    .await?)
        {
            return Ok(());
        }
        let recipient = [session.clone()];
        for (node, item) in self.storage.pep_last_items(owner, interests).await? {
            if !trigger.applies_to(node.config.send_last_published_item) {
                continue;
            }
            if self.pep_access(owner, &node, &subscriber).await?.is_err() {
                continue;
            }
            let Some(event) = items_event(&node.name, &item) else {
                continue;
            };
            self.send_pep_event(owner, event, &recipient).await;
        }
        Ok(())
    }
}

/// What makes the last published items go out, against a node's
/// `pubsub#send_last_published_item` (XEP-0060 section 16.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastItemTrigger {
    /// A subscriber's resource became available: `on_sub_and_presence` only.
    Presence,
    /// A new (presence, hence PEP) subscription: `on_sub` or `on_sub_and_presence`.
    Subscription,
}

impl LastItemTrigger {
    fn applies_to(self, configured: SendLastPublished) -> bool {
        match (self, configured) {
            (_, SendLastPublished::Never) => false,
            (LastItemTrigger::Presence, SendLastPublished::OnSub) => false,
            (LastItemTrigger::Subscription, SendLastPublished::OnSub)
            | (_, SendLastPublished::OnSubAndPresence) => true,
        }
    }
}

/// The node names of the `NODE+notify` features of a capability record
/// (XEP-0163 section 4.2).
fn notify_interests(features: &[String]) -> Vec<String> {
    features
        .iter()
        .filter_map(|feature| feature.strip_suffix(NOTIFY_SUFFIX))
        .filter(|node| !node.is_empty())
        .map(str::to_string)
        .collect()
}

/// A fresh id for a notification or a generated item id.
pub(crate) fn new_id() -> String {
    format!(
        "{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// A stored item's payload, parsed back; `None` (logged) when it no longer
/// parses.
pub(crate) fn stored_payload(item: &PepItem) -> Option<Element> {
    let limits = Limits {
        max_stanza_bytes: item.payload_xml.len().max(1),
        ..Limits::default()
    };
    match parse_element(item.payload_xml.as_bytes(), &limits) {
        Ok(payload) => Some(payload),
        Err(error) => {
            tracing::warn!(item = %item.id, %error, "a stored pep item does not parse, skipped");
            None
        }
    }
}

/// `<item id='...'>payload</item>` in `namespace` (pubsub or pubsub#event).
pub(crate) fn item_element(namespace: &str, item: &PepItem) -> Option<Element> {
    Some(
        Element::new("item", namespace)
            .with_attr("id", item.id.clone())
            .with_child(stored_payload(item)?),
    )
}

/// The event of a publish: `<event><items node><item id>payload</item></items></event>`
/// (XEP-0060 section 7.1.2.1).
pub(crate) fn items_event(node: &str, item: &PepItem) -> Option<Element> {
    Some(
        Element::new("event", ns::PUBSUB_EVENT).with_child(
            Element::new("items", ns::PUBSUB_EVENT)
                .with_attr("node", node)
                .with_child(item_element(ns::PUBSUB_EVENT, item)?),
        ),
    )
}

/// The event of a retraction (XEP-0060 section 7.2.2.1).
pub(crate) fn retract_event(node: &str, item_id: &str) -> Element {
    Element::new("event", ns::PUBSUB_EVENT).with_child(
        Element::new("items", ns::PUBSUB_EVENT)
            .with_attr("node", node)
            .with_child(Element::new("retract", ns::PUBSUB_EVENT).with_attr("id", item_id)),
    )
}

/// The event of a node deletion (XEP-0060 section 8.4.2).
pub(crate) fn delete_event(node: &str) -> Element {
    Element::new("event", ns::PUBSUB_EVENT)
        .with_child(Element::new("delete", ns::PUBSUB_EVENT).with_attr("node", node))
}

/// The full JID a session's IQ came from, when it did.
pub(crate) fn requester_of(iq: &Element) -> Option<BareJid> {
    match starling_xmpp::stanza::from(iq) {
        Ok(Some(jid)) => Some(jid.bare().clone()),
        _ => None,
    }
}

/// A full JID's session, if it is available.
pub(crate) async fn available_session(
    router: &SessionRouter,
    jid: &FullJid,
) -> ApiResult<Option<SessionRecord>> {
    Ok(router
        .registry
        .session(jid)
        .await?
        .filter(|session| session.available))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> PepItem {
        PepItem {
            id: "current".into(),
            publisher: "juliet@capulet.lit/balcony".into(),
            payload_xml:
                "<tune xmlns='http://jabber.org/protocol/tune'><artist>Yes</artist></tune>".into(),
        }
    }

    #[test]
    fn publish_event_carries_the_payload() {
        let event = items_event("http://jabber.org/protocol/tune", &item()).unwrap();
        assert_eq!(
            event.to_xml(),
            "<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='http://jabber.org/protocol/tune'><item id='current'><tune xmlns='http://jabber.org/protocol/tune'><artist>Yes</artist></tune></item></items></event>"
        );
    }

    #[test]
    fn retract_and_delete_events() {
        assert_eq!(
            retract_event("n", "i").to_xml(),
            "<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'><retract id='i'/></items></event>"
        );
        assert_eq!(
            delete_event("n").to_xml(),
            "<event xmlns='http://jabber.org/protocol/pubsub#event'><delete node='n'/></event>"
        );
    }

    #[test]
    fn which_trigger_sends_the_last_item() {
        use LastItemTrigger::{Presence, Subscription};
        use SendLastPublished::{Never, OnSub, OnSubAndPresence};
        assert!(!Presence.applies_to(Never) && !Subscription.applies_to(Never));
        assert!(!Presence.applies_to(OnSub) && Subscription.applies_to(OnSub));
        assert!(Presence.applies_to(OnSubAndPresence) && Subscription.applies_to(OnSubAndPresence));
        let features = [
            "urn:xmpp:avatar:metadata+notify".to_string(),
            "+notify".into(),
            "jabber:iq:version".into(),
        ];
        assert_eq!(notify_interests(&features), ["urn:xmpp:avatar:metadata"]);
    }

    #[test]
    fn an_unparsable_stored_item_is_skipped() {
        let mut broken = item();
        broken.payload_xml = "<tune".into();
        assert!(items_event("n", &broken).is_none());
    }
}
