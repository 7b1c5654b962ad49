//! FAST tokens (XEP-0484): at most two per account and client.

use sqlx::{Pool, Row};

use super::{Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::AccountAddress;
use starling_api::FastTokenRecord;

/// Tokens a client keeps: the one it uses and the one issued last.
const TOKENS_PER_AGENT: i64 = 2;

/// Record a token; older ones of the same client beyond the newest two go.
pub(crate) async fn put_fast_token(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    token: &FastTokenRecord,
) -> Result<(), StorageError> {
    let mut transaction = pool.begin_with(BEGIN_WRITE).await?;
    let inserted = sqlx::query(
        "INSERT INTO fast_tokens (account_id, agent_id, mechanism, issued_at, expires_at, token_hash) \
         SELECT id, $3, $4, $5, $6, $7 FROM accounts WHERE domain = $1 AND localpart = $2 \
         ON CONFLICT (account_id, agent_id, issued_at) DO UPDATE \
         SET mechanism = excluded.mechanism, expires_at = excluded.expires_at, token_hash = excluded.token_hash",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(&token.agent_id)
    .bind(&token.mechanism)
    .bind(token.issued_at_millis)
    .bind(token.expires_at_millis)
    .bind(&token.token_hash)
    .execute(&mut *transaction)
    .await?;
    if inserted.rows_affected() == 0 {
        transaction.rollback().await?;
        return Err(StorageError::AccountNotFound(account.to_string()));
    }
    sqlx::query(
        "DELETE FROM fast_tokens \
         WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND localpart = $2) \
         AND agent_id = $3 AND issued_at NOT IN (SELECT issued_at FROM fast_tokens \
           WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND localpart = $2) \
           AND agent_id = $3 ORDER BY issued_at DESC LIMIT $4)",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(&token.agent_id)
    .bind(TOKENS_PER_AGENT)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// The tokens of one client, newest first.
pub(crate) async fn fast_tokens(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    agent_id: &str,
) -> Result<Vec<FastTokenRecord>, StorageError> {
    let rows = sqlx::query(
        "SELECT t.agent_id, t.mechanism, t.issued_at, t.expires_at, t.token_hash \
         FROM fast_tokens t JOIN accounts a ON a.id = t.account_id \
         WHERE a.domain = $1 AND a.localpart = $2 AND t.agent_id = $3 ORDER BY t.issued_at DESC",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(agent_id)
    .fetch_all(pool)
    .await?;
    let mut tokens = Vec::with_capacity(rows.len());
    for row in &rows {
        tokens.push(FastTokenRecord {
            agent_id: row.try_get(0)?,
            mechanism: row.try_get(1)?,
            issued_at_millis: row.try_get(2)?,
            expires_at_millis: row.try_get(3)?,
            token_hash: row.try_get(4)?,
        });
    }
    Ok(tokens)
}

/// Remove tokens of one client (or all), issued before a time (or all).
pub(crate) async fn remove_fast_tokens(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
    agent_id: Option<&str>,
    issued_before_millis: Option<i64>,
) -> Result<u64, StorageError> {
    let removed = sqlx::query(
        "DELETE FROM fast_tokens \
         WHERE account_id = (SELECT id FROM accounts WHERE domain = $1 AND localpart = $2) \
         AND ($3 IS NULL OR agent_id = $3) AND ($4 IS NULL OR issued_at < $4)",
    )
    .bind(account.domain)
    .bind(account.localpart)
    .bind(agent_id)
    .bind(issued_before_millis)
    .execute(pool)
    .await?;
    Ok(removed.rows_affected())
}
