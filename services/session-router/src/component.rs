//! External components (XEP-0114): every address at a configured component
//! domain (`irc.example.com`, `#chan%irc.net@irc.example.com/nick`) goes to
//! the one connection that domain's component holds, on whichever
//! connection-manager it connected to. That connection is a record in the
//! session registry under `<domain>/component`
//! ([`starling_api::COMPONENT_RESOURCE`]), bound and unbound by the
//! connection-manager through `RouterApi::bind`/`unbind`, removed by the
//! janitor when its node dies. While no component is connected, the sender
//! gets `service-unavailable` (RFC 6120 section 10.4.3; never in reply to an
//! error, section 8.3.1).
//!
//! Conflict policy: a newer stream for the same domain replaces the older
//! one, which is closed with `<conflict/>` (as a second login of a full JID
//! is, RFC 6120 section 7.7.2.2), so that a component that reconnects after
//! its node died is served at once.

use std::sync::Arc;

use starling_api::{ApiResult, BindError, SessionAddr, SessionRecord, COMPONENT_RESOURCE};
use starling_bus::deliver_to_session;
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{Element, StanzaErrorCondition};

use crate::router::{note_decision, unshare, Routing, SessionRouter};

impl SessionRouter {
    /// Whether `domain` (normalised) is a configured component's.
    pub(crate) fn is_component_domain(&self, domain: &str) -> bool {
        self.config
            .components
            .iter()
            .any(|component| component == domain)
    }

    /// Whether a bind request is a component's registration: its domain,
    /// without localpart, with the component resource.
    pub(crate) fn is_component_bind(&self, user: &BareJid, requested: Option<&str>) -> bool {
        user.node().is_none()
            && requested == Some(COMPONENT_RESOURCE)
            && self.is_component_domain(user.domain())
    }

    /// Record the component's connection; a connection recorded before for
    /// the domain is closed with `<conflict/>` (the conflict policy above).
    pub(crate) async fn bind_component(
        &self,
        user: &BareJid,
        addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        let jid = user
            .with_resource(COMPONENT_RESOURCE)
            .map_err(|_| BindError::BadRequest)?;
        // One record per domain: the resource is fixed, so the registry's
        // atomic bind replaces the previous one.
        let outcome = self
            .registry
            .bind_limited(SessionRecord::new(jid.clone(), addr.clone()), 0)
            .await?;
        if let Some(replaced) = outcome.replaced.filter(|replaced| &replaced.addr != addr) {
            self.close_replaced_connection(&replaced).await;
        }
        tracing::info!(domain = %user, node = %addr.node, conn = addr.conn, "component connected");
        Ok(jid)
    }

    /// Remove the component's record if it is still this connection's; no
    /// presence is announced (a component is not an account).
    pub(crate) async fn unbind_component(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
    ) -> ApiResult<()> {
        if self.registry.unbind(jid, addr).await?.is_some() {
            tracing::info!(domain = %jid.bare(), node = %addr.node, conn = addr.conn, "component disconnected");
        }
        Ok(())
    }

    /// Deliver a stanza addressed to `to`, at a component's domain, to the
    /// component's connection; `service-unavailable` when none is connected
    /// (or its node's channel has no subscriber: the node is gone).
    pub(crate) async fn route_to_component(
        &self,
        routing: &Routing<'_>,
        stanza_element: Element,
        to: &Jid,
    ) -> Option<Element> {
        let domain = match BareJid::domain_jid(to.domain()) {
            Ok(domain) => domain,
            Err(_) => return routing.bounce(&stanza_element, StanzaErrorCondition::JidMalformed),
        };
        let sessions = match self.registry.sessions(&domain).await {
            Ok(sessions) => sessions,
            Err(error) => return routing.failure_reply(&stanza_element, &error),
        };
        let mut stanza_element = stanza_element;
        if let Some(session) = sessions
            .iter()
            .find(|session| session.jid.resource() == COMPONENT_RESOURCE)
        {
            let shared = Arc::new(stanza_element);
            if deliver_to_session(&*self.bus, shared.clone(), session, routing.routed_at).await {
                note_decision("delivered");
                routing
                    .outcome
                    .record_delivered(std::iter::once(session.addr.node.as_str()));
                return None;
            }
            tracing::debug!(domain = %domain, node = %session.addr.node, "component's node unreachable");
            stanza_element = unshare(shared);
        } else {
            tracing::debug!(domain = %domain, "no component connected");
        }
        routing.bounce(&stanza_element, StanzaErrorCondition::ServiceUnavailable)
    }
}
