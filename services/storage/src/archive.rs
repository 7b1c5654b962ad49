//! The message archive: [`ArchiveStore`] for [`Storage`] (queries in
//! `backend/queries/archive.rs`, XEP-0313 with XEP-0441 preferences), and
//! the retention purge (`mam.retention_days`) the storage service runs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use starling_api::{
    ApiResult, ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery,
    ArchiveStore, ArchivedMessage, RoomArchiveStore,
};
use starling_jid::{BareJid, Jid};

use crate::backend;
use crate::records::{
    check_storable_text, default_rule_name, AccountAddress, ArchiveRow, RoomArchiveRow,
};
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

/// A room's JID as stored: its bare JID's text, checked like any stored text.
fn room_key(operation: &'static str, room: &BareJid) -> ApiResult<String> {
    let text = room.to_string();
    check_storable_text("room", &text).map_err(|error| into_api_error(operation, room, error))?;
    Ok(text)
}

#[async_trait]
impl RoomArchiveStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.archive_room_messages", skip_all, fields(db.system = self.db_system(), messages = entries.len()))]
    async fn archive_room_messages(&self, entries: &[ArchiveEntry]) -> ApiResult<u64> {
        let Some(first) = entries.first() else {
            return Ok(0);
        };
        let mut texts = Vec::with_capacity(entries.len());
        for entry in entries {
            check_storable_text("archived message", &entry.stanza_xml)
                .map_err(|error| into_api_error("archive_room_messages", &entry.owner, error))?;
            texts.push((
                room_key("archive_room_messages", &entry.owner)?,
                entry.with.bare().to_string(),
                entry.with.resource().unwrap_or("").to_string(),
            ));
        }
        let rows: Vec<RoomArchiveRow<'_>> = entries
            .iter()
            .zip(&texts)
            .map(|(entry, (room, with_bare, with_resource))| RoomArchiveRow {
                room,
                id: entry.id.0,
                with_bare,
                with_resource,
                stanza_xml: &entry.stanza_xml,
            })
            .collect();
        let added = on_database!(self, archive_room_messages(&rows))
            .map_err(|error| into_api_error("archive_room_messages", &first.owner, error))?;
        self.metrics.archive("room_added", added);
        Ok(added)
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.query_room_archive", skip_all, fields(db.system = self.db_system()))]
    async fn query_room_archive(
        &self,
        room: &BareJid,
        query: &ArchiveQuery,
    ) -> ApiResult<ArchivePage> {
        let key = room_key("query_room_archive", room)?;
        let (messages, complete) = on_database!(self, query_room_archive(&key, query))
            .map_err(|error| into_api_error("query_room_archive", room, error))?;
        Ok(ArchivePage { messages, complete })
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.room_archive_message", skip_all, fields(db.system = self.db_system()))]
    async fn room_archive_message(
        &self,
        room: &BareJid,
        id: ArchiveId,
    ) -> ApiResult<Option<ArchivedMessage>> {
        let key = room_key("room_archive_message", room)?;
        on_database!(self, room_archive_message(&key, id.0))
            .map_err(|error| into_api_error("room_archive_message", room, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.replace_room_archive_message", skip_all, fields(db.system = self.db_system()))]
    async fn replace_room_archive_message(
        &self,
        room: &BareJid,
        id: ArchiveId,
        stanza_xml: &str,
    ) -> ApiResult<bool> {
        let key = room_key("replace_room_archive_message", room)?;
        check_storable_text("archived message", stanza_xml)
            .map_err(|error| into_api_error("replace_room_archive_message", room, error))?;
        on_database!(self, replace_room_archive_message(&key, id.0, stanza_xml))
            .map_err(|error| into_api_error("replace_room_archive_message", room, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.remove_room_archive", skip_all, fields(db.system = self.db_system()))]
    async fn remove_room_archive(&self, room: &BareJid) -> ApiResult<u64> {
        let key = room_key("remove_room_archive", room)?;
        let removed = on_database!(self, remove_room_archive(&key))
            .map_err(|error| into_api_error("remove_room_archive", room, error))?;
        self.metrics.archive("room_removed", removed);
        Ok(removed)
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
