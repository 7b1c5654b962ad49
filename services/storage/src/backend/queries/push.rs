//! Push registrations (XEP-0357): one row per (app server JID, node) of an
//! account, numbered in the order enabled.

use sqlx::{Pool, Row};

use super::{lock_account, lock_account_if_any, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::AccountAddress;
use starling_api::PushRegistration;

/// The account's registrations, oldest first.
pub(crate) async fn push_registrations(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<Vec<PushRegistration>, StorageError> {
    let rows = sqlx::query(
        "SELECT p.service_jid, p.node, p.publish_options FROM push_registrations p \
         JOIN accounts a ON a.id = p.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 ORDER BY p.position",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(PushRegistration {
                service_jid: row.try_get(0)?,
                node: row.try_get(1)?,
                publish_options_xml: row.try_get(2)?,
            })
        })
        .collect()
}

/// Insert one registration as the account's newest, replacing the same
/// (JID, node), under the account's lock: the count and the insert cannot
/// race with another enable of the same account.
pub(crate) async fn put_push_registration(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    registration: &PushRegistration,
    max_per_account: u32,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    let others: i64 = sqlx::query(
        "SELECT COUNT(*) FROM push_registrations \
         WHERE account_id = $1 AND NOT (service_jid = $2 AND node = $3)",
    )
    .bind(account_id)
    .bind(&registration.service_jid)
    .bind(&registration.node)
    .fetch_one(&mut *transaction)
    .await?
    .try_get(0)?;
    if others >= i64::from(max_per_account) {
        transaction.rollback().await?;
        return Err(StorageError::PushRegistrationsFull {
            user: account.to_string(),
            limit: max_per_account,
        });
    }
    insert_registration(&mut transaction, account_id, registration, true).await?;
    transaction.commit().await?;
    Ok(())
}

/// Insert (or, with `replace`, replace) a registration with the next position.
async fn insert_registration(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account_id: i64,
    registration: &PushRegistration,
    replace: bool,
) -> Result<(), StorageError> {
    let conflict = if replace {
        "ON CONFLICT (account_id, service_jid, node) DO UPDATE \
         SET publish_options = excluded.publish_options, position = excluded.position"
    } else {
        "ON CONFLICT (account_id, service_jid, node) DO NOTHING"
    };
    sqlx::query(&format!(
        "INSERT INTO push_registrations (account_id, service_jid, node, publish_options, position) \
         SELECT $1, $2, $3, $4, COALESCE(MAX(position), 0) + 1 FROM push_registrations \
         WHERE account_id = $1 {conflict}"
    ))
    .bind(account_id)
    .bind(&registration.service_jid)
    .bind(&registration.node)
    .bind(&registration.publish_options_xml)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Remove the registrations of one app server (of one node when given).
pub(crate) async fn remove_push_registrations(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    service_jid: &str,
    node: Option<&str>,
) -> Result<u64, StorageError> {
    let removed = sqlx::query(
        "DELETE FROM push_registrations \
         WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND localpart = $2) \
         AND service_jid = $3 AND ($4 IS NULL OR node = $4)",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(service_jid)
    .bind(node)
    .execute(pool)
    .await?;
    Ok(removed.rows_affected())
}

/// The account documents `push` of the previous layout: (domain,
/// localpart, XML), at most `limit` of them.
pub(crate) async fn legacy_push_documents(
    pool: &Pool<Db>,
    limit: i64,
) -> Result<Vec<(String, String, String)>, StorageError> {
    let rows = sqlx::query(
        "SELECT a.domain, a.localpart, d.xml FROM account_documents d \
         JOIN accounts a ON a.id = d.account_id WHERE d.doc_key = 'push' LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// Move one account's `push` document into rows: its registrations are
/// added (those enabled since stay as they are) and the document goes, in
/// one transaction; doing it twice changes nothing.
pub(crate) async fn move_push_document(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    registrations: &[PushRegistration],
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some(account_id) = lock_account_if_any(&mut transaction, account).await? else {
        transaction.rollback().await?;
        return Ok(());
    };
    for registration in registrations {
        insert_registration(&mut transaction, account_id, registration, false).await?;
    }
    sqlx::query("DELETE FROM account_documents WHERE account_id = $1 AND doc_key = 'push'")
        .bind(account_id)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(())
}
