//! PEP (XEP-0163) and entity capabilities (XEP-0115) over
//! `starling.storage.v1.Storage`: the server side's handlers (called from the
//! parent's `Storage` impl) and [`PepStore`] for [`GrpcStorageClient`].

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{
    roster_groups, AccessModel, ApiResult, CapsRecord, MaxItems, PepConfigPatch, PepItem,
    PepLimits, PepNode, PepNodeConfig, PepPublish, PepPublishOutcome, PepStore, PepSubscribedNode,
    PepSubscription, PepSubscriptionState, SendLastPublished, StorageApi,
};
use starling_jid::{BareJid, Jid};
use tonic::{Request, Response, Status};

use super::{bad_request, user_field, GrpcStorageClient};
use crate::balance::RetryPolicy;
use crate::convert::{malformed_response, parse_bare_jid};
use crate::error::api_error_to_status;
use crate::storage::v1 as proto;
use crate::storage::v1::storage_client::StorageClient;

fn config_to_proto(config: &PepNodeConfig) -> proto::PepNodeConfig {
    proto::PepNodeConfig {
        access_model: config.access_model.as_str().to_string(),
        max_items: config.max_items.to_stored(),
        persist_items: config.persist_items,
        send_last_published_item: config.send_last_published_item.as_str().to_string(),
        notify_retract: config.notify_retract,
        roster_groups_allowed: config.roster_groups_allowed.clone(),
    }
}

fn access_model(value: &str) -> Result<AccessModel, String> {
    AccessModel::from_name(value).ok_or_else(|| format!("access_model: unknown {value:?}"))
}

fn send_last(value: &str) -> Result<SendLastPublished, String> {
    SendLastPublished::from_name(value)
        .ok_or_else(|| format!("send_last_published_item: unknown {value:?}"))
}

fn config_from_proto(config: Option<proto::PepNodeConfig>) -> Result<PepNodeConfig, String> {
    let config = config.ok_or("node config missing")?;
    Ok(PepNodeConfig {
        access_model: access_model(&config.access_model)?,
        max_items: MaxItems::from_stored(config.max_items),
        persist_items: config.persist_items,
        send_last_published_item: send_last(&config.send_last_published_item)?,
        notify_retract: config.notify_retract,
        roster_groups_allowed: roster_groups(config.roster_groups_allowed),
    })
}

fn node_to_proto(node: &PepNode) -> proto::PepNode {
    proto::PepNode {
        name: node.name.clone(),
        config: Some(config_to_proto(&node.config)),
    }
}

fn node_from_proto(node: Option<proto::PepNode>) -> Result<PepNode, String> {
    let node = node.ok_or("node missing")?;
    Ok(PepNode {
        name: node.name,
        config: config_from_proto(node.config)?,
    })
}

fn item_to_proto(item: &PepItem) -> proto::PepItem {
    proto::PepItem {
        id: item.id.clone(),
        publisher: item.publisher.clone(),
        payload_xml: item.payload_xml.clone(),
    }
}

fn item_from_proto(item: proto::PepItem) -> PepItem {
    PepItem {
        id: item.id,
        publisher: item.publisher,
        payload_xml: item.payload_xml,
    }
}

fn patch_to_proto(patch: &PepConfigPatch) -> proto::PepConfigPatch {
    proto::PepConfigPatch {
        access_model: patch.access_model.map(|model| model.as_str().to_string()),
        max_items: patch.max_items.map(MaxItems::to_stored),
        persist_items: patch.persist_items,
        send_last_published_item: patch
            .send_last_published_item
            .map(|value| value.as_str().to_string()),
        notify_retract: patch.notify_retract,
        roster_groups_allowed: patch.roster_groups_allowed.as_ref().map(|groups| {
            proto::PepRosterGroups {
                groups: groups.clone(),
            }
        }),
    }
}

fn patch_from_proto(patch: Option<proto::PepConfigPatch>) -> Result<PepConfigPatch, String> {
    let patch = patch.unwrap_or_default();
    Ok(PepConfigPatch {
        access_model: patch
            .access_model
            .as_deref()
            .map(access_model)
            .transpose()?,
        max_items: patch.max_items.map(MaxItems::from_stored),
        persist_items: patch.persist_items,
        send_last_published_item: patch
            .send_last_published_item
            .as_deref()
            .map(send_last)
            .transpose()?,
        notify_retract: patch.notify_retract,
        roster_groups_allowed: patch
            .roster_groups_allowed
            .map(|groups| roster_groups(groups.groups)),
    })
}

fn subscription_state(value: &str) -> Result<PepSubscriptionState, String> {
    PepSubscriptionState::from_name(value)
        .ok_or_else(|| format!("subscription state: unknown {value:?}"))
}

fn parse_jid(field: &str, value: &str) -> Result<Jid, String> {
    value
        .parse::<Jid>()
        .map_err(|error| format!("{field}: invalid jid {value:?}: {error}"))
}

fn limits_to_proto(limits: PepLimits) -> proto::PepLimits {
    proto::PepLimits {
        max_items_per_node: limits.max_items_per_node,
        max_nodes_per_account: limits.max_nodes_per_account,
    }
}

fn limits_from_proto(limits: Option<proto::PepLimits>) -> Result<PepLimits, String> {
    let limits = limits.ok_or("limits missing")?;
    Ok(PepLimits {
        max_items_per_node: limits.max_items_per_node,
        max_nodes_per_account: limits.max_nodes_per_account,
    })
}

fn bare_jids(field: &str, values: &[String]) -> Result<Vec<BareJid>, String> {
    values
        .iter()
        .map(|value| parse_bare_jid(field, value))
        .collect()
}

type Api = Arc<dyn StorageApi>;

pub(super) async fn get_pep_nodes(
    api: &Api,
    request: Request<proto::GetPepNodesRequest>,
) -> Result<Response<proto::GetPepNodesResponse>, Status> {
    let user = user_field(&request.into_inner().user)?;
    let nodes = api.pep_nodes(&user).await.map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetPepNodesResponse {
        nodes: nodes.iter().map(node_to_proto).collect(),
    }))
}

pub(super) async fn get_pep_node(
    api: &Api,
    request: Request<proto::GetPepNodeRequest>,
) -> Result<Response<proto::GetPepNodeResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let node = api
        .pep_node(&user, &request.node)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetPepNodeResponse {
        node: node.as_ref().map(node_to_proto),
    }))
}

pub(super) async fn create_pep_node(
    api: &Api,
    request: Request<proto::CreatePepNodeRequest>,
) -> Result<Response<proto::CreatePepNodeResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let node = node_from_proto(request.node).map_err(bad_request)?;
    let limits = limits_from_proto(request.limits).map_err(bad_request)?;
    let created = api
        .create_pep_node(&user, &node, limits)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::CreatePepNodeResponse { created }))
}

pub(super) async fn configure_pep_node(
    api: &Api,
    request: Request<proto::ConfigurePepNodeRequest>,
) -> Result<Response<proto::ConfigurePepNodeResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let node = node_from_proto(request.node).map_err(bad_request)?;
    let limits = limits_from_proto(request.limits).map_err(bad_request)?;
    api.configure_pep_node(&user, &node, limits)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::ConfigurePepNodeResponse {}))
}

pub(super) async fn delete_pep_node(
    api: &Api,
    request: Request<proto::DeletePepNodeRequest>,
) -> Result<Response<proto::DeletePepNodeResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let deleted = api
        .delete_pep_node(&user, &request.node)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::DeletePepNodeResponse { deleted }))
}

pub(super) async fn publish_pep_item(
    api: &Api,
    request: Request<proto::PublishPepItemRequest>,
) -> Result<Response<proto::PublishPepItemResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let publish = PepPublish {
        node: request.node,
        item: request.item.map(item_from_proto),
        options: patch_from_proto(request.options).map_err(bad_request)?,
    };
    let limits = limits_from_proto(request.limits).map_err(bad_request)?;
    let outcome = api
        .publish_pep_item(&user, &publish, limits)
        .await
        .map_err(api_error_to_status)?;
    let response = match outcome {
        PepPublishOutcome::Published { node, created } => proto::PublishPepItemResponse {
            result: proto::PepPublishResult::Published.into(),
            node: Some(node_to_proto(&node)),
            created,
        },
        PepPublishOutcome::PreconditionNotMet => proto::PublishPepItemResponse {
            result: proto::PepPublishResult::PreconditionNotMet.into(),
            node: None,
            created: false,
        },
        PepPublishOutcome::NodeLimitReached => proto::PublishPepItemResponse {
            result: proto::PepPublishResult::NodeLimitReached.into(),
            node: None,
            created: false,
        },
    };
    Ok(Response::new(response))
}

pub(super) async fn get_pep_items(
    api: &Api,
    request: Request<proto::GetPepItemsRequest>,
) -> Result<Response<proto::GetPepItemsResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let items = api
        .pep_items(&user, &request.node, &request.ids, request.max)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetPepItemsResponse {
        items: items.iter().map(item_to_proto).collect(),
    }))
}

pub(super) async fn get_pep_last_items(
    api: &Api,
    request: Request<proto::GetPepLastItemsRequest>,
) -> Result<Response<proto::GetPepLastItemsResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let items = api
        .pep_last_items(&user, &request.nodes)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetPepLastItemsResponse {
        items: items
            .iter()
            .map(|(node, item)| proto::PepLastItem {
                node: Some(node_to_proto(node)),
                item: Some(item_to_proto(item)),
            })
            .collect(),
    }))
}

pub(super) async fn retract_pep_item(
    api: &Api,
    request: Request<proto::RetractPepItemRequest>,
) -> Result<Response<proto::RetractPepItemResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let retracted = api
        .retract_pep_item(&user, &request.node, &request.item_id)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::RetractPepItemResponse { retracted }))
}

pub(super) async fn get_pep_whitelist(
    api: &Api,
    request: Request<proto::GetPepWhitelistRequest>,
) -> Result<Response<proto::GetPepWhitelistResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let jids = api
        .pep_whitelist(&user, &request.node)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetPepWhitelistResponse {
        jids: jids.iter().map(ToString::to_string).collect(),
    }))
}

pub(super) async fn update_pep_whitelist(
    api: &Api,
    request: Request<proto::UpdatePepWhitelistRequest>,
) -> Result<Response<proto::UpdatePepWhitelistResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let add = bare_jids("add", &request.add).map_err(bad_request)?;
    let remove = bare_jids("remove", &request.remove).map_err(bad_request)?;
    api.update_pep_whitelist(&user, &request.node, &add, &remove, request.max_members)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::UpdatePepWhitelistResponse {}))
}

pub(super) async fn get_caps_features(
    api: &Api,
    request: Request<proto::GetCapsFeaturesRequest>,
) -> Result<Response<proto::GetCapsFeaturesResponse>, Status> {
    let request = request.into_inner();
    let features = api
        .caps_features(&request.hash, &request.ver)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetCapsFeaturesResponse {
        known: features.is_some(),
        features: features.unwrap_or_default(),
    }))
}

pub(super) async fn put_caps(
    api: &Api,
    request: Request<proto::PutCapsRequest>,
) -> Result<Response<proto::PutCapsResponse>, Status> {
    let request = request.into_inner();
    api.put_caps(&CapsRecord {
        hash: request.hash,
        ver: request.ver,
        features: request.features,
    })
    .await
    .map_err(api_error_to_status)?;
    Ok(Response::new(proto::PutCapsResponse {}))
}

pub(super) async fn get_pep_subscriptions(
    api: &Api,
    request: Request<proto::GetPepSubscriptionsRequest>,
) -> Result<Response<proto::GetPepSubscriptionsResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let subscriptions = api
        .pep_subscriptions(&user, &request.node)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetPepSubscriptionsResponse {
        subscriptions: subscriptions
            .iter()
            .map(|subscription| proto::PepSubscription {
                jid: subscription.jid.to_string(),
                state: subscription.state.as_str().to_string(),
            })
            .collect(),
    }))
}

pub(super) async fn set_pep_subscription(
    api: &Api,
    request: Request<proto::SetPepSubscriptionRequest>,
) -> Result<Response<proto::SetPepSubscriptionResponse>, Status> {
    let request = request.into_inner();
    let user = user_field(&request.user)?;
    let jid = parse_jid("jid", &request.jid).map_err(bad_request)?;
    let state = request
        .state
        .as_deref()
        .map(subscription_state)
        .transpose()
        .map_err(bad_request)?;
    let previous = api
        .set_pep_subscription(&user, &request.node, &jid, state, request.max_subscriptions)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::SetPepSubscriptionResponse {
        previous: previous.map(|state| state.as_str().to_string()),
    }))
}

pub(super) async fn get_pep_subscribed_nodes(
    api: &Api,
    request: Request<proto::GetPepSubscribedNodesRequest>,
) -> Result<Response<proto::GetPepSubscribedNodesResponse>, Status> {
    let subscriber = user_field(&request.into_inner().subscriber)?;
    let nodes = api
        .pep_subscribed_nodes(&subscriber)
        .await
        .map_err(api_error_to_status)?;
    Ok(Response::new(proto::GetPepSubscribedNodesResponse {
        nodes: nodes
            .iter()
            .map(|node| proto::PepSubscribedNode {
                owner: node.owner.to_string(),
                node: node.node.clone(),
                jid: node.jid.to_string(),
            })
            .collect(),
    }))
}

macro_rules! call {
    ($client:expr, $name:literal, $policy:expr, $method:ident, $request:expr) => {{
        let request = $request;
        $client
            .replicas
            .call($name, $policy, |channel| {
                let request = request.clone();
                async move { StorageClient::new(channel).$method(request).await }
            })
            .await?
    }};
}

#[async_trait]
impl PepStore for GrpcStorageClient {
    async fn pep_nodes(&self, owner: &BareJid) -> ApiResult<Vec<PepNode>> {
        let response = call!(
            self,
            "pep_nodes",
            RetryPolicy::Idempotent,
            get_pep_nodes,
            proto::GetPepNodesRequest {
                user: owner.to_string()
            }
        );
        response
            .nodes
            .into_iter()
            .map(|node| node_from_proto(Some(node)).map_err(malformed_response))
            .collect()
    }

    async fn pep_node(&self, owner: &BareJid, node: &str) -> ApiResult<Option<PepNode>> {
        let response = call!(
            self,
            "pep_node",
            RetryPolicy::Idempotent,
            get_pep_node,
            proto::GetPepNodeRequest {
                user: owner.to_string(),
                node: node.to_string(),
            }
        );
        response
            .node
            .map(|node| node_from_proto(Some(node)).map_err(malformed_response))
            .transpose()
    }

    async fn create_pep_node(
        &self,
        owner: &BareJid,
        node: &PepNode,
        limits: PepLimits,
    ) -> ApiResult<bool> {
        // Creating a node that exists changes nothing: safe to retry.
        let response = call!(
            self,
            "create_pep_node",
            RetryPolicy::Idempotent,
            create_pep_node,
            proto::CreatePepNodeRequest {
                user: owner.to_string(),
                node: Some(node_to_proto(node)),
                limits: Some(limits_to_proto(limits)),
            }
        );
        Ok(response.created)
    }

    async fn configure_pep_node(
        &self,
        owner: &BareJid,
        node: &PepNode,
        limits: PepLimits,
    ) -> ApiResult<()> {
        call!(
            self,
            "configure_pep_node",
            RetryPolicy::Idempotent,
            configure_pep_node,
            proto::ConfigurePepNodeRequest {
                user: owner.to_string(),
                node: Some(node_to_proto(node)),
                limits: Some(limits_to_proto(limits)),
            }
        );
        Ok(())
    }

    async fn delete_pep_node(&self, owner: &BareJid, node: &str) -> ApiResult<bool> {
        let response = call!(
            self,
            "delete_pep_node",
            RetryPolicy::AtLeastOnce,
            delete_pep_node,
            proto::DeletePepNodeRequest {
                user: owner.to_string(),
                node: node.to_string(),
            }
        );
        Ok(response.deleted)
    }

    async fn publish_pep_item(
        &self,
        owner: &BareJid,
        publish: &PepPublish,
        limits: PepLimits,
    ) -> ApiResult<PepPublishOutcome> {
        // Publishing the same item id twice keeps one item.
        let response = call!(
            self,
            "publish_pep_item",
            RetryPolicy::AtLeastOnce,
            publish_pep_item,
            proto::PublishPepItemRequest {
                user: owner.to_string(),
                node: publish.node.clone(),
                item: publish.item.as_ref().map(item_to_proto),
                options: Some(patch_to_proto(&publish.options)),
                limits: Some(limits_to_proto(limits)),
            }
        );
        match response.result() {
            proto::PepPublishResult::Published => Ok(PepPublishOutcome::Published {
                node: node_from_proto(response.node).map_err(malformed_response)?,
                created: response.created,
            }),
            proto::PepPublishResult::PreconditionNotMet => {
                Ok(PepPublishOutcome::PreconditionNotMet)
            }
            proto::PepPublishResult::NodeLimitReached => Ok(PepPublishOutcome::NodeLimitReached),
        }
    }

    async fn pep_items(
        &self,
        owner: &BareJid,
        node: &str,
        ids: &[String],
        max: Option<u32>,
    ) -> ApiResult<Vec<PepItem>> {
        let response = call!(
            self,
            "pep_items",
            RetryPolicy::Idempotent,
            get_pep_items,
            proto::GetPepItemsRequest {
                user: owner.to_string(),
                node: node.to_string(),
                ids: ids.to_vec(),
                max,
            }
        );
        Ok(response.items.into_iter().map(item_from_proto).collect())
    }

    async fn pep_last_items(
        &self,
        owner: &BareJid,
        nodes: &[String],
    ) -> ApiResult<Vec<(PepNode, PepItem)>> {
        let response = call!(
            self,
            "pep_last_items",
            RetryPolicy::Idempotent,
            get_pep_last_items,
            proto::GetPepLastItemsRequest {
                user: owner.to_string(),
                nodes: nodes.to_vec(),
            }
        );
        response
            .items
            .into_iter()
            .map(|last| {
                let node = node_from_proto(last.node).map_err(malformed_response)?;
                let item = last
                    .item
                    .map(item_from_proto)
                    .ok_or_else(|| malformed_response("item missing".into()))?;
                Ok((node, item))
            })
            .collect()
    }

    async fn retract_pep_item(
        &self,
        owner: &BareJid,
        node: &str,
        item_id: &str,
    ) -> ApiResult<bool> {
        let response = call!(
            self,
            "retract_pep_item",
            RetryPolicy::AtLeastOnce,
            retract_pep_item,
            proto::RetractPepItemRequest {
                user: owner.to_string(),
                node: node.to_string(),
                item_id: item_id.to_string(),
            }
        );
        Ok(response.retracted)
    }

    async fn pep_whitelist(&self, owner: &BareJid, node: &str) -> ApiResult<Vec<BareJid>> {
        let response = call!(
            self,
            "pep_whitelist",
            RetryPolicy::Idempotent,
            get_pep_whitelist,
            proto::GetPepWhitelistRequest {
                user: owner.to_string(),
                node: node.to_string(),
            }
        );
        bare_jids("jids", &response.jids).map_err(malformed_response)
    }

    async fn update_pep_whitelist(
        &self,
        owner: &BareJid,
        node: &str,
        add: &[BareJid],
        remove: &[BareJid],
        max_members: u32,
    ) -> ApiResult<()> {
        call!(
            self,
            "update_pep_whitelist",
            RetryPolicy::Idempotent,
            update_pep_whitelist,
            proto::UpdatePepWhitelistRequest {
                user: owner.to_string(),
                node: node.to_string(),
                add: add.iter().map(ToString::to_string).collect(),
                remove: remove.iter().map(ToString::to_string).collect(),
                max_members,
            }
        );
        Ok(())
    }

    async fn pep_subscriptions(
        &self,
        owner: &BareJid,
        node: &str,
    ) -> ApiResult<Vec<PepSubscription>> {
        let response = call!(
            self,
            "pep_subscriptions",
            RetryPolicy::Idempotent,
            get_pep_subscriptions,
            proto::GetPepSubscriptionsRequest {
                user: owner.to_string(),
                node: node.to_string(),
            }
        );
        response
            .subscriptions
            .into_iter()
            .map(|subscription| {
                Ok(PepSubscription {
                    jid: parse_jid("jid", &subscription.jid).map_err(malformed_response)?,
                    state: subscription_state(&subscription.state).map_err(malformed_response)?,
                })
            })
            .collect()
    }

    async fn set_pep_subscription(
        &self,
        owner: &BareJid,
        node: &str,
        jid: &Jid,
        state: Option<PepSubscriptionState>,
        max_subscriptions: u32,
    ) -> ApiResult<Option<PepSubscriptionState>> {
        // Setting the same state twice leaves one row in that state.
        let response = call!(
            self,
            "set_pep_subscription",
            RetryPolicy::Idempotent,
            set_pep_subscription,
            proto::SetPepSubscriptionRequest {
                user: owner.to_string(),
                node: node.to_string(),
                jid: jid.to_string(),
                state: state.map(|state| state.as_str().to_string()),
                max_subscriptions,
            }
        );
        response
            .previous
            .as_deref()
            .map(subscription_state)
            .transpose()
            .map_err(malformed_response)
    }

    async fn pep_subscribed_nodes(
        &self,
        subscriber: &BareJid,
    ) -> ApiResult<Vec<PepSubscribedNode>> {
        let response = call!(
            self,
            "pep_subscribed_nodes",
            RetryPolicy::Idempotent,
            get_pep_subscribed_nodes,
            proto::GetPepSubscribedNodesRequest {
                subscriber: subscriber.to_string(),
            }
        );
        response
            .nodes
            .into_iter()
            .map(|node| {
                Ok(PepSubscribedNode {
                    owner: parse_bare_jid("owner", &node.owner).map_err(malformed_response)?,
                    node: node.node,
                    jid: parse_jid("jid", &node.jid).map_err(malformed_response)?,
                })
            })
            .collect()
    }

    async fn caps_features(&self, hash: &str, ver: &str) -> ApiResult<Option<Vec<String>>> {
        let response = call!(
            self,
            "caps_features",
            RetryPolicy::Idempotent,
            get_caps_features,
            proto::GetCapsFeaturesRequest {
                hash: hash.to_string(),
                ver: ver.to_string(),
            }
        );
        Ok(response.known.then_some(response.features))
    }

    async fn put_caps(&self, record: &CapsRecord) -> ApiResult<()> {
        call!(
            self,
            "put_caps",
            RetryPolicy::Idempotent,
            put_caps,
            proto::PutCapsRequest {
                hash: record.hash.clone(),
                ver: record.ver.clone(),
                features: record.features.clone(),
            }
        );
        Ok(())
    }
}
