//! HTTP File Upload (XEP-0363): slots per account, with the quota checked
//! in the transaction that stores a slot.

use sqlx::{Pool, Row};

use super::{lock_account, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::AccountAddress;
use starling_api::{UploadQuota, UploadSlotGrant, UploadSlotRecord};

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Store a slot unless it would take the account past its quota. The
/// account row is locked first (the lock order of `mod.rs`), so two
/// concurrent requests of one account are counted one after the other.
pub(crate) async fn create_upload_slot(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    slot: &UploadSlotRecord,
    quota: UploadQuota,
) -> Result<UploadSlotGrant, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    if quota.bytes > 0 {
        // Uploaded files still kept, and slots still waiting for their PUT.
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT), \
                    MIN(uploaded_at), \
                    MIN(CASE WHEN uploaded_at IS NULL THEN created_at ELSE NULL END) \
             FROM upload_slots WHERE account_id = $1 AND \
             ((uploaded_at IS NOT NULL AND uploaded_at >= $2) OR (uploaded_at IS NULL AND created_at >= $3))",
        )
        .bind(account_id)
        .bind(quota.now_millis.saturating_sub(quota.stored_for_millis))
        .bind(quota.now_millis.saturating_sub(quota.pending_for_millis))
        .fetch_one(&mut *transaction)
        .await?;
        let used: i64 = row.try_get(0)?;
        let used = u64::try_from(used).unwrap_or(0);
        if used.saturating_add(slot.size) > quota.bytes {
            let oldest_stored: Option<i64> = row.try_get(1)?;
            let oldest_pending: Option<i64> = row.try_get(2)?;
            // The instant the oldest counted slot stops counting.
            let retry_at_millis = [
                oldest_stored.map(|at| at.saturating_add(quota.stored_for_millis)),
                oldest_pending.map(|at| at.saturating_add(quota.pending_for_millis)),
            ]
            .into_iter()
            .flatten()
            .min();
            transaction.rollback().await?;
            return Ok(UploadSlotGrant::QuotaExceeded {
                used_bytes: used,
                retry_at_millis,
            });
        }
    }
    sqlx::query(
        "INSERT INTO upload_slots (id, account_id, file_name, size, content_type, token_hash, created_at, uploaded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
    )
    .bind(&slot.id)
    .bind(account_id)
    .bind(&slot.file_name)
    .bind(to_i64(slot.size))
    .bind(slot.content_type.as_deref())
    .bind(&slot.token_hash)
    .bind(slot.created_at_millis)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(UploadSlotGrant::Granted)
}

/// One slot by id.
pub(crate) async fn upload_slot(
    pool: &Pool<Db>,
    id: &str,
) -> Result<Option<UploadSlotRecord>, StorageError> {
    let row = sqlx::query(
        "SELECT id, file_name, size, content_type, token_hash, created_at, uploaded_at \
         FROM upload_slots WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let size: i64 = row.try_get(2)?;
    Ok(Some(UploadSlotRecord {
        id: row.try_get(0)?,
        file_name: row.try_get(1)?,
        size: u64::try_from(size).unwrap_or(0),
        content_type: row.try_get(3)?,
        token_hash: row.try_get(4)?,
        created_at_millis: row.try_get(5)?,
        uploaded_at_millis: row.try_get(6)?,
    }))
}

/// Mark a slot's file uploaded, once (the same call again, a retry, is answered `true` again).
pub(crate) async fn complete_upload_slot(
    pool: &Pool<Db>,
    id: &str,
    uploaded_at_millis: i64,
) -> Result<bool, StorageError> {
    let updated = sqlx::query(
        "UPDATE upload_slots SET uploaded_at = $2 WHERE id = $1 AND (uploaded_at IS NULL OR uploaded_at = $2)",
    )
    .bind(id)
    .bind(uploaded_at_millis)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Remove the slots whose file (or, never used, whose grant) is older than
/// `cutoff_millis`; returns how many went. Idempotent: every replica may run it.
pub(crate) async fn purge_upload_slots(
    pool: &Pool<Db>,
    cutoff_millis: i64,
) -> Result<u64, StorageError> {
    let removed =
        sqlx::query("DELETE FROM upload_slots WHERE COALESCE(uploaded_at, created_at) < $1")
            .bind(cutoff_millis)
            .execute(pool)
            .await?;
    Ok(removed.rows_affected())
}
