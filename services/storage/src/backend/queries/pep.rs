//! PEP (XEP-0163) nodes, items and whitelists, and the shared XEP-0115
//! capabilities cache. Every write locks the owner's account row first (the
//! lock order of `mod.rs`), so that the node count and a node's sequence
//! cannot race between two publishes.

use sqlx::{Pool, Row};

use super::{lock_account, Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::AccountAddress;
use starling_api::{
    AccessModel, CapsRecord, MaxItems, PepItem, PepLimits, PepNode, PepNodeConfig, PepPublish,
    PepPublishOutcome, SendLastPublished,
};

const NODE_COLUMNS: &str = "n.node, n.access_model, n.max_items, n.persist_items, \
                            n.send_last_published_item, n.notify_retract, n.roster_groups";

/// The columns of [`NODE_COLUMNS`]: an item selected after them starts here.
const NODE_COLUMN_COUNT: usize = 7;

/// Roster groups as stored: one per line (a group name never holds a line
/// break: the router refuses one).
fn stored_groups(groups: &[String]) -> String {
    groups.join("\n")
}

fn node_from_row(row: &<Db as sqlx::Database>::Row) -> Result<PepNode, StorageError> {
    let name: String = row.try_get(0)?;
    let access: String = row.try_get(1)?;
    let send_last: String = row.try_get(4)?;
    let corrupt = |what: &str, value: &str| {
        StorageError::CorruptData(format!("pep node {name:?}: {what} {value:?}"))
    };
    let access_model =
        AccessModel::from_name(&access).ok_or_else(|| corrupt("access model", &access))?;
    let send_last_published_item = SendLastPublished::from_name(&send_last)
        .ok_or_else(|| corrupt("send_last_published_item", &send_last))?;
    let config = PepNodeConfig {
        access_model,
        max_items: MaxItems::from_stored(row.try_get(2)?),
        persist_items: row.try_get::<i64, _>(3)? != 0,
        send_last_published_item,
        notify_retract: row.try_get::<i64, _>(5)? != 0,
        roster_groups_allowed: starling_api::roster_groups(
            row.try_get::<String, _>(6)?
                .split('\n')
                .filter(|group| !group.is_empty()),
        ),
    };
    Ok(PepNode { name, config })
}

/// The number of items a node with `config` keeps under `limits`.
fn items_kept(config: &PepNodeConfig, limits: PepLimits) -> i64 {
    if config.persist_items {
        i64::from(config.max_items.effective(limits.max_items_per_node))
    } else {
        0
    }
}

/// The account's nodes, sorted by name.
pub(crate) async fn pep_nodes(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<Vec<PepNode>, StorageError> {
    let rows = sqlx::query(&format!(
        "SELECT {NODE_COLUMNS} FROM pep_nodes n JOIN accounts a ON a.id = n.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 ORDER BY n.node"
    ))
    .bind(account.domain)
    .bind(account.localpart)
    .fetch_all(pool)
    .await?;
    rows.iter().map(node_from_row).collect()
}

/// One node.
pub(crate) async fn pep_node(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
) -> Result<Option<PepNode>, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {NODE_COLUMNS} FROM pep_nodes n JOIN accounts a ON a.id = n.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 AND n.node = $3"
    ))
    .bind(account.domain)
    .bind(account.localpart)
    .bind(node)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(node_from_row).transpose()
}

async fn node_in_transaction(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account_id: i64,
    node: &str,
) -> Result<Option<PepNode>, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {NODE_COLUMNS} FROM pep_nodes n WHERE n.account_id = $1 AND n.node = $2"
    ))
    .bind(account_id)
    .bind(node)
    .fetch_optional(&mut **transaction)
    .await?;
    row.as_ref().map(node_from_row).transpose()
}

/// Insert a node after checking the account's node count; `Ok(false)` when
/// the count is reached.
async fn insert_node(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account_id: i64,
    node: &PepNode,
    limits: PepLimits,
) -> Result<bool, StorageError> {
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM pep_nodes WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(&mut **transaction)
        .await?
        .try_get(0)?;
    if count >= i64::from(limits.max_nodes_per_account) {
        return Ok(false);
    }
    let config = &node.config;
    sqlx::query(
        "INSERT INTO pep_nodes (account_id, node, access_model, max_items, persist_items, \
         send_last_published_item, notify_retract, roster_groups, last_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)",
    )
    .bind(account_id)
    .bind(&node.name)
    .bind(config.access_model.as_str())
    .bind(config.max_items.to_stored())
    .bind(i64::from(config.persist_items))
    .bind(config.send_last_published_item.as_str())
    .bind(i64::from(config.notify_retract))
    .bind(stored_groups(&config.roster_groups_allowed))
    .execute(&mut **transaction)
    .await?;
    Ok(true)
}

/// Drop the oldest items of a node beyond `keep`.
async fn trim_items(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account_id: i64,
    node: &str,
    keep: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "DELETE FROM pep_items WHERE account_id = $1 AND node = $2 AND item_id NOT IN \
         (SELECT item_id FROM pep_items WHERE account_id = $1 AND node = $2 ORDER BY seq DESC LIMIT $3)",
    )
    .bind(account_id)
    .bind(node)
    .bind(keep)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Create a node; `Ok(false)` when it exists.
pub(crate) async fn create_pep_node(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &PepNode,
    limits: PepLimits,
) -> Result<bool, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    if node_in_transaction(&mut transaction, account_id, &node.name)
        .await?
        .is_some()
    {
        transaction.rollback().await?;
        return Ok(false);
    }
    if !insert_node(&mut transaction, account_id, node, limits).await? {
        transaction.rollback().await?;
        return Err(StorageError::PepLimit {
            what: "nodes per account",
            limit: limits.max_nodes_per_account,
        });
    }
    transaction.commit().await?;
    Ok(true)
}

/// Replace a node's configuration and trim its items to it.
pub(crate) async fn configure_pep_node(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &PepNode,
    limits: PepLimits,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    let config = &node.config;
    let updated = sqlx::query(
        "UPDATE pep_nodes SET access_model = $3, max_items = $4, persist_items = $5, \
         send_last_published_item = $6, notify_retract = $7, roster_groups = $8 \
         WHERE account_id = $1 AND node = $2",
    )
    .bind(account_id)
    .bind(&node.name)
    .bind(config.access_model.as_str())
    .bind(config.max_items.to_stored())
    .bind(i64::from(config.persist_items))
    .bind(config.send_last_published_item.as_str())
    .bind(i64::from(config.notify_retract))
    .bind(stored_groups(&config.roster_groups_allowed))
    .execute(&mut *transaction)
    .await?;
    if updated.rows_affected() == 0 {
        transaction.rollback().await?;
        return Err(StorageError::PepNodeNotFound(node.name.clone()));
    }
    trim_items(
        &mut transaction,
        account_id,
        &node.name,
        items_kept(config, limits),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// Delete a node (its items and whitelist go with it).
pub(crate) async fn delete_pep_node(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
) -> Result<bool, StorageError> {
    delete_under_lock(pool, account, node, None).await
}

/// Delete a node (`item_id` `None`) or one of its items, under the
/// account's lock; whether it existed.
async fn delete_under_lock(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
    item_id: Option<&str>,
) -> Result<bool, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    let statement = match item_id {
        None => "DELETE FROM pep_nodes WHERE account_id = $1 AND node = $2",
        Some(_) => "DELETE FROM pep_items WHERE account_id = $1 AND node = $2 AND item_id = $3",
    };
    let mut query = sqlx::query(statement).bind(account_id).bind(node);
    if let Some(item_id) = item_id {
        query = query.bind(item_id);
    }
    let deleted = query.execute(&mut *transaction).await?;
    transaction.commit().await?;
    Ok(deleted.rows_affected() > 0)
}

/// Publish: create the node if needed, check the preconditions, store the
/// item with the node's next sequence number, trim to `max_items`.
pub(crate) async fn publish_pep_item(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    publish: &PepPublish,
    limits: PepLimits,
) -> Result<PepPublishOutcome, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    let (node, created) =
        match node_in_transaction(&mut transaction, account_id, &publish.node).await? {
            Some(node) => {
                if !publish.options.matches(&node.config) {
                    transaction.rollback().await?;
                    return Ok(PepPublishOutcome::PreconditionNotMet);
                }
                (node, false)
            }
            None => {
                let node = PepNode {
                    name: publish.node.clone(),
                    config: publish.options.clone().apply(PepNodeConfig::default()),
                };
                if !insert_node(&mut transaction, account_id, &node, limits).await? {
                    transaction.rollback().await?;
                    return Ok(PepPublishOutcome::NodeLimitReached);
                }
                (node, true)
            }
        };
    let keep = items_kept(&node.config, limits);
    if let (Some(item), true) = (&publish.item, keep > 0) {
        let seq: i64 = sqlx::query(
            "UPDATE pep_nodes SET last_seq = last_seq + 1 WHERE account_id = $1 AND node = $2 \
             RETURNING last_seq",
        )
        .bind(account_id)
        .bind(&node.name)
        .fetch_one(&mut *transaction)
        .await?
        .try_get(0)?;
        // XEP-0060 section 7.1.2: publishing an existing id overwrites it
        // (and it becomes the newest).
        sqlx::query(
            "INSERT INTO pep_items (account_id, node, item_id, seq, publisher, payload) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, node, item_id) DO UPDATE \
             SET seq = excluded.seq, publisher = excluded.publisher, payload = excluded.payload",
        )
        .bind(account_id)
        .bind(&node.name)
        .bind(&item.id)
        .bind(seq)
        .bind(&item.publisher)
        .bind(&item.payload_xml)
        .execute(&mut *transaction)
        .await?;
        trim_items(&mut transaction, account_id, &node.name, keep).await?;
    }
    transaction.commit().await?;
    Ok(PepPublishOutcome::Published { node, created })
}

fn item_from_row(row: &<Db as sqlx::Database>::Row, first: usize) -> Result<PepItem, StorageError> {
    Ok(PepItem {
        id: row.try_get(first)?,
        publisher: row.try_get(first + 1)?,
        payload_xml: row.try_get(first + 2)?,
    })
}

/// Items of a node, newest first: by id, or the newest `max`.
pub(crate) async fn pep_items(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
    ids: &[String],
    max: Option<u32>,
) -> Result<Vec<PepItem>, StorageError> {
    let base = "SELECT i.item_id, i.publisher, i.payload FROM pep_items i \
                JOIN accounts a ON a.id = i.account_id \
                WHERE a.domain = $1 AND a.localpart = $2 AND i.node = $3";
    if ids.is_empty() {
        let limit = i64::from(max.unwrap_or(u32::MAX));
        let rows = sqlx::query(&format!("{base} ORDER BY i.seq DESC LIMIT $4"))
            .bind(account.domain)
            .bind(account.localpart)
            .bind(node)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        return rows.iter().map(|row| item_from_row(row, 0)).collect();
    }
    // One query per id: the ids of a request are few (bounded by the
    // stanza size), and this keeps the SQL the same in both dialects.
    let mut found: Vec<(i64, PepItem)> = Vec::with_capacity(ids.len());
    for id in ids {
        if found.iter().any(|(_, item)| &item.id == id) {
            continue;
        }
        let row = sqlx::query(
            "SELECT i.seq, i.item_id, i.publisher, i.payload FROM pep_items i \
             JOIN accounts a ON a.id = i.account_id \
             WHERE a.domain = $1 AND a.localpart = $2 AND i.node = $3 AND i.item_id = $4",
        )
        .bind(account.domain)
        .bind(account.localpart)
        .bind(node)
        .bind(id)
        .fetch_optional(pool)
        .await?;
        if let Some(row) = row {
            found.push((row.try_get(0)?, item_from_row(&row, 1)?));
        }
    }
    found.sort_by_key(|found| std::cmp::Reverse(found.0));
    Ok(found.into_iter().map(|(_, item)| item).collect())
}

/// The newest item of each named node that has one.
pub(crate) async fn pep_last_items(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    nodes: &[String],
) -> Result<Vec<(PepNode, PepItem)>, StorageError> {
    let mut last = Vec::new();
    for node_name in nodes {
        let row = sqlx::query(&format!(
            "SELECT {NODE_COLUMNS}, i.item_id, i.publisher, i.payload FROM pep_nodes n \
             JOIN accounts a ON a.id = n.account_id \
             JOIN pep_items i ON i.account_id = n.account_id AND i.node = n.node \
             WHERE a.domain = $1 AND a.localpart = $2 AND n.node = $3 \
             ORDER BY i.seq DESC LIMIT 1"
        ))
        .bind(account.domain)
        .bind(account.localpart)
        .bind(node_name)
        .fetch_optional(pool)
        .await?;
        if let Some(row) = row {
            last.push((
                node_from_row(&row)?,
                item_from_row(&row, NODE_COLUMN_COUNT)?,
            ));
        }
    }
    Ok(last)
}

/// Remove one item.
pub(crate) async fn retract_pep_item(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
    item_id: &str,
) -> Result<bool, StorageError> {
    delete_under_lock(pool, account, node, Some(item_id)).await
}

/// A node's whitelist, sorted.
pub(crate) async fn pep_whitelist(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
) -> Result<Vec<String>, StorageError> {
    let rows = sqlx::query(
        "SELECT w.jid FROM pep_whitelist w JOIN accounts a ON a.id = w.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 AND w.node = $3 ORDER BY w.jid",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(node)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(StorageError::from))
        .collect()
}

/// Add and remove whitelist members, bounded by `max_members`.
pub(crate) async fn update_pep_whitelist(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
    add: &[String],
    remove: &[String],
    max_members: u32,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    if node_in_transaction(&mut transaction, account_id, node)
        .await?
        .is_none()
    {
        transaction.rollback().await?;
        return Err(StorageError::PepNodeNotFound(node.to_string()));
    }
    for jid in remove {
        sqlx::query("DELETE FROM pep_whitelist WHERE account_id = $1 AND node = $2 AND jid = $3")
            .bind(account_id)
            .bind(node)
            .bind(jid)
            .execute(&mut *transaction)
            .await?;
    }
    for jid in add {
        sqlx::query(
            "INSERT INTO pep_whitelist (account_id, node, jid) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, node, jid) DO NOTHING",
        )
        .bind(account_id)
        .bind(node)
        .bind(jid)
        .execute(&mut *transaction)
        .await?;
    }
    let count: i64 =
        sqlx::query("SELECT COUNT(*) FROM pep_whitelist WHERE account_id = $1 AND node = $2")
            .bind(account_id)
            .bind(node)
            .fetch_one(&mut *transaction)
            .await?
            .try_get(0)?;
    if count > i64::from(max_members) {
        transaction.rollback().await?;
        return Err(StorageError::PepLimit {
            what: "whitelist members per node",
            limit: max_members,
        });
    }
    transaction.commit().await?;
    Ok(())
}

/// A node's explicit subscriptions as stored: (jid, state), sorted by jid.
pub(crate) async fn pep_subscriptions(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
) -> Result<Vec<(String, String)>, StorageError> {
    let rows = sqlx::query(
        "SELECT s.jid, s.state FROM pep_subscriptions s JOIN accounts a ON a.id = s.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 AND s.node = $3 ORDER BY s.jid",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(node)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Set (`state` `Some`) or remove a subscription under the owner's lock;
/// the state it had. A new one past `max_subscriptions` is refused.
pub(crate) async fn set_pep_subscription(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    node: &str,
    jid: &str,
    subscriber: &str,
    state: Option<&str>,
    max_subscriptions: u32,
) -> Result<Option<String>, StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let account_id = lock_account(&mut transaction, account).await?;
    if node_in_transaction(&mut transaction, account_id, node)
        .await?
        .is_none()
    {
        transaction.rollback().await?;
        return Err(StorageError::PepNodeNotFound(node.to_string()));
    }
    let previous: Option<String> = sqlx::query(
        "SELECT state FROM pep_subscriptions WHERE account_id = $1 AND node = $2 AND jid = $3",
    )
    .bind(account_id)
    .bind(node)
    .bind(jid)
    .fetch_optional(&mut *transaction)
    .await?
    .map(|row| row.try_get(0))
    .transpose()?;
    match (state, &previous) {
        (None, None) => {}
        (None, Some(_)) => {
            sqlx::query(
                "DELETE FROM pep_subscriptions WHERE account_id = $1 AND node = $2 AND jid = $3",
            )
            .bind(account_id)
            .bind(node)
            .bind(jid)
            .execute(&mut *transaction)
            .await?;
        }
        (Some(state), Some(_)) => {
            sqlx::query(
                "UPDATE pep_subscriptions SET state = $4 \
                 WHERE account_id = $1 AND node = $2 AND jid = $3",
            )
            .bind(account_id)
            .bind(node)
            .bind(jid)
            .bind(state)
            .execute(&mut *transaction)
            .await?;
        }
        (Some(state), None) => {
            let count: i64 = sqlx::query(
                "SELECT COUNT(*) FROM pep_subscriptions WHERE account_id = $1 AND node = $2",
            )
            .bind(account_id)
            .bind(node)
            .fetch_one(&mut *transaction)
            .await?
            .try_get(0)?;
            if count >= i64::from(max_subscriptions) {
                transaction.rollback().await?;
                return Err(StorageError::PepLimit {
                    what: "subscriptions per node",
                    limit: max_subscriptions,
                });
            }
            sqlx::query(
                "INSERT INTO pep_subscriptions (account_id, node, jid, subscriber, state) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(account_id)
            .bind(node)
            .bind(jid)
            .bind(subscriber)
            .bind(state)
            .execute(&mut *transaction)
            .await?;
        }
    }
    transaction.commit().await?;
    Ok(previous)
}

/// The `subscribed` subscriptions of `subscriber` (a bare JID) to any
/// account's nodes: (owner domain, owner localpart, node, subscribed jid).
pub(crate) async fn pep_subscribed_nodes(
    pool: &Pool<Db>,
    subscriber: &str,
) -> Result<Vec<(String, String, String, String)>, StorageError> {
    let rows = sqlx::query(
        "SELECT a.domain, a.localpart, s.node, s.jid FROM pep_subscriptions s \
         JOIN accounts a ON a.id = s.account_id \
         WHERE s.subscriber = $1 AND s.state = 'subscribed' ORDER BY a.domain, a.localpart, s.node",
    )
    .bind(subscriber)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .collect()
}

/// The features of a verified caps `ver`, one per line as stored.
pub(crate) async fn caps_features(
    pool: &Pool<Db>,
    hash: &str,
    ver: &str,
) -> Result<Option<Vec<String>>, StorageError> {
    let row = sqlx::query("SELECT features FROM caps_features WHERE hash = $1 AND ver = $2")
        .bind(hash)
        .bind(ver)
        .fetch_optional(pool)
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let features: String = row.try_get(0)?;
            Ok(Some(
                features
                    .split('\n')
                    .filter(|feature| !feature.is_empty())
                    .map(str::to_string)
                    .collect(),
            ))
        }
    }
}

/// Remember a verified caps record seen at `now_millis`; the first one for
/// a `ver` stays, and a known one has its `last_seen` refreshed when it is
/// older than `refresh_millis` (so an announced record is written at most
/// once per that period).
pub(crate) async fn put_caps(
    pool: &Pool<Db>,
    record: &CapsRecord,
    now_millis: i64,
    refresh_millis: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO caps_features (hash, ver, features, learned_at, last_seen) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (hash, ver) DO UPDATE SET last_seen = excluded.last_seen \
         WHERE caps_features.last_seen < $5",
    )
    .bind(&record.hash)
    .bind(&record.ver)
    .bind(record.features.join("\n"))
    .bind(now_millis)
    .bind(now_millis.saturating_sub(refresh_millis))
    .execute(pool)
    .await?;
    Ok(())
}

/// Remove at most `limit` caps records last seen before `cutoff_millis`,
/// oldest first; returns how many went. Idempotent, so replicas may race.
pub(crate) async fn purge_caps(
    pool: &Pool<Db>,
    cutoff_millis: i64,
    limit: i64,
) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "DELETE FROM caps_features WHERE (hash, ver) IN \
         (SELECT hash, ver FROM caps_features WHERE last_seen < $1 ORDER BY last_seen LIMIT $2)",
    )
    .bind(cutoff_millis)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
