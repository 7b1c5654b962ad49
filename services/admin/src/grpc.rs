//! `starling.admin.v1.Admin` over gRPC: the tonic adapter over
//! [`AdminService`] and the listener, every method behind [`BearerAuth`].

use std::future::Future;
use std::time::{Duration, UNIX_EPOCH};

use starling_proto::admin::v1 as proto;
use starling_proto::admin::v1::admin_server::{Admin, AdminServer};
use starling_proto::api_error_to_status;
use tokio::net::TcpListener;
use tonic::codegen::InterceptedService;
use tonic::{Request, Response, Status};

use crate::auth::BearerAuth;
use crate::service::{AdminService, AnnounceType};

/// The tonic service serving `service`, every call checked by `auth`.
pub fn admin_service(
    service: AdminService,
    auth: BearerAuth,
) -> InterceptedService<AdminServer<AdminGrpc>, BearerAuth> {
    AdminServer::with_interceptor(AdminGrpc { service }, auth)
}

/// Serve the admin API on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    service: AdminService,
    auth: BearerAuth,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(admin_service(service, auth))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The generated `Admin` trait over [`AdminService`].
pub struct AdminGrpc {
    service: AdminService,
}

fn non_empty(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty()).then_some(value)
}

fn session_info(record: starling_api::SessionRecord) -> proto::SessionInfo {
    proto::SessionInfo {
        full_jid: record.jid.to_string(),
        node: record.addr.node,
        conn: record.addr.conn,
        available: record.available,
        priority: record.priority.into(),
    }
}

#[tonic::async_trait]
impl Admin for AdminGrpc {
    async fn list_sessions(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        let request = request.into_inner();
        let page = self
            .service
            .list_sessions(
                non_empty(&request.node),
                non_empty(&request.bare_jid),
                request.limit as usize,
                non_empty(&request.after),
            )
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::ListSessionsResponse {
            sessions: page.sessions.into_iter().map(session_info).collect(),
            next_after: page.next_after.unwrap_or_default(),
        }))
    }

    async fn count_sessions(
        &self,
        _request: Request<proto::CountSessionsRequest>,
    ) -> Result<Response<proto::CountSessionsResponse>, Status> {
        let (total, per_node) = self
            .service
            .count_sessions()
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::CountSessionsResponse {
            total,
            nodes: per_node
                .into_iter()
                .map(|(node, sessions)| proto::NodeSessionCount { node, sessions })
                .collect(),
        }))
    }

    async fn kick_session(
        &self,
        request: Request<proto::KickSessionRequest>,
    ) -> Result<Response<proto::KickSessionResponse>, Status> {
        let request = request.into_inner();
        let kicked = self
            .service
            .kick(
                &request.jid,
                non_empty(&request.condition),
                non_empty(&request.text),
            )
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::KickSessionResponse {
            kicked: kicked.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn announce(
        &self,
        request: Request<proto::AnnounceRequest>,
    ) -> Result<Response<proto::AnnounceResponse>, Status> {
        let request = request.into_inner();
        let message_type =
            AnnounceType::parse(request.r#type.trim()).map_err(api_error_to_status)?;
        let recipients = self
            .service
            .announce(
                &request.text,
                non_empty(&request.node),
                message_type,
                non_empty(&request.subject),
            )
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::AnnounceResponse { recipients }))
    }

    async fn add_user(
        &self,
        request: Request<proto::AddUserRequest>,
    ) -> Result<Response<proto::AddUserResponse>, Status> {
        let request = request.into_inner();
        self.service
            .add_user(&request.jid, &request.password)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::AddUserResponse {}))
    }

    async fn set_password(
        &self,
        request: Request<proto::SetPasswordRequest>,
    ) -> Result<Response<proto::SetPasswordResponse>, Status> {
        let request = request.into_inner();
        self.service
            .set_password(&request.jid, &request.password)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::SetPasswordResponse {}))
    }

    async fn remove_user(
        &self,
        request: Request<proto::RemoveUserRequest>,
    ) -> Result<Response<proto::RemoveUserResponse>, Status> {
        self.service
            .remove_user(&request.into_inner().jid)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::RemoveUserResponse {}))
    }

    async fn revoke_fast_tokens(
        &self,
        request: Request<proto::RevokeFastTokensRequest>,
    ) -> Result<Response<proto::RevokeFastTokensResponse>, Status> {
        let request = request.into_inner();
        let revoked = self
            .service
            .revoke_fast_tokens(&request.jid, non_empty(&request.agent_id))
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::RevokeFastTokensResponse { revoked }))
    }

    async fn list_users(
        &self,
        request: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let accounts = self
            .service
            .list_users(non_empty(&request.domain))
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::ListUsersResponse {
            jids: accounts.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn list_nodes(
        &self,
        _request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let nodes = self
            .service
            .list_nodes()
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::ListNodesResponse {
            nodes: nodes
                .into_iter()
                .map(|node| proto::NodeInfo {
                    node: node.node,
                    alive: node.alive,
                    draining: node.draining_since_unix_ms.is_some(),
                    draining_since_unix_ms: node.draining_since_unix_ms.unwrap_or(0),
                    sessions: node.sessions,
                })
                .collect(),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<proto::DrainNodeRequest>,
    ) -> Result<Response<proto::DrainNodeResponse>, Status> {
        let request = request.into_inner();
        let node = non_empty(&request.node)
            .ok_or_else(|| Status::invalid_argument("the node id must not be empty"))?;
        let window = (request.window_seconds > 0)
            .then(|| Duration::from_secs(request.window_seconds.into()));
        self.service
            .drain(node, window)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::DrainNodeResponse {}))
    }

    async fn list_s2s_streams(
        &self,
        request: Request<proto::ListS2sStreamsRequest>,
    ) -> Result<Response<proto::ListS2sStreamsResponse>, Status> {
        let request = request.into_inner();
        let streams = self
            .service
            .list_s2s_streams(non_empty(&request.node), non_empty(&request.domain))
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::ListS2sStreamsResponse {
            streams: streams
                .into_iter()
                .map(|row| proto::S2sStreamInfo {
                    node: row.node,
                    domain: row.domain,
                    direction: row.direction,
                    authentication: row.authentication,
                    tls: row.tls,
                    stanzas_in: row.stanzas_in,
                    stanzas_out: row.stanzas_out,
                    queued: row.queued,
                    since_unix_ms: row.since_unix_ms,
                })
                .collect(),
        }))
    }
}

/// Milliseconds since the Unix epoch of `time` (0 before the epoch).
pub fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}
