//! The offline queue: [`OfflineStore`] for [`Storage`] (queries in
//! `backend/queries/offline.rs`, XEP-0160).

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{ApiResult, OfflinePage, OfflineStore};
use starling_jid::BareJid;

use crate::backend;
use crate::records::{check_storable_text, AccountAddress, OfflineQuota};
use crate::{into_api_error, no_account, now_millis, DatabasePool, Storage, StorageError};

#[async_trait]
impl OfflineStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.store_offline", skip_all, fields(db.system = self.db_system()))]
    async fn store_offline(&self, user: &BareJid, stanza_xml: &str) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => match check_storable_text("offline stanza", stanza_xml) {
                Err(error) => Err(error),
                Ok(()) => on_database!(
                    self,
                    store_offline(
                        &account,
                        stanza_xml,
                        OfflineQuota {
                            messages: self.max_offline_per_user,
                            bytes: self.max_offline_bytes_per_user,
                        },
                        now_millis()
                    )
                ),
            },
        };
        if result.is_ok() {
            self.metrics.offline_stored();
        }
        result.map_err(|error| into_api_error("store_offline", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.take_offline", skip_all, fields(db.system = self.db_system()))]
    async fn take_offline(
        &self,
        user: &BareJid,
        max_messages: u32,
        max_bytes: u64,
    ) -> ApiResult<OfflinePage> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(OfflinePage::default());
        };
        let page = on_database!(self, take_offline(&account, max_messages, max_bytes))
            .map_err(|error| into_api_error("take_offline", user, error))?;
        self.metrics.offline_taken(page.stanzas.len());
        Ok(page)
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.count_offline", skip_all, fields(db.system = self.db_system()))]
    async fn count_offline(&self, user: &BareJid) -> ApiResult<u64> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(0);
        };
        on_database!(self, count_offline(&account))
            .map_err(|error| into_api_error("count_offline", user, error))
    }
}
