//! XML documents kept on an account's behalf (private XML storage,
//! XEP-0049; the vCard, XEP-0054), one row per key, bounded in bytes per account.

use sqlx::{Pool, Row};

use super::{lock_account, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::AccountAddress;

/// The document under `key`, if any.
pub(crate) async fn account_data(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    key: &str,
) -> Result<Option<String>, StorageError> {
    let row = sqlx::query(
        "SELECT d.xml FROM account_documents d JOIN accounts a ON a.id = d.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 AND d.doc_key = $3",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => Ok(Some(row.try_get(0)?)),
        None => Ok(None),
    }
}

/// Store or remove the document under `key`. The account's row is locked
/// first, so the byte bound holds under concurrent writes.
pub(crate) async fn put_account_data(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    key: &str,
    xml: Option<&str>,
    max_bytes: u64,
    now_millis: i64,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    let Some(xml) = xml else {
        sqlx::query("DELETE FROM account_documents WHERE account_id = $1 AND doc_key = $2")
            .bind(account_id)
            .bind(key)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        return Ok(());
    };
    let others: i64 = sqlx::query(
        "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM account_documents \
         WHERE account_id = $1 AND doc_key <> $2",
    )
    .bind(account_id)
    .bind(key)
    .fetch_one(&mut *transaction)
    .await?
    .try_get(0)?;
    let size = (key.len() + xml.len()) as u64;
    if u64::try_from(others).unwrap_or(0) + size > max_bytes {
        transaction.rollback().await?;
        return Err(StorageError::AccountDataFull {
            user: account.to_string(),
            limit: max_bytes,
        });
    }
    sqlx::query(
        "INSERT INTO account_documents (account_id, doc_key, xml, size_bytes, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (account_id, doc_key) DO UPDATE \
         SET xml = excluded.xml, size_bytes = excluded.size_bytes, updated_at = excluded.updated_at",
    )
    .bind(account_id)
    .bind(key)
    .bind(xml)
    .bind(size as i64)
    .bind(now_millis)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(())
}
