//! IQ routing (RFC 6120 sections 8.2.3 and 10, RFC 6121 section 8.5) and the
//! dispatch of the requests the server answers itself: on behalf of an
//! account (RFC 6120 section 10.3.3, RFC 6121 section 8.5.2.1.3) or as the
//! server (XEP-0030, XEP-0092, XEP-0199).

use std::sync::Arc;

use starling_api::{Origin, SessionAddr};
use starling_bus::deliver_to_session;
use starling_jid::{BareJid, FullJid};
use starling_xmpp::{ns, stanza, Element, StanzaErrorCondition};

use crate::address::Destination;
use crate::handlers::disco::{self, Identity};
use crate::handlers::{ping, version};
use crate::router::{note_decision, unshare, Routing, SessionRouter};

/// The IQ types of RFC 6120 section 8.2.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IqType {
    Get,
    Set,
    Result,
    Error,
}

impl IqType {
    pub(crate) fn of(iq: &Element) -> Option<Self> {
        match stanza::stanza_type(iq) {
            "get" => Some(IqType::Get),
            "set" => Some(IqType::Set),
            "result" => Some(IqType::Result),
            "error" => Some(IqType::Error),
            _ => None,
        }
    }

    /// A get or set expects an answer; a result or error ends an exchange.
    pub(crate) fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// The payload of a request: its type and its one child, by name and namespace.
struct Request<'a> {
    iq_type: IqType,
    name: &'a str,
    namespace: &'a str,
}

impl<'a> Request<'a> {
    fn of(iq: &'a Element, iq_type: IqType) -> Option<Self> {
        let payload = stanza::iq_payload(iq)?;
        Some(Request {
            iq_type,
            name: payload.name(),
            namespace: payload.namespace(),
        })
    }

    fn is(&self, iq_type: IqType, name: &str, namespace: &str) -> bool {
        self.iq_type == iq_type && self.name == name && self.namespace == namespace
    }
}

impl SessionRouter {
    /// Route an IQ; returns the reply for its sender, if any.
    pub(crate) async fn route_iq(&self, routing: &Routing<'_>, iq: Element) -> Option<Element> {
        // RFC 6120 section 8.2.3: `type` is required and is one of four values;
        // a get or set has an `id` and exactly one payload child.
        let Some(iq_type) = IqType::of(&iq) else {
            tracing::debug!(
                iq_type = stanza::stanza_type(&iq),
                "iq with a missing or unknown type"
            );
            return routing.bounce(&iq, StanzaErrorCondition::BadRequest);
        };
        if iq_type.is_request() && (iq.attr("id").is_none() || stanza::iq_payload(&iq).is_none()) {
            tracing::debug!(
                id = iq.attr("id").unwrap_or(""),
                "iq request without an id or with other than one child"
            );
            return routing.bounce(&iq, StanzaErrorCondition::BadRequest);
        }
        let destination = match self.destination(routing, &iq) {
            Ok(destination) => destination,
            Err(reply) => return reply,
        };
        if matches!(destination, Destination::Absent | Destination::Domain) {
            note_decision("server");
        }
        match destination {
            Destination::Absent => match routing.origin {
                Origin::Session { jid, addr } => {
                    self.account_iq(routing, jid, addr, iq, iq_type).await
                }
                Origin::Server => self.server_iq(routing, &iq, iq_type),
            },
            Destination::LocalBare(user) => match routing.origin {
                // RFC 6120 section 10.3.3: `to` the sender's own bare JID is
                // handled like no `to` at all, on behalf of the account.
                Origin::Session { jid, addr } if jid.bare() == &user => {
                    self.account_iq(routing, jid, addr, iq, iq_type).await
                }
                _ => self.other_account_iq(routing, &user, iq, iq_type).await,
            },
            Destination::Domain => self.server_iq(routing, &iq, iq_type),
            // RFC 6120 section 10.5.2: no resource of the server takes IQs.
            Destination::DomainResource => {
                routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable)
            }
            // RFC 6120 section 10.4: no server-to-server connections yet.
            Destination::Remote(remote) => {
                tracing::debug!(to = %remote, "iq to a remote domain, no s2s");
                routing.bounce(&iq, StanzaErrorCondition::RemoteServerNotFound)
            }
            Destination::LocalFull(jid) => self.iq_to_full(routing, iq, &jid).await,
        }
    }

    /// RFC 6121 section 8.5.3: an IQ to a full JID goes to that session only;
    /// with no such session a request gets `service-unavailable`
    /// (section 8.5.3.2.3) and a result or error is dropped.
    async fn iq_to_full(
        &self,
        routing: &Routing<'_>,
        iq: Element,
        jid: &FullJid,
    ) -> Option<Element> {
        let session = match self.registry.session(jid).await {
            Ok(session) => session,
            Err(error) => return routing.failure_reply(&iq, &error),
        };
        let iq = match session {
            Some(session) => {
                let shared = Arc::new(iq);
                if deliver_to_session(&*self.bus, shared.clone(), &session, routing.routed_at).await
                {
                    note_decision("delivered");
                    routing
                        .outcome
                        .record_delivered(std::iter::once(session.addr.node.as_str()));
                    return None;
                }
                tracing::debug!(jid = %jid, "full jid session unreachable for an iq");
                unshare(shared)
            }
            None => iq,
        };
        routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable)
    }

    /// An IQ from a session with no `to`, or to its own bare JID: the server
    /// answers on behalf of the account (RFC 6120 section 10.3.3). A result or
    /// an error addressed this way ends an exchange with the server: consumed.
    async fn account_iq(
        &self,
        routing: &Routing<'_>,
        jid: &FullJid,
        addr: &SessionAddr,
        iq: Element,
        iq_type: IqType,
    ) -> Option<Element> {
        if !iq_type.is_request() {
            return None;
        }
        let request = Request::of(&iq, iq_type)?;
        if request.namespace == ns::ROSTER && request.name == "query" {
            // RFC 6121 section 2: the presence service owns the roster and answers itself.
            let request_copy = iq.clone();
            return match self
                .presence
                .roster_iq(jid, addr, iq, routing.routed_at)
                .await
            {
                Ok(()) => None,
                Err(error) => routing.failure_reply(&request_copy, &error),
            };
        }
        if request.is(IqType::Get, "query", ns::DISCO_INFO) {
            return account_disco_info(&iq);
        }
        if request.is(IqType::Get, "query", ns::DISCO_ITEMS) {
            return account_disco_items(&iq);
        }
        // XEP-0199 section 4.2: a client-to-server ping sent without `to`.
        if request.is(IqType::Get, "ping", ns::PING) {
            return Some(ping::pong(&iq));
        }
        routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable)
    }

    /// RFC 6121 section 8.5.2.1.3: an IQ to another account's bare JID is
    /// answered by the server on the account's behalf and never delivered to
    /// its resources. Only service discovery is answered; an unknown account
    /// gets `service-unavailable` (section 8.5.1).
    async fn other_account_iq(
        &self,
        routing: &Routing<'_>,
        user: &BareJid,
        iq: Element,
        iq_type: IqType,
    ) -> Option<Element> {
        if !iq_type.is_request() {
            return None;
        }
        let request = Request::of(&iq, iq_type)?;
        let sessions = match self.registry.sessions(user).await {
            Ok(sessions) => sessions,
            Err(error) => return routing.failure_reply(&iq, &error),
        };
        match self.account_exists(user, &sessions).await {
            Ok(true) => {}
            Ok(false) => return routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable),
            Err(error) => return routing.failure_reply(&iq, &error),
        }
        if request.is(IqType::Get, "query", ns::DISCO_INFO) {
            return account_disco_info(&iq);
        }
        if request.is(IqType::Get, "query", ns::DISCO_ITEMS) {
            return account_disco_items(&iq);
        }
        // RFC 6121 section 2.3.3: only the account itself may change its roster.
        if request.is(IqType::Set, "query", ns::ROSTER) {
            return routing.bounce(&iq, StanzaErrorCondition::Forbidden);
        }
        routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable)
    }

    /// An IQ to the server itself (RFC 6120 section 10.5.1). Results and
    /// errors addressed to the server are consumed silently.
    fn server_iq(&self, routing: &Routing<'_>, iq: &Element, iq_type: IqType) -> Option<Element> {
        if !iq_type.is_request() {
            return None;
        }
        let request = Request::of(iq, iq_type)?;
        if request.is(IqType::Get, "query", ns::DISCO_INFO) {
            if disco::queried_node(iq).is_some() {
                return disco::unknown_node(iq);
            }
            let identity = Identity {
                category: "server",
                kind: "im",
                name: Some(&self.config.server_name),
            };
            return Some(disco::info_result(iq, &identity, &self.server_features()));
        }
        if request.is(IqType::Get, "query", ns::DISCO_ITEMS) {
            if disco::queried_node(iq).is_some() {
                return disco::unknown_node(iq);
            }
            return Some(disco::empty_items_result(iq));
        }
        if request.is(IqType::Get, "ping", ns::PING) {
            return Some(ping::pong(iq));
        }
        if request.is(IqType::Get, "query", ns::VERSION) {
            return Some(version::version_result(
                iq,
                &self.config.server_name,
                &self.config.server_version,
            ));
        }
        // RFC 6121 section 2.3.3: the server has no roster a client may change.
        if request.is(IqType::Set, "query", ns::ROSTER) {
            return routing.bounce(iq, StanzaErrorCondition::Forbidden);
        }
        routing.bounce(iq, StanzaErrorCondition::ServiceUnavailable)
    }

    /// What the server really implements today (XEP-0030 section 3.1).
    pub(crate) fn server_features(&self) -> Vec<&'static str> {
        let mut features = vec![
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::VERSION,
            ns::ROSTER,
            MSGOFFLINE,
        ];
        if self.in_band_registration {
            features.push(ns::REGISTER);
        }
        features
    }
}

/// The XEP-0160 feature: messages to an offline account are stored (section 5).
pub(crate) const MSGOFFLINE: &str = "msgoffline";

fn account_disco_info(iq: &Element) -> Option<Element> {
    if disco::queried_node(iq).is_some() {
        return disco::unknown_node(iq);
    }
    Some(disco::info_result(
        iq,
        &disco::REGISTERED_ACCOUNT,
        disco::ACCOUNT_FEATURES,
    ))
}

fn account_disco_items(iq: &Element) -> Option<Element> {
    if disco::queried_node(iq).is_some() {
        return disco::unknown_node(iq);
    }
    Some(disco::empty_items_result(iq))
}
