//! Personal Eventing Protocol, XEP-0163 version 1.2, on the subset of
//! XEP-0060 (version 1.24) PEP needs: who may see a node (the access models
//! of XEP-0060 section 4.5), who gets an event notification (XEP-0163
//! section 4.3: the owner's resources and the contacts with a presence
//! subscription whose entity capabilities ask for `NODE+notify`), and the
//! last published item sent on presence (section 4.3.4); and the explicit
//! subscriptions of XEP-0060 section 6.1 (`subscriptions.rs`), which an
//! `authorize` node's owner approves.
//!
//! The IQ protocol is in `handlers/pep.rs`; the XEP-0115 capabilities the
//! `+notify` filter reads are in `caps.rs`. Nodes and items live in storage
//! (`PepStore`), so any router of the cluster serves any account.

pub(crate) mod caps;
pub(crate) mod subscriptions;

use std::collections::HashSet;
use std::sync::Arc;

use starling_api::{
    AccessModel, ApiError, ApiResult, PepConfigPatch, PepItem, PepLimits, PepNode, PepNodeConfig,
    PepPublish, PepPublishOutcome, PepSubscription, PepSubscriptionState, SendLastPublished,
    SessionRecord,
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
    /// The most explicit subscriptions (pending or approved) to one node
    /// (`pep.max_subscriptions_per_node`); a subscribe past it gets
    /// `policy-violation` + `too-many-subscriptions`.
    pub max_subscriptions_per_node: u32,
}

impl Default for PepSettings {
    fn default() -> Self {
        PepSettings {
            max_item_bytes: 65_536,
            max_items_per_node: 256,
            max_nodes_per_account: 256,
            max_whitelist_per_node: 1000,
            max_subscriptions_per_node: 1000,
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

/// Why a requester may not see a node (XEP-0060 section 6.5.9, and 6.1.3
/// for a subscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// `presence` access without a subscription: `not-authorized` +
    /// `presence-subscription-required` (section 6.5.9.5).
    PresenceSubscriptionRequired,
    /// `roster` access, not a subscribed contact in an allowed group:
    /// `not-authorized` + `not-in-roster-group` (section 6.5.9.6).
    NotInRosterGroup,
    /// `whitelist` access, not on it: `not-allowed` + `closed-node` (section 6.5.9.7).
    NotOnWhitelist,
    /// `authorize` access without an approved subscription (a pending one
    /// included): `not-authorized` + `not-subscribed` (section 6.5.9.3).
    NotSubscribed,
}

/// What the access models know of one requester that is not the owner:
/// its roster item in the owner's roster (whether it has a subscription
/// `from`/`both`, and its groups), whether it is on the node's whitelist,
/// and whether it holds an approved explicit subscription.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Standing<'a> {
    pub(crate) presence_subscribed: bool,
    pub(crate) groups: &'a [String],
    pub(crate) whitelisted: bool,
    pub(crate) subscribed: bool,
}

/// The access model of XEP-0060 section 4.5 applied to a requester that is
/// not the owner (who may always see its nodes).
pub(crate) fn judge(config: &PepNodeConfig, standing: Standing<'_>) -> Result<(), Denied> {
    match config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence if standing.presence_subscribed => Ok(()),
        AccessModel::Presence => Err(Denied::PresenceSubscriptionRequired),
        // Section 6.5.2: "subscribed to the owner's presence and contained
        // in the relevant roster group(s)".
        AccessModel::Roster
            if standing.presence_subscribed
                && standing
                    .groups
                    .iter()
                    .any(|group| config.roster_groups_allowed.contains(group)) =>
        {
            Ok(())
        }
        AccessModel::Roster => Err(Denied::NotInRosterGroup),
        AccessModel::Whitelist if standing.whitelisted => Ok(()),
        AccessModel::Whitelist => Err(Denied::NotOnWhitelist),
        AccessModel::Authorize if standing.subscribed => Ok(()),
        AccessModel::Authorize => Err(Denied::NotSubscribed),
    }
}

/// Whether `subscriptions` hold an approved one for `account` (of its bare
/// JID or of one of its full JIDs).
fn approved_for(subscriptions: &[PepSubscription], account: &BareJid) -> bool {
    subscriptions.iter().any(|subscription| {
        subscription.state == PepSubscriptionState::Subscribed && subscription.jid.bare() == account
    })
}

/// Who is told about a node: an account whose sessions qualify by their
/// `+notify` interest (the implicit PEP subscriptions of XEP-0163 section
/// 4.3), or by an explicit subscription of its bare JID (every available
/// resource) or of one full JID (XEP-0060 section 6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Audience {
    Interested(BareJid),
    Subscribed(Jid),
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
        let config = &node.config;
        let roster_item = match config.access_model {
            AccessModel::Presence | AccessModel::Roster => {
                self.storage.roster_item(owner, requester).await?
            }
            AccessModel::Open | AccessModel::Whitelist | AccessModel::Authorize => None,
        };
        let whitelisted = config.access_model == AccessModel::Whitelist
            && self
                .storage
                .pep_whitelist(owner, &node.name)
                .await?
                .contains(requester);
        let subscribed = config.access_model == AccessModel::Authorize
            && approved_for(
                &self.storage.pep_subscriptions(owner, &node.name).await?,
                requester,
            );
        Ok(judge(
            config,
            Standing {
                presence_subscribed: roster_item
                    .as_ref()
                    .is_some_and(|item| item.subscription.has_from()),
                groups: roster_item.as_ref().map_or(&[], |item| &item.groups),
                whitelisted,
                subscribed,
            },
        ))
    }

    /// The sessions that get the notifications of `node` of `owner`: the
    /// owner's available resources and those of its local contacts with a
    /// subscription `from` (or `both`) allowed by the access model, each
    /// only if its capabilities include `NODE+notify` (XEP-0163 section
    /// 4.3); and the available resources of the local explicit subscribers
    /// (XEP-0060 section 6.1) the access model still allows. An
    /// `authorize` node notifies only the owner and approved subscribers.
    pub(crate) async fn pep_recipients(
        &self,
        owner: &BareJid,
        node: &PepNode,
    ) -> ApiResult<Vec<SessionRecord>> {
        let config = &node.config;
        let interest = format!("{}{NOTIFY_SUFFIX}", node.name);
        let roster: Vec<(BareJid, bool, Vec<String>)> = match config.access_model {
            // Only the roster model reads the groups.
            AccessModel::Roster => self
                .storage
                .roster(owner)
                .await?
                .1
                .into_iter()
                .map(|item| (item.jid, item.subscription.has_from(), item.groups))
                .collect(),
            _ => self
                .storage
                .subscriptions(owner)
                .await?
                .into_iter()
                .map(|item| (item.jid, item.subscription.has_from(), Vec::new()))
                .collect(),
        };
        let whitelist: HashSet<BareJid> = match config.access_model {
            AccessModel::Whitelist => self
                .storage
                .pep_whitelist(owner, &node.name)
                .await?
                .into_iter()
                .collect(),
            _ => HashSet::new(),
        };
        let subscriptions = self.storage.pep_subscriptions(owner, &node.name).await?;
        let standing = |account: &BareJid| -> Standing<'_> {
            let item = roster.iter().find(|(jid, ..)| jid == account);
            Standing {
                presence_subscribed: item.is_some_and(|(_, from, _)| *from),
                groups: item.map_or(&[], |(.., groups)| groups.as_slice()),
                whitelisted: whitelist.contains(account),
                subscribed: approved_for(&subscriptions, account),
            }
        };
        let mut audience = vec![Audience::Interested(owner.clone())];
        // The implicit subscriptions: contacts with a presence subscription
        // (an `authorize` node has none: only approved subscribers).
        if config.access_model != AccessModel::Authorize {
            for (jid, from, _) in &roster {
                // No server-to-server connections: only local contacts.
                if !from || jid.domain() != self.config.domain {
                    continue;
                }
                if judge(config, standing(jid)).is_ok() {
                    audience.push(Audience::Interested(jid.clone()));
                }
            }
        }
        for subscription in &subscriptions {
            let account = subscription.jid.bare();
            if subscription.state != PepSubscriptionState::Subscribed
                || account.domain() != self.config.domain
            {
                continue;
            }
            if account == owner || judge(config, standing(account)).is_ok() {
                audience.push(Audience::Subscribed(subscription.jid.clone()));
            }
        }
        let mut recipients: Vec<SessionRecord> = Vec::new();
        let owner_address = Jid::from(owner.clone());
        for member in &audience {
            let account = match member {
                Audience::Interested(account) => account,
                Audience::Subscribed(jid) => jid.bare(),
            };
            // XEP-0191 section 3.3: nothing goes from a user to an address
            // it blocked, nor to a user who blocked it.
            if account != owner && self.blocklists.blocks(account, &owner_address).await? {
                continue;
            }
            for session in self.registry.sessions(account).await? {
                if !session.available || recipients.iter().any(|known| known.jid == session.jid) {
                    continue;
                }
                if account != owner
                    && self
                        .blocklists
                        .blocks(owner, &Jid::from(session.jid.clone()))
                        .await?
                {
                    continue;
                }
                let wanted = match member {
                    Audience::Interested(_) => self.session_wants(&session, &interest).await,
                    Audience::Subscribed(Jid::Bare(_)) => true,
                    Audience::Subscribed(Jid::Full(full)) => *full == session.jid,
                };
                if wanted {
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
    /// local contacts it has a subscription to whose access model lets it
    /// see; and (XEP-0060 section 6.1.7, `on_sub_and_presence`) of each node
    /// its account or this full JID explicitly subscribed to.
    pub(crate) async fn send_last_published_items(
        &self,
        session: &SessionRecord,
        features: &[String],
    ) -> ApiResult<()> {
        let interests = notify_interests(features);
        let subscriber = session.jid.to_bare();
        let mut sent = HashSet::new();
        if !interests.is_empty() {
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
                self.send_last_items_of(
                    owner,
                    session,
                    &interests,
                    LastItemTrigger::Presence,
                    &mut sent,
                )
                .await?;
            }
        }
        for subscribed in self.storage.pep_subscribed_nodes(&subscriber).await? {
            let for_this_session = match &subscribed.jid {
                Jid::Bare(_) => true,
                Jid::Full(full) => *full == session.jid,
            };
            if for_this_session {
                self.send_last_items_of(
                    &subscribed.owner,
                    session,
                    std::slice::from_ref(&subscribed.node),
                    LastItemTrigger::Presence,
                    &mut sent,
                )
                .await?;
            }
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
                self.send_last_items_of(
                    owner,
                    &session,
                    &interests,
                    LastItemTrigger::Subscription,
                    &mut HashSet::new(),
                )
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
    /// unless either side blocks the other (XEP-0163 section 4.3.3) or it
    /// is in `sent` already (which gets each node sent).
    pub(crate) async fn send_last_items_of(
        &self,
        owner: &BareJid,
        session: &SessionRecord,
        interests: &[String],
        trigger: LastItemTrigger,
        sent: &mut HashSet<(BareJid, String)>,
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
            if !trigger.applies_to(node.config.send_last_published_item)
                || sent.contains(&(owner.clone(), node.name.clone()))
            {
                continue;
            }
            if self.pep_access(owner, &node, &subscriber).await?.is_err() {
                continue;
            }
            sent.insert((owner.clone(), node.name.clone()));
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
pub(crate) enum LastItemTrigger {
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
