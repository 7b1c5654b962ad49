//! The offline message queue (XEP-0160).

use sqlx::{Pool, Row};
use starling_api::OfflinePage;

use super::{account_id, increment_account_counter, AccountCounter, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::{AccountAddress, OfflineQuota};

/// Append a stanza to the offline queue (XEP-0160), refusing past the caps
/// (messages, and bytes: what a login's flush holds at most). The count runs
/// after the account row is locked, so the caps hold under concurrent stores.
pub(crate) async fn store_offline(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    stanza_xml: &str,
    quota: OfflineQuota,
    now_millis: i64,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some((account_id, seq)) =
        increment_account_counter(&mut transaction, account, AccountCounter::OfflineSeq).await?
    else {
        return Err(StorageError::AccountNotFound(account.to_string()));
    };
    let row = sqlx::query(
        "SELECT COUNT(*), COALESCE(SUM(OCTET_LENGTH(stanza_xml)), 0) \
         FROM offline_messages WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_one(&mut *transaction)
    .await?;
    let queued: i64 = row.try_get(0)?;
    let queued_bytes: i64 = row.try_get(1)?;
    if queued >= i64::from(quota.messages) {
        transaction.rollback().await?;
        return Err(StorageError::OfflineQueueFull {
            user: account.to_string(),
            limit: quota.messages,
        });
    }
    let stanza_bytes = i64::try_from(stanza_xml.len()).unwrap_or(i64::MAX);
    if queued_bytes.saturating_add(stanza_bytes) > i64::try_from(quota.bytes).unwrap_or(i64::MAX) {
        transaction.rollback().await?;
        return Err(StorageError::OfflineQueueBytesFull {
            user: account.to_string(),
            limit: quota.bytes,
        });
    }
    sqlx::query("INSERT INTO offline_messages (account_id, seq, stanza_xml, stored_at) VALUES ($1, $2, $3, $4)")
        .bind(account_id)
        .bind(seq)
        .bind(stanza_xml)
        .bind(now_millis)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(())
}

/// Remove and return the oldest queued stanzas, oldest first: as many as fit
/// in `max_bytes` and `max_messages` (at least one when any waits), and
/// whether more were left. The sizes are read first, without the stanzas;
/// then one `DELETE ... RETURNING` takes the page: its rows are gone exactly
/// when they are returned, a crash before the commit leaves them in place,
/// and two flushes at once never return the same row.
pub(crate) async fn take_offline(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    max_messages: u32,
    max_bytes: u64,
) -> Result<OfflinePage, StorageError> {
    let Some(account_id) = account_id(pool, account).await? else {
        return Ok(OfflinePage::default());
    };
    // One row past the page tells whether more are left.
    let sizes = sqlx::query(
        "SELECT seq, CAST(OCTET_LENGTH(stanza_xml) AS BIGINT) FROM offline_messages \
         WHERE account_id = $1 ORDER BY seq LIMIT $2",
    )
    .bind(account_id)
    .bind(i64::from(max_messages.max(1)) + 1)
    .fetch_all(pool)
    .await?;
    let mut last_seq = None;
    let mut page_bytes = 0u64;
    let mut taken = 0usize;
    for row in &sizes {
        let seq: i64 = row.try_get(0)?;
        let bytes = u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0);
        let fits = taken < max_messages.max(1) as usize
            && (taken == 0 || page_bytes.saturating_add(bytes) <= max_bytes);
        if !fits {
            break;
        }
        page_bytes = page_bytes.saturating_add(bytes);
        last_seq = Some(seq);
        taken += 1;
    }
    let Some(last_seq) = last_seq else {
        return Ok(OfflinePage::default());
    };
    let rows = sqlx::query(
        "DELETE FROM offline_messages WHERE account_id = $1 AND seq <= $2 \
         RETURNING seq, stanza_xml",
    )
    .bind(account_id)
    .bind(last_seq)
    .fetch_all(pool)
    .await?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        messages.push((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?));
    }
    // RETURNING gives no order guarantee.
    messages.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(OfflinePage {
        stanzas: messages
            .into_iter()
            .map(|(_, stanza_xml)| stanza_xml)
            .collect(),
        more: sizes.len() > taken,
    })
}

/// How many stanzas wait in the offline queue.
pub(crate) async fn count_offline(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<u64, StorageError> {
    let count: i64 = sqlx::query(
        "SELECT COUNT(*) FROM offline_messages o JOIN accounts a ON a.id = o.account_id \
         WHERE a.domain = $1 AND a.localpart = $2",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    u64::try_from(count)
        .map_err(|_| StorageError::CorruptData(format!("negative offline count {count}")))
}

/// How many stanzas wait in every offline queue together.
pub(crate) async fn count_all_offline(pool: &Pool<Db>) -> Result<u64, StorageError> {
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM offline_messages")
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    u64::try_from(count)
        .map_err(|_| StorageError::CorruptData(format!("negative offline count {count}")))
}
