//! The session-router contract: binding resources and routing stanzas
//! (RFC 6121 section 8), as called by connection-managers and by the
//! presence service.

use std::time::SystemTime;

use async_trait::async_trait;
use starling_jid::{BareJid, FullJid};
use starling_xmpp::Element;

use crate::error::{ApiError, ApiResult};
use crate::registry::SessionAddr;

/// Who a stanza comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client session: `from` has been stamped with its full JID by the connection-manager.
    Session { jid: FullJid, addr: SessionAddr },
    /// The server itself (presence service, router handlers): `from` is trusted as it is.
    Server,
}

/// The resource under which an external component's stream (XEP-0114) is
/// recorded in the session registry: `RouterApi::bind` of the component's
/// domain (a bare JID without localpart) with this resource registers the
/// connection that receives every stanza addressed to that domain, and
/// `RouterApi::unbind` of that full JID removes it. A component is never an
/// account: the router accepts this bind only for a configured component
/// domain (`RouterConfig::components`).
pub const COMPONENT_RESOURCE: &str = "component";

/// The resource prefix under which the owner of a remote domain's outbound
/// server-to-server stream (RFC 6120, s2s) is recorded in the session
/// registry: `<remote domain>/s2s:<node id>`, with the connection id
/// [`S2S_OUTBOUND_CONN`]. One node owns a remote domain's outbound stream at
/// a time: the router claims the record atomically (a bind limited to one
/// resource per remote domain); it goes with its node when the node dies
/// (the node's liveness key is the claim's TTL), and the owner removes it
/// through `RouterApi::unbind` when the stream ends.
pub const S2S_RESOURCE_PREFIX: &str = "s2s:";

/// The connection id that names a node's outbound s2s streams in a
/// delivery: a stanza delivered to it goes to the stream of its `to` domain.
/// Connection ids of streams start at 1.
pub const S2S_OUTBOUND_CONN: u64 = 0;

/// Why a resource could not be bound (RFC 6120 section 7.6.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("resource is not valid")]
    BadRequest,
    #[error("too many sessions for this account")]
    ResourceConstraint,
    #[error("not allowed to bind")]
    NotAllowed,
    #[error(transparent)]
    Api(#[from] ApiError),
}

#[async_trait]
pub trait RouterApi: Send + Sync + 'static {
    /// Bind a resource for an authenticated user at `addr`. `requested` is the
    /// client's resource (already normalised) or `None` for a server-generated one.
    /// A session already bound to the same full JID is replaced: it receives a
    /// `<conflict/>` stream error (the documented conflict policy).
    async fn bind(
        &self,
        user: &BareJid,
        requested: Option<&str>,
        addr: &SessionAddr,
    ) -> Result<FullJid, BindError>;

    /// The session at `addr` ended (stream closed, connection lost, replaced):
    /// unavailable presence is broadcast (RFC 6121 section 4.5.2) and the registry cleaned.
    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<()>;

    /// Route one stanza. For `Origin::Session` the connection-manager has already
    /// stamped `from`; the router answers errors to the sender itself.
    /// `routed_at` is when the stanza entered the cluster (the sending
    /// connection-manager's clock, [`crate::origin_time`]): every delivery it
    /// causes carries it, for the end-to-end latency; `None` when no client
    /// sent it just now.
    async fn route(
        &self,
        origin: Origin,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()>;

    /// A stanza that could not be written to the session at `failed` (the
    /// connection ended, its queue overflowed, its node is gone): route it
    /// again, never to `failed`, to the bare JID's other resources or to
    /// offline storage, per its type.
    async fn undeliverable(&self, stanza: Element, failed: &SessionAddr) -> ApiResult<()>;
}
