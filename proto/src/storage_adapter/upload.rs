//! HTTP File Upload slots (XEP-0363) over `starling.storage.v1.Storage`:
//! the server side's handlers (called from the parent's `Storage` impl) and
//! [`UploadStore`] for [`GrpcStorageClient`].

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{
    ApiResult, StorageApi, UploadQuota, UploadSlotGrant, UploadSlotRecord, UploadStore,
};
use starling_jid::BareJid;
use tonic::{Request, Response, Status};

use super::{bad_request, user_field, GrpcStorageClient};
use crate::balance::RetryPolicy;
use crate::error::api_error_to_status;
use crate::storage::v1 as proto;
use crate::storage::v1::storage_client::StorageClient;

fn slot_to_proto(slot: &UploadSlotRecord) -> proto::UploadSlot {
    proto::UploadSlot {
        id: slot.id.clone(),
        file_name: slot.file_name.clone(),
        size: slot.size,
        content_type: slot.content_type.clone(),
        token_hash: slot.token_hash.clone(),
        created_at_millis: slot.created_at_millis,
        uploaded_at_millis: slot.uploaded_at_millis,
    }
}

fn slot_from_proto(slot: proto::UploadSlot) -> UploadSlotRecord {
    UploadSlotRecord {
        id: slot.id,
        file_name: slot.file_name,
        size: slot.size,
        content_type: slot.content_type,
        token_hash: slot.token_hash,
        created_at_millis: slot.created_at_millis,
        uploaded_at_millis: slot.uploaded_at_millis,
    }
}

pub(super) async fn create_upload_slot(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::CreateUploadSlotRequest>,
) -> Result<Response<proto::CreateUploadSlotResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let slot = request
        .slot
        .map(slot_from_proto)
        .ok_or_else(|| bad_request("slot is missing".to_string()))?;
    let quota = request
        .quota
        .map(|quota| UploadQuota {
            bytes: quota.bytes,
            now_millis: quota.now_millis,
            stored_for_millis: quota.stored_for_millis,
            pending_for_millis: quota.pending_for_millis,
        })
        .ok_or_else(|| bad_request("quota is missing".to_string()))?;
    let grant = api
        .create_upload_slot(&user, &slot, quota)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(match grant {
        UploadSlotGrant::Granted => proto::CreateUploadSlotResponse {
            granted: true,
            used_bytes: 0,
            retry_at_millis: None,
        },
        UploadSlotGrant::QuotaExceeded {
            used_bytes,
            retry_at_millis,
        } => proto::CreateUploadSlotResponse {
            granted: false,
            used_bytes,
            retry_at_millis,
        },
    }))
}

pub(super) async fn get_upload_slot(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::GetUploadSlotRequest>,
) -> Result<Response<proto::GetUploadSlotResponse>, Status> {
    let request = request.into_inner();
    let slot = api
        .upload_slot(&request.id)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetUploadSlotResponse {
        slot: slot.as_ref().map(slot_to_proto),
    }))
}

pub(super) async fn complete_upload_slot(
    api: &Arc<dyn StorageApi>,
    request: Request<proto::CompleteUploadSlotRequest>,
) -> Result<Response<proto::CompleteUploadSlotResponse>, Status> {
    let request = request.into_inner();
    let completed = api
        .complete_upload_slot(&request.id, request.uploaded_at_millis)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::CompleteUploadSlotResponse {
        completed,
    }))
}

#[async_trait]
impl UploadStore for GrpcStorageClient {
    async fn create_upload_slot(
        &self,
        user: &BareJid,
        slot: &UploadSlotRecord,
        quota: UploadQuota,
    ) -> ApiResult<UploadSlotGrant> {
        let request = proto::CreateUploadSlotRequest {
            user: user.to_string(),
            slot: Some(slot_to_proto(slot)),
            quota: Some(proto::UploadQuota {
                bytes: quota.bytes,
                now_millis: quota.now_millis,
                stored_for_millis: quota.stored_for_millis,
                pending_for_millis: quota.pending_for_millis,
            }),
        };
        // Not retried once it may have run: a second insert of the same id
        // would fail, and the client may simply ask for another slot.
        let response = self
            .replicas
            .call("create_upload_slot", RetryPolicy::AtMostOnce, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .create_upload_slot(request)
                        .await
                }
            })
            .await?;
        Ok(if response.granted {
            UploadSlotGrant::Granted
        } else {
            UploadSlotGrant::QuotaExceeded {
                used_bytes: response.used_bytes,
                retry_at_millis: response.retry_at_millis,
            }
        })
    }

    async fn upload_slot(&self, id: &str) -> ApiResult<Option<UploadSlotRecord>> {
        let request = proto::GetUploadSlotRequest { id: id.to_string() };
        let response = self
            .replicas
            .call("upload_slot", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_upload_slot(request).await }
            })
            .await?;
        Ok(response.slot.map(slot_from_proto))
    }

    async fn complete_upload_slot(&self, id: &str, uploaded_at_millis: i64) -> ApiResult<bool> {
        let request = proto::CompleteUploadSlotRequest {
            id: id.to_string(),
            uploaded_at_millis,
        };
        // Idempotent: the same instant marks the slot again.
        let response = self
            .replicas
            .call("complete_upload_slot", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .complete_upload_slot(request)
                        .await
                }
            })
            .await?;
        Ok(response.completed)
    }
}
