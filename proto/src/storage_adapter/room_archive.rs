//! Rooms' message archives (XEP-0313 section 5.1.2) over
//! `starling.storage.v1.Storage`: the server side's handlers (called from
//! the parent's `Storage` impl) and [`RoomArchiveStore`] for
//! [`GrpcStorageClient`]. The messages of the account archive's RPCs carry
//! the entries, the query and the page; their owner is the room's bare JID.

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{
    ApiResult, ArchiveEntry, ArchiveId, ArchivePage, ArchiveQuery, ArchivedMessage,
    RoomArchiveStore, StorageApi,
};
use starling_jid::BareJid;
use tonic::{Request, Response, Status};

use super::{
    archive_query_from_proto, archive_query_to_proto, bad_request, entries_from_proto,
    entries_to_proto, page_from_proto, page_to_proto, GrpcStorageClient,
};
use crate::balance::RetryPolicy;
use crate::convert::parse_bare_jid;
use crate::error::api_error_to_status;
use crate::storage::v1 as proto;
use crate::storage::v1::storage_client::StorageClient;

fn room_field(value: &str) -> Result<BareJid, Status> {
    parse_bare_jid("room", value).map_err(bad_request)
}

pub(super) async fn archive_room_messages(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::ArchiveMessagesRequest>,
) -> Result<Response<proto::ArchiveMessagesResponse>, Status> {
    let entries = entries_from_proto(request.into_inner()).map_err(bad_request)?;
    let added = api
        .archive_room_messages(&entries)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::ArchiveMessagesResponse { added }))
}

pub(super) async fn query_room_archive(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::QueryArchiveRequest>,
) -> Result<Response<proto::QueryArchiveResponse>, Status> {
    let request = request.into_inner();
    let room = room_field(&request.owner)?;
    let query = archive_query_from_proto(&request).map_err(bad_request)?;
    let page = api
        .query_room_archive(&room, &query)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(page_to_proto(page)))
}

pub(super) async fn get_room_archive_message(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::GetRoomArchiveMessageRequest>,
) -> Result<Response<proto::GetRoomArchiveMessageResponse>, Status> {
    let request = request.into_inner();
    let room = room_field(&request.room)?;
    let message = api
        .room_archive_message(&room, ArchiveId(request.id))
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetRoomArchiveMessageResponse {
        message: message.map(|message| proto::ArchivedMessage {
            id: message.id.0,
            stanza: message.stanza_xml,
        }),
    }))
}

pub(super) async fn replace_room_archive_message(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::ReplaceRoomArchiveMessageRequest>,
) -> Result<Response<proto::ReplaceRoomArchiveMessageResponse>, Status> {
    let request = request.into_inner();
    let room = room_field(&request.room)?;
    let replaced = api
        .replace_room_archive_message(&room, ArchiveId(request.id), &request.stanza)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::ReplaceRoomArchiveMessageResponse {
        replaced,
    }))
}

pub(super) async fn remove_room_archive(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::RemoveRoomArchiveRequest>,
) -> Result<Response<proto::RemoveRoomArchiveResponse>, Status> {
    let room = room_field(&request.into_inner().room)?;
    let removed = api
        .remove_room_archive(&room)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::RemoveRoomArchiveResponse { removed }))
}

#[async_trait]
impl RoomArchiveStore for GrpcStorageClient {
    /// Idempotent: an id already archived for its room is skipped.
    async fn archive_room_messages(&self, entries: &[ArchiveEntry]) -> ApiResult<u64> {
        let request = entries_to_proto(entries);
        let response = self
            .replicas
            .call(
                "archive_room_messages",
                RetryPolicy::Idempotent,
                |channel| {
                    let request = request.clone();
                    async move {
                        StorageClient::new(channel)
                            .archive_room_messages(request)
                            .await
                    }
                },
            )
            .await?;
        Ok(response.added)
    }

    async fn query_room_archive(
        &self,
        room: &BareJid,
        query: &ArchiveQuery,
    ) -> ApiResult<ArchivePage> {
        let request = archive_query_to_proto(room, query);
        let response = self
            .replicas
            .call("query_room_archive", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .query_room_archive(request)
                        .await
                }
            })
            .await?;
        Ok(page_from_proto(response))
    }

    async fn room_archive_message(
        &self,
        room: &BareJid,
        id: ArchiveId,
    ) -> ApiResult<Option<ArchivedMessage>> {
        let request = proto::GetRoomArchiveMessageRequest {
            room: room.to_string(),
            id: id.0,
        };
        let response = self
            .replicas
            .call("room_archive_message", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .get_room_archive_message(request)
                        .await
                }
            })
            .await?;
        Ok(response.message.map(|message| ArchivedMessage {
            id: ArchiveId(message.id),
            stanza_xml: message.stanza,
        }))
    }

    /// Idempotent: the same tombstone written twice is one tombstone.
    async fn replace_room_archive_message(
        &self,
        room: &BareJid,
        id: ArchiveId,
        stanza_xml: &str,
    ) -> ApiResult<bool> {
        let request = proto::ReplaceRoomArchiveMessageRequest {
            room: room.to_string(),
            id: id.0,
            stanza: stanza_xml.to_string(),
        };
        let response = self
            .replicas
            .call(
                "replace_room_archive_message",
                RetryPolicy::Idempotent,
                |channel| {
                    let request = request.clone();
                    async move {
                        StorageClient::new(channel)
                            .replace_room_archive_message(request)
                            .await
                    }
                },
            )
            .await?;
        Ok(response.replaced)
    }

    /// Idempotent: removing a removed archive removes nothing.
    async fn remove_room_archive(&self, room: &BareJid) -> ApiResult<u64> {
        let request = proto::RemoveRoomArchiveRequest {
            room: room.to_string(),
        };
        let response = self
            .replicas
            .call("remove_room_archive", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .remove_room_archive(request)
                        .await
                }
            })
            .await?;
        Ok(response.removed)
    }
}
