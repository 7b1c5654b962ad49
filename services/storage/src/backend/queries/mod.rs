//! The storage queries (accounts and SCRAM credentials, rosters per RFC 6121
//! section 2, the XEP-0160 offline queue), written once in the SQL that
//! SQLite and PostgreSQL share (`$N` placeholders, `RETURNING`,
//! `ON CONFLICT`) and compiled once per driver: the parent module names the
//! driver as `Db` and the statement that opens a write transaction.
//!
//! Lock order, to keep PostgreSQL free of deadlocks: every write transaction
//! first updates (so locks) the owner's `accounts` row, then touches its other rows.
//!
//! One file per feature that keeps data (`accounts.rs`, `roster.rs`,
//! `offline.rs`); this one holds what they share: the account row's lock and
//! counters.

use sqlx::{Pool, Row};

use super::{Db, BEGIN_WRITE};
use crate::error::StorageError;
use crate::records::AccountAddress;

mod account_data;
mod accounts;
mod archive;
mod blocking;
mod fast;
mod muc;
mod offline;
mod pep;
mod push;
mod roster;
mod upload;

pub(crate) use account_data::*;
pub(crate) use accounts::*;
pub(crate) use archive::*;
pub(crate) use blocking::*;
pub(crate) use fast::*;
pub(crate) use muc::*;
pub(crate) use offline::*;
pub(crate) use pep::*;
pub(crate) use push::*;
pub(crate) use roster::*;
pub(crate) use upload::*;

/// A counter on the account row, bumped in the same transaction as the change it numbers.
#[derive(Clone, Copy)]
pub(super) enum AccountCounter {
    /// RFC 6121 section 2.6: every roster change gets a new, strictly greater version.
    RosterVersion,
    /// The offline queue's sequence, oldest first.
    OfflineSeq,
}

/// Lock the account's row for the rest of the transaction, increment one of
/// its counters and return `(account id, new value)`; `None` when there is no
/// such account.
pub(super) async fn increment_account_counter(
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
pub(super) async fn lock_account(
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

/// Lock the account's row for the rest of the transaction and return its id;
/// `None` when there is no such account.
pub(super) async fn lock_account_if_any(
    transaction: &mut sqlx::Transaction<'static, Db>,
    account: &AccountAddress<'_>,
) -> Result<Option<i64>, StorageError> {
    match lock_account(transaction, account).await {
        Ok(account_id) => Ok(Some(account_id)),
        Err(StorageError::AccountNotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// A cheap round trip for readiness probes.
pub(crate) async fn ping(pool: &Pool<Db>) -> Result<(), StorageError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// The id of an account, `None` when there is none.
async fn account_id(
    pool: &Pool<Db>,
    account: &AccountAddress<'_>,
) -> Result<Option<i64>, StorageError> {
    let row = sqlx::query("SELECT id FROM accounts WHERE domain = $1 AND localpart = $2")
        .bind(account.domain)
        .bind(account.localpart)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}
