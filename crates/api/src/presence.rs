//! The presence service contract: rosters and the subscription state machine
//! (RFC 6121 sections 2 and 3), presence broadcast, probes and directed
//! presence (section 4).
//!
//! The `routed_at` of a call is when the stanza that caused it entered the
//! cluster ([`crate::origin_time`]); every delivery the call makes carries it.

use std::time::SystemTime;

use async_trait::async_trait;
use starling_jid::FullJid;
use starling_xmpp::{ns, Element};

use crate::error::ApiResult;
use crate::feature::{FeatureSpec, StreamFeature, StreamStage};
use crate::registry::SessionAddr;

/// Rosters, RFC 6121 section 2, with versioning (section 2.6): the presence
/// service answers `jabber:iq:roster` requests through
/// [`PresenceApi::roster_iq`]. Declared with the contract because two other
/// services act on it: the router forwards its IQs here, and the
/// connection-manager offers its stream feature.
pub const ROSTER_FEATURE: FeatureSpec = FeatureSpec {
    name: "roster",
    specification: "RFC 6121 section 2",
    disco_features: &[ns::ROSTER],
    iq_namespaces: &[ns::ROSTER],
    stream_features: &[StreamFeature {
        name: "ver",
        namespace: ns::ROSTER_VER,
        stage: StreamStage::AfterAuthentication,
    }],
};

#[async_trait]
pub trait PresenceApi: Send + Sync + 'static {
    /// A presence stanza sent by a local session (`from` stamped): initial or
    /// updated presence broadcast, unavailable, directed presence, or a
    /// subscription request/answer (RFC 6121 sections 3 and 4).
    async fn outbound_presence(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()>;

    /// A presence stanza addressed to a local user from another entity
    /// (inbound processing, RFC 6121 sections 3.1.3, 3.2.3, 3.3.3, 3.4.3, 4.3.2).
    async fn inbound_presence(
        &self,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()>;

    /// A `jabber:iq:roster` IQ from a local session (RFC 6121 section 2).
    async fn roster_iq(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()>;

    /// A session ended without sending unavailable presence: broadcast it for
    /// the session, and to entities that received directed presence (RFC 6121 section 4.5.2).
    async fn session_ended(&self, jid: &FullJid, was_available: bool) -> ApiResult<()>;
}
