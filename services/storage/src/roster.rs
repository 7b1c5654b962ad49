//! Rosters: [`RosterStore`] for [`Storage`] (queries in
//! `backend/queries/roster.rs`, RFC 6121 sections 2 and 2.6).

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{ApiResult, RosterItem, RosterStore, SubscriptionEntry};
use starling_jid::BareJid;

use crate::backend;
use crate::records::{check_roster_item, AccountAddress, RosterQuota};
use crate::{into_api_error, no_account, DatabasePool, Storage, StorageError};

#[async_trait]
impl RosterStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.roster", skip_all, fields(db.system = self.db_system()))]
    async fn roster(&self, user: &BareJid) -> ApiResult<(u64, Vec<RosterItem>)> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok((0, Vec::new()));
        };
        let roster = on_database!(self, roster(&account, None))
            .map_err(|error| into_api_error("roster", user, error))?;
        let (version, mut items) = roster.unwrap_or_default();
        items.sort_by(|left, right| left.jid.cmp(&right.jid));
        Ok((version, items))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.subscriptions", skip_all, fields(db.system = self.db_system()))]
    async fn subscriptions(&self, user: &BareJid) -> ApiResult<Vec<SubscriptionEntry>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(Vec::new());
        };
        let mut entries = on_database!(self, subscriptions(&account))
            .map_err(|error| into_api_error("subscriptions", user, error))?;
        // The order of `roster`: by JID, not by its text.
        entries.sort_by(|left, right| left.jid.cmp(&right.jid));
        Ok(entries)
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.roster_item", skip_all, fields(db.system = self.db_system()))]
    async fn roster_item(
        &self,
        user: &BareJid,
        contact: &BareJid,
    ) -> ApiResult<Option<RosterItem>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(None);
        };
        let contact_text = contact.to_string();
        let roster = on_database!(self, roster(&account, Some(contact_text.as_str())))
            .map_err(|error| into_api_error("roster_item", user, error))?;
        Ok(roster.and_then(|(_, items)| items.into_iter().next()))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.put_roster_item", skip_all, fields(db.system = self.db_system()))]
    async fn put_roster_item(&self, user: &BareJid, item: &RosterItem) -> ApiResult<u64> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => match check_roster_item(item) {
                Err(error) => Err(error),
                Ok(()) => {
                    let quota = RosterQuota {
                        items: self.max_roster_items,
                        bytes: self.max_roster_bytes,
                    };
                    on_database!(self, put_roster_item(&account, item, quota))
                }
            },
        };
        result.map_err(|error| into_api_error("put_roster_item", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.remove_roster_item", skip_all, fields(db.system = self.db_system()))]
    async fn remove_roster_item(
        &self,
        user: &BareJid,
        contact: &BareJid,
    ) -> ApiResult<Option<u64>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(None);
        };
        let contact_text = contact.to_string();
        on_database!(self, remove_roster_item(&account, &contact_text))
            .map_err(|error| into_api_error("remove_roster_item", user, error))
    }
}
