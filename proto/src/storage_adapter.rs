//! The storage service over gRPC (`starling.storage.v1.Storage`): the server
//! adapter over any [`StorageApi`] and [`GrpcStorageClient`], which
//! implements [`StorageApi`] by calling every storage replica.

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{
    AbuseReport, AccountDataStore, AccountStore, ApiResult, ArchiveDefault, ArchiveEntry,
    ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore, ArchivedMessage, BlockedItem,
    BlockingStore, FastTokenRecord, FastTokenStore, OfflinePage, OfflineStore, PageStart,
    PushRegistration, PushStore, RosterItem, RosterStore, StorageApi, StoredCredentials,
    SubscriptionEntry,
};
use starling_jid::{BareJid, Jid};
use tonic::{Request, Response, Status};

use crate::balance::{ReplicaSet, RetryPolicy};
use crate::convert::{
    credentials_from_proto, credentials_to_proto, invalid_request, malformed_response,
    parse_bare_jid, roster_item_from_proto, roster_item_to_proto, subscription_entry_from_proto,
    subscription_entry_to_proto,
};
use crate::error::{api_error_to_status, ProtoError};
use crate::metrics::GrpcClientMetrics;
use crate::storage::v1 as proto;
use crate::storage::v1::storage_client::StorageClient;
use crate::storage::v1::storage_server::{Storage, StorageServer};

mod muc;
mod pep;
mod room_archive;
mod upload;

/// The tonic service serving `api` as `starling.storage.v1.Storage`.
pub fn storage_service(api: Arc<dyn StorageApi>) -> StorageServer<StorageGrpcServer> {
    StorageServer::new(StorageGrpcServer { api })
}

/// Implements the generated `Storage` trait by calling a [`StorageApi`].
pub struct StorageGrpcServer {
    api: Arc<dyn StorageApi>,
}

fn bad_request(message: String) -> Status {
    api_error_to_status(invalid_request(message))
}

fn user_field(value: &str) -> Result<BareJid, Status> {
    parse_bare_jid("user", value).map_err(bad_request)
}

fn block_item_to_proto(item: &BlockedItem) -> proto::BlockItem {
    proto::BlockItem {
        jid: item.jid.to_string(),
        report_reason: item.report.as_ref().map(|report| report.reason.clone()),
        report_text: item.report.as_ref().and_then(|report| report.text.clone()),
    }
}

fn block_item_from_proto(item: proto::BlockItem) -> Result<BlockedItem, String> {
    let jid = parse_jid("jid", &item.jid)?;
    Ok(BlockedItem {
        jid,
        report: item.report_reason.map(|reason| AbuseReport {
            reason,
            text: item.report_text,
        }),
    })
}

fn parse_jid(field: &str, value: &str) -> Result<Jid, String> {
    value
        .parse::<Jid>()
        .map_err(|error| format!("{field}: {error}"))
}

#[tonic::async_trait]
impl Storage for StorageGrpcServer {
    async fn get_pep_nodes(
        &self,
        request: Request<proto::GetPepNodesRequest>,
    ) -> Result<Response<proto::GetPepNodesResponse>, Status> {
        pep::get_pep_nodes(&self.api, request).await
    }

    async fn get_pep_node(
        &self,
        request: Request<proto::GetPepNodeRequest>,
    ) -> Result<Response<proto::GetPepNodeResponse>, Status> {
        pep::get_pep_node(&self.api, request).await
    }

    async fn create_pep_node(
        &self,
        request: Request<proto::CreatePepNodeRequest>,
    ) -> Result<Response<proto::CreatePepNodeResponse>, Status> {
        pep::create_pep_node(&self.api, request).await
    }

    async fn configure_pep_node(
        &self,
        request: Request<proto::ConfigurePepNodeRequest>,
    ) -> Result<Response<proto::ConfigurePepNodeResponse>, Status> {
        pep::configure_pep_node(&self.api, request).await
    }

    async fn delete_pep_node(
        &self,
        request: Request<proto::DeletePepNodeRequest>,
    ) -> Result<Response<proto::DeletePepNodeResponse>, Status> {
        pep::delete_pep_node(&self.api, request).await
    }

    async fn publish_pep_item(
        &self,
        request: Request<proto::PublishPepItemRequest>,
    ) -> Result<Response<proto::PublishPepItemResponse>, Status> {
        pep::publish_pep_item(&self.api, request).await
    }

    async fn get_pep_items(
        &self,
        request: Request<proto::GetPepItemsRequest>,
    ) -> Result<Response<proto::GetPepItemsResponse>, Status> {
        pep::get_pep_items(&self.api, request).await
    }

    async fn get_pep_last_items(
        &self,
        request: Request<proto::GetPepLastItemsRequest>,
    ) -> Result<Response<proto::GetPepLastItemsResponse>, Status> {
        pep::get_pep_last_items(&self.api, request).await
    }

    async fn retract_pep_item(
        &self,
        request: Request<proto::RetractPepItemRequest>,
    ) -> Result<Response<proto::RetractPepItemResponse>, Status> {
        pep::retract_pep_item(&self.api, request).await
    }

    async fn get_pep_whitelist(
        &self,
        request: Request<proto::GetPepWhitelistRequest>,
    ) -> Result<Response<proto::GetPepWhitelistResponse>, Status> {
        pep::get_pep_whitelist(&self.api, request).await
    }

    async fn update_pep_whitelist(
        &self,
        request: Request<proto::UpdatePepWhitelistRequest>,
    ) -> Result<Response<proto::UpdatePepWhitelistResponse>, Status> {
        pep::update_pep_whitelist(&self.api, request).await
    }

    async fn get_caps_features(
        &self,
        request: Request<proto::GetCapsFeaturesRequest>,
    ) -> Result<Response<proto::GetCapsFeaturesResponse>, Status> {
        pep::get_caps_features(&self.api, request).await
    }

    async fn put_caps(
        &self,
        request: Request<proto::PutCapsRequest>,
    ) -> Result<Response<proto::PutCapsResponse>, Status> {
        pep::put_caps(&self.api, request).await
    }

    async fn get_pep_subscriptions(
        &self,
        request: Request<proto::GetPepSubscriptionsRequest>,
    ) -> Result<Response<proto::GetPepSubscriptionsResponse>, Status> {
        pep::get_pep_subscriptions(&self.api, request).await
    }

    async fn set_pep_subscription(
        &self,
        request: Request<proto::SetPepSubscriptionRequest>,
    ) -> Result<Response<proto::SetPepSubscriptionResponse>, Status> {
        pep::set_pep_subscription(&self.api, request).await
    }

    async fn get_pep_subscribed_nodes(
        &self,
        request: Request<proto::GetPepSubscribedNodesRequest>,
    ) -> Result<Response<proto::GetPepSubscribedNodesResponse>, Status> {
        pep::get_pep_subscribed_nodes(&self.api, request).await
    }

    async fn create_account(
        &self,
        request: Request<proto::CreateAccountRequest>,
    ) -> Result<Response<proto::CreateAccountResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let credentials = credentials_from_proto(request.credentials).map_err(bad_request)?;
        self.api
            .create_account(&user, &credentials)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::CreateAccountResponse {}))
    }

    async fn set_credentials(
        &self,
        request: Request<proto::SetCredentialsRequest>,
    ) -> Result<Response<proto::SetCredentialsResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let credentials = credentials_from_proto(request.credentials).map_err(bad_request)?;
        self.api
            .set_credentials(&user, &credentials)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::SetCredentialsResponse {}))
    }

    async fn remove_account(
        &self,
        request: Request<proto::RemoveAccountRequest>,
    ) -> Result<Response<proto::RemoveAccountResponse>, Status> {
        let user = user_field(&request.into_inner().user)?;
        self.api
            .remove_account(&user)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::RemoveAccountResponse {}))
    }

    async fn list_accounts(
        &self,
        request: Request<proto::ListAccountsRequest>,
    ) -> Result<Response<proto::ListAccountsResponse>, Status> {
        let domain = request.into_inner().domain;
        let accounts = self
            .api
            .list_accounts(&domain)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::ListAccountsResponse {
            accounts: accounts.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn get_credentials(
        &self,
        request: Request<proto::GetCredentialsRequest>,
    ) -> Result<Response<proto::GetCredentialsResponse>, Status> {
        let user = user_field(&request.into_inner().user)?;
        let credentials = self
            .api
            .credentials(&user)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetCredentialsResponse {
            credentials: credentials.as_ref().map(credentials_to_proto),
        }))
    }

    async fn get_roster(
        &self,
        request: Request<proto::GetRosterRequest>,
    ) -> Result<Response<proto::GetRosterResponse>, Status> {
        let user = user_field(&request.into_inner().user)?;
        let (version, items) = self.api.roster(&user).await.map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetRosterResponse {
            version,
            items: items.iter().map(roster_item_to_proto).collect(),
        }))
    }

    async fn get_subscriptions(
        &self,
        request: Request<proto::GetSubscriptionsRequest>,
    ) -> Result<Response<proto::GetSubscriptionsResponse>, Status> {
        let user = user_field(&request.into_inner().user)?;
        let entries = self
            .api
            .subscriptions(&user)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetSubscriptionsResponse {
            entries: entries.iter().map(subscription_entry_to_proto).collect(),
        }))
    }

    async fn get_roster_item(
        &self,
        request: Request<proto::GetRosterItemRequest>,
    ) -> Result<Response<proto::GetRosterItemResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let contact = parse_bare_jid("contact", &request.contact).map_err(bad_request)?;
        let item = self
            .api
            .roster_item(&user, &contact)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetRosterItemResponse {
            item: item.as_ref().map(roster_item_to_proto),
        }))
    }

    async fn put_roster_item(
        &self,
        request: Request<proto::PutRosterItemRequest>,
    ) -> Result<Response<proto::PutRosterItemResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let item = request
            .item
            .ok_or_else(|| "item: missing".to_string())
            .and_then(roster_item_from_proto)
            .map_err(bad_request)?;
        let version = self
            .api
            .put_roster_item(&user, &item)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::PutRosterItemResponse { version }))
    }

    async fn remove_roster_item(
        &self,
        request: Request<proto::RemoveRosterItemRequest>,
    ) -> Result<Response<proto::RemoveRosterItemResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let contact = parse_bare_jid("contact", &request.contact).map_err(bad_request)?;
        let version = self
            .api
            .remove_roster_item(&user, &contact)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::RemoveRosterItemResponse { version }))
    }

    async fn get_blocklist(
        &self,
        request: Request<proto::GetBlocklistRequest>,
    ) -> Result<Response<proto::GetBlocklistResponse>, Status> {
        let user = user_field(&request.into_inner().user)?;
        let items = self
            .api
            .blocklist(&user)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetBlocklistResponse {
            items: items.iter().map(block_item_to_proto).collect(),
        }))
    }

    async fn block(
        &self,
        request: Request<proto::BlockRequest>,
    ) -> Result<Response<proto::BlockResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let items = request
            .items
            .into_iter()
            .map(block_item_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad_request)?;
        self.api
            .block(&user, &items)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::BlockResponse {}))
    }

    async fn unblock(
        &self,
        request: Request<proto::UnblockRequest>,
    ) -> Result<Response<proto::UnblockResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let jids = request
            .jids
            .iter()
            .map(|jid| parse_jid("jids", jid))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad_request)?;
        let removed = self
            .api
            .unblock(&user, &jids)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::UnblockResponse {
            removed: removed.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn store_offline(
        &self,
        request: Request<proto::StoreOfflineRequest>,
    ) -> Result<Response<proto::StoreOfflineResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        self.api
            .store_offline(&user, &request.stanza)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::StoreOfflineResponse {}))
    }

    async fn take_offline(
        &self,
        request: Request<proto::TakeOfflineRequest>,
    ) -> Result<Response<proto::TakeOfflineResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let page = self
            .api
            .take_offline(&user, request.max_messages, request.max_bytes)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::TakeOfflineResponse {
            stanzas: page.stanzas,
            more: page.more,
        }))
    }

    async fn count_offline(
        &self,
        request: Request<proto::CountOfflineRequest>,
    ) -> Result<Response<proto::CountOfflineResponse>, Status> {
        let user = user_field(&request.into_inner().user)?;
        let count = self
            .api
            .count_offline(&user)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::CountOfflineResponse { count }))
    }

    async fn get_account_data(
        &self,
        request: Request<proto::GetAccountDataRequest>,
    ) -> Result<Response<proto::GetAccountDataResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let xml = self
            .api
            .account_data(&user, &request.key)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetAccountDataResponse { xml }))
    }

    async fn put_account_data(
        &self,
        request: Request<proto::PutAccountDataRequest>,
    ) -> Result<Response<proto::PutAccountDataResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        self.api
            .put_account_data(&user, &request.key, request.xml.as_deref())
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::PutAccountDataResponse {}))
    }

    async fn put_fast_token(
        &self,
        request: Request<proto::PutFastTokenRequest>,
    ) -> Result<Response<proto::PutFastTokenResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let token = request
            .token
            .map(fast_token_from_proto)
            .ok_or_else(|| bad_request("token is missing".to_string()))?;
        self.api
            .put_fast_token(&user, &token)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::PutFastTokenResponse {}))
    }

    async fn get_fast_tokens(
        &self,
        request: Request<proto::GetFastTokensRequest>,
    ) -> Result<Response<proto::GetFastTokensResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let tokens = self
            .api
            .fast_tokens(&user, &request.agent_id)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetFastTokensResponse {
            tokens: tokens.into_iter().map(fast_token_to_proto).collect(),
        }))
    }

    async fn remove_fast_tokens(
        &self,
        request: Request<proto::RemoveFastTokensRequest>,
    ) -> Result<Response<proto::RemoveFastTokensResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let removed = self
            .api
            .remove_fast_tokens(
                &user,
                request.agent_id.as_deref(),
                request.issued_before_millis,
            )
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::RemoveFastTokensResponse { removed }))
    }

    async fn get_push_registrations(
        &self,
        request: Request<proto::GetPushRegistrationsRequest>,
    ) -> Result<Response<proto::GetPushRegistrationsResponse>, Status> {
        let user = user_field(&request.into_inner().user)?;
        let registrations = self
            .api
            .push_registrations(&user)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetPushRegistrationsResponse {
            registrations: registrations
                .into_iter()
                .map(push_registration_to_proto)
                .collect(),
        }))
    }

    async fn put_push_registration(
        &self,
        request: Request<proto::PutPushRegistrationRequest>,
    ) -> Result<Response<proto::PutPushRegistrationResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let registration = request
            .registration
            .map(push_registration_from_proto)
            .ok_or_else(|| bad_request("registration is missing".to_string()))?;
        self.api
            .put_push_registration(&user, &registration, request.max_per_account)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::PutPushRegistrationResponse {}))
    }

    async fn remove_push_registrations(
        &self,
        request: Request<proto::RemovePushRegistrationsRequest>,
    ) -> Result<Response<proto::RemovePushRegistrationsResponse>, Status> {
        let request = request.into_inner();
        let user = user_field(&request.user)?;
        let removed = self
            .api
            .remove_push_registrations(&user, &request.service_jid, request.node.as_deref())
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::RemovePushRegistrationsResponse {
            removed,
        }))
    }

    async fn archive_decisions(
        &self,
        request: Request<proto::ArchiveDecisionsRequest>,
    ) -> Result<Response<proto::ArchiveDecisionsResponse>, Status> {
        let pairs = request
            .into_inner()
            .pairs
            .iter()
            .map(|pair| {
                Ok((
                    parse_bare_jid("owner", &pair.owner)?,
                    parse_jid("with", &pair.with)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(bad_request)?;
        let archived = self
            .api
            .archive_decisions(&pairs)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::ArchiveDecisionsResponse { archived }))
    }

    async fn archive_messages(
        &self,
        request: Request<proto::ArchiveMessagesRequest>,
    ) -> Result<Response<proto::ArchiveMessagesResponse>, Status> {
        let entries = entries_from_proto(request.into_inner()).map_err(bad_request)?;
        let added = self
            .api
            .archive_messages(&entries)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::ArchiveMessagesResponse { added }))
    }

    async fn query_archive(
        &self,
        request: Request<proto::QueryArchiveRequest>,
    ) -> Result<Response<proto::QueryArchiveResponse>, Status> {
        let request = request.into_inner();
        let owner = parse_bare_jid("owner", &request.owner).map_err(bad_request)?;
        let query = archive_query_from_proto(&request).map_err(bad_request)?;
        let page = self
            .api
            .query_archive(&owner, &query)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(page_to_proto(page)))
    }

    async fn get_archive_bounds(
        &self,
        request: Request<proto::GetArchiveBoundsRequest>,
    ) -> Result<Response<proto::GetArchiveBoundsResponse>, Status> {
        let owner = parse_bare_jid("owner", &request.into_inner().owner).map_err(bad_request)?;
        let bounds = self
            .api
            .archive_bounds(&owner)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetArchiveBoundsResponse {
            first: bounds.map(|(first, _)| first.0),
            last: bounds.map(|(_, last)| last.0),
        }))
    }

    async fn get_archive_prefs(
        &self,
        request: Request<proto::GetArchivePrefsRequest>,
    ) -> Result<Response<proto::GetArchivePrefsResponse>, Status> {
        let owner = parse_bare_jid("owner", &request.into_inner().owner).map_err(bad_request)?;
        let prefs = self
            .api
            .archive_prefs(&owner)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::GetArchivePrefsResponse {
            prefs: Some(prefs_to_proto(&prefs)),
        }))
    }

    async fn set_archive_prefs(
        &self,
        request: Request<proto::SetArchivePrefsRequest>,
    ) -> Result<Response<proto::SetArchivePrefsResponse>, Status> {
        let request = request.into_inner();
        let owner = parse_bare_jid("owner", &request.owner).map_err(bad_request)?;
        let prefs = prefs_from_proto(request.prefs).map_err(bad_request)?;
        self.api
            .set_archive_prefs(&owner, &prefs)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::SetArchivePrefsResponse {}))
    }

    async fn create_upload_slot(
        &self,
        request: Request<proto::CreateUploadSlotRequest>,
    ) -> Result<Response<proto::CreateUploadSlotResponse>, Status> {
        upload::create_upload_slot(&self.api, request).await
    }

    async fn get_upload_slot(
        &self,
        request: Request<proto::GetUploadSlotRequest>,
    ) -> Result<Response<proto::GetUploadSlotResponse>, Status> {
        upload::get_upload_slot(&self.api, request).await
    }

    async fn complete_upload_slot(
        &self,
        request: Request<proto::CompleteUploadSlotRequest>,
    ) -> Result<Response<proto::CompleteUploadSlotResponse>, Status> {
        upload::complete_upload_slot(&self.api, request).await
    }

    async fn get_muc_room(
        &self,
        request: Request<proto::GetMucRoomRequest>,
    ) -> Result<Response<proto::GetMucRoomResponse>, Status> {
        muc::get_muc_room(&self.api, request).await
    }

    async fn put_muc_room(
        &self,
        request: Request<proto::PutMucRoomRequest>,
    ) -> Result<Response<proto::PutMucRoomResponse>, Status> {
        muc::put_muc_room(&self.api, request).await
    }

    async fn remove_muc_room(
        &self,
        request: Request<proto::RemoveMucRoomRequest>,
    ) -> Result<Response<proto::RemoveMucRoomResponse>, Status> {
        muc::remove_muc_room(&self.api, request).await
    }

    async fn list_muc_rooms(
        &self,
        request: Request<proto::ListMucRoomsRequest>,
    ) -> Result<Response<proto::ListMucRoomsResponse>, Status> {
        muc::list_muc_rooms(&self.api, request).await
    }

    async fn archive_room_messages(
        &self,
        request: Request<proto::ArchiveMessagesRequest>,
    ) -> Result<Response<proto::ArchiveMessagesResponse>, Status> {
        room_archive::archive_room_messages(&self.api, request).await
    }

    async fn query_room_archive(
        &self,
        request: Request<proto::QueryArchiveRequest>,
    ) -> Result<Response<proto::QueryArchiveResponse>, Status> {
        room_archive::query_room_archive(&self.api, request).await
    }

    async fn get_room_archive_message(
        &self,
        request: Request<proto::GetRoomArchiveMessageRequest>,
    ) -> Result<Response<proto::GetRoomArchiveMessageResponse>, Status> {
        room_archive::get_room_archive_message(&self.api, request).await
    }

    async fn replace_room_archive_message(
        &self,
        request: Request<proto::ReplaceRoomArchiveMessageRequest>,
    ) -> Result<Response<proto::ReplaceRoomArchiveMessageResponse>, Status> {
        room_archive::replace_room_archive_message(&self.api, request).await
    }

    async fn remove_room_archive(
        &self,
        request: Request<proto::RemoveRoomArchiveRequest>,
    ) -> Result<Response<proto::RemoveRoomArchiveResponse>, Status> {
        room_archive::remove_room_archive(&self.api, request).await
    }
}

fn push_registration_to_proto(registration: PushRegistration) -> proto::PushRegistration {
    proto::PushRegistration {
        service_jid: registration.service_jid,
        node: registration.node,
        publish_options_xml: registration.publish_options_xml,
    }
}

fn push_registration_from_proto(registration: proto::PushRegistration) -> PushRegistration {
    PushRegistration {
        service_jid: registration.service_jid,
        node: registration.node,
        publish_options_xml: registration.publish_options_xml,
    }
}

fn fast_token_from_proto(token: proto::FastToken) -> FastTokenRecord {
    FastTokenRecord {
        agent_id: token.agent_id,
        mechanism: token.mechanism,
        issued_at_millis: token.issued_at_millis,
        expires_at_millis: token.expires_at_millis,
        token_hash: token.token_hash,
    }
}

fn fast_token_to_proto(token: FastTokenRecord) -> proto::FastToken {
    proto::FastToken {
        agent_id: token.agent_id,
        mechanism: token.mechanism,
        issued_at_millis: token.issued_at_millis,
        expires_at_millis: token.expires_at_millis,
        token_hash: token.token_hash,
    }
}

/// [`StorageApi`] over gRPC, balanced over every storage replica with
/// failover (see `balance` for the retry policy of each call):
/// reads and `set_credentials` are retried on every replica; `create_account`,
/// `remove_account`, `put_roster_item`, `remove_roster_item` and
/// `store_offline` once (at-least-once: a retried `store_offline` whose first
/// attempt was executed stores the message twice, a retried `create_account`
/// may answer `AlreadyExists`); `take_offline` only when the request never
/// left, so that taken messages are never lost with a lost answer.
#[derive(Clone, Debug)]
pub struct GrpcStorageClient {
    replicas: Arc<ReplicaSet>,
}

impl GrpcStorageClient {
    /// Lazy connections to every endpoint (`host:port` or `http://host:port`).
    pub fn connect(endpoints: Vec<String>) -> Result<Self, ProtoError> {
        Self::connect_with_metrics(endpoints, GrpcClientMetrics::default())
    }

    /// [`GrpcStorageClient::connect`], observing every call in `metrics`.
    pub fn connect_with_metrics(
        endpoints: Vec<String>,
        metrics: GrpcClientMetrics,
    ) -> Result<Self, ProtoError> {
        Ok(GrpcStorageClient {
            replicas: Arc::new(ReplicaSet::connect("storage", endpoints)?.with_metrics(metrics)),
        })
    }
}

#[async_trait]
impl AccountStore for GrpcStorageClient {
    async fn create_account(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        let request = proto::CreateAccountRequest {
            user: user.to_string(),
            credentials: Some(credentials_to_proto(credentials)),
        };
        self.replicas
            .call("create_account", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).create_account(request).await }
            })
            .await?;
        Ok(())
    }

    async fn set_credentials(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        let request = proto::SetCredentialsRequest {
            user: user.to_string(),
            credentials: Some(credentials_to_proto(credentials)),
        };
        self.replicas
            .call("set_credentials", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).set_credentials(request).await }
            })
            .await?;
        Ok(())
    }

    async fn remove_account(&self, user: &BareJid) -> ApiResult<()> {
        let request = proto::RemoveAccountRequest {
            user: user.to_string(),
        };
        self.replicas
            .call("remove_account", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).remove_account(request).await }
            })
            .await?;
        Ok(())
    }

    async fn list_accounts(&self, domain: &str) -> ApiResult<Vec<BareJid>> {
        let request = proto::ListAccountsRequest {
            domain: domain.to_string(),
        };
        let response = self
            .replicas
            .call("list_accounts", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).list_accounts(request).await }
            })
            .await?;
        response
            .accounts
            .iter()
            .map(|account| parse_bare_jid("accounts", account).map_err(malformed_response))
            .collect()
    }

    async fn credentials(&self, user: &BareJid) -> ApiResult<Option<StoredCredentials>> {
        let request = proto::GetCredentialsRequest {
            user: user.to_string(),
        };
        let response = self
            .replicas
            .call("credentials", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_credentials(request).await }
            })
            .await?;
        match response.credentials {
            Some(credentials) => credentials_from_proto(Some(credentials))
                .map(Some)
                .map_err(malformed_response),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl RosterStore for GrpcStorageClient {
    async fn roster(&self, user: &BareJid) -> ApiResult<(u64, Vec<RosterItem>)> {
        let request = proto::GetRosterRequest {
            user: user.to_string(),
        };
        let response = self
            .replicas
            .call("roster", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_roster(request).await }
            })
            .await?;
        let items = response
            .items
            .into_iter()
            .map(|item| roster_item_from_proto(item).map_err(malformed_response))
            .collect::<ApiResult<Vec<RosterItem>>>()?;
        Ok((response.version, items))
    }

    async fn subscriptions(&self, user: &BareJid) -> ApiResult<Vec<SubscriptionEntry>> {
        let request = proto::GetSubscriptionsRequest {
            user: user.to_string(),
        };
        let response = self
            .replicas
            .call("subscriptions", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_subscriptions(request).await }
            })
            .await?;
        response
            .entries
            .into_iter()
            .map(|entry| subscription_entry_from_proto(entry).map_err(malformed_response))
            .collect()
    }

    async fn roster_item(
        &self,
        user: &BareJid,
        contact: &BareJid,
    ) -> ApiResult<Option<RosterItem>> {
        let request = proto::GetRosterItemRequest {
            user: user.to_string(),
            contact: contact.to_string(),
        };
        let response = self
            .replicas
            .call("roster_item", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_roster_item(request).await }
            })
            .await?;
        response
            .item
            .map(|item| roster_item_from_proto(item).map_err(malformed_response))
            .transpose()
    }

    async fn put_roster_item(&self, user: &BareJid, item: &RosterItem) -> ApiResult<u64> {
        let request = proto::PutRosterItemRequest {
            user: user.to_string(),
            item: Some(roster_item_to_proto(item)),
        };
        let response = self
            .replicas
            .call("put_roster_item", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).put_roster_item(request).await }
            })
            .await?;
        Ok(response.version)
    }

    async fn remove_roster_item(
        &self,
        user: &BareJid,
        contact: &BareJid,
    ) -> ApiResult<Option<u64>> {
        let request = proto::RemoveRosterItemRequest {
            user: user.to_string(),
            contact: contact.to_string(),
        };
        let response = self
            .replicas
            .call("remove_roster_item", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .remove_roster_item(request)
                        .await
                }
            })
            .await?;
        Ok(response.version)
    }
}

#[async_trait]
impl OfflineStore for GrpcStorageClient {
    async fn store_offline(&self, user: &BareJid, stanza_xml: &str) -> ApiResult<()> {
        let request = proto::StoreOfflineRequest {
            user: user.to_string(),
            stanza: stanza_xml.to_string(),
        };
        self.replicas
            .call("store_offline", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).store_offline(request).await }
            })
            .await?;
        Ok(())
    }

    async fn take_offline(
        &self,
        user: &BareJid,
        max_messages: u32,
        max_bytes: u64,
    ) -> ApiResult<OfflinePage> {
        let request = proto::TakeOfflineRequest {
            user: user.to_string(),
            max_messages,
            max_bytes,
        };
        let response = self
            .replicas
            .call("take_offline", RetryPolicy::AtMostOnce, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).take_offline(request).await }
            })
            .await?;
        Ok(OfflinePage {
            stanzas: response.stanzas,
            more: response.more,
        })
    }

    async fn count_offline(&self, user: &BareJid) -> ApiResult<u64> {
        let request = proto::CountOfflineRequest {
            user: user.to_string(),
        };
        let response = self
            .replicas
            .call("count_offline", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).count_offline(request).await }
            })
            .await?;
        Ok(response.count)
    }
}

#[async_trait]
impl AccountDataStore for GrpcStorageClient {
    async fn account_data(&self, user: &BareJid, key: &str) -> ApiResult<Option<String>> {
        let request = proto::GetAccountDataRequest {
            user: user.to_string(),
            key: key.to_string(),
        };
        let response = self
            .replicas
            .call("get_account_data", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_account_data(request).await }
            })
            .await?;
        Ok(response.xml)
    }

    /// Idempotent: storing the same document twice leaves one.
    async fn put_account_data(
        &self,
        user: &BareJid,
        key: &str,
        xml: Option<&str>,
    ) -> ApiResult<()> {
        let request = proto::PutAccountDataRequest {
            user: user.to_string(),
            key: key.to_string(),
            xml: xml.map(str::to_string),
        };
        self.replicas
            .call("put_account_data", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).put_account_data(request).await }
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl BlockingStore for GrpcStorageClient {
    async fn blocklist(&self, user: &BareJid) -> ApiResult<Vec<BlockedItem>> {
        let request = proto::GetBlocklistRequest {
            user: user.to_string(),
        };
        let response = self
            .replicas
            .call("blocklist", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_blocklist(request).await }
            })
            .await?;
        response
            .items
            .into_iter()
            .map(|item| block_item_from_proto(item).map_err(malformed_response))
            .collect()
    }

    async fn block(&self, user: &BareJid, items: &[BlockedItem]) -> ApiResult<()> {
        let request = proto::BlockRequest {
            user: user.to_string(),
            items: items.iter().map(block_item_to_proto).collect(),
        };
        // Blocking an address twice leaves one item: safe to retry.
        self.replicas
            .call("block", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).block(request).await }
            })
            .await?;
        Ok(())
    }

    async fn unblock(&self, user: &BareJid, jids: &[Jid]) -> ApiResult<Vec<Jid>> {
        let request = proto::UnblockRequest {
            user: user.to_string(),
            jids: jids.iter().map(ToString::to_string).collect(),
        };
        let response = self
            .replicas
            .call("unblock", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).unblock(request).await }
            })
            .await?;
        response
            .removed
            .iter()
            .map(|jid| parse_jid("removed", jid).map_err(malformed_response))
            .collect()
    }
}

#[async_trait]
impl FastTokenStore for GrpcStorageClient {
    async fn put_fast_token(&self, user: &BareJid, token: &FastTokenRecord) -> ApiResult<()> {
        let request = proto::PutFastTokenRequest {
            user: user.to_string(),
            token: Some(fast_token_to_proto(token.clone())),
        };
        self.replicas
            .call("put_fast_token", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).put_fast_token(request).await }
            })
            .await?;
        Ok(())
    }

    async fn fast_tokens(&self, user: &BareJid, agent_id: &str) -> ApiResult<Vec<FastTokenRecord>> {
        let request = proto::GetFastTokensRequest {
            user: user.to_string(),
            agent_id: agent_id.to_string(),
        };
        let response = self
            .replicas
            .call("fast_tokens", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_fast_tokens(request).await }
            })
            .await?;
        Ok(response
            .tokens
            .into_iter()
            .map(fast_token_from_proto)
            .collect())
    }

    async fn remove_fast_tokens(
        &self,
        user: &BareJid,
        agent_id: Option<&str>,
        issued_before_millis: Option<i64>,
    ) -> ApiResult<u64> {
        let request = proto::RemoveFastTokensRequest {
            user: user.to_string(),
            agent_id: agent_id.map(str::to_string),
            issued_before_millis,
        };
        let response = self
            .replicas
            .call("remove_fast_tokens", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .remove_fast_tokens(request)
                        .await
                }
            })
            .await?;
        Ok(response.removed)
    }
}

#[async_trait]
impl PushStore for GrpcStorageClient {
    async fn push_registrations(&self, user: &BareJid) -> ApiResult<Vec<PushRegistration>> {
        let request = proto::GetPushRegistrationsRequest {
            user: user.to_string(),
        };
        let response = self
            .replicas
            .call("push_registrations", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .get_push_registrations(request)
                        .await
                }
            })
            .await?;
        Ok(response
            .registrations
            .into_iter()
            .map(push_registration_from_proto)
            .collect())
    }

    async fn put_push_registration(
        &self,
        user: &BareJid,
        registration: &PushRegistration,
        max_per_account: u32,
    ) -> ApiResult<()> {
        let request = proto::PutPushRegistrationRequest {
            user: user.to_string(),
            registration: Some(push_registration_to_proto(registration.clone())),
            max_per_account,
        };
        // Idempotent: enabling the same registration again replaces it.
        self.replicas
            .call(
                "put_push_registration",
                RetryPolicy::Idempotent,
                |channel| {
                    let request = request.clone();
                    async move {
                        StorageClient::new(channel)
                            .put_push_registration(request)
                            .await
                    }
                },
            )
            .await?;
        Ok(())
    }

    async fn remove_push_registrations(
        &self,
        user: &BareJid,
        service_jid: &str,
        node: Option<&str>,
    ) -> ApiResult<u64> {
        let request = proto::RemovePushRegistrationsRequest {
            user: user.to_string(),
            service_jid: service_jid.to_string(),
            node: node.map(str::to_string),
        };
        let response = self
            .replicas
            .call(
                "remove_push_registrations",
                RetryPolicy::Idempotent,
                |channel| {
                    let request = request.clone();
                    async move {
                        StorageClient::new(channel)
                            .remove_push_registrations(request)
                            .await
                    }
                },
            )
            .await?;
        Ok(response.removed)
    }
}

fn default_rule_to_proto(rule: ArchiveDefault) -> proto::ArchiveDefaultRule {
    match rule {
        ArchiveDefault::Always => proto::ArchiveDefaultRule::ArchiveDefaultAlways,
        ArchiveDefault::Never => proto::ArchiveDefaultRule::ArchiveDefaultNever,
        ArchiveDefault::Roster => proto::ArchiveDefaultRule::ArchiveDefaultRoster,
    }
}

fn prefs_to_proto(prefs: &ArchivePrefs) -> proto::ArchivePrefs {
    proto::ArchivePrefs {
        default_rule: default_rule_to_proto(prefs.default) as i32,
        always: prefs.always.iter().map(ToString::to_string).collect(),
        never: prefs.never.iter().map(ToString::to_string).collect(),
    }
}

fn prefs_from_proto(prefs: Option<proto::ArchivePrefs>) -> Result<ArchivePrefs, String> {
    let prefs = prefs.ok_or_else(|| "prefs: missing".to_string())?;
    let default = match proto::ArchiveDefaultRule::try_from(prefs.default_rule) {
        Ok(proto::ArchiveDefaultRule::ArchiveDefaultAlways) => ArchiveDefault::Always,
        Ok(proto::ArchiveDefaultRule::ArchiveDefaultNever) => ArchiveDefault::Never,
        Ok(proto::ArchiveDefaultRule::ArchiveDefaultRoster) => ArchiveDefault::Roster,
        Err(_) => {
            return Err(format!(
                "prefs: unknown default rule {}",
                prefs.default_rule
            ))
        }
    };
    let read = |jids: &[String], field: &str| -> Result<Vec<Jid>, String> {
        jids.iter().map(|jid| parse_jid(field, jid)).collect()
    };
    Ok(ArchivePrefs {
        default,
        always: read(&prefs.always, "always")?,
        never: read(&prefs.never, "never")?,
    })
}

fn entries_to_proto(entries: &[ArchiveEntry]) -> proto::ArchiveMessagesRequest {
    proto::ArchiveMessagesRequest {
        entries: entries
            .iter()
            .map(|entry| proto::ArchiveEntry {
                owner: entry.owner.to_string(),
                id: entry.id.0,
                with: entry.with.to_string(),
                stanza: entry.stanza_xml.clone(),
            })
            .collect(),
    }
}

fn entries_from_proto(request: proto::ArchiveMessagesRequest) -> Result<Vec<ArchiveEntry>, String> {
    request
        .entries
        .into_iter()
        .map(|entry| {
            Ok(ArchiveEntry {
                owner: parse_bare_jid("owner", &entry.owner)?,
                id: ArchiveId(entry.id),
                with: parse_jid("with", &entry.with)?,
                stanza_xml: entry.stanza,
            })
        })
        .collect()
}

fn page_to_proto(page: ArchivePage) -> proto::QueryArchiveResponse {
    proto::QueryArchiveResponse {
        messages: page
            .messages
            .into_iter()
            .map(|message| proto::ArchivedMessage {
                id: message.id.0,
                stanza: message.stanza_xml,
            })
            .collect(),
        complete: page.complete,
    }
}

fn page_from_proto(response: proto::QueryArchiveResponse) -> ArchivePage {
    ArchivePage {
        messages: response
            .messages
            .into_iter()
            .map(|message| ArchivedMessage {
                id: ArchiveId(message.id),
                stanza_xml: message.stanza,
            })
            .collect(),
        complete: response.complete,
    }
}

fn archive_query_to_proto(owner: &BareJid, query: &ArchiveQuery) -> proto::QueryArchiveRequest {
    let (page, page_id) = match query.page {
        PageStart::First => (proto::PageStartKind::PageStartFirst, 0),
        PageStart::Last => (proto::PageStartKind::PageStartLast, 0),
        PageStart::After(id) => (proto::PageStartKind::PageStartAfter, id.0),
        PageStart::Before(id) => (proto::PageStartKind::PageStartBefore, id.0),
    };
    proto::QueryArchiveRequest {
        owner: owner.to_string(),
        with: query.with.as_ref().map(ToString::to_string),
        start: query.start.map(|id| id.0),
        end: query.end.map(|id| id.0),
        after_id: query.after_id.map(|id| id.0),
        before_id: query.before_id.map(|id| id.0),
        ids: query.ids.iter().map(|id| id.0).collect(),
        page: page as i32,
        page_id,
        max: query.max,
    }
}

fn archive_query_from_proto(request: &proto::QueryArchiveRequest) -> Result<ArchiveQuery, String> {
    let page = match proto::PageStartKind::try_from(request.page) {
        Ok(proto::PageStartKind::PageStartFirst) => PageStart::First,
        Ok(proto::PageStartKind::PageStartLast) => PageStart::Last,
        Ok(proto::PageStartKind::PageStartAfter) => PageStart::After(ArchiveId(request.page_id)),
        Ok(proto::PageStartKind::PageStartBefore) => PageStart::Before(ArchiveId(request.page_id)),
        Err(_) => return Err(format!("page: unknown kind {}", request.page)),
    };
    Ok(ArchiveQuery {
        with: request
            .with
            .as_deref()
            .map(|with| parse_jid("with", with))
            .transpose()?,
        start: request.start.map(ArchiveId),
        end: request.end.map(ArchiveId),
        after_id: request.after_id.map(ArchiveId),
        before_id: request.before_id.map(ArchiveId),
        ids: request.ids.iter().copied().map(ArchiveId).collect(),
        page,
        max: request.max,
    })
}

#[async_trait]
impl ArchiveStore for GrpcStorageClient {
    async fn archive_decisions(&self, pairs: &[(BareJid, Jid)]) -> ApiResult<Vec<bool>> {
        let request = proto::ArchiveDecisionsRequest {
            pairs: pairs
                .iter()
                .map(|(owner, with)| proto::ArchiveDecisionPair {
                    owner: owner.to_string(),
                    with: with.to_string(),
                })
                .collect(),
        };
        let response = self
            .replicas
            .call("archive_decisions", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).archive_decisions(request).await }
            })
            .await?;
        if response.archived.len() != pairs.len() {
            return Err(malformed_response(format!(
                "{} decisions for {} pairs",
                response.archived.len(),
                pairs.len()
            )));
        }
        Ok(response.archived)
    }

    /// Idempotent: an id already archived for its owner is skipped.
    async fn archive_messages(&self, entries: &[ArchiveEntry]) -> ApiResult<u64> {
        let request = entries_to_proto(entries);
        let response = self
            .replicas
            .call("archive_messages", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).archive_messages(request).await }
            })
            .await?;
        Ok(response.added)
    }

    async fn query_archive(&self, owner: &BareJid, query: &ArchiveQuery) -> ApiResult<ArchivePage> {
        let request = archive_query_to_proto(owner, query);
        let response = self
            .replicas
            .call("query_archive", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).query_archive(request).await }
            })
            .await?;
        Ok(page_from_proto(response))
    }

    async fn archive_bounds(&self, owner: &BareJid) -> ApiResult<Option<(ArchiveId, ArchiveId)>> {
        let request = proto::GetArchiveBoundsRequest {
            owner: owner.to_string(),
        };
        let response = self
            .replicas
            .call("archive_bounds", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move {
                    StorageClient::new(channel)
                        .get_archive_bounds(request)
                        .await
                }
            })
            .await?;
        Ok(match (response.first, response.last) {
            (Some(first), Some(last)) => Some((ArchiveId(first), ArchiveId(last))),
            _ => None,
        })
    }

    async fn archive_prefs(&self, owner: &BareJid) -> ApiResult<ArchivePrefs> {
        let request = proto::GetArchivePrefsRequest {
            owner: owner.to_string(),
        };
        let response = self
            .replicas
            .call("archive_prefs", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).get_archive_prefs(request).await }
            })
            .await?;
        prefs_from_proto(response.prefs).map_err(malformed_response)
    }

    /// Idempotent: setting the same preferences twice leaves them.
    async fn set_archive_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> ApiResult<()> {
        let request = proto::SetArchivePrefsRequest {
            owner: owner.to_string(),
            prefs: Some(prefs_to_proto(prefs)),
        };
        self.replicas
            .call("set_archive_prefs", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).set_archive_prefs(request).await }
            })
            .await?;
        Ok(())
    }
}
