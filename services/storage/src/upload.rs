//! HTTP File Upload slots (XEP-0363): [`UploadStore`] for [`Storage`]
//! (queries in `backend/queries/upload.rs`) and the purge of expired slots.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use starling_api::{
    ApiError, ApiResult, UploadQuota, UploadSlotGrant, UploadSlotRecord, UploadStore,
};
use starling_jid::BareJid;

use crate::backend;
use crate::records::AccountAddress;
use crate::{into_api_error, no_account, now_millis, DatabasePool, Storage, StorageError};

/// A slot operation by id, which names no account: logged like
/// `into_api_error` does for one that does.
fn slot_error(operation: &'static str, id: &str, error: StorageError) -> ApiError {
    if error.is_unavailable() {
        tracing::warn!(operation, slot = id, %error, "storage unavailable");
    } else {
        tracing::error!(operation, slot = id, %error, "storage operation failed");
    }
    ApiError::from(error)
}

#[async_trait]
impl UploadStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.create_upload_slot", skip_all, fields(db.system = self.db_system()))]
    async fn create_upload_slot(
        &self,
        user: &BareJid,
        slot: &UploadSlotRecord,
        quota: UploadQuota,
    ) -> ApiResult<UploadSlotGrant> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => on_database!(self, create_upload_slot(&account, slot, quota)),
        };
        result.map_err(|error| into_api_error("create_upload_slot", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.upload_slot", skip_all, fields(db.system = self.db_system()))]
    async fn upload_slot(&self, id: &str) -> ApiResult<Option<UploadSlotRecord>> {
        on_database!(self, upload_slot(id)).map_err(|error| slot_error("upload_slot", id, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.complete_upload_slot", skip_all, fields(db.system = self.db_system()))]
    async fn complete_upload_slot(&self, id: &str, uploaded_at_millis: i64) -> ApiResult<bool> {
        on_database!(self, complete_upload_slot(id, uploaded_at_millis))
            .map_err(|error| slot_error("complete_upload_slot", id, error))
    }
}

impl Storage {
    /// Remove the slots whose file was uploaded more than `expire_after`
    /// ago, and the slots never used that were granted that long ago (their
    /// files are removed by the connection-managers); returns how many went.
    pub async fn purge_upload_slots(&self, expire_after: Duration) -> Result<u64, StorageError> {
        let expire_millis = i64::try_from(expire_after.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_millis().saturating_sub(expire_millis);
        on_database!(self, purge_upload_slots(cutoff))
    }

    /// Purge expired upload slots now and then every `every`, until the task
    /// is aborted. Idempotent, so every storage replica may run it.
    pub fn spawn_upload_purge(
        &self,
        expire_after: Duration,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        crate::spawn_every(self, every, move |storage| async move {
            match storage.purge_upload_slots(expire_after).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "upload slots expired"),
                Err(error) => tracing::warn!(%error, "upload slot purge failed"),
            }
        })
    }
}
