//! Persistent multi-user chat rooms (XEP-0045): [`MucRoomStore`] for
//! [`Storage`] (queries in `backend/queries/muc.rs`).

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{ApiResult, ListedMucRoom, MucRoomRecord, MucRoomStore, MUC_AFFILIATIONS};
use starling_jid::BareJid;

use crate::backend;
use crate::records::{check_storable_text, RoomAddress};
use crate::{into_api_error, DatabasePool, Storage, StorageError};

fn no_room(room: &BareJid) -> StorageError {
    StorageError::Invalid(format!("{room} names no room (no localpart)"))
}

/// What a room must be to be stored: known affiliation names, one per JID,
/// and no NUL character anywhere.
fn check_room(record: &MucRoomRecord) -> Result<(), StorageError> {
    for (what, text) in [
        ("room name", &record.name),
        ("room configuration", &record.config),
        ("room subject", &record.subject),
        ("subject nick", &record.subject_nick),
        ("occupant id salt", &record.occupant_id_salt),
    ] {
        check_storable_text(what, text)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for affiliation in &record.affiliations {
        if !MUC_AFFILIATIONS.contains(&affiliation.affiliation.as_str()) {
            return Err(StorageError::Invalid(format!(
                "unknown room affiliation {:?}",
                affiliation.affiliation
            )));
        }
        if !seen.insert(affiliation.jid.as_str()) {
            return Err(StorageError::Invalid(format!(
                "{} is affiliated twice",
                affiliation.jid
            )));
        }
        check_storable_text("affiliated JID", &affiliation.jid)?;
        check_storable_text(
            "affiliation reason",
            affiliation.reason.as_deref().unwrap_or(""),
        )?;
    }
    Ok(())
}

#[async_trait]
impl MucRoomStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.muc_room", skip_all, fields(db.system = self.db_system()))]
    async fn muc_room(&self, room: &BareJid) -> ApiResult<Option<MucRoomRecord>> {
        let Some(address) = RoomAddress::of(room) else {
            return Ok(None);
        };
        on_database!(self, muc_room(&address, room))
            .map_err(|error| into_api_error("muc_room", room, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.put_muc_room", skip_all, fields(db.system = self.db_system()))]
    async fn put_muc_room(&self, record: &MucRoomRecord) -> ApiResult<bool> {
        let result = match RoomAddress::of(&record.jid) {
            None => Err(no_room(&record.jid)),
            Some(address) => match check_room(record) {
                Err(error) => Err(error),
                Ok(()) => on_database!(self, put_muc_room(&address, record)),
            },
        };
        result.map_err(|error| into_api_error("put_muc_room", &record.jid, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.remove_muc_room", skip_all, fields(db.system = self.db_system()))]
    async fn remove_muc_room(&self, room: &BareJid) -> ApiResult<bool> {
        let Some(address) = RoomAddress::of(room) else {
            return Ok(false);
        };
        on_database!(self, remove_muc_room(&address))
            .map_err(|error| into_api_error("remove_muc_room", room, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.listed_muc_rooms", skip_all, fields(db.system = self.db_system()))]
    async fn listed_muc_rooms(&self, domain: &str, limit: u32) -> ApiResult<Vec<ListedMucRoom>> {
        let service: BareJid = domain.parse().map_err(|error| {
            starling_api::ApiError::Invalid(format!("{domain:?} is not a valid domain: {error:?}"))
        })?;
        let rows = on_database!(self, listed_muc_rooms(service.domain(), i64::from(limit)))
            .map_err(|error| into_api_error("listed_muc_rooms", &service, error))?;
        Ok(rows
            .into_iter()
            .filter_map(|(localpart, name)| {
                Some(ListedMucRoom {
                    jid: format!("{localpart}@{}", service.domain()).parse().ok()?,
                    name,
                })
            })
            .collect())
    }
}
