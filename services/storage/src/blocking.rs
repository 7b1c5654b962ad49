//! Block lists: [`BlockingStore`] for [`Storage`] (queries in
//! `backend/queries/blocking.rs`, XEP-0191 with XEP-0377 reports).

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{AbuseReport, ApiResult, BlockedItem, BlockingStore};
use starling_jid::{BareJid, Jid};

use crate::backend;
use crate::records::{check_storable_text, AccountAddress, BlockRow};
use crate::{into_api_error, no_account, now_millis, DatabasePool, Storage, StorageError};

/// The longest report text kept (XEP-0377 `<text/>`), in bytes; a longer
/// one is refused (`Invalid`), so that a block list stays bounded.
pub const MAX_REPORT_TEXT_BYTES: usize = 4096;

fn to_row(item: &BlockedItem) -> Result<BlockRow, StorageError> {
    let jid = item.jid.to_string();
    check_storable_text("blocked address", &jid)?;
    let (reason, text) = match &item.report {
        Some(report) => {
            check_storable_text("report reason", &report.reason)?;
            if let Some(text) = &report.text {
                check_storable_text("report text", text)?;
                if text.len() > MAX_REPORT_TEXT_BYTES {
                    return Err(StorageError::Invalid(format!(
                        "a report text is limited to {MAX_REPORT_TEXT_BYTES} bytes"
                    )));
                }
            }
            (Some(report.reason.clone()), report.text.clone())
        }
        None => (None, None),
    };
    Ok(BlockRow {
        jid,
        report_reason: reason,
        report_text: text,
    })
}

fn from_row(user: &BareJid, row: BlockRow) -> Option<BlockedItem> {
    let jid = match row.jid.parse::<Jid>() {
        Ok(jid) => jid,
        Err(error) => {
            tracing::warn!(user = %user, jid = %row.jid, %error, "stored block item does not parse, skipped");
            return None;
        }
    };
    Some(BlockedItem {
        jid,
        report: row.report_reason.map(|reason| AbuseReport {
            reason,
            text: row.report_text,
        }),
    })
}

#[async_trait]
impl BlockingStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.blocklist", skip_all, fields(db.system = self.db_system()))]
    async fn blocklist(&self, user: &BareJid) -> ApiResult<Vec<BlockedItem>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(Vec::new());
        };
        let rows = on_database!(self, blocklist(&account))
            .map_err(|error| into_api_error("blocklist", user, error))?;
        Ok(rows
            .into_iter()
            .filter_map(|row| from_row(user, row))
            .collect())
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.block", skip_all, fields(db.system = self.db_system()))]
    async fn block(&self, user: &BareJid, items: &[BlockedItem]) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => match items.iter().map(to_row).collect::<Result<Vec<_>, _>>() {
                Err(error) => Err(error),
                Ok(rows) => on_database!(
                    self,
                    block(&account, &rows, self.max_blocklist_items, now_millis())
                ),
            },
        };
        result.map_err(|error| into_api_error("block", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.unblock", skip_all, fields(db.system = self.db_system()))]
    async fn unblock(&self, user: &BareJid, jids: &[Jid]) -> ApiResult<Vec<Jid>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(Vec::new());
        };
        let texts: Vec<String> = jids.iter().map(Jid::to_string).collect();
        let removed = on_database!(self, unblock(&account, &texts))
            .map_err(|error| into_api_error("unblock", user, error))?;
        Ok(removed
            .into_iter()
            .filter_map(|jid| jid.parse().ok())
            .collect())
    }
}
