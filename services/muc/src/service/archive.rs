//! The room archives' I/O (XEP-0313 section 5.1.2; the rules are the
//! engine's, `engine/archive.rs`): reading the message a moderation or a
//! retraction names before the stanza is applied, writing what the engine
//! archived or tombstoned before the room's stanzas go out, and running an
//! archive query the room allowed, after its lease is released (a page is
//! read without holding up the room). The query and its pages are the
//! account archive's (`starling_api::mam`).

use std::sync::Arc;
use std::time::SystemTime;

use starling_api::{mam, ApiError, ApiResult, ArchivedMessage, RoomArchiveStore};
use starling_jid::{BareJid, FullJid};
use starling_xmpp::xep::mam::Query;
use starling_xmpp::xep::Payload;
use starling_xmpp::{stanza, Element, Limits, StanzaError, StanzaErrorCondition};

use super::MucService;
use crate::engine::{self, ArchiveRequest, Effects, Outbound};
use crate::state::Room;

/// Where rooms' archives are kept and how they are read.
pub struct RoomArchive {
    pub store: Arc<dyn RoomArchiveStore>,
    /// The most messages one query returns (`mam.max_page_size`).
    pub max_page_size: u32,
    /// The limits an archived stanza is read back with.
    pub limits: Limits,
}

fn room_bare(room_jid: &str) -> ApiResult<BareJid> {
    room_jid
        .parse::<BareJid>()
        .map_err(|error| ApiError::Invalid(format!("room {room_jid}: {error}")))
}

impl MucService {
    /// The archived message `stanza_element` names (a moderation, a
    /// retraction), when the room keeps an archive and it is there.
    pub(super) async fn archived_target(
        &self,
        room_jid: &str,
        room: Option<&Room>,
        stanza_element: &Element,
    ) -> ApiResult<Option<ArchivedMessage>> {
        let (Some(archive), Some(id)) =
            (&self.archive, engine::referenced_stanza_id(stanza_element))
        else {
            return Ok(None);
        };
        if !room.is_some_and(Room::archives) {
            return Ok(None);
        }
        archive
            .store
            .room_archive_message(&room_bare(room_jid)?, id)
            .await
    }

    /// Write what the engine archived, tombstoned or removed. A failure is
    /// counted and logged: the room's stanzas still go out (the room's
    /// state is written already).
    pub(super) async fn write_archive(&self, room_jid: &str, effects: &Effects) {
        let Some(archive) = &self.archive else {
            return;
        };
        let Ok(room) = room_bare(room_jid) else {
            return;
        };
        if !effects.archive.is_empty() {
            match archive.store.archive_room_messages(&effects.archive).await {
                Ok(_) => self.count_archive("written", effects.archive.len()),
                Err(error) => {
                    self.count_archive("failed", effects.archive.len());
                    tracing::error!(room = %room, %error, "room archive write failed, messages not archived");
                }
            }
        }
        for (id, tombstone) in &effects.tombstones {
            match archive
                .store
                .replace_room_archive_message(&room, *id, tombstone)
                .await
            {
                Ok(_) => self.count_archive("retracted", 1),
                Err(error) => {
                    self.count_archive("failed", 1);
                    tracing::error!(room = %room, id = id.0, %error, "room archive tombstone not written");
                }
            }
        }
        if effects.archive_removed {
            match archive.store.remove_room_archive(&room).await {
                Ok(removed) => self.count_archive("removed", removed as usize),
                Err(error) => {
                    self.count_archive("failed", 1);
                    tracing::error!(room = %room, %error, "destroyed room's archive not removed");
                }
            }
        }
    }

    /// Run an archive query the room allowed: the results, then the `<fin/>`
    /// (or the error), to the querier's session. Returns what no session took.
    pub(super) async fn run_archive_query(
        &self,
        room_jid: &str,
        sender: &FullJid,
        request: ArchiveRequest,
        routed_at: Option<SystemTime>,
    ) -> Vec<Element> {
        let querier = sender.to_string();
        let reply = match self
            .archive_page(room_jid, &querier, &request, routed_at)
            .await
        {
            Ok(Some(mut fin)) => {
                self.count_archive("queried", 1);
                fin.set_attr("from", room_jid.to_string());
                fin.set_attr("to", querier.clone());
                fin
            }
            // The querier's session is gone: nobody reads the rest.
            Ok(None) => return Vec::new(),
            Err(stanza_error) => {
                let Some(mut reply) = stanza::error_reply(&request.iq, &stanza_error) else {
                    return Vec::new();
                };
                reply.set_attr("to", querier.clone());
                reply
            }
        };
        self.deliver(
            Outbound {
                stanza: reply,
                recipients: vec![querier],
            },
            routed_at,
        )
        .await
    }

    async fn archive_page(
        &self,
        room_jid: &str,
        querier: &str,
        request: &ArchiveRequest,
        routed_at: Option<SystemTime>,
    ) -> Result<Option<Element>, StanzaError> {
        let Some(archive) = &self.archive else {
            return Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable));
        };
        let payload = stanza::iq_payload(&request.iq)
            .ok_or_else(|| StanzaError::new(StanzaErrorCondition::BadRequest))?;
        let query = Query::from_element(payload).map_err(|invalid| invalid.to_stanza_error())?;
        let archive_query = mam::archive_query(&query, archive.max_page_size)?;
        let room = room_bare(room_jid).map_err(|error| error.to_stanza_error())?;
        let page = archive
            .store
            .query_room_archive(&room, &archive_query)
            .await
            .map_err(mam::query_failure)?;
        for archived in mam::sending_order(&page, query.flip_page) {
            let Some(view) =
                engine::archived_view(&archived.stanza_xml, request.show_jids, &archive.limits)
            else {
                tracing::warn!(room = %room, id = archived.id.0, "archived room message does not parse, skipped");
                continue;
            };
            let result = mam::result_message(
                room_jid,
                querier,
                query.queryid.as_deref(),
                archived.id,
                view,
            );
            let unrouted = self
                .deliver(
                    Outbound {
                        stanza: result,
                        recipients: vec![querier.to_string()],
                    },
                    routed_at,
                )
                .await;
            if !unrouted.is_empty() {
                self.count_archive("abandoned", 1);
                return Ok(None);
            }
        }
        Ok(Some(mam::fin_result(&request.iq, &archive_query, &page)))
    }
}
