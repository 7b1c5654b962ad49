//! Personal Eventing Protocol (XEP-0163) over the XEP-0060 subset it needs:
//! what the storage service keeps per account (nodes with their
//! configuration, persistent items, the whitelist of a `whitelist` node) and
//! the entity capabilities cache (XEP-0115) that every router of the cluster
//! reads, so that a `+notify` interest learnt on one node is known on all.

use async_trait::async_trait;
use starling_jid::{BareJid, Jid};

use crate::error::ApiResult;

/// Who may subscribe to a node and retrieve its items (XEP-0060 section 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccessModel {
    /// Contacts with a subscription of type `from` or `both` (the PEP
    /// default, XEP-0163 section 4.1).
    #[default]
    Presence,
    /// Anyone.
    Open,
    /// The owner and the JIDs the owner affiliated as members.
    Whitelist,
    /// Contacts with a subscription of type `from` or `both` whose roster
    /// item is in one of the node's `pubsub#roster_groups_allowed` (XEP-0060
    /// sections 4.5 and 6.5.2: "subscribed to the owner's presence and
    /// contained in the relevant roster group(s)").
    Roster,
    /// Subscribers the owner approved (XEP-0060 sections 4.5, 6.1.4 and 8.6).
    Authorize,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Presence => "presence",
            AccessModel::Open => "open",
            AccessModel::Whitelist => "whitelist",
            AccessModel::Roster => "roster",
            AccessModel::Authorize => "authorize",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "presence" => AccessModel::Presence,
            "open" => AccessModel::Open,
            "whitelist" => AccessModel::Whitelist,
            "roster" => AccessModel::Roster,
            "authorize" => AccessModel::Authorize,
            _ => return None,
        })
    }
}

/// When the last published item goes to a new subscriber
/// (`pubsub#send_last_published_item`, XEP-0060 section 16.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SendLastPublished {
    Never,
    OnSub,
    /// On subscription and whenever a subscriber becomes available: the
    /// PEP default (XEP-0163 section 4.3.4).
    #[default]
    OnSubAndPresence,
}

impl SendLastPublished {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLastPublished::Never => "never",
            SendLastPublished::OnSub => "on_sub",
            SendLastPublished::OnSubAndPresence => "on_sub_and_presence",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "never" => SendLastPublished::Never,
            "on_sub" => SendLastPublished::OnSub,
            "on_sub_and_presence" => SendLastPublished::OnSubAndPresence,
            _ => return None,
        })
    }
}

/// `pubsub#max_items`: a number, or `max` (the server's own limit,
/// XEP-0060 section 16.4.3, version 1.24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxItems {
    Count(u32),
    Max,
}

impl MaxItems {
    /// The number of items kept under a server limit of `server_limit`.
    pub fn effective(self, server_limit: u32) -> u32 {
        match self {
            MaxItems::Count(count) => count.min(server_limit),
            MaxItems::Max => server_limit,
        }
    }

    /// As stored: the count, or -1 for `max`.
    pub fn to_stored(self) -> i64 {
        match self {
            MaxItems::Count(count) => i64::from(count),
            MaxItems::Max => -1,
        }
    }

    pub fn from_stored(value: i64) -> Self {
        u32::try_from(value).map_or(MaxItems::Max, MaxItems::Count)
    }
}

impl Default for MaxItems {
    /// One item: PEP nodes keep the latest (XEP-0163 section 4.3.3 "the
    /// last published item").
    fn default() -> Self {
        MaxItems::Count(1)
    }
}

impl std::fmt::Display for MaxItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxItems::Count(count) => write!(f, "{count}"),
            MaxItems::Max => f.write_str("max"),
        }
    }
}

/// The configuration of a PEP node: the fields PEP clients use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PepNodeConfig {
    pub access_model: AccessModel,
    pub max_items: MaxItems,
    pub persist_items: bool,
    pub send_last_published_item: SendLastPublished,
    pub notify_retract: bool,
    /// `pubsub#roster_groups_allowed` (XEP-0060 section 16.4.3): the roster
    /// groups whose contacts a `roster` node admits, sorted and without
    /// duplicates (see [`roster_groups`]).
    pub roster_groups_allowed: Vec<String>,
}

/// Roster group names as a node keeps them: sorted, without duplicates, so
/// that two configurations naming the same groups compare equal (the
/// precondition check of XEP-0060 section 7.1.5).
pub fn roster_groups<I, S>(groups: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut groups: Vec<String> = groups.into_iter().map(Into::into).collect();
    groups.sort();
    groups.dedup();
    groups
}

impl Default for PepNodeConfig {
    /// The PEP defaults (XEP-0163 section 4.1 and 4.3).
    fn default() -> Self {
        PepNodeConfig {
            access_model: AccessModel::Presence,
            max_items: MaxItems::default(),
            persist_items: true,
            send_last_published_item: SendLastPublished::OnSubAndPresence,
            notify_retract: true,
            roster_groups_allowed: Vec::new(),
        }
    }
}

/// Some fields of a node configuration: the publish-options of a publish
/// (XEP-0223, checked as preconditions) or the fields of a configure form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PepConfigPatch {
    pub access_model: Option<AccessModel>,
    pub max_items: Option<MaxItems>,
    pub persist_items: Option<bool>,
    pub send_last_published_item: Option<SendLastPublished>,
    pub notify_retract: Option<bool>,
    /// Sorted and without duplicates ([`roster_groups`]).
    pub roster_groups_allowed: Option<Vec<String>>,
}

impl PepConfigPatch {
    /// `config` with the patch's fields applied.
    pub fn apply(&self, config: PepNodeConfig) -> PepNodeConfig {
        PepNodeConfig {
            roster_groups_allowed: self
                .roster_groups_allowed
                .clone()
                .unwrap_or(config.roster_groups_allowed),
            access_model: self.access_model.unwrap_or(config.access_model),
            max_items: self.max_items.unwrap_or(config.max_items),
            persist_items: self.persist_items.unwrap_or(config.persist_items),
            send_last_published_item: self
                .send_last_published_item
                .unwrap_or(config.send_last_published_item),
            notify_retract: self.notify_retract.unwrap_or(config.notify_retract),
        }
    }

    /// Whether every field the patch names has that value in `config`
    /// (the precondition check of XEP-0060 section 7.1.5).
    pub fn matches(&self, config: &PepNodeConfig) -> bool {
        self.apply(config.clone()) == *config
    }

    pub fn is_empty(&self) -> bool {
        *self == PepConfigPatch::default()
    }
}

/// A node with its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepNode {
    pub name: String,
    pub config: PepNodeConfig,
}

/// One published item: its id, who published it (a full JID) and its
/// payload, serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepItem {
    pub id: String,
    pub publisher: String,
    pub payload_xml: String,
}

/// The bounds the storage service applies to a publish, from the router's
/// configuration (`pep.max_items_per_node`, `pep.max_nodes_per_account`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PepLimits {
    /// What `max_items = max` means, and the most any node keeps.
    pub max_items_per_node: u32,
    /// The most nodes one account owns.
    pub max_nodes_per_account: u32,
}

/// A publish: to a node that exists, or creates it (XEP-0163 section 3
/// "auto-create"), with preconditions (XEP-0223).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepPublish {
    pub node: String,
    /// The item to keep; `None` when the node does not persist items (the
    /// publish only notifies, and creates the node if needed).
    pub item: Option<PepItem>,
    /// The publish-options: the configuration of a node this publish
    /// creates, and preconditions on one that exists.
    pub options: PepConfigPatch,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepPublishOutcome {
    /// Stored (and older items beyond `max_items` removed); `created` when
    /// the publish created the node. The node as it is now.
    Published { node: PepNode, created: bool },
    /// The node exists and its configuration does not match the
    /// publish-options: nothing was stored (XEP-0060 section 7.1.5).
    PreconditionNotMet,
    /// The node does not exist and the account owns
    /// `max_nodes_per_account` nodes already: nothing was stored.
    NodeLimitReached,
}

/// The state of an explicit subscription to a node (XEP-0060 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PepSubscriptionState {
    /// Awaiting the owner's approval (an `authorize` node, section 6.1.4).
    Pending,
    Subscribed,
}

impl PepSubscriptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            PepSubscriptionState::Pending => "pending",
            PepSubscriptionState::Subscribed => "subscribed",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => PepSubscriptionState::Pending,
            "subscribed" => PepSubscriptionState::Subscribed,
            _ => return None,
        })
    }
}

/// An explicit subscription (XEP-0060 section 6.1): the subscribed JID
/// (bare, or a full JID for one resource) and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepSubscription {
    pub jid: Jid,
    pub state: PepSubscriptionState,
}

/// An explicit subscription of an account to another account's node, as
/// the subscriber's side sees it (the last published items on presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepSubscribedNode {
    pub owner: BareJid,
    pub node: String,
    pub jid: Jid,
}

/// One XEP-0115 capabilities record, verified: the hash function and the
/// `ver` string its disco#info answer hashed to, and that answer's features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsRecord {
    pub hash: String,
    pub ver: String,
    pub features: Vec<String>,
}

/// PEP nodes and items, durable in the database, and the verified entity
/// capabilities every router shares.
#[async_trait]
pub trait PepStore: Send + Sync + 'static {
    /// The account's nodes, sorted by name; empty for no account.
    async fn pep_nodes(&self, owner: &BareJid) -> ApiResult<Vec<PepNode>>;
    /// One node, if it exists.
    async fn pep_node(&self, owner: &BareJid, node: &str) -> ApiResult<Option<PepNode>>;
    /// Create a node; `false` when it exists already (unchanged).
    /// `LimitReached` past `limits.max_nodes_per_account`, `NotFound` for no account.
    async fn create_pep_node(
        &self,
        owner: &BareJid,
        node: &PepNode,
        limits: PepLimits,
    ) -> ApiResult<bool>;
    /// Replace a node's configuration, dropping the oldest items beyond its
    /// new `max_items` (all of them when it stops persisting items);
    /// `NotFound` when there is no such node.
    async fn configure_pep_node(
        &self,
        owner: &BareJid,
        node: &PepNode,
        limits: PepLimits,
    ) -> ApiResult<()>;
    /// Delete a node with its items and whitelist; whether it existed.
    async fn delete_pep_node(&self, owner: &BareJid, node: &str) -> ApiResult<bool>;
    /// Publish (one transaction: create the node if needed, check the
    /// preconditions, store the item, trim to `max_items`).
    async fn publish_pep_item(
        &self,
        owner: &BareJid,
        publish: &PepPublish,
        limits: PepLimits,
    ) -> ApiResult<PepPublishOutcome>;
    /// Items of a node, newest first: those with the given ids (in any
    /// order, unknown ids skipped) or, with no ids, the newest `max` (all
    /// with `None`). Empty for a node that does not exist.
    async fn pep_items(
        &self,
        owner: &BareJid,
        node: &str,
        ids: &[String],
        max: Option<u32>,
    ) -> ApiResult<Vec<PepItem>>;
    /// The newest item of each of `nodes` that exists and has one, with its node.
    async fn pep_last_items(
        &self,
        owner: &BareJid,
        nodes: &[String],
    ) -> ApiResult<Vec<(PepNode, PepItem)>>;
    /// Remove an item; whether it existed.
    async fn retract_pep_item(&self, owner: &BareJid, node: &str, item_id: &str)
        -> ApiResult<bool>;
    /// The members of a node's whitelist, sorted; empty for no node.
    async fn pep_whitelist(&self, owner: &BareJid, node: &str) -> ApiResult<Vec<BareJid>>;
    /// Add and remove whitelist members (XEP-0060 section 8.9.2);
    /// `NotFound` for no node, `LimitReached` past `max_members` (nothing changed).
    async fn update_pep_whitelist(
        &self,
        owner: &BareJid,
        node: &str,
        add: &[BareJid],
        remove: &[BareJid],
        max_members: u32,
    ) -> ApiResult<()>;
    /// The explicit subscriptions to a node (pending and subscribed),
    /// sorted by JID; empty for no node.
    async fn pep_subscriptions(
        &self,
        owner: &BareJid,
        node: &str,
    ) -> ApiResult<Vec<PepSubscription>>;
    /// Set the subscription of `jid` to a node (`None` removes it) and
    /// return the state it had. `NotFound` for no node, `LimitReached` when
    /// it would add a subscription past `max_subscriptions` (nothing changed).
    async fn set_pep_subscription(
        &self,
        owner: &BareJid,
        node: &str,
        jid: &Jid,
        state: Option<PepSubscriptionState>,
        max_subscriptions: u32,
    ) -> ApiResult<Option<PepSubscriptionState>>;
    /// The nodes of any account that `subscriber` (or one of its full
    /// JIDs) has a `subscribed` subscription to.
    async fn pep_subscribed_nodes(&self, subscriber: &BareJid)
        -> ApiResult<Vec<PepSubscribedNode>>;
    /// The features of a verified capabilities `ver` (XEP-0115 section 5.4), if known.
    async fn caps_features(&self, hash: &str, ver: &str) -> ApiResult<Option<Vec<String>>>;
    /// Remember a verified capabilities record (idempotent: a `ver` hashes
    /// one feature set, so the first record stays), or note that a session
    /// announced a known one: its last sighting, which keeps it from the
    /// prune of records unseen for `pep.caps_retention_days`.
    async fn put_caps(&self, record: &CapsRecord) -> ApiResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_compare_only_the_named_fields() {
        let config = PepNodeConfig::default();
        let same = PepConfigPatch {
            access_model: Some(AccessModel::Presence),
            ..PepConfigPatch::default()
        };
        assert!(same.matches(&config));
        let other = PepConfigPatch {
            access_model: Some(AccessModel::Whitelist),
            ..PepConfigPatch::default()
        };
        assert!(!other.matches(&config));
        assert!(PepConfigPatch::default().matches(&config));
    }

    #[test]
    fn max_items_stores_max_as_minus_one() {
        assert_eq!(
            MaxItems::from_stored(MaxItems::Max.to_stored()),
            MaxItems::Max
        );
        assert_eq!(MaxItems::from_stored(7), MaxItems::Count(7));
        assert_eq!(MaxItems::Max.effective(256), 256);
        assert_eq!(MaxItems::Count(1000).effective(256), 256);
    }
}
