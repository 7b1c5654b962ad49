//! Accounts and their SCRAM credentials (RFC 5802 section 3).

use sqlx::{Pool, Row};
use starling_api::{ScramCredentials, StoredCredentials};

use super::{lock_account, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::{
    credentials_from_rows, AccountAddress, CredentialsRow, HASH_SHA1, HASH_SHA256,
};

/// Insert an account with its credentials; `AccountExists` if the address is taken.
pub(crate) async fn create_account(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    credentials: &StoredCredentials,
    now_millis: i64,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    // The roster version starts at the creation time so that a re-created
    // account never repeats a version a client cached for the removed one
    // (RFC 6121 section 2.6.1: a version identifies one state of the roster).
    let inserted = sqlx::query(
        "INSERT INTO accounts (domain, localpart, created_at, roster_version, last_offline_seq) \
         VALUES ($1, $2, $3, $3, 0) \
         ON CONFLICT (domain, localpart) DO NOTHING \
         RETURNING id",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(now_millis)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(row) = inserted else {
        return Err(StorageError::AccountExists(account.to_string()));
    };
    let account_id: i64 = row.try_get(0)?;
    for (hash, keys) in [
        (HASH_SHA1, &credentials.sha1),
        (HASH_SHA256, &credentials.sha256),
    ] {
        upsert_credentials(&mut transaction, account_id, hash, keys).await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Replace the credentials of an account; `AccountNotFound` if there is none.
pub(crate) async fn set_credentials(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    credentials: &StoredCredentials,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    for (hash, keys) in [
        (HASH_SHA1, &credentials.sha1),
        (HASH_SHA256, &credentials.sha256),
    ] {
        upsert_credentials(&mut transaction, account_id, hash, keys).await?;
    }
    transaction.commit().await?;
    Ok(())
}

async fn upsert_credentials(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account_id: i64,
    hash: &str,
    keys: &ScramCredentials,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO scram_credentials (account_id, hash, salt, iterations, stored_key, server_key) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (account_id, hash) DO UPDATE SET \
         salt = excluded.salt, iterations = excluded.iterations, \
         stored_key = excluded.stored_key, server_key = excluded.server_key",
    )
    .bind(account_id)
    .bind(hash)
    .bind(keys.salt.as_slice())
    .bind(i64::from(keys.iterations))
    .bind(keys.stored_key.as_slice())
    .bind(keys.server_key.as_slice())
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Remove an account and everything it owns, in one transaction.
pub(crate) async fn remove_account(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    // ON DELETE CASCADE would do it; deleting explicitly keeps the removal
    // complete even on a SQLite connection opened without foreign keys.
    for statement in [
        "DELETE FROM offline_messages WHERE account_id = $1",
        "DELETE FROM roster_groups WHERE account_id = $1",
        "DELETE FROM roster_items WHERE account_id = $1",
        "DELETE FROM scram_credentials WHERE account_id = $1",
        "DELETE FROM accounts WHERE id = $1",
    ] {
        sqlx::query(statement)
            .bind(account_id)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// The localparts of a domain's accounts, unsorted.
pub(crate) async fn account_localparts(
    pool: &Pool<Db>,
    domain: &str,
) -> Result<Vec<String>, StorageError> {
    let rows = sqlx::query("SELECT localpart FROM accounts WHERE domain = $1")
        .bind(domain)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// The credentials of an account, `None` when it does not exist.
pub(crate) async fn credentials(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<Option<StoredCredentials>, StorageError> {
    let rows = sqlx::query(
        "SELECT c.hash, c.salt, c.iterations, c.stored_key, c.server_key \
         FROM accounts a JOIN scram_credentials c ON c.account_id = a.id \
         WHERE a.domain = $1 AND a.localpart = $2",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_all(pool)
    .await?;
    let mut credential_rows = Vec::with_capacity(rows.len());
    for row in &rows {
        credential_rows.push(CredentialsRow {
            hash: row.try_get(0)?,
            salt: row.try_get(1)?,
            iterations: row.try_get(2)?,
            stored_key: row.try_get(3)?,
            server_key: row.try_get(4)?,
        });
    }
    credentials_from_rows(account, credential_rows)
}
