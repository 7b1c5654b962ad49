//! The storage queries (accounts and SCRAM credentials, rosters per RFC 6121
//! section 2, the XEP-0160 offline queue), written once in the SQL that
//! SQLite and PostgreSQL share (`$N` placeholders, `RETURNING`,
//! `ON CONFLICT`) and compiled once per driver: the parent module names the
//! driver as `Db` and the statement that opens a write transaction.
//!
//! Lock order, to keep PostgreSQL free of deadlocks: every write transaction
//! first updates (so locks) the owner's `accounts` row, then touches its other rows.

use sqlx::{Pool, Row};
use starling_api::{RosterItem, ScramCredentials, StoredCredentials};

use super::{Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::{
    credentials_from_rows, roster_item_from_columns, version_from_column, AccountAddress,
    CredentialsRow, RosterItemColumns, HASH_SHA1, HASH_SHA256,
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

/// A counter on the account row, bumped in the same transaction as the change it numbers.
#[derive(Clone, Copy)]
enum AccountCounter {
    /// RFC 6121 section 2.6: every roster change gets a new, strictly greater version.
    RosterVersion,
    /// The offline queue's sequence, oldest first.
    OfflineSeq,
}

/// Lock the account's row for the rest of the transaction, increment one of
/// its counters and return `(account id, new value)`; `None` when there is no
/// such account.
async fn increment_account_counter(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account: &AccountAddress<'_>,
    counter: AccountCounter,
) -> Result<Option<(i64, i64)>, StorageError> {
    let statement = match counter {
        AccountCounter::RosterVersion => {
            "UPDATE accounts SET roster_version = roster_version + 1 \
             WHERE domain = $1 AND localpart = $2 RETURNING id, roster_version"
        }
        AccountCounter::OfflineSeq => {
            "UPDATE accounts SET last_offline_seq = last_offline_seq + 1 \
             WHERE domain = $1 AND localpart = $2 RETURNING id, last_offline_seq"
        }
    };
    let row = sqlx::query(statement)
        .bind(account.domain)
        .bind(account.localpart)
        .fetch_optional(&mut **transaction)
        .await?;
    match row {
        Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?))),
        None => Ok(None),
    }
}

/// Lock the account's row for the rest of the transaction and return its id;
/// `AccountNotFound` if there is no such account.
async fn lock_account(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account: &AccountAddress<'_>,
) -> Result<i64, StorageError> {
    // A no-op update: SQLite has no SELECT ... FOR UPDATE.
    let row = sqlx::query(
        "UPDATE accounts SET last_offline_seq = last_offline_seq \
         WHERE domain = $1 AND localpart = $2 RETURNING id",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_optional(&mut **transaction)
    .await?;
    match row {
        Some(row) => Ok(row.try_get(0)?),
        None => Err(StorageError::AccountNotFound(account.to_string())),
    }
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

/// The roster version with every item and its groups, in one statement so
/// that version and items are one consistent snapshot. An account without
/// items yields one row with NULL item columns; no account yields no row.
const ROSTER_SELECT: &str =
    "SELECT a.roster_version, r.contact, r.name, r.subscription, r.pending_out, \
     r.pending_in, r.pending_in_stanza, r.in_roster, g.group_name \
     FROM accounts a \
     LEFT JOIN roster_items r ON r.account_id = a.id \
     LEFT JOIN roster_groups g ON g.account_id = r.account_id AND g.contact = r.contact \
     WHERE a.domain = $1 AND a.localpart = $2 \
     ORDER BY r.contact, g.position";

/// The same for one contact; the contact condition sits in the join so that
/// an account without that item still yields its version row.
const ROSTER_ITEM_SELECT: &str =
    "SELECT a.roster_version, r.contact, r.name, r.subscription, r.pending_out, \
     r.pending_in, r.pending_in_stanza, r.in_roster, g.group_name \
     FROM accounts a \
     LEFT JOIN roster_items r ON r.account_id = a.id AND r.contact = $3 \
     LEFT JOIN roster_groups g ON g.account_id = r.account_id AND g.contact = r.contact \
     WHERE a.domain = $1 AND a.localpart = $2 \
     ORDER BY r.contact, g.position";

/// The roster version and every item (visible and placeholders), or `None`
/// when there is no such account. When `only_contact` is given, only that item.
pub(crate) async fn roster(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    only_contact: Option<&str>,
) -> Result<Option<(u64, Vec<RosterItem>)>, StorageError> {
    let query = match only_contact {
        None => sqlx::query(ROSTER_SELECT)
            .bind(account.domain)
            .bind(account.localpart),
        Some(contact) => sqlx::query(ROSTER_ITEM_SELECT)
            .bind(account.domain)
            .bind(account.localpart)
            .bind(contact),
    };
    let rows = query.fetch_all(pool).await?;
    let Some(first_row) = rows.first() else {
        return Ok(None);
    };
    let version = version_from_column(first_row.try_get(0)?)?;
    let mut items: Vec<RosterItem> = Vec::new();
    // The contact of the previous row, and whether its item was kept: the
    // rows of one contact (one per group) are adjacent.
    let mut last_contact: Option<(String, bool)> = None;
    for row in &rows {
        let Some(contact) = row.try_get::<Option<String>, _>(1)? else {
            continue;
        };
        let group: Option<String> = row.try_get(8)?;
        if let Some((previous_contact, kept)) = &last_contact {
            if *previous_contact == contact {
                if let (true, Some(item), Some(group)) = (*kept, items.last_mut(), group) {
                    item.groups.push(group);
                }
                continue;
            }
        }
        let contact_text = contact.clone();
        let columns = RosterItemColumns {
            contact,
            name: row.try_get(2)?,
            subscription: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            pending_out: row.try_get::<Option<bool>, _>(4)?.unwrap_or_default(),
            pending_in: row.try_get::<Option<bool>, _>(5)?.unwrap_or_default(),
            pending_in_stanza: row.try_get(6)?,
            in_roster: row.try_get::<Option<bool>, _>(7)?.unwrap_or_default(),
            first_group: group,
        };
        // A row that no longer parses is skipped (and logged) rather than
        // making the whole roster unreadable.
        let item = roster_item_from_columns(account, columns)?;
        last_contact = Some((contact_text, item.is_some()));
        items.extend(item);
    }
    Ok(Some((version, items)))
}

/// Insert or replace a roster item and return the new roster version.
pub(crate) async fn put_roster_item(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    item: &RosterItem,
    max_roster_items: u32,
) -> Result<u64, StorageError> {
    let contact = item.jid.to_string();
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some((account_id, version)) =
        increment_account_counter(&mut transaction, account, AccountCounter::RosterVersion).await?
    else {
        return Err(StorageError::AccountNotFound(account.to_string()));
    };
    let version = version_from_column(version)?;

    let existing: i64 =
        sqlx::query("SELECT COUNT(*) FROM roster_items WHERE account_id = $1 AND contact = $2")
            .bind(account_id)
            .bind(&contact)
            .fetch_one(&mut *transaction)
            .await?
            .try_get(0)?;
    if existing == 0 {
        let item_count: i64 =
            sqlx::query("SELECT COUNT(*) FROM roster_items WHERE account_id = $1")
                .bind(account_id)
                .fetch_one(&mut *transaction)
                .await?
                .try_get(0)?;
        if item_count >= i64::from(max_roster_items) {
            transaction.rollback().await?;
            return Err(StorageError::RosterFull {
                user: account.to_string(),
                limit: max_roster_items,
            });
        }
    }

    sqlx::query(
        "INSERT INTO roster_items \
         (account_id, contact, name, subscription, pending_out, pending_in, pending_in_stanza, in_roster) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (account_id, contact) DO UPDATE SET \
         name = excluded.name, subscription = excluded.subscription, \
         pending_out = excluded.pending_out, pending_in = excluded.pending_in, \
         pending_in_stanza = excluded.pending_in_stanza, in_roster = excluded.in_roster",
    )
    .bind(account_id)
    .bind(&contact)
    .bind(item.name.as_deref())
    .bind(item.subscription.as_str())
    .bind(item.pending_out)
    .bind(item.pending_in)
    .bind(item.pending_in_stanza.as_deref())
    .bind(item.in_roster)
    .execute(&mut *transaction)
    .await?;

    sqlx::query("DELETE FROM roster_groups WHERE account_id = $1 AND contact = $2")
        .bind(account_id)
        .bind(&contact)
        .execute(&mut *transaction)
        .await?;
    for (position, group) in (0_i64..).zip(&item.groups) {
        sqlx::query("INSERT INTO roster_groups (account_id, contact, position, group_name) VALUES ($1, $2, $3, $4)")
            .bind(account_id)
            .bind(&contact)
            .bind(position)
            .bind(group.as_str())
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(version)
}

/// Remove a roster item; the new version, or `None` when there was no such
/// item (the version is then left as it was).
pub(crate) async fn remove_roster_item(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    contact: &str,
) -> Result<Option<u64>, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some((account_id, version)) =
        increment_account_counter(&mut transaction, account, AccountCounter::RosterVersion).await?
    else {
        return Ok(None);
    };
    let version = version_from_column(version)?;
    sqlx::query("DELETE FROM roster_groups WHERE account_id = $1 AND contact = $2")
        .bind(account_id)
        .bind(contact)
        .execute(&mut *transaction)
        .await?;
    let removed = sqlx::query("DELETE FROM roster_items WHERE account_id = $1 AND contact = $2")
        .bind(account_id)
        .bind(contact)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    if removed == 0 {
        transaction.rollback().await?;
        return Ok(None);
    }
    transaction.commit().await?;
    Ok(Some(version))
}

/// Append a stanza to the offline queue (XEP-0160), refusing past the cap.
/// The count runs after the account row is locked, so the cap holds under
/// concurrent stores.
pub(crate) async fn store_offline(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    stanza_xml: &str,
    max_offline_per_user: u32,
    now_millis: i64,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some((account_id, seq)) =
        increment_account_counter(&mut transaction, account, AccountCounter::OfflineSeq).await?
    else {
        return Err(StorageError::AccountNotFound(account.to_string()));
    };
    let queued: i64 = sqlx::query("SELECT COUNT(*) FROM offline_messages WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(&mut *transaction)
        .await?
        .try_get(0)?;
    if queued >= i64::from(max_offline_per_user) {
        transaction.rollback().await?;
        return Err(StorageError::OfflineQueueFull {
            user: account.to_string(),
            limit: max_offline_per_user,
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

/// Remove and return the queued stanzas, oldest first. One `DELETE ...
/// RETURNING` statement: the rows are gone exactly when they are returned,
/// and a crash before the commit leaves them all in place.
pub(crate) async fn take_offline(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<Vec<String>, StorageError> {
    let rows = sqlx::query(
        "DELETE FROM offline_messages \
         WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND localpart = $2) \
         RETURNING seq, stanza_xml",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_all(pool)
    .await?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        messages.push((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?));
    }
    // RETURNING gives no order guarantee.
    messages.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(messages
        .into_iter()
        .map(|(_, stanza_xml)| stanza_xml)
        .collect())
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

/// A cheap round trip for readiness probes.
pub(crate) async fn ping(pool: &Pool<Db>) -> Result<(), StorageError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
