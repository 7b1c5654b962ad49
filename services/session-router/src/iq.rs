//! IQ routing (RFC 6120 sections 8.2.3 and 10, RFC 6121 section 8.5) and the
//! dispatch of the requests the server answers itself: on behalf of an
//! account (RFC 6120 section 10.3.3, RFC 6121 section 8.5.2.1.3) or as the
//! server, by the handler registered for the payload's namespace (`features.rs`).

use std::sync::Arc;

use starling_api::{Origin, SessionAddr};
use starling_bus::deliver_to_session;
use starling_jid::{BareJid, FullJid};
use starling_xmpp::{stanza, Element, Iq, IqType, StanzaErrorCondition};

use crate::address::Destination;
use crate::features::{Addressee, IqRequest};
use crate::router::{note_decision, unshare, Routing, SessionRouter};

impl SessionRouter {
    /// Route an IQ; returns the reply for its sender, if any.
    pub(crate) async fn route_iq(&self, routing: &Routing<'_>, iq: Element) -> Option<Element> {
        // RFC 6120 section 8.2.3, checked once by the typed IQ: an `id`, a
        // `type` of four values, one payload in a get or set (the edge has
        // checked a client's already; server-generated IQs come this way too).
        let (iq, iq_type) = match Iq::try_from_element(iq) {
            Ok(iq) => {
                let iq_type = iq.iq_type();
                (iq.into_element(), iq_type)
            }
            Err(invalid) => {
                tracing::debug!(error = %invalid, "iq refused");
                return routing.reject(&invalid);
            }
        };
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
                Origin::Server => self.server_iq(routing, iq, iq_type).await,
            },
            Destination::LocalBare(user) => match routing.origin {
                // RFC 6120 section 10.3.3: `to` the sender's own bare JID is
                // handled like no `to` at all, on behalf of the account.
                Origin::Session { jid, addr } if jid.bare() == &user => {
                    self.account_iq(routing, jid, addr, iq, iq_type).await
                }
                _ => self.other_account_iq(routing, &user, iq, iq_type).await,
            },
            Destination::Domain => self.server_iq(routing, iq, iq_type).await,
            // RFC 6120 section 10.5.2: no resource of the server takes IQs.
            Destination::DomainResource => {
                routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable)
            }
            // XEP-0363: the upload service's domain is answered here.
            Destination::Remote(service) if self.is_upload_service(&service) => {
                note_decision("server");
                self.upload_iq(routing, &service, iq, iq_type).await
            }
            Destination::Remote(remote) => self.route_to_other_domain(routing, iq, &remote).await,
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
        self.answer_request(routing, Addressee::OwnAccount { jid, addr }, iq, iq_type)
            .await
    }

    /// RFC 6121 section 8.5.2.1.3: an IQ to another account's bare JID is
    /// answered by the server on the account's behalf and never delivered to
    /// its resources; an unknown account gets `service-unavailable` (section 8.5.1).
    async fn other_account_iq(
        &self,
        routing: &Routing<'_>,
        user: &BareJid,
        iq: Element,
        iq_type: IqType,
    ) -> Option<Element> {
        if !iq_type.is_request() {
            // The answer of an app server to a push notification (XEP-0357).
            if crate::push::is_push_answer(&iq) {
                self.push_answer(user, &iq).await;
            }
            return None;
        }
        let sessions = match self.registry.sessions(user).await {
            Ok(sessions) => sessions,
            Err(error) => return routing.failure_reply(&iq, &error),
        };
        match self.account_exists(user, &sessions).await {
            Ok(true) => {}
            Ok(false) => return routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable),
            Err(error) => return routing.failure_reply(&iq, &error),
        }
        self.answer_request(routing, Addressee::OtherAccount, iq, iq_type)
            .await
    }

    /// An IQ to the server itself (RFC 6120 section 10.5.1). Results and
    /// errors addressed to the server are consumed silently.
    async fn server_iq(
        &self,
        routing: &Routing<'_>,
        iq: Element,
        iq_type: IqType,
    ) -> Option<Element> {
        if !iq_type.is_request() {
            // The answer to a XEP-0115 query the PEP service sent.
            if crate::pep::caps::is_caps_answer(&iq) {
                self.caps_answer(&iq).await;
            }
            return None;
        }
        self.answer_request(routing, Addressee::Server, iq, iq_type)
            .await
    }

    /// A request the server answers: the handler registered for its payload's
    /// namespace decides, and a namespace nobody registered is
    /// `service-unavailable` (RFC 6120 section 8.3.3.19).
    async fn answer_request(
        &self,
        routing: &Routing<'_>,
        addressee: Addressee<'_>,
        iq: Element,
        iq_type: IqType,
    ) -> Option<Element> {
        let namespace = stanza::iq_payload(&iq).map_or("", Element::namespace);
        let Some(handler) = self.features.handler(namespace) else {
            return routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable);
        };
        handler
            .handle(
                self,
                IqRequest {
                    iq,
                    iq_type,
                    addressee,
                    routing,
                },
            )
            .await
    }
}
