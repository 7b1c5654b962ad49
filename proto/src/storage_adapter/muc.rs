//! Persistent multi-user chat rooms (XEP-0045) over
//! `starling.storage.v1.Storage`: the server side's handlers (called from
//! the parent's `Storage` impl) and [`MucRoomStore`] for [`GrpcStorageClient`].

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{
    ApiResult, ListedMucRoom, MucAffiliation, MucRoomRecord, MucRoomStore, StorageApi,
};
use starling_jid::BareJid;
use tonic::{Request, Response, Status};

use super::{bad_request, GrpcStorageClient};
use crate::balance::RetryPolicy;
use crate::convert::{malformed_response, parse_bare_jid};
use crate::error::api_error_to_status;
use crate::storage::v1 as proto;
use crate::storage::v1::storage_client::StorageClient;

fn room_to_proto(room: &MucRoomRecord) -> proto::MucRoom {
    proto::MucRoom {
        jid: room.jid.to_string(),
        revision: room.revision,
        name: room.name.clone(),
        public: room.public,
        config: room.config.clone(),
        subject: room.subject.clone(),
        subject_nick: room.subject_nick.clone(),
        occupant_id_salt: room.occupant_id_salt.clone(),
        affiliations: room
            .affiliations
            .iter()
            .map(|affiliation| proto::MucAffiliation {
                jid: affiliation.jid.clone(),
                affiliation: affiliation.affiliation.clone(),
                reason: affiliation.reason.clone(),
            })
            .collect(),
    }
}

fn room_from_proto(room: proto::MucRoom) -> Result<MucRoomRecord, String> {
    Ok(MucRoomRecord {
        jid: parse_bare_jid("room jid", &room.jid)?,
        revision: room.revision,
        name: room.name,
        public: room.public,
        config: room.config,
        subject: room.subject,
        subject_nick: room.subject_nick,
        occupant_id_salt: room.occupant_id_salt,
        affiliations: room
            .affiliations
            .into_iter()
            .map(|affiliation| MucAffiliation {
                jid: affiliation.jid,
                affiliation: affiliation.affiliation,
                reason: affiliation.reason,
            })
            .collect(),
    })
}

fn room_field(value: &str) -> Result<BareJid, Status> {
    parse_bare_jid("room", value).map_err(bad_request)
}

pub(super) async fn get_muc_room(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::GetMucRoomRequest>,
) -> Result<Response<proto::GetMucRoomResponse>, Status> {
    let room = room_field(&request.into_inner().room)?;
    let stored = api.muc_room(&room).await.map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetMucRoomResponse {
        room: stored.as_ref().map(room_to_proto),
    }))
}

pub(super) async fn put_muc_room(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::PutMucRoomRequest>,
) -> Result<Response<proto::PutMucRoomResponse>, Status> {
    let room = request
        .into_inner()
        .room
        .ok_or_else(|| bad_request("room is missing".to_string()))
        .and_then(|room| room_from_proto(room).map_err(bad_request))?;
    let written = api.put_muc_room(&room).await.map_err(api_error_to_status)?;
    Ok(Response::new(proto::PutMucRoomResponse { written }))
}

pub(super) async fn remove_muc_room(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::RemoveMucRoomRequest>,
) -> Result<Response<proto::RemoveMucRoomResponse>, Status> {
    let room = room_field(&request.into_inner().room)?;
    let removed = api
        .remove_muc_room(&room)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::RemoveMucRoomResponse { removed }))
}

pub(super) async fn list_muc_rooms(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::ListMucRoomsRequest>,
) -> Result<Response<proto::ListMucRoomsResponse>, Status> {
    let request = request.into_inner();
    let rooms = api
        .listed_muc_rooms(&request.domain, request.limit)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::ListMucRoomsResponse {
        rooms: rooms
            .into_iter()
            .map(|room| proto::ListedMucRoom {
                jid: room.jid.to_string(),
                name: room.name,
            })
            .collect(),
    }))
}

#[async_trait]
impl MucRoomStore for GrpcStorageClient {
    async fn muc_room(&self, room: &BareJid) -> ApiResult<Option<MucRoomRecord>> {
        let request = proto::GetMucRoomRequest {
            room: room.to_string(),
        };
        let response = self
            .replicas
            .call("muc_room", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_muc_room(request).await }
            })
            .await?;
        response
            .room
            .map(room_from_proto)
            .transpose()
            .map_err(malformed_response)
    }

    async fn put_muc_room(&self, room: &MucRoomRecord) -> ApiResult<bool> {
        let request = proto::PutMucRoomRequest {
            room: Some(room_to_proto(room)),
        };
        // Idempotent: the revision makes a second write of the same room a no-op.
        let response = self
            .replicas
            .call("put_muc_room", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).put_muc_room(request).await }
            })
            .await?;
        Ok(response.written)
    }

    async fn remove_muc_room(&self, room: &BareJid) -> ApiResult<bool> {
        let request = proto::RemoveMucRoomRequest {
            room: room.to_string(),
        };
        let response = self
            .replicas
            .call("remove_muc_room", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).remove_muc_room(request).await }
            })
            .await?;
        Ok(response.removed)
    }

    async fn listed_muc_rooms(&self, domain: &str, limit: u32) -> ApiResult<Vec<ListedMucRoom>> {
        let request = proto::ListMucRoomsRequest {
            domain: domain.to_string(),
            limit,
        };
        let response = self
            .replicas
            .call("listed_muc_rooms", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).list_muc_rooms(request).await }
            })
            .await?;
        response
            .rooms
            .into_iter()
            .map(|room| {
                Ok(ListedMucRoom {
                    jid: parse_bare_jid("room jid", &room.jid).map_err(malformed_response)?,
                    name: room.name,
                })
            })
            .collect()
    }
}
