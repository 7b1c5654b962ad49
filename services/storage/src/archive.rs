//! The message archive: [`ArchiveStore`] for [`Storage`] (queries in
//! `backend/queries/archive.rs`, XEP-0313 with XEP-0441 preferences), and
//! the retention purge (`mam.retention_days`) the storage service runs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use starling_api::{
    ApiResult, ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery,
    ArchiveStore,
};
use starling_jid::{BareJid, Jid};

use crate::backend;
use crate::records::{check_storable_text, default_rule_name, AccountAddress, ArchiveRow};
use crate::{into_api_error, no_account, DatabasePool, Storage, StorageError};

fn parse_default(name: &str) -> Result<ArchiveDefault, StorageError> {
    match name {
        "always" => Ok(ArchiveDefault::Always),
        "never" => Ok(ArchiveDefault::Never),
        "roster" => Ok(ArchiveDefault::Roster),
        other => Err(StorageError::CorruptData(format!(
            "archive default rule {other:?}"
        ))),
    }
}

#[async_trait]
impl ArchiveStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.archive_decisions", skip_all, fields(db.system = self.db_system()))]
    async fn archive_decisions(&self, pairs: &[(BareJid, Jid)]) -> ApiResult<Vec<bool>> {
        let mut decisions = Vec::with_capacity(pairs.len());
        for (owner, with) in pairs {
            let Some(account) = AccountAddress::of(owner) else {
                decisions.push(false);
                continue;
            };
            let bare = with.bare().to_string();
            let full = with.to_string();
            let row = on_database!(self, archive_decision(&account, &bare, &full))
                .map_err(|error| into_api_error("archive_decisions", owner, error))?;
            let Some(row) = row else {
                decisions.push(false);
                continue;
            };
            let archived = match row.listed_rule.as_deref() {
                Some("never") => false,
                Some(_) => true,
                None => match parse_default(&row.default_rule)
                    .map_err(|error| into_api_error("archive_decisions", owner, error))?
                {
                    ArchiveDefault::Always => true,
                    ArchiveDefault::Never => false,
                    ArchiveDefault::Roster => row.in_roster,
                },
            };
            decisions.push(archived);
        }
        Ok(decisions)
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.archive_messages", skip_all, fields(db.system = self.db_system(), messages = entries.len()))]
    async fn archive_messages(&self, entries: &[ArchiveEntry]) -> ApiResult<u64> {
        let mut rows = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(owner) = AccountAddress::of(&entry.owner) else {
                continue;
            };
            if let Err(error) = check_storable_text("archived message", &entry.stanza_xml) {
                return Err(into_api_error("archive_messages", &entry.owner, error));
            }
            rows.push(ArchiveRow {
                owner,
                id: entry.id.0,
                with_bare: entry.with.bare().to_string(),
                with_resource: entry.with.resource().unwrap_or("").to_string(),
                stanza_xml: &entry.stanza_xml,
            });
        }
        // One lock order for every writer: by owner.
        rows.sort_by(|left, right| {
            (left.owner.domain, left.owner.localpart, left.id).cmp(&(
                right.owner.domain,
                right.owner.localpart,
                right.id,
            ))
        });
        let Some(first) = entries.first() else {
            return Ok(0);
        };
        let (added, evicted) = on_database!(
            self,
            archive_messages(&rows, self.max_archive_messages_per_account)
        )
        .map_err(|error| into_api_error("archive_messages", &first.owner, error))?;
        self.metrics.archive("added", added);
        self.metrics.archive("evicted", evicted);
        Ok(added)
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.query_archive", skip_all, fields(db.system = self.db_system()))]
    async fn query_archive(&self, owner: &BareJid, query: &ArchiveQuery) -> ApiResult<ArchivePage> {
        let Some(account) = AccountAddress::of(owner) else {
            return Err(into_api_error("query_archive", owner, no_account(owner)));
        };
        let (messages, complete) = on_database!(self, query_archive(&account, query))
            .map_err(|error| into_api_error("query_archive", owner, error))?;
        Ok(ArchivePage { messages, complete })
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.archive_bounds", skip_all, fields(db.system = self.db_system()))]
    async fn archive_bounds(&self, owner: &BareJid) -> ApiResult<Option<(ArchiveId, ArchiveId)>> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(None);
        };
        let bounds = on_database!(self, archive_bounds(&account))
            .map_err(|error| into_api_error("archive_bounds", owner, error))?;
        Ok(bounds.map(|(first, last)| (ArchiveId(first), ArchiveId(last))))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.archive_prefs", skip_all, fields(db.system = self.db_system()))]
    async fn archive_prefs(&self, owner: &BareJid) -> ApiResult<ArchivePrefs> {
        let Some(account) = AccountAddress::of(owner) else {
            return Ok(ArchivePrefs::default());
        };
        let (default_rule, listed) = on_database!(self, archive_prefs(&account))
            .map_err(|error| into_api_error("archive_prefs", owner, error))?;
        let mut prefs = ArchivePrefs {
            default: parse_default(&default_rule)
                .map_err(|error| into_api_error("archive_prefs", owner, error))?,
            ..ArchivePrefs::default()
        };
        for (jid, rule) in listed {
            let Ok(jid) = jid.parse::<Jid>() else {
                tracing::warn!(user = %owner, %jid, "stored archive preference does not parse, skipped");
                continue;
            };
            if rule == "never" {
                prefs.never.push(jid);
            } else {
                prefs.always.push(jid);
            }
        }
        Ok(prefs)
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.set_archive_prefs", skip_all, fields(db.system = self.db_system()))]
    async fn set_archive_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> ApiResult<()> {
        let Some(account) = AccountAddress::of(owner) else {
            return Err(into_api_error(
                "set_archive_prefs",
                owner,
                no_account(owner),
            ));
        };
        // Never wins over always (XEP-0441): an address in both is kept as never.
        let mut listed: Vec<(String, &'static str)> = Vec::new();
        for jid in &prefs.never {
            let text = jid.to_string();
            if !listed.iter().any(|(listed_jid, _)| listed_jid == &text) {
                listed.push((text, "never"));
            }
        }
        for jid in &prefs.always {
            let text = jid.to_string();
            if !listed.iter().any(|(listed_jid, _)| listed_jid == &text) {
                listed.push((text, "always"));
            }
        }
        let default_rule = default_rule_name(prefs.default);
        on_database!(self, set_archive_prefs(&account, default_rule, &listed))
            .map_err(|error| into_api_error("set_archive_prefs", owner, error))
    }
}

impl Storage {
    /// Remove from every archive the messages older than `retention`
    /// (`mam.retention_days`); returns how many went.
    pub async fn purge_archive(&self, retention: Duration) -> Result<u64, StorageError> {
        let now_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
            });
        let retention_micros = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let cutoff = ArchiveId::first_at(now_micros.saturating_sub(retention_micros));
        let purged = on_database!(self, purge_archive(cutoff.0))?;
        self.metrics.archive("purged", purged);
        Ok(purged)
    }

    /// Purge the archives now and then every `every`, keeping `retention`
    /// (`mam.retention_days`; call only when it is not 0), until the task is aborted.
    pub fn spawn_archive_purge(
        &self,
        retention: Duration,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        crate::spawn_every(self, every, move |storage| async move {
            match storage.purge_archive(retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "archive retention purge"),
                Err(error) => tracing::warn!(%error, "archive retention purge failed"),
            }
        })
    }
}
