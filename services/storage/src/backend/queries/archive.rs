//! The message archive (XEP-0313) and its preferences (XEP-0441).
//!
//! Every page query is one range scan: of the primary key `(account_id,
//! id)`, or of `archive_messages_by_with (account_id, with_bare, id)` when
//! the query names a `with`; `LIMIT max + 1` tells whether the page is the
//! last one in its direction without counting.

use sqlx::{Pool, Row};
use starling_api::{ArchiveId, ArchiveQuery, ArchivedMessage, PageStart};

use super::{account_id, lock_account_if_any, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::{AccountAddress, ArchiveRow, DecisionRow, RoomArchiveRow};

/// What the preferences of `owner` say about `with_bare`/`with_full`;
/// `None` when there is no such account.
pub(crate) async fn archive_decision(
    pool: &Pool<Db>,
    owner: &AccountAddress<'_>,
    with_bare: &str,
    with_full: &str,
) -> Result<Option<DecisionRow>, StorageError> {
    let row = sqlx::query(
        "SELECT COALESCE(p.default_rule, 'always'), \
         (SELECT j.rule FROM archive_pref_jids j WHERE j.account_id = a.id AND j.jid IN ($3, $4) \
          ORDER BY j.rule DESC LIMIT 1), \
         (SELECT COUNT(*) FROM roster_items r WHERE r.account_id = a.id AND r.contact = $3 AND r.in_roster) \
         FROM accounts a LEFT JOIN archive_accounts p ON p.account_id = a.id \
         WHERE a.domain = $1 AND a.localpart = $2",
    )
    .bind(owner.domain)
    .bind(owner.localpart)
    .bind(with_bare)
    .bind(with_full)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(DecisionRow {
        default_rule: row.try_get(0)?,
        // 'never' sorts after 'always': DESC puts it first.
        listed_rule: row.try_get(1)?,
        in_roster: row.try_get::<i64, _>(2)? > 0,
    }))
}

/// `($1, $2, ...), (...)`: `rows` rows of one placeholder per column, each
/// written through its column's template (`?` stands for the placeholder).
fn placeholder_rows(rows: usize, columns: &[&str]) -> String {
    let mut text = String::new();
    for row in 0..rows {
        text.push_str(if row == 0 { "(" } else { ", (" });
        for (column, template) in columns.iter().enumerate() {
            if column > 0 {
                text.push_str(", ");
            }
            let placeholder = format!("${}", row * columns.len() + column + 1);
            text.push_str(&template.replace('?', &placeholder));
        }
        text.push(')');
    }
    text
}

/// Rows per INSERT statement (6 placeholders each: far below the 32,766
/// of SQLite and the 65,535 of PostgreSQL).
const INSERT_CHUNK: usize = 256;

/// Add `rows` in one transaction, set-based: one multi-row `INSERT ...
/// SELECT` per [`INSERT_CHUNK`] rows (the owner's account id found by a
/// join, an owner without an account skipped, an id already archived
/// skipped), then one multi-row upsert of the accounts' message counts in
/// account order. Past `max_per_account` messages (0: no bound) an
/// account's oldest messages are removed in the same transaction. Returns
/// `(added, evicted)`.
pub(crate) async fn archive_messages(
    pool: &Pool<Db>,
    rows: &[ArchiveRow<'_>],
    max_per_account: u64,
) -> Result<(u64, u64), StorageError> {
    if rows.is_empty() {
        return Ok((0, 0));
    }
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let mut inserted: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut statement = String::from(
            "INSERT INTO archive_messages (account_id, id, with_bare, with_resource, stanza_xml) \
             SELECT a.id, v.column3, v.column4, v.column5, v.column6 FROM (VALUES ",
        );
        statement.push_str(&placeholder_rows(
            chunk.len(),
            &["?", "?", "CAST(? AS BIGINT)", "?", "?", "?"],
        ));
        // `WHERE true`: SQLite's parser needs it before an upsert clause of INSERT ... SELECT.
        statement.push_str(
            ") AS v JOIN accounts a ON a.domain = v.column1 AND a.localpart = v.column2 WHERE true \
             ON CONFLICT (account_id, id) DO NOTHING RETURNING account_id",
        );
        let mut query = sqlx::query(&statement);
        for row in chunk {
            query = query
                .bind(row.owner.domain)
                .bind(row.owner.localpart)
                .bind(row.id)
                .bind(&row.with_bare)
                .bind(&row.with_resource)
                .bind(row.stanza_xml);
        }
        for returned in query.fetch_all(&mut *transaction).await? {
            *inserted.entry(returned.try_get(0)?).or_default() += 1;
        }
    }
    let added: i64 = inserted.values().sum();
    if inserted.is_empty() {
        transaction.commit().await?;
        return Ok((0, 0));
    }
    // One upsert for every account, in account order (so that concurrent
    // writers on PostgreSQL take the counters' row locks in one order).
    let mut statement = String::from(
        "INSERT INTO archive_accounts (account_id, default_rule, message_count) VALUES ",
    );
    for index in 0..inserted.len() {
        if index > 0 {
            statement.push_str(", ");
        }
        statement.push_str(&format!(
            "(${}, 'always', ${})",
            index * 2 + 1,
            index * 2 + 2
        ));
    }
    statement.push_str(
        " ON CONFLICT (account_id) DO UPDATE SET message_count = archive_accounts.message_count + excluded.message_count \
         RETURNING account_id, message_count",
    );
    let mut query = sqlx::query(&statement);
    for (account_id, count) in &inserted {
        query = query.bind(*account_id).bind(*count);
    }
    let counts = query.fetch_all(&mut *transaction).await?;
    let mut evicted = 0u64;
    let bound = i64::try_from(max_per_account).unwrap_or(i64::MAX);
    if max_per_account > 0 {
        for row in &counts {
            let (account_id, count): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if count > bound {
                evicted += remove_oldest(&mut transaction, account_id, count - bound).await?;
            }
        }
    }
    transaction.commit().await?;
    Ok((u64::try_from(added).unwrap_or(0), evicted))
}

/// Remove an account's `how_many` oldest messages (a scan of the primary
/// key from its start), keeping its count; returns how many went.
async fn remove_oldest(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account_id: i64,
    how_many: i64,
) -> Result<u64, StorageError> {
    let removed = sqlx::query(
        "DELETE FROM archive_messages WHERE account_id = $1 AND id IN \
         (SELECT id FROM archive_messages WHERE account_id = $1 ORDER BY id LIMIT $2)",
    )
    .bind(account_id)
    .bind(how_many)
    .execute(&mut **transaction)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE archive_accounts SET message_count = message_count - $2 WHERE account_id = $1",
    )
    .bind(account_id)
    .bind(i64::try_from(removed).unwrap_or(i64::MAX))
    .execute(&mut **transaction)
    .await?;
    Ok(removed)
}

/// A filter's value to bind, in placeholder order.
enum Bound<'a> {
    Integer(i64),
    Text(&'a str),
}

/// `statement` with `values` bound to its placeholders, in order.
fn bind_all<'q>(
    statement: &'q str,
    values: Vec<Bound<'q>>,
) -> sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>> {
    let mut sql = sqlx::query(statement);
    for value in values {
        sql = match value {
            Bound::Integer(number) => sql.bind(number),
            Bound::Text(text) => sql.bind(text),
        };
    }
    sql
}

/// The WHERE clause of a page query and the values of its placeholders.
struct Filters<'a> {
    conditions: Vec<String>,
    values: Vec<Bound<'a>>,
}

impl<'a> Filters<'a> {
    /// Add `condition`, whose `?` is the next placeholder, bound to `value`.
    fn push(&mut self, condition: &str, value: Bound<'a>) {
        self.values.push(value);
        self.conditions
            .push(condition.replace('?', &format!("${}", self.values.len())));
    }
}

/// Whose archive a page query reads: an account's (`archive_messages`) or a
/// room's (`muc_archive_messages`); both have the same message columns.
enum ArchiveOwner<'a> {
    Account(i64),
    Room(&'a str),
}

impl<'a> ArchiveOwner<'a> {
    fn table(&self) -> &'static str {
        match self {
            ArchiveOwner::Account(_) => "archive_messages",
            ArchiveOwner::Room(_) => "muc_archive_messages",
        }
    }

    /// The owner's condition (placeholder `$1`) and its value.
    fn filters(&self) -> Filters<'a> {
        match self {
            ArchiveOwner::Account(account) => Filters {
                conditions: vec!["account_id = $1".to_string()],
                values: vec![Bound::Integer(*account)],
            },
            ArchiveOwner::Room(room) => Filters {
                conditions: vec!["room = $1".to_string()],
                values: vec![Bound::Text(room)],
            },
        }
    }
}

/// One page of the account's archive; `ArchiveItemNotFound` when an id the
/// query names is not in the archive (XEP-0313 sections 4.1.3 and 4.3.2).
pub(crate) async fn query_archive(
    pool: &Pool<Db>,
    owner: &AccountAddress<'_>,
    query: &ArchiveQuery,
) -> Result<(Vec<ArchivedMessage>, bool), StorageError> {
    match account_id(pool, owner).await? {
        Some(account) => query_page(pool, ArchiveOwner::Account(account), query).await,
        None => {
            if let Some(id) = named_ids(query).first() {
                return Err(StorageError::ArchiveItemNotFound(id.to_text()));
            }
            Ok((Vec::new(), true))
        }
    }
}

/// One page of a room's archive (XEP-0313 section 5.1.2), as [`query_archive`].
pub(crate) async fn query_room_archive(
    pool: &Pool<Db>,
    room: &str,
    query: &ArchiveQuery,
) -> Result<(Vec<ArchivedMessage>, bool), StorageError> {
    query_page(pool, ArchiveOwner::Room(room), query).await
}

/// The ids a query names, each of which must be in the archive.
fn named_ids(query: &ArchiveQuery) -> Vec<ArchiveId> {
    let mut named: Vec<ArchiveId> = Vec::new();
    named.extend(query.after_id);
    named.extend(query.before_id);
    named.extend(query.ids.iter().copied());
    if let PageStart::After(id) | PageStart::Before(id) = query.page {
        named.push(id);
    }
    named
}

async fn query_page(
    pool: &Pool<Db>,
    owner: ArchiveOwner<'_>,
    query: &ArchiveQuery,
) -> Result<(Vec<ArchivedMessage>, bool), StorageError> {
    let table = owner.table();
    for id in named_ids(query) {
        let Filters { conditions, values } = owner.filters();
        let statement = format!("SELECT 1 FROM {table} WHERE {} AND id = $2", conditions[0]);
        if bind_all(&statement, values)
            .bind(id.0)
            .fetch_optional(pool)
            .await?
            .is_none()
        {
            return Err(StorageError::ArchiveItemNotFound(id.to_text()));
        }
    }

    let with_bare = query.with.as_ref().map(|with| with.bare().to_string());
    let mut filters = owner.filters();
    if let Some(with) = &query.with {
        filters.push(
            "with_bare = ?",
            Bound::Text(with_bare.as_deref().unwrap_or("")),
        );
        if let Some(resource) = with.resource() {
            filters.push("with_resource = ?", Bound::Text(resource));
        }
    }
    if let Some(start) = query.start {
        filters.push("id >= ?", Bound::Integer(start.0));
    }
    if let Some(end) = query.end {
        filters.push("id <= ?", Bound::Integer(end.0));
    }
    if let Some(after) = query.after_id {
        filters.push("id > ?", Bound::Integer(after.0));
    }
    if let Some(before) = query.before_id {
        filters.push("id < ?", Bound::Integer(before.0));
    }
    match query.page {
        PageStart::After(after) => filters.push("id > ?", Bound::Integer(after.0)),
        PageStart::Before(before) => filters.push("id < ?", Bound::Integer(before.0)),
        PageStart::First | PageStart::Last => {}
    }
    let Filters {
        conditions,
        mut values,
    } = filters;
    let mut ids_condition = String::new();
    if !query.ids.is_empty() {
        let mut placeholders = Vec::with_capacity(query.ids.len());
        for id in &query.ids {
            values.push(Bound::Integer(id.0));
            placeholders.push(format!("${}", values.len()));
        }
        ids_condition = format!(" AND id IN ({})", placeholders.join(", "));
    }
    let backwards = matches!(query.page, PageStart::Last | PageStart::Before(_));
    let order = if backwards { "DESC" } else { "ASC" };
    let statement = format!(
        "SELECT id, stanza_xml FROM {table} WHERE {}{ids_condition} ORDER BY id {order} LIMIT {}",
        conditions.join(" AND "),
        u64::from(query.max) + 1
    );
    let rows = bind_all(&statement, values).fetch_all(pool).await?;
    let complete = rows.len() <= query.max as usize;
    let mut messages = Vec::with_capacity(rows.len().min(query.max as usize));
    for row in rows.iter().take(query.max as usize) {
        messages.push(ArchivedMessage {
            id: ArchiveId(row.try_get(0)?),
            stanza_xml: row.try_get(1)?,
        });
    }
    if backwards {
        messages.reverse();
    }
    Ok((messages, complete))
}

/// The ids of the account's oldest and newest messages.
pub(crate) async fn archive_bounds(
    pool: &Pool<Db>,
    owner: &AccountAddress<'_>,
) -> Result<Option<(i64, i64)>, StorageError> {
    let Some(account) = account_id(pool, owner).await? else {
        return Ok(None);
    };
    // Two index probes (a MIN and a MAX together are not one in SQLite).
    let first = sqlx::query(
        "SELECT id FROM archive_messages WHERE account_id = $1 ORDER BY id ASC LIMIT 1",
    )
    .bind(account)
    .fetch_optional(pool)
    .await?;
    let last = sqlx::query(
        "SELECT id FROM archive_messages WHERE account_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(account)
    .fetch_optional(pool)
    .await?;
    Ok(match (first, last) {
        (Some(first), Some(last)) => Some((first.try_get(0)?, last.try_get(0)?)),
        _ => None,
    })
}

/// The default rule and the listed addresses `(jid, rule)` of an account.
pub(crate) async fn archive_prefs(
    pool: &Pool<Db>,
    owner: &AccountAddress<'_>,
) -> Result<(String, Vec<(String, String)>), StorageError> {
    let Some(account) = account_id(pool, owner).await? else {
        return Ok(("always".into(), Vec::new()));
    };
    let default_rule =
        sqlx::query("SELECT default_rule FROM archive_accounts WHERE account_id = $1")
            .bind(account)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get::<String, _>(0))
            .transpose()?
            .unwrap_or_else(|| "always".into());
    let rows =
        sqlx::query("SELECT jid, rule FROM archive_pref_jids WHERE account_id = $1 ORDER BY jid")
            .bind(account)
            .fetch_all(pool)
            .await?;
    let mut listed = Vec::with_capacity(rows.len());
    for row in &rows {
        listed.push((row.try_get(0)?, row.try_get(1)?));
    }
    Ok((default_rule, listed))
}

/// Replace the account's preferences: the default rule and the listed
/// addresses `(jid, rule)` (unique by address).
pub(crate) async fn set_archive_prefs(
    pool: &Pool<Db>,
    owner: &AccountAddress<'_>,
    default_rule: &str,
    listed: &[(String, &'static str)],
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let Some(account) = lock_account_if_any(&mut transaction, owner).await? else {
        return Err(StorageError::AccountNotFound(owner.to_string()));
    };
    sqlx::query(
        "INSERT INTO archive_accounts (account_id, default_rule, message_count) VALUES ($1, $2, 0) \
         ON CONFLICT (account_id) DO UPDATE SET default_rule = excluded.default_rule",
    )
    .bind(account)
    .bind(default_rule)
    .execute(&mut *transaction)
    .await?;
    sqlx::query("DELETE FROM archive_pref_jids WHERE account_id = $1")
        .bind(account)
        .execute(&mut *transaction)
        .await?;
    for (jid, rule) in listed {
        sqlx::query("INSERT INTO archive_pref_jids (account_id, jid, rule) VALUES ($1, $2, $3)")
            .bind(account)
            .bind(jid)
            .bind(*rule)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Add room messages (owner: the room's bare JID) in one transaction, one
/// multi-row INSERT per [`INSERT_CHUNK`] rows; an id already archived for
/// the room is skipped. Returns how many were added.
pub(crate) async fn archive_room_messages(
    pool: &Pool<Db>,
    rows: &[RoomArchiveRow<'_>],
) -> Result<u64, StorageError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let mut added = 0u64;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut statement = String::from(
            "INSERT INTO muc_archive_messages (room, id, with_bare, with_resource, stanza_xml) VALUES ",
        );
        statement.push_str(&placeholder_rows(chunk.len(), &["?"; 5]));
        statement.push_str(" ON CONFLICT (room, id) DO NOTHING");
        let mut query = sqlx::query(&statement);
        for row in chunk {
            query = query
                .bind(row.room)
                .bind(row.id)
                .bind(row.with_bare)
                .bind(row.with_resource)
                .bind(row.stanza_xml);
        }
        added += query.execute(&mut *transaction).await?.rows_affected();
    }
    transaction.commit().await?;
    Ok(added)
}

/// One message of a room's archive.
pub(crate) async fn room_archive_message(
    pool: &Pool<Db>,
    room: &str,
    id: i64,
) -> Result<Option<ArchivedMessage>, StorageError> {
    let row =
        sqlx::query("SELECT id, stanza_xml FROM muc_archive_messages WHERE room = $1 AND id = $2")
            .bind(room)
            .bind(id)
            .fetch_optional(pool)
            .await?;
    match row {
        Some(row) => Ok(Some(ArchivedMessage {
            id: ArchiveId(row.try_get(0)?),
            stanza_xml: row.try_get(1)?,
        })),
        None => Ok(None),
    }
}

/// Replace one message of a room's archive (a tombstone); whether it was there.
pub(crate) async fn replace_room_archive_message(
    pool: &Pool<Db>,
    room: &str,
    id: i64,
    stanza_xml: &str,
) -> Result<bool, StorageError> {
    let replaced =
        sqlx::query("UPDATE muc_archive_messages SET stanza_xml = $3 WHERE room = $1 AND id = $2")
            .bind(room)
            .bind(id)
            .bind(stanza_xml)
            .execute(pool)
            .await?
            .rows_affected();
    Ok(replaced > 0)
}

/// Remove a room's archive, in short transactions of [`PURGE_BATCH`] rows.
pub(crate) async fn remove_room_archive(pool: &Pool<Db>, room: &str) -> Result<u64, StorageError> {
    let mut removed = 0u64;
    loop {
        let batch = sqlx::query(
            "DELETE FROM muc_archive_messages WHERE room = $1 AND id IN \
             (SELECT id FROM muc_archive_messages WHERE room = $1 ORDER BY id LIMIT $2)",
        )
        .bind(room)
        .bind(PURGE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        removed += batch;
        if batch < PURGE_BATCH as u64 {
            return Ok(removed);
        }
    }
}

/// Remove every room message older than `cutoff` (an id), in short
/// transactions of [`PURGE_BATCH`] rows (a scan of muc_archive_messages_by_id).
async fn purge_room_archives(pool: &Pool<Db>, cutoff: i64) -> Result<u64, StorageError> {
    let mut purged = 0u64;
    loop {
        let batch = sqlx::query(
            "DELETE FROM muc_archive_messages WHERE id < $1 AND (room, id) IN \
             (SELECT room, id FROM muc_archive_messages WHERE id < $1 ORDER BY id LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PURGE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        purged += batch;
        if batch < PURGE_BATCH as u64 {
            return Ok(purged);
        }
    }
}

/// The most rows one purge statement removes, so that a purge never holds
/// a long transaction.
const PURGE_BATCH: i64 = 10_000;

/// Remove every message older than `cutoff` (an id) from every archive,
/// the rooms' and the accounts' (account by account) in short
/// transactions; returns how many went.
pub(crate) async fn purge_archive(pool: &Pool<Db>, cutoff: i64) -> Result<u64, StorageError> {
    let mut purged = purge_room_archives(pool, cutoff).await?;
    let mut after_account = i64::MIN;
    loop {
        let accounts: Vec<i64> = sqlx::query(
            "SELECT account_id FROM archive_accounts WHERE account_id > $1 ORDER BY account_id LIMIT 500",
        )
        .bind(after_account)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
        let Some(last) = accounts.last() else {
            return Ok(purged);
        };
        after_account = *last;
        for account in accounts {
            purged += purge_account(pool, account, cutoff).await?;
        }
    }
}

async fn purge_account(pool: &Pool<Db>, account: i64, cutoff: i64) -> Result<u64, StorageError> {
    let mut purged = 0u64;
    loop {
        // One index probe for an account with nothing to purge.
        let oldest = sqlx::query(
            "SELECT id FROM archive_messages WHERE account_id = $1 ORDER BY id LIMIT 1",
        )
        .bind(account)
        .fetch_optional(pool)
        .await?;
        match oldest {
            Some(row) if row.try_get::<i64, _>(0)? < cutoff => {}
            _ => return Ok(purged),
        }
        let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
        // The lock order of mod.rs: the account row first.
        sqlx::query("UPDATE accounts SET last_offline_seq = last_offline_seq WHERE id = $1")
            .bind(account)
            .execute(&mut *transaction)
            .await?;
        let removed = sqlx::query(
            "DELETE FROM archive_messages WHERE account_id = $1 AND id IN \
             (SELECT id FROM archive_messages WHERE account_id = $1 AND id < $2 ORDER BY id LIMIT $3)",
        )
        .bind(account)
        .bind(cutoff)
        .bind(PURGE_BATCH)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE archive_accounts SET message_count = message_count - $2 WHERE account_id = $1",
        )
        .bind(account)
        .bind(i64::try_from(removed).unwrap_or(i64::MAX))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        purged += removed;
        if removed < PURGE_BATCH as u64 {
            return Ok(purged);
        }
    }
}
