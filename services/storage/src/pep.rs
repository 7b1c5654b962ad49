//! PEP (XEP-0163): [`PepStore`] for [`Storage`] (queries in
//! `backend/queries/pep.rs`): nodes, items, whitelists, and the verified
//! XEP-0115 capabilities every router of the cluster shares.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use starling_api::{
    ApiResult, CapsRecord, PepItem, PepLimits, PepNode, PepPublish, PepPublishOutcome, PepStore,
    PepSubscribedNode, PepSubscription, PepSubscriptionState,
};
use starling_jid::{BareJid, Jid};

use crate::backend;
use crate::records::{check_storable_text, AccountAddress};
use crate::{into_api_error, no_account, now_millis, DatabasePool, Storage, StorageError};

/// The longest node name or item id kept, in bytes (XEP-0060 leaves them
/// open; a bound keeps keys and indexes small).
pub const MAX_PEP_NAME_BYTES: usize = 1024;

fn check_name(what: &str, name: &str) -> Result<(), StorageError> {
    check_storable_text(what, name)?;
    if name.is_empty() || name.len() > MAX_PEP_NAME_BYTES {
        return Err(StorageError::Invalid(format!(
            "a {what} has 1 to {MAX_PEP_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A node configuration's roster groups: storable, and without the line
/// break that separates them in the column.
fn check_node(node: &PepNode) -> Result<(), StorageError> {
    check_name("pep node name", &node.name)?;
    for group in &node.config.roster_groups_allowed {
        check_storable_text("pep roster group", group)?;
        if group.is_empty() || group.contains('\n') {
            return Err(StorageError::Invalid(
                "a roster group name is not empty and has no line break".into(),
            ));
        }
    }
    Ok(())
}

fn check_item(item: &PepItem) -> Result<(), StorageError> {
    check_name("pep item id", &item.id)?;
    check_storable_text("pep publisher", &item.publisher)?;
    check_storable_text("pep payload", &item.payload_xml)
}

/// How stale a caps record's `last_seen` may get before an announcement
/// writes it again: a day, so a popular `ver` costs one write a day.
const CAPS_REFRESH_MILLIS: i64 = 86_400_000;

/// The most caps records one statement of the sweep removes, and the most
/// statements one sweep runs: what is left waits for the next sweep.
const CAPS_PURGE_BATCH: i64 = 500;
const CAPS_PURGE_BATCHES: u32 = 20;

/// The contract's error for a failed caps operation (not about one account).
fn caps_error(operation: &'static str, error: StorageError) -> starling_api::ApiError {
    if error.is_failure() {
        tracing::warn!(operation, %error, "caps storage operation failed");
    }
    starling_api::ApiError::from(error)
}

#[async_trait]
impl PepStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.pep_nodes", skip_all, fields(db.system = self.db_system()))]
    async fn pep_nodes(&self, owner: &BareJid) -> ApiResult<Vec<PepNode>> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(Vec::new());
        };
        on_database!(self, pep_nodes(&account))
            .map_err(|error| into_api_error("pep_nodes", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.pep_node", skip_all, fields(db.system = self.db_system()))]
    async fn pep_node(&self, owner: &BareJid, node: &str) -> ApiResult<Option<PepNode>> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(None);
        };
        on_database!(self, pep_node(&account, node))
            .map_err(|error| into_api_error("pep_node", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.create_pep_node", skip_all, fields(db.system = self.db_system()))]
    async fn create_pep_node(
        &self,
        owner: &BareJid,
        node: &PepNode,
        limits: PepLimits,
    ) -> ApiResult<bool> {
        let result = match AccountAddress::of(owner) {
            None => Err(no_account(owner)),
            Some(account) => match check_node(node) {
                Err(error) => Err(error),
                Ok(()) => on_database!(self, create_pep_node(&account, node, limits)),
            },
        };
        result.map_err(|error| into_api_error("create_pep_node", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.configure_pep_node", skip_all, fields(db.system = self.db_system()))]
    async fn configure_pep_node(
        &self,
        owner: &BareJid,
        node: &PepNode,
        limits: PepLimits,
    ) -> ApiResult<()> {
        let result = match AccountAddress::of(owner) {
            None => Err(no_account(owner)),
            Some(account) => match check_node(node) {
                Err(error) => Err(error),
                Ok(()) => on_database!(self, configure_pep_node(&account, node, limits)),
            },
        };
        result.map_err(|error| into_api_error("configure_pep_node", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.delete_pep_node", skip_all, fields(db.system = self.db_system()))]
    async fn delete_pep_node(&self, owner: &BareJid, node: &str) -> ApiResult<bool> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(false);
        };
        on_database!(self, delete_pep_node(&account, node))
            .map_err(|error| into_api_error("delete_pep_node", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.publish_pep_item", skip_all, fields(db.system = self.db_system()))]
    async fn publish_pep_item(
        &self,
        owner: &BareJid,
        publish: &PepPublish,
        limits: PepLimits,
    ) -> ApiResult<PepPublishOutcome> {
        let checked = check_node(&PepNode {
            name: publish.node.clone(),
            config: publish
                .options
                .clone()
                .apply(starling_api::PepNodeConfig::default()),
        })
        .and_then(|()| publish.item.as_ref().map_or(Ok(()), check_item));
        let result = match (AccountAddress::of(owner), checked) {
            (None, _) => Err(no_account(owner)),
            (_, Err(error)) => Err(error),
            (Some(account), Ok(())) => {
                on_database!(self, publish_pep_item(&account, publish, limits))
            }
        };
        result.map_err(|error| into_api_error("publish_pep_item", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.pep_items", skip_all, fields(db.system = self.db_system()))]
    async fn pep_items(
        &self,
        owner: &BareJid,
        node: &str,
        ids: &[String],
        max: Option<u32>,
    ) -> ApiResult<Vec<PepItem>> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(Vec::new());
        };
        on_database!(self, pep_items(&account, node, ids, max))
            .map_err(|error| into_api_error("pep_items", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.pep_last_items", skip_all, fields(db.system = self.db_system()))]
    async fn pep_last_items(
        &self,
        owner: &BareJid,
        nodes: &[String],
    ) -> ApiResult<Vec<(PepNode, PepItem)>> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(Vec::new());
        };
        on_database!(self, pep_last_items(&account, nodes))
            .map_err(|error| into_api_error("pep_last_items", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.retract_pep_item", skip_all, fields(db.system = self.db_system()))]
    async fn retract_pep_item(
        &self,
        owner: &BareJid,
        node: &str,
        item_id: &str,
    ) -> ApiResult<bool> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(false);
        };
        on_database!(self, retract_pep_item(&account, node, item_id))
            .map_err(|error| into_api_error("retract_pep_item", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.pep_whitelist", skip_all, fields(db.system = self.db_system()))]
    async fn pep_whitelist(&self, owner: &BareJid, node: &str) -> ApiResult<Vec<BareJid>> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(Vec::new());
        };
        let stored = on_database!(self, pep_whitelist(&account, node))
            .map_err(|error| into_api_error("pep_whitelist", owner, error))?;
        Ok(stored
            .iter()
            .filter_map(|jid| match jid.parse::<BareJid>() {
                Ok(jid) => Some(jid),
                Err(error) => {
                    tracing::warn!(owner = %owner, jid, %error, "stored whitelist member does not parse, skipped");
                    None
                }
            })
            .collect())
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.update_pep_whitelist", skip_all, fields(db.system = self.db_system()))]
    async fn update_pep_whitelist(
        &self,
        owner: &BareJid,
        node: &str,
        add: &[BareJid],
        remove: &[BareJid],
        max_members: u32,
    ) -> ApiResult<()> {
        let add: Vec<String> = add.iter().map(ToString::to_string).collect();
        let remove: Vec<String> = remove.iter().map(ToString::to_string).collect();
        let result = match AccountAddress::of(owner) {
            None => Err(no_account(owner)),
            Some(account) => on_database!(
                self,
                update_pep_whitelist(&account, node, &add, &remove, max_members)
            ),
        };
        result.map_err(|error| into_api_error("update_pep_whitelist", owner, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.pep_subscriptions", skip_all, fields(db.system = self.db_system()))]
    async fn pep_subscriptions(
        &self,
        owner: &BareJid,
        node: &str,
    ) -> ApiResult<Vec<PepSubscription>> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(Vec::new());
        };
        let stored = on_database!(self, pep_subscriptions(&account, node))
            .map_err(|error| into_api_error("pep_subscriptions", owner, error))?;
        Ok(stored
            .into_iter()
            .filter_map(|(jid, state)| {
                match (
                    jid.parse::<Jid>(),
                    PepSubscriptionState::from_name(&state),
                ) {
                    (Ok(jid), Some(state)) => Some(PepSubscription { jid, state }),
                    _ => {
                        tracing::warn!(owner = %owner, jid, state, "stored pep subscription does not parse, skipped");
                        None
                    }
                }
            })
            .collect())
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.set_pep_subscription", skip_all, fields(db.system = self.db_system()))]
    async fn set_pep_subscription(
        &self,
        owner: &BareJid,
        node: &str,
        jid: &Jid,
        state: Option<PepSubscriptionState>,
        max_subscriptions: u32,
    ) -> ApiResult<Option<PepSubscriptionState>> {
        let jid_text = jid.to_string();
        let subscriber = jid.to_bare().to_string();
        let result = match AccountAddress::of(owner) {
            None => Err(no_account(owner)),
            Some(account) => on_database!(
                self,
                set_pep_subscription(
                    &account,
                    node,
                    &jid_text,
                    &subscriber,
                    state.map(PepSubscriptionState::as_str),
                    max_subscriptions
                )
            ),
        };
        let previous =
            result.map_err(|error| into_api_error("set_pep_subscription", owner, error))?;
        Ok(previous.and_then(|state| PepSubscriptionState::from_name(&state)))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.pep_subscribed_nodes", skip_all, fields(db.system = self.db_system()))]
    async fn pep_subscribed_nodes(
        &self,
        subscriber: &BareJid,
    ) -> ApiResult<Vec<PepSubscribedNode>> {
        let stored = on_database!(self, pep_subscribed_nodes(&subscriber.to_string()))
            .map_err(|error| into_api_error("pep_subscribed_nodes", subscriber, error))?;
        Ok(stored
            .into_iter()
            .filter_map(|(domain, localpart, node, jid)| {
                match (
                    BareJid::from_parts(Some(&localpart), &domain),
                    jid.parse::<Jid>(),
                ) {
                    (Ok(owner), Ok(jid)) => Some(PepSubscribedNode { owner, node, jid }),
                    _ => {
                        tracing::warn!(subscriber = %subscriber, node, jid, "stored pep subscription does not parse, skipped");
                        None
                    }
                }
            })
            .collect())
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.caps_features", skip_all, fields(db.system = self.db_system()))]
    async fn caps_features(&self, hash: &str, ver: &str) -> ApiResult<Option<Vec<String>>> {
        on_database!(self, caps_features(hash, ver))
            .map_err(|error| caps_error("caps_features", error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.put_caps", skip_all, fields(db.system = self.db_system()))]
    async fn put_caps(&self, record: &CapsRecord) -> ApiResult<()> {
        self.put_caps_seen_at(record, now_millis())
            .await
            .map_err(|error| caps_error("put_caps", error))
    }
}

impl Storage {
    /// [`PepStore::put_caps`] for a record a session announced at
    /// `seen_at_millis`: a new record is stored, a known one keeps its
    /// features and has its `last_seen` moved to `seen_at_millis` when it
    /// was more than a day older (at most one write a day per record).
    pub async fn put_caps_seen_at(
        &self,
        record: &CapsRecord,
        seen_at_millis: i64,
    ) -> Result<(), StorageError> {
        check_storable_text("caps ver", &record.ver)?;
        check_storable_text("caps hash", &record.hash)?;
        for feature in &record.features {
            check_storable_text("caps feature", feature)?;
            if feature.contains('\n') {
                return Err(StorageError::Invalid(
                    "a caps feature contains a line break".into(),
                ));
            }
        }
        on_database!(self, put_caps(record, seen_at_millis, CAPS_REFRESH_MILLIS))
    }

    /// Remove the capability records (XEP-0115) no session announced since
    /// `cutoff_millis` (milliseconds since the Unix epoch), oldest first, at
    /// most `CAPS_PURGE_BATCH` x `CAPS_PURGE_BATCHES` rows; returns how many
    /// went. A router that still remembers one keeps using it; another asks
    /// the next session announcing it again (XEP-0115 section 6.2).
    pub async fn purge_caps_seen_before(&self, cutoff_millis: i64) -> Result<u64, StorageError> {
        let mut purged = 0;
        for _ in 0..CAPS_PURGE_BATCHES {
            let batch = on_database!(self, purge_caps(cutoff_millis, CAPS_PURGE_BATCH))?;
            purged += batch;
            if batch < CAPS_PURGE_BATCH as u64 {
                break;
            }
        }
        Ok(purged)
    }

    /// Purge the capability records unseen for `retention`
    /// (`pep.caps_retention_days`) now and then every `every`, until the
    /// task is aborted. Idempotent, so every storage replica may run it.
    pub fn spawn_caps_purge(
        &self,
        retention: Duration,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        crate::spawn_every(self, every, move |storage| async move {
            let retention_millis = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let cutoff = now_millis().saturating_sub(retention_millis);
            match storage.purge_caps_seen_before(cutoff).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "unseen caps records purged"),
                Err(error) => tracing::warn!(%error, "caps records purge failed"),
            }
        })
    }
}
