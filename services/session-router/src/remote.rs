//! Remote domains (RFC 6120 section 10.4): a stanza addressed to a domain
//! that is neither served here nor a component's goes over a
//! server-to-server stream. Each remote domain's outbound stream is owned by
//! one connection-manager at a time, recorded in the session registry as
//! `<domain>/s2s:<node>` ([`starling_api::S2S_RESOURCE_PREFIX`]) with the
//! connection id [`starling_api::S2S_OUTBOUND_CONN`]: the router delivers
//! the stanza there over the bus, as it delivers to a component.
//!
//! With no owner recorded, the router claims the domain for a node (the
//! sender's node, else the node of one of the sending account's sessions,
//! else one of the live connection-managers chosen by the domain, so that
//! what the server sends for an account with no session left, such as its
//! unavailable presence or a push notification, still goes out) with a bind
//! limited to one resource: the registry's atomic step decides
//! between two routers claiming the same domain for different nodes at once,
//! and the loser delivers to the winner. An owner whose node no longer
//! listens (it died; the janitor has not removed its records yet) is removed
//! and the domain claimed again, once.
//!
//! Policy (`s2s.enabled`, `s2s.allow`, `s2s.deny`): a stanza that may not
//! reach its domain is answered at once with `remote-server-not-found` (RFC
//! 6120 section 10.4.3), presence included; an error is never answered
//! (section 8.3.1).

use std::sync::Arc;

use starling_api::{
    ApiError, Origin, SessionAddr, SessionRecord, S2S_OUTBOUND_CONN, S2S_RESOURCE_PREFIX,
};
use starling_bus::deliver_to_session;
use starling_jid::{BareJid, Jid};
use starling_xmpp::{Element, StanzaErrorCondition};

use crate::router::{note_decision, unshare, Routing, SessionRouter};

/// Which remote domains the server federates with (`s2s.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S2sPolicy {
    /// `s2s.enabled`: false answers every remote stanza with `remote-server-not-found`.
    pub enabled: bool,
    /// `s2s.allow` (normalised): when not empty, only these domains.
    pub allow: Vec<String>,
    /// `s2s.deny` (normalised): never these domains (wins over `allow`).
    pub deny: Vec<String>,
}

impl S2sPolicy {
    /// Whether a stanza may go to `domain` (normalised).
    pub fn allows(&self, domain: &str) -> bool {
        self.enabled
            && !self.deny.iter().any(|denied| denied == domain)
            && (self.allow.is_empty() || self.allow.iter().any(|allowed| allowed == domain))
    }
}

/// Whether a registry record is a remote domain's outbound stream owner.
pub(crate) fn is_s2s_owner(record: &SessionRecord) -> bool {
    record.jid.node().is_none() && record.jid.resource().starts_with(S2S_RESOURCE_PREFIX)
}

impl SessionRouter {
    /// A stanza for a domain other than the served one (RFC 6120 section
    /// 10.4): this deployment's MUC service, a component, a local service that
    /// takes only IQs (upload: `service-unavailable`; its IQs are handled
    /// before), or another server over s2s. The one place that tells them apart.
    pub(crate) async fn route_to_other_domain(
        &self,
        routing: &Routing<'_>,
        stanza_element: Element,
        to: &Jid,
    ) -> Option<Element> {
        if self.is_muc_domain(to.domain()) {
            self.route_to_muc(routing, stanza_element).await
        } else if self.is_component_domain(to.domain()) {
            self.route_to_component(routing, stanza_element, to).await
        } else if self.is_upload_service(to) {
            routing.bounce(&stanza_element, StanzaErrorCondition::ServiceUnavailable)
        } else {
            self.route_to_remote(routing, stanza_element, to).await
        }
    }

    /// Route a stanza to a remote domain's outbound stream, or answer it
    /// with the RFC 6120 section 10.4.3 error.
    pub(crate) async fn route_to_remote(
        &self,
        routing: &Routing<'_>,
        stanza_element: Element,
        to: &Jid,
    ) -> Option<Element> {
        let domain = to.domain();
        if !self.config.s2s.allows(domain) {
            tracing::debug!(to = %to, "remote domain not allowed by the s2s policy");
            self.metrics.s2s_policy_refused();
            return routing.bounce(&stanza_element, StanzaErrorCondition::RemoteServerNotFound);
        }
        let domain_jid = match BareJid::domain_jid(domain) {
            Ok(domain_jid) => domain_jid,
            Err(_) => return routing.bounce(&stanza_element, StanzaErrorCondition::JidMalformed),
        };
        let mut shared = Arc::new(stanza_element);
        // At most: the recorded owner, a claim, and one more after removing
        // an owner whose node is gone.
        for _attempt in 0..3 {
            let owner = match self.s2s_owner(&domain_jid).await {
                Ok(owner) => owner,
                Err(error) => return routing.failure_reply(&unshare(shared), &error),
            };
            let owner = match owner {
                Some(owner) => owner,
                None => match self.claim_s2s(routing, &domain_jid, &shared).await {
                    Ok(Some(owner)) => owner,
                    Ok(None) => {
                        tracing::debug!(domain = %domain, "no node to open an s2s stream on");
                        return routing
                            .bounce(&unshare(shared), StanzaErrorCondition::RemoteServerNotFound);
                    }
                    Err(error) => return routing.failure_reply(&unshare(shared), &error),
                },
            };
            if deliver_to_session(&*self.bus, shared.clone(), &owner, routing.routed_at).await {
                note_decision("remote");
                routing
                    .outcome
                    .record_delivered(std::iter::once(owner.addr.node.as_str()));
                return None;
            }
            // The owner's node does not listen: remove its claim (only that
            // one: the registry removes the record only if still at its
            // address) and claim again.
            tracing::info!(domain = %domain, node = %owner.addr.node, "s2s owner unreachable, taking the domain over");
            if let Err(error) = self.registry.unbind(&owner.jid, &owner.addr).await {
                return routing.failure_reply(&unshare(shared), &error);
            }
            shared = Arc::new(unshare(shared));
        }
        routing.bounce(&unshare(shared), StanzaErrorCondition::RemoteServerTimeout)
    }

    /// The recorded owner of a remote domain's outbound stream.
    async fn s2s_owner(&self, domain: &BareJid) -> Result<Option<SessionRecord>, ApiError> {
        Ok(self
            .registry
            .sessions(domain)
            .await?
            .into_iter()
            .find(is_s2s_owner))
    }

    /// Claim `domain` for a node: the sender's, else one where the sending
    /// account has a session. `None`: no node is known to the stanza.
    async fn claim_s2s(
        &self,
        routing: &Routing<'_>,
        domain: &BareJid,
        stanza_element: &Element,
    ) -> Result<Option<SessionRecord>, ApiError> {
        let node = match routing.origin {
            Origin::Session { addr, .. } => Some(addr.node.clone()),
            Origin::Server => match self.node_of_sender(stanza_element).await? {
                Some(node) => Some(node),
                None => self.live_node_for(domain.domain()).await?,
            },
        };
        let Some(node) = node else {
            return Ok(None);
        };
        let jid = domain
            .with_resource(&format!("{S2S_RESOURCE_PREFIX}{node}"))
            .map_err(|error| ApiError::Internal(format!("s2s owner resource: {error}")))?;
        let record = SessionRecord::new(
            jid,
            SessionAddr {
                node,
                conn: S2S_OUTBOUND_CONN,
            },
        );
        match self.registry.bind_limited(record.clone(), 1).await {
            Ok(_) => {
                tracing::debug!(domain = %domain, node = %record.addr.node, "s2s domain claimed");
                Ok(Some(record))
            }
            // Another node's claim came first: deliver to it.
            Err(ApiError::LimitReached(_)) => self.s2s_owner(domain).await,
            Err(error) => Err(error),
        }
    }

    /// A live connection-manager for `domain`'s stream, the same one for a
    /// domain while the membership stays (a hash of the domain over the
    /// ordered live nodes).
    async fn live_node_for(&self, domain: &str) -> Result<Option<String>, ApiError> {
        let nodes = self.registry.live_nodes().await?;
        if nodes.is_empty() {
            return Ok(None);
        }
        // FNV-1a: stable across processes and releases (std's hasher is not).
        let hash = domain
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        Ok(Some(nodes[(hash % nodes.len() as u64) as usize].clone()))
    }

    /// The node of a session of the stanza's sender (a local account, for
    /// what the server sends on its behalf: presence probes, subscriptions).
    async fn node_of_sender(&self, stanza_element: &Element) -> Result<Option<String>, ApiError> {
        let Some(from) = stanza_element
            .attr("from")
            .and_then(|from| from.parse::<Jid>().ok())
        else {
            return Ok(None);
        };
        if from.domain() != self.config.domain || from.node().is_none() {
            return Ok(None);
        }
        let sessions = self.registry.sessions(from.bare()).await?;
        Ok(sessions
            .iter()
            .find(|session| from.as_full().is_some_and(|full| &session.jid == full))
            .or_else(|| sessions.first())
            .filter(|session| session.addr.node != starling_api::DETACHED_NODE)
            .map(|session| session.addr.node.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_off_denies_everything() {
        let policy = S2sPolicy::default();
        assert!(!policy.allows("example.net"));
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let open = S2sPolicy {
            enabled: true,
            allow: vec![],
            deny: vec!["evil.example".into()],
        };
        assert!(open.allows("example.net"));
        assert!(!open.allows("evil.example"));
        let closed = S2sPolicy {
            enabled: true,
            allow: vec!["partner.example".into(), "evil.example".into()],
            deny: vec!["evil.example".into()],
        };
        assert!(closed.allows("partner.example"));
        assert!(!closed.allows("example.net"));
        assert!(!closed.allows("evil.example"));
    }
}
