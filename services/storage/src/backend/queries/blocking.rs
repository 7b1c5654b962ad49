//! Block lists (XEP-0191, with XEP-0377 reports): one row per blocked address.

use sqlx::{Pool, Row};

use super::{lock_account_if_any, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::{AccountAddress, BlockRow};

/// The account's block items, sorted by address.
pub(crate) async fn blocklist(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<Vec<BlockRow>, StorageError> {
    let rows = sqlx::query(
        "SELECT b.jid, b.report_reason, b.report_text FROM blocklist_items b \
         JOIN accounts a ON a.id = b.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 ORDER BY b.jid",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(BlockRow {
                jid: row.try_get(0)?,
                report_reason: row.try_get(1)?,
                report_text: row.try_get(2)?,
            })
        })
        .collect()
}

/// Add block items in one transaction under the account's lock: the count
/// and the insert cannot race with another block of the same account, so
/// the list never holds more than `max_items`. An address already blocked
/// keeps its row (its report replaced by a new one).
pub(crate) async fn block(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    items: &[BlockRow],
    max_items: u32,
    now_millis: i64,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some(account_id) = lock_account_if_any(&mut transaction, account).await? else {
        return Err(StorageError::AccountNotFound(account.to_string()));
    };
    let existing: Vec<String> =
        sqlx::query("SELECT jid FROM blocklist_items WHERE account_id = $1")
            .bind(account_id)
            .fetch_all(&mut *transaction)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
    let existing: std::collections::HashSet<&str> = existing.iter().map(String::as_str).collect();
    let mut new_addresses: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for item in items {
        if !existing.contains(item.jid.as_str()) {
            new_addresses.insert(item.jid.as_str());
        }
    }
    if existing.len() + new_addresses.len() > max_items as usize {
        transaction.rollback().await?;
        return Err(StorageError::BlocklistFull {
            user: account.to_string(),
            limit: max_items,
        });
    }
    for item in items {
        sqlx::query(
            "INSERT INTO blocklist_items (account_id, jid, report_reason, report_text, blocked_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account_id, jid) DO UPDATE SET \
             report_reason = COALESCE(excluded.report_reason, blocklist_items.report_reason), \
             report_text = CASE WHEN excluded.report_reason IS NULL \
             THEN blocklist_items.report_text ELSE excluded.report_text END",
        )
        .bind(account_id)
        .bind(&item.jid)
        .bind(item.report_reason.as_deref())
        .bind(item.report_text.as_deref())
        .bind(now_millis)
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Remove these addresses, or every item when `jids` is empty; returns the
/// removed addresses.
pub(crate) async fn unblock(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    jids: &[String],
) -> Result<Vec<String>, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some(account_id) = lock_account_if_any(&mut transaction, account).await? else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    if jids.is_empty() {
        let rows = sqlx::query("DELETE FROM blocklist_items WHERE account_id = $1 RETURNING jid")
            .bind(account_id)
            .fetch_all(&mut *transaction)
            .await?;
        for row in &rows {
            removed.push(row.try_get(0)?);
        }
    } else {
        for jid in jids {
            let row = sqlx::query(
                "DELETE FROM blocklist_items WHERE account_id = $1 AND jid = $2 RETURNING jid",
            )
            .bind(account_id)
            .bind(jid)
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(row) = row {
                removed.push(row.try_get(0)?);
            }
        }
    }
    transaction.commit().await?;
    removed.sort();
    Ok(removed)
}
