//! The presence service over gRPC (`starling.presence.v1.Presence`, RFC 6121
//! sections 2 to 4): the server adapter over any [`PresenceApi`] and
//! [`GrpcPresenceClient`], which implements [`PresenceApi`] over every
//! presence replica.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use starling_api::{origin_time, ApiResult, PresenceApi, SessionAddr};
use starling_jid::FullJid;
use starling_xmpp::Element;
use tonic::{Request, Response, Status};

use crate::balance::{ReplicaSet, RetryPolicy};
use crate::convert::{
    addr_from_proto, addr_to_proto, invalid_request, parse_full_jid, stanza_from_wire,
    stanza_to_wire,
};
use crate::error::{api_error_to_status, ProtoError};
use crate::metrics::GrpcClientMetrics;
use crate::presence::v1 as proto;
use crate::presence::v1::presence_client::PresenceClient;
use crate::presence::v1::presence_server::{Presence, PresenceServer};

/// The tonic service serving `api` as `starling.presence.v1.Presence`.
pub fn presence_service(api: Arc<dyn PresenceApi>) -> PresenceServer<PresenceGrpcServer> {
    PresenceServer::new(PresenceGrpcServer { api })
}

/// Implements the generated `Presence` trait by calling a [`PresenceApi`].
pub struct PresenceGrpcServer {
    api: Arc<dyn PresenceApi>,
}

fn bad_request(message: String) -> Status {
    api_error_to_status(invalid_request(message))
}

#[tonic::async_trait]
impl Presence for PresenceGrpcServer {
    async fn outbound_presence(
        &self,
        request: Request<proto::OutboundPresenceRequest>,
    ) -> Result<Response<proto::OutboundPresenceResponse>, Status> {
        let request = request.into_inner();
        let from = parse_full_jid("from", &request.from).map_err(bad_request)?;
        let addr = addr_from_proto("addr", request.addr).map_err(bad_request)?;
        let stanza = stanza_from_wire("stanza", &request.stanza).map_err(bad_request)?;
        let routed_at = origin_time::from_unix_micros(request.routed_at_unix_micros);
        self.api
            .outbound_presence(&from, &addr, stanza, routed_at)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::OutboundPresenceResponse {}))
    }

    async fn inbound_presence(
        &self,
        request: Request<proto::InboundPresenceRequest>,
    ) -> Result<Response<proto::InboundPresenceResponse>, Status> {
        let request = request.into_inner();
        let stanza = stanza_from_wire("stanza", &request.stanza).map_err(bad_request)?;
        let routed_at = origin_time::from_unix_micros(request.routed_at_unix_micros);
        self.api
            .inbound_presence(stanza, routed_at)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::InboundPresenceResponse {}))
    }

    async fn roster_iq(
        &self,
        request: Request<proto::RosterIqRequest>,
    ) -> Result<Response<proto::RosterIqResponse>, Status> {
        let request = request.into_inner();
        let from = parse_full_jid("from", &request.from).map_err(bad_request)?;
        let addr = addr_from_proto("addr", request.addr).map_err(bad_request)?;
        let stanza = stanza_from_wire("stanza", &request.stanza).map_err(bad_request)?;
        let routed_at = origin_time::from_unix_micros(request.routed_at_unix_micros);
        self.api
            .roster_iq(&from, &addr, stanza, routed_at)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::RosterIqResponse {}))
    }

    async fn session_ended(
        &self,
        request: Request<proto::SessionEndedRequest>,
    ) -> Result<Response<proto::SessionEndedResponse>, Status> {
        let request = request.into_inner();
        let jid = parse_full_jid("full_jid", &request.full_jid).map_err(bad_request)?;
        self.api
            .session_ended(&jid, request.was_available)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::SessionEndedResponse {}))
    }
}

/// [`PresenceApi`] over gRPC, round robin over every presence replica. Every
/// call is retried once on another replica after a transport failure
/// (at-least-once: a presence broadcast whose answer was lost may be sent twice,
/// which RFC 6121 clients tolerate as a presence update).
#[derive(Clone, Debug)]
pub struct GrpcPresenceClient {
    replicas: Arc<ReplicaSet>,
}

impl GrpcPresenceClient {
    /// Lazy connections to every endpoint (`host:port` or `http://host:port`).
    pub fn connect(endpoints: Vec<String>) -> Result<Self, ProtoError> {
        Self::connect_with_metrics(endpoints, GrpcClientMetrics::default())
    }

    /// [`GrpcPresenceClient::connect`], observing every call in `metrics`.
    pub fn connect_with_metrics(
        endpoints: Vec<String>,
        metrics: GrpcClientMetrics,
    ) -> Result<Self, ProtoError> {
        Ok(GrpcPresenceClient {
            replicas: Arc::new(ReplicaSet::connect("presence", endpoints)?.with_metrics(metrics)),
        })
    }
}

#[async_trait]
impl PresenceApi for GrpcPresenceClient {
    async fn outbound_presence(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        let request = proto::OutboundPresenceRequest {
            from: from.to_string(),
            addr: Some(addr_to_proto(addr)),
            stanza: stanza_to_wire(&stanza),
            routed_at_unix_micros: origin_time::to_unix_micros(routed_at),
            trace_context: Default::default(),
        };
        self.replicas
            .call("outbound_presence", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move {
                    PresenceClient::new(channel)
                        .outbound_presence(request)
                        .await
                }
            })
            .await?;
        Ok(())
    }

    async fn inbound_presence(
        &self,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        let request = proto::InboundPresenceRequest {
            stanza: stanza_to_wire(&stanza),
            routed_at_unix_micros: origin_time::to_unix_micros(routed_at),
            trace_context: Default::default(),
        };
        self.replicas
            .call("inbound_presence", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { PresenceClient::new(channel).inbound_presence(request).await }
            })
            .await?;
        Ok(())
    }

    async fn roster_iq(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        let request = proto::RosterIqRequest {
            from: from.to_string(),
            addr: Some(addr_to_proto(addr)),
            stanza: stanza_to_wire(&stanza),
            routed_at_unix_micros: origin_time::to_unix_micros(routed_at),
            trace_context: Default::default(),
        };
        self.replicas
            .call("roster_iq", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { PresenceClient::new(channel).roster_iq(request).await }
            })
            .await?;
        Ok(())
    }

    async fn session_ended(&self, jid: &FullJid, was_available: bool) -> ApiResult<()> {
        let request = proto::SessionEndedRequest {
            full_jid: jid.to_string(),
            was_available,
        };
        self.replicas
            .call("session_ended", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { PresenceClient::new(channel).session_ended(request).await }
            })
            .await?;
        Ok(())
    }
}
