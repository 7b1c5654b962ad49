//! Message routing: RFC 6120 section 10 for the server and remote domains,
//! RFC 6121 section 8.5 for local accounts, XEP-0160 offline storage.

use std::sync::Arc;

use starling_api::resumption::is_detached;
use starling_api::{ApiError, Origin, SessionAddr, SessionRecord};
use starling_bus::{deliver_to_session, deliver_to_sessions};
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::xep::carbons::Direction;
use starling_xmpp::{ns, stanza, Element, MessageType, StanzaErrorCondition};

use crate::address::Destination;
use crate::archive::stanza_id_element;
use crate::carbons::is_server_carbon;
use crate::metrics::Decision;
use crate::offline::offline_stanza_xml;
use crate::router::{note_decision, unshare, Routing, SessionRouter};

/// Evaluate a fallible lookup, or return the error reply for the stanza.
macro_rules! or_bounce {
    ($routing:expr, $result:expr, $stanza:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => return $routing.failure_reply(&$stanza, &error),
        }
    };
}

impl SessionRouter {
    /// Route a message; returns the reply for its sender, if any. A message a
    /// client sent is then copied to the sender's other carbons-enabled
    /// resources (XEP-0280 section 7), unless it bounced. Those resources are
    /// read while the message itself is routed (no added round trip).
    pub(crate) async fn route_message(
        &self,
        routing: &Routing<'_>,
        mut message: Element,
    ) -> Option<Element> {
        // XEP-0060 section 8.6: the owner's answer to a subscription
        // approval request goes to its PEP service (its own bare JID), not
        // to its resources.
        if let Origin::Session { jid, .. } = routing.origin {
            if let Some(answer) = crate::pep::subscriptions::authorization_answer(jid, &message) {
                return self
                    .pep_authorization_answered(routing, jid, &message, answer)
                    .await;
            }
        }
        // XEP-0313: decide the archiving and stamp the stanza id first, so
        // that the delivered (or stored) message carries it.
        let plan = match (routing.origin, self.config.mam) {
            (Origin::Session { jid, .. }, true) => match self.archive_target(jid, &message) {
                Some(to) => self.plan_archive(jid, &to, &mut message).await,
                None => None,
            },
            _ => None,
        };
        let reply = match self.sent_copies_possible(routing, &message) {
            None => self.route_original_message(routing, message).await,
            Some(sender) => {
                let mut original = message.clone();
                if let Some(plan) = plan.as_ref().filter(|plan| plan.sender_archives()) {
                    // The sender's carbons name the id in its own archive
                    // (a message to oneself carries it already).
                    let owner = plan.sender().to_string();
                    let stamped = original.children().any(|child| {
                        child.is("stanza-id", ns::SID) && child.attr("by") == Some(owner.as_str())
                    });
                    if !stamped {
                        original.append_child(stanza_id_element(plan.id, plan.sender()));
                    }
                }
                let (sent_copies, reply) = tokio::join!(
                    self.sent_copy_targets(sender),
                    self.route_original_message(routing, message),
                );
                if reply.is_none() {
                    self.deliver_carbons(
                        routing,
                        Direction::Sent,
                        sender.bare(),
                        original,
                        &sent_copies,
                    )
                    .await;
                }
                reply
            }
        };
        // XEP-0313 section 5.1: only what was accepted (delivered or stored
        // offline) is archived, never a message that bounced.
        if let Some(plan) = plan {
            if reply.is_none()
                && matches!(
                    routing.outcome.decision(),
                    Some(Decision::Local | Decision::Remote | Decision::Offline)
                )
            {
                self.archive_routed(plan).await;
            }
        }
        reply
    }

    /// The local account a client's message goes to, as addressed (no `to`:
    /// the sender's own bare JID, RFC 6120 section 10.3.1); `None` for
    /// anything else (the server, a remote domain, a malformed address).
    fn archive_target(&self, sender: &FullJid, message: &Element) -> Option<Jid> {
        match stanza::to(message) {
            Ok(None) => Some(Jid::Bare(sender.to_bare())),
            Ok(Some(to)) if self.is_local_account(to.bare()) => Some(to),
            _ => None,
        }
    }

    async fn route_original_message(
        &self,
        routing: &Routing<'_>,
        mut message: Element,
    ) -> Option<Element> {
        let destination = match self.destination(routing, &message) {
            Ok(destination) => destination,
            Err(reply) => return reply,
        };
        match destination {
            Destination::Absent => match routing.origin {
                // RFC 6120 section 10.3.1: a message with no `to` is treated as
                // addressed to the sender's bare JID.
                Origin::Session { jid, .. } => {
                    let own_account = jid.to_bare();
                    message.set_attr("to", own_account.to_string());
                    self.message_to_bare(routing, message, &own_account, None, None)
                        .await
                }
                Origin::Server => {
                    tracing::debug!("server message without a to address, dropped");
                    None
                }
            },
            // RFC 6120 sections 10.5.1 and 10.5.2: the server handles messages
            // to itself; it offers no message service, so service-unavailable.
            // An error message is never answered (RFC 6120 section 8.3.1).
            Destination::Domain | Destination::DomainResource => {
                routing.bounce(&message, StanzaErrorCondition::ServiceUnavailable)
            }
            Destination::Remote(remote) => {
                self.route_to_other_domain(routing, message, &remote).await
            }
            Destination::LocalBare(user) => {
                self.message_to_bare(routing, message, &user, None, None)
                    .await
            }
            Destination::LocalFull(jid) => self.message_to_full(routing, message, &jid).await,
        }
    }

    /// RFC 6121 section 8.5.3: a message to a full JID of a local account.
    async fn message_to_full(
        &self,
        routing: &Routing<'_>,
        message: Element,
        jid: &FullJid,
    ) -> Option<Element> {
        // With received carbons possible, every session of the account is read
        // (one lookup, as for the one session): the others may get a copy.
        let copies = self.wants_received_copies(routing, &message);
        let (session, account_sessions) = if copies {
            let sessions = or_bounce!(routing, self.registry.sessions(jid.bare()).await, message);
            let session = sessions.iter().find(|session| &session.jid == jid).cloned();
            (session, sessions)
        } else {
            let session = or_bounce!(routing, self.registry.session(jid).await, message);
            (session, Vec::new())
        };
        let message = match session {
            // 8.5.3.1: the resource matches, deliver whatever its priority.
            Some(session) => {
                let shared = Arc::new(message);
                if deliver_to_session(&*self.bus, shared.clone(), &session, routing.routed_at).await
                {
                    note_decision("delivered");
                    routing
                        .outcome
                        .record_delivered(std::iter::once(session.addr.node.as_str()));
                    // XEP-0357: parked for a detached stream, no client has it.
                    if is_detached(&session.addr) {
                        self.notify_push(jid.bare(), &shared).await;
                    }
                    // XEP-0280 section 6: the account's other carbons-enabled
                    // resources get a copy.
                    let targets = self.received_copy_targets(
                        routing,
                        &account_sessions,
                        std::slice::from_ref(&session),
                    );
                    if !targets.is_empty() {
                        self.deliver_carbons(
                            routing,
                            Direction::Received,
                            jid.bare(),
                            (*shared).clone(),
                            &targets,
                        )
                        .await;
                    }
                    return None;
                }
                tracing::debug!(jid = %jid, "full jid session unreachable, treating as no resource match");
                unshare(shared)
            }
            None => message,
        };
        // 8.5.3.2.1: no resource matches.
        match MessageType::from_attr(stanza::stanza_type(&message)) {
            MessageType::Groupchat => {
                routing.bounce(&message, StanzaErrorCondition::ServiceUnavailable)
            }
            MessageType::Error => None,
            MessageType::Normal | MessageType::Chat | MessageType::Headline => {
                self.message_to_bare(routing, message, jid.bare(), Some(jid), None)
                    .await
            }
        }
    }

    /// RFC 6121 section 8.5.2 (and 8.5.1 for an unknown account): a message to
    /// a local bare JID, or one treated as such. `excluded` is a session that
    /// must not receive it (the full JID it was addressed to and did not reach);
    /// `failed` is a connection that could not take it (never chosen again, so
    /// a stale registry entry cannot make a message bounce back and forth).
    pub(crate) async fn message_to_bare(
        &self,
        routing: &Routing<'_>,
        message: Element,
        user: &BareJid,
        excluded: Option<&FullJid>,
        failed: Option<&SessionAddr>,
    ) -> Option<Element> {
        let message_type = MessageType::from_attr(stanza::stanza_type(&message));
        // 8.5.2.1.1 and 8.5.2.2.1: an error message to a bare JID is silently ignored.
        if message_type == MessageType::Error {
            return None;
        }
        let sessions = or_bounce!(routing, self.registry.sessions(user).await, message);
        // 8.5.1: no such account => service-unavailable.
        if !or_bounce!(routing, self.account_exists(user, &sessions).await, message) {
            tracing::debug!(to = %user, "message to an account that does not exist");
            return routing.bounce(&message, StanzaErrorCondition::ServiceUnavailable);
        }
        // 8.5.2.1.1 and 8.5.2.2.1: groupchat to a bare JID is never delivered.
        if message_type == MessageType::Groupchat {
            return routing.bounce(&message, StanzaErrorCondition::ServiceUnavailable);
        }

        // XEP-0280 section 6: the carbons-enabled resources that do not get
        // the message itself may get a copy.
        let copy_candidates: Vec<SessionRecord> = if self.wants_received_copies(routing, &message) {
            self.received_copy_targets(routing, &sessions, &[])
        } else {
            Vec::new()
        };

        // Only available resources with non-negative priority receive
        // messages to the bare JID (8.5.2.1.1); the rest count as absent.
        let eligible: Vec<SessionRecord> = sessions
            .into_iter()
            .filter(|session| session.available && session.priority >= 0)
            .filter(|session| excluded != Some(&session.jid))
            .filter(|session| failed != Some(&session.addr))
            .collect();
        let targets = match message_type {
            // 8.5.2.1.1 headline: every available resource with non-negative priority.
            MessageType::Headline => eligible,
            // 8.5.2.1.1 normal and chat: the highest-priority resource(s).
            _ => highest_priority(eligible),
        };

        let message = if targets.is_empty() {
            message
        } else {
            let pairs: Vec<(SessionRecord, Option<String>)> = targets
                .iter()
                .map(|session| (session.clone(), None))
                .collect();
            let shared = Arc::new(message);
            let unreached =
                deliver_to_sessions(&*self.bus, shared.clone(), &pairs, routing.routed_at).await;
            if unreached.len() < pairs.len() {
                note_decision("delivered");
                routing.outcome.record_delivered(
                    targets
                        .iter()
                        .filter(|session| !unreached.contains(session))
                        .map(|session| session.addr.node.as_str()),
                );
                // XEP-0357: every session that took it is detached (parked
                // for its resumption), so no connected client has it.
                if targets
                    .iter()
                    .filter(|session| !unreached.contains(session))
                    .all(|session| is_detached(&session.addr))
                {
                    self.notify_push(user, &shared).await;
                }
                let copies = self.received_copy_targets(routing, &copy_candidates, &targets);
                if !copies.is_empty() {
                    self.deliver_carbons(
                        routing,
                        Direction::Received,
                        user,
                        unshare(shared),
                        &copies,
                    )
                    .await;
                }
                return None;
            }
            tracing::debug!(to = %user, "no target session reachable, falling back to offline handling");
            unshare(shared)
        };

        // XEP-0280 section 6 with no resource receiving the message: the
        // available carbons-enabled resources (negative priority, or
        // unreachable) see it now. One not yet available gets no copy: it
        // receives the stored message with its initial presence (XEP-0160).
        let copies: Vec<SessionRecord> = copy_candidates
            .into_iter()
            .filter(|session| session.available)
            .collect();
        let original = (!copies.is_empty()).then(|| message.clone());

        // 8.5.2.2.1: no available resource.
        let reply = match message_type {
            MessageType::Normal | MessageType::Chat if worth_storing_offline(&message) => {
                self.store_offline(routing, user, message).await
            }
            // A bare chat state notification or a no-store hint: nobody needs it later.
            MessageType::Normal | MessageType::Chat => None,
            // Headlines are not worth keeping: silently ignored.
            MessageType::Headline | MessageType::Groupchat | MessageType::Error => None,
        };
        if let (Some(original), None) = (original, &reply) {
            self.deliver_carbons(routing, Direction::Received, user, original, &copies)
                .await;
        }
        reply
    }

    /// XEP-0160: keep the message for the account's next available session.
    async fn store_offline(
        &self,
        routing: &Routing<'_>,
        user: &BareJid,
        message: Element,
    ) -> Option<Element> {
        let stanza_xml = offline_stanza_xml(&message, &self.config.domain, (self.clock)());
        match self.storage.store_offline(user, &stanza_xml).await {
            Ok(()) => {
                tracing::debug!(to = %user, "message stored offline");
                note_decision("offline");
                routing.outcome.record(Decision::Offline);
                // XEP-0357: no client of the account is connected.
                self.notify_push(user, &message).await;
                None
            }
            // XEP-0160 section 3: the queue is full => service-unavailable.
            Err(ApiError::LimitReached(reason)) => {
                tracing::info!(to = %user, %reason, "offline queue full, message bounced");
                routing.bounce(&message, StanzaErrorCondition::ServiceUnavailable)
            }
            Err(error) => routing.failure_reply(&message, &error),
        }
    }

    /// A message that reached a connection which no longer exists: try the
    /// account's other resources, then offline storage. IQ requests are
    /// answered `service-unavailable` (RFC 6121 section 8.5.3.2.3), the rest
    /// dropped. No client sent it just now: it has no origin time, and its
    /// routing decision is not counted.
    pub(crate) async fn reroute_undeliverable(
        &self,
        stanza_element: Element,
        failed: &SessionAddr,
    ) -> Option<Element> {
        let routing = &Routing::new(&Origin::Server, None);
        // The session it was for moved (its stream was resumed on another
        // connection, or detached): it follows the session (XEP-0198).
        let stanza_element = match self.follow_moved_session(stanza_element, failed).await {
            Some(stanza_element) => stanza_element,
            None => return None,
        };
        match stanza_element.name() {
            "message" => match stanza::to(&stanza_element) {
                // XEP-0280 section 10.3: a copy that did not reach its
                // resource is dropped, never sent to another or stored (the
                // original was delivered or stored).
                Ok(Some(Jid::Full(jid))) if is_server_carbon(&stanza_element, jid.bare()) => {
                    tracing::debug!(jid = %jid, "undeliverable carbon copy dropped");
                    let direction = if stanza_element.has_child("sent", ns::CARBONS) {
                        Direction::Sent
                    } else {
                        Direction::Received
                    };
                    self.metrics.count_carbons(direction, 0, 1);
                    None
                }
                Ok(Some(Jid::Full(jid))) if self.is_local_account(jid.bare()) => {
                    let user = jid.to_bare();
                    self.message_to_bare(routing, stanza_element, &user, Some(&jid), Some(failed))
                        .await
                }
                Ok(Some(Jid::Bare(user))) if self.is_local_account(&user) => {
                    self.message_to_bare(routing, stanza_element, &user, None, Some(failed))
                        .await
                }
                _ => {
                    tracing::debug!(
                        to = stanza_element.attr("to").unwrap_or(""),
                        "undeliverable message not for a local account, dropped"
                    );
                    None
                }
            },
            "iq" => routing.bounce(&stanza_element, StanzaErrorCondition::ServiceUnavailable),
            _ => None,
        }
    }

    /// Deliver a stanza for a full JID whose session is now at another address
    /// than `failed`; gives it back when there is no such session or it was not reached.
    async fn follow_moved_session(&self, stanza: Element, failed: &SessionAddr) -> Option<Element> {
        let Ok(Some(Jid::Full(jid))) = stanza::to(&stanza) else {
            return Some(stanza);
        };
        if !self.is_local_account(jid.bare()) {
            return Some(stanza);
        }
        let session = match self.registry.session(&jid).await {
            Ok(Some(session)) if &session.addr != failed => session,
            _ => return Some(stanza),
        };
        let shared = Arc::new(stanza);
        if deliver_to_session(&*self.bus, shared.clone(), &session, None).await {
            // XEP-0357: it followed the session to its detached stream.
            if is_detached(&session.addr) && shared.name() == "message" {
                self.notify_push(jid.bare(), &shared).await;
            }
            return None;
        }
        Some(unshare(shared))
    }

    pub(crate) fn is_local_account(&self, user: &BareJid) -> bool {
        user.node().is_some() && user.domain() == self.config.domain
    }
}

const CHAT_STATES: &str = "http://jabber.org/protocol/chatstates";
const HINTS: &str = "urn:xmpp:hints";

/// Whether a chat/normal message with no available recipient goes to offline
/// storage: XEP-0334 hints decide first (`<store/>` keeps, `<no-store/>` and
/// `<no-permanent-store/>` drop), then a message whose only payload is a
/// XEP-0085 chat state notification is dropped (as ejabberd's default does);
/// everything else is kept (XEP-0160).
pub(crate) fn worth_storing_offline(message: &Element) -> bool {
    if message.has_child("store", HINTS) {
        return true;
    }
    if message.has_child("no-store", HINTS) || message.has_child("no-permanent-store", HINTS) {
        return false;
    }
    message
        .children()
        .any(|child| child.namespace() != CHAT_STATES && child.namespace() != HINTS)
}

/// The sessions sharing the highest priority among `sessions`.
fn highest_priority(sessions: Vec<SessionRecord>) -> Vec<SessionRecord> {
    let Some(highest) = sessions.iter().map(|session| session.priority).max() else {
        return sessions;
    };
    sessions
        .into_iter()
        .filter(|session| session.priority == highest)
        .collect()
}

#[cfg(test)]
mod offline_policy_tests {
    use super::worth_storing_offline;
    use starling_xmpp::parse_element;

    fn message(xml: &str) -> starling_xmpp::Element {
        parse_element(xml.as_bytes(), &Default::default()).expect("test stanza parses")
    }

    #[test]
    fn bodies_are_stored_chat_states_alone_are_not() {
        assert!(worth_storing_offline(&message(
            "<message xmlns='jabber:client' type='chat'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!worth_storing_offline(&message(
            "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!worth_storing_offline(&message(
            "<message xmlns='jabber:client' type='chat'/>"
        )));
    }

    #[test]
    fn hints_decide_first() {
        assert!(!worth_storing_offline(&message(
            "<message xmlns='jabber:client'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(worth_storing_offline(&message(
            "<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/><store xmlns='urn:xmpp:hints'/></message>"
        )));
    }
}
