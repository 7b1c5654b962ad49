//! The operator's admin API (`starling.admin.v1.Admin`, `proto/starling/admin/v1/admin.proto`):
//! list and count sessions, kick a session, announce a message from the
//! server, manage accounts (the same code as `starling user`), list the
//! cluster's connection-managers and drain one, list the server-to-server
//! streams by remote domain.
//!
//! - [`AdminService`]: the operations, written against the service contracts
//!   (`SessionRegistry`, `Bus`, `StorageApi`, [`Membership`]), so they run the
//!   same on the in-process registry and bus as on Redis;
//! - [`BearerAuth`]: the interceptor every method goes through
//!   (`authorization: Bearer <token>`, compared in constant time);
//! - [`serve_admin`]: the gRPC listener (`admin.listen`), never open by default;
//! - [`users`]: account management shared with `starling user`.

#![forbid(unsafe_code)]

mod auth;
mod grpc;
mod membership;
mod service;
pub mod users;

pub use auth::{BearerAuth, MIN_TOKEN_BYTES};
pub use grpc::{admin_service, serve_admin, unix_ms, AdminGrpc};
pub use membership::{
    DrainProbe, LocalMembership, LocalS2sStreams, Membership, RedisMembership, RedisS2sStreams,
    S2sStreamProbe, S2sStreamSource,
};
pub use service::{
    AdminService, AnnounceType, NodeInfo, SessionPage, DEFAULT_KICK_CONDITION, DEFAULT_PAGE_LIMIT,
    MAX_DRAIN_WINDOW, MAX_PAGE_LIMIT,
};
pub use starling_registry::NodeStatus;
