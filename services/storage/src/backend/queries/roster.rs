//! Rosters with versioning (RFC 6121 sections 2 and 2.6).

use sqlx::{Pool, Row};
use starling_api::{RosterItem, SubscriptionEntry};

use super::{increment_account_counter, AccountCounter, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::{
    roster_item_bytes, roster_item_from_columns, subscription_entry_from_columns,
    version_from_column, AccountAddress, RosterItemColumns, RosterQuota,
};

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

/// The subscription state of every item, by contact: the columns presence
/// routing needs, without names, groups or stored requests.
pub(crate) async fn subscriptions(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<Vec<SubscriptionEntry>, StorageError> {
    let rows = sqlx::query(
        "SELECT r.contact, r.subscription, r.pending_in FROM roster_items r \
         JOIN accounts a ON a.id = r.account_id \
         WHERE a.domain = $1 AND a.localpart = $2",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_all(pool)
    .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let contact: String = row.try_get(0)?;
        let subscription: String = row.try_get(1)?;
        entries.extend(subscription_entry_from_columns(
            account,
            &contact,
            &subscription,
            row.try_get(2)?,
        )?);
    }
    Ok(entries)
}

/// Insert or replace a roster item and return the new roster version.
pub(crate) async fn put_roster_item(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    item: &RosterItem,
    quota: RosterQuota,
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
        if item_count >= i64::from(quota.items) {
            transaction.rollback().await?;
            return Err(StorageError::RosterFull {
                user: account.to_string(),
                limit: quota.items,
            });
        }
    }
    // Issue 18: the roster is bounded in bytes too (1,000 items of 128
    // 1,000-byte groups were 131 MB, and every presence update read them).
    // The item being replaced does not count against its replacement.
    let others: i64 = sqlx::query(
        "SELECT COALESCE(SUM(OCTET_LENGTH(contact) + COALESCE(OCTET_LENGTH(name), 0)          + COALESCE(OCTET_LENGTH(pending_in_stanza), 0)), 0)          + (SELECT COALESCE(SUM(OCTET_LENGTH(group_name)), 0) FROM roster_groups             WHERE account_id = $1 AND contact <> $2)          FROM roster_items WHERE account_id = $1 AND contact <> $2",
    )
    .bind(account_id)
    .bind(&contact)
    .fetch_one(&mut *transaction)
    .await?
    .try_get(0)?;
    let total = u64::try_from(others)
        .unwrap_or(0)
        .saturating_add(roster_item_bytes(&contact, item));
    if total > quota.bytes {
        transaction.rollback().await?;
        return Err(StorageError::RosterBytesFull {
            user: account.to_string(),
            limit: quota.bytes,
        });
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
