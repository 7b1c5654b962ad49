//! Message Carbons, XEP-0280 version 1.0.1: a resource that enabled carbons
//! (section 4) gets a copy of every message eligible for carbons (section 6
//! of 0.10, "Messages Eligible for Carbons Delivery") that another resource
//! of its account sent (section 7, `<sent/>`) or that the account received
//! on another resource (section 6, `<received/>`). The per-session switch is
//! the registry's `SessionRecord::carbons`, so every router replica sees it.
//!
//! Copies are made only for stanzas a client sent just now (`Origin::Session`):
//! a message rerouted after its connection went away, an offline message or
//! a server reply is never copied (its copies, if any, went out when it was
//! first routed). All copies of one message to one account's resources are
//! one `deliver_to_sessions` call: one bus publish per node.

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{FeatureSpec, Origin, SessionRecord};
use starling_bus::deliver_to_sessions;
use starling_jid::{BareJid, FullJid};
use starling_xmpp::xep::carbons::{is_carbon, Carbon, Direction, Disable, Enable};
use starling_xmpp::xep::Payload;
use starling_xmpp::{ns, stanza, Element, IqType, MessageType, StanzaErrorCondition};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::{Routing, SessionRouter};

/// XEP-0280 version 1.0.1; registered only when `carbons.enabled` is on.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "carbons",
    specification: "XEP-0280",
    disco_features: &[ns::CARBONS],
    iq_namespaces: &[ns::CARBONS],
    stream_features: &[],
};

/// Answers `<enable/>` and `<disable/>` (sections 4 and 5).
pub(crate) struct Carbons;

#[async_trait]
impl IqHandler for Carbons {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        // The switch is the sending session's own: sent without `to`, to its
        // bare JID or to the server. Sections 4.1 and 5.1: `not-allowed` for
        // anyone else (another account, or no session at all).
        let (jid, addr) = match (request.addressee, request.routing.origin) {
            (Addressee::OwnAccount { jid, addr }, _)
            | (Addressee::Server, Origin::Session { jid, addr }) => (jid, addr),
            _ => {
                return request
                    .routing
                    .bounce(&request.iq, StanzaErrorCondition::NotAllowed)
            }
        };
        // Anything but a set of an empty `<enable/>` or `<disable/>` is malformed.
        let enabled = match stanza::iq_payload(&request.iq) {
            Some(payload)
                if request.iq_type == IqType::Set && Enable::from_element(payload).is_ok() =>
            {
                true
            }
            Some(payload)
                if request.iq_type == IqType::Set && Disable::from_element(payload).is_ok() =>
            {
                false
            }
            _ => {
                return request
                    .routing
                    .bounce(&request.iq, StanzaErrorCondition::BadRequest)
            }
        };
        // Section 9.1: enabling twice (or disabling twice) is simply a result.
        match router.registry.set_carbons(jid, addr, enabled).await {
            Ok(found) => {
                if !found {
                    tracing::debug!(jid = %jid, "carbons switched for a session that is gone");
                }
                tracing::debug!(jid = %jid, enabled, "message carbons switched");
                Some(stanza::iq_result(&request.iq))
            }
            Err(error) => request.routing.failure_reply(&request.iq, &error),
        }
    }
}

/// Whether a message gets carbon copies in `direction`: the eligibility rules
/// of XEP-0280 section 6 (1.0.1), with the opt-outs.
pub(crate) fn eligible(message: &Element, direction: Direction) -> bool {
    // Section 8 `<private/>`, and XEP-0334 section 4.3 `<no-copy/>`: the
    // sender asked for no copies.
    if message.has_child("private", ns::CARBONS) || message.has_child("no-copy", ns::HINTS) {
        return false;
    }
    // Section 11: a copy is never copied again. A message a client sends that
    // carries a `<sent/>` or `<received/>` wrapper is not copied either: its
    // `from` is the client's full JID (the edge stamps it), so no client
    // takes it for a carbon, and copying it would nest wrappers.
    if is_carbon(message) {
        return false;
    }
    let message_type = MessageType::from_attr(stanza::stanza_type(message));
    // Groupchat messages are the room's to fan out; headlines are not
    // conversations.
    if matches!(message_type, MessageType::Groupchat | MessageType::Headline) {
        return false;
    }
    if let Some(muc_user) = message.get_child("x", ns::MUC_USER) {
        // A mediated MUC invitation is copied like any IM.
        if muc_user.has_child("invite", ns::MUC_USER) {
            return true;
        }
        // A private message from a room occupant reaches every client joined
        // with the nickname through the room itself: no `<received/>` copy.
        // One the user sends to an occupant is copied (`<sent/>`).
        if direction == Direction::Received {
            return false;
        }
    }
    match message_type {
        MessageType::Chat => true,
        // Normal with a body, or with payloads used in IM (chat states,
        // receipts, markers, direct invitations). An error is copied when it
        // answers such a message, which a client's error shows by echoing it.
        MessageType::Normal | MessageType::Error => message.children().any(|child| {
            (child.name() == "body" && matches!(child.namespace(), ns::CLIENT | ns::SERVER))
                || matches!(
                    child.namespace(),
                    ns::CHAT_STATES | ns::RECEIPTS | ns::CHAT_MARKERS | ns::DIRECT_MUC_INVITATION
                )
        }),
        MessageType::Groupchat | MessageType::Headline => false,
    }
}

/// Whether `message` is a carbon the server made for `account` (from its bare
/// JID, with a `<sent/>` or `<received/>` wrapper). One that cannot be
/// delivered is dropped, never rerouted (section 10.3: a copy's failure goes
/// back to nobody).
pub(crate) fn is_server_carbon(message: &Element, account: &BareJid) -> bool {
    is_carbon(message)
        && message
            .attr("from")
            .is_some_and(|from| from.parse::<BareJid>().ok().as_ref() == Some(account))
}

impl SessionRouter {
    /// Carbons are on and the stanza is one a client sent just now.
    fn copies_possible<'a>(&self, routing: &'a Routing<'_>) -> Option<&'a FullJid> {
        match routing.origin {
            Origin::Session { jid, .. } if self.config.carbons => Some(jid),
            _ => None,
        }
    }

    /// Whether the message, on its way to a local account, may get
    /// `<received/>` copies (section 6).
    pub(crate) fn wants_received_copies(&self, routing: &Routing<'_>, message: &Element) -> bool {
        self.copies_possible(routing).is_some() && eligible(message, Direction::Received)
    }

    /// The sender of a message that may get `<sent/>` copies (section 7):
    /// eligible, and not to the sender's own account (there the resources
    /// that do not receive it get a `<received/>` copy instead, so each
    /// resource sees the message once).
    pub(crate) fn sent_copies_possible<'a>(
        &self,
        routing: &'a Routing<'_>,
        message: &Element,
    ) -> Option<&'a FullJid> {
        let sender = self.copies_possible(routing)?;
        let to_own_account = match stanza::to(message) {
            Ok(None) => true,
            Ok(Some(to)) => to.bare() == sender.bare(),
            Err(_) => return None,
        };
        (!to_own_account && eligible(message, Direction::Sent)).then_some(sender)
    }

    /// The sender's other carbons-enabled resources, which get the `<sent/>`
    /// copy (the sending resource never does, whether or not it enabled
    /// carbons).
    pub(crate) async fn sent_copy_targets(&self, sender: &FullJid) -> Vec<SessionRecord> {
        match self.registry.sessions(sender.bare()).await {
            Ok(sessions) => sessions
                .into_iter()
                .filter(|session| session.carbons && &session.jid != sender)
                .collect(),
            Err(error) => {
                // The message itself is still routed; only its copies are lost.
                tracing::warn!(jid = %sender, %error, "sessions lookup for sent carbons failed");
                self.metrics.carbons_failed(Direction::Sent);
                Vec::new()
            }
        }
    }

    /// The resources of the recipient account that get a `<received/>` copy:
    /// carbons enabled, not among `delivered_to` (the resources that got the
    /// message itself), not the sender (a message to one's own account).
    pub(crate) fn received_copy_targets<'s>(
        &self,
        routing: &Routing<'_>,
        sessions: impl IntoIterator<Item = &'s SessionRecord>,
        delivered_to: &[SessionRecord],
    ) -> Vec<SessionRecord> {
        let sender = self.copies_possible(routing);
        sessions
            .into_iter()
            .filter(|session| session.carbons)
            .filter(|session| Some(&session.jid) != sender)
            .filter(|session| !delivered_to.iter().any(|got| got.addr == session.addr))
            .cloned()
            .collect()
    }

    /// Deliver copies of `original` to `targets`, all resources of `account`:
    /// one wrapper, each recipient's `to` its own full JID (sections 6 and
    /// 7), one publish per node. A copy that reaches no node is counted and
    /// dropped: the original was delivered or stored.
    pub(crate) async fn deliver_carbons(
        &self,
        routing: &Routing<'_>,
        direction: Direction,
        account: &BareJid,
        original: Element,
        targets: &[SessionRecord],
    ) {
        if targets.is_empty() {
            return;
        }
        let wrapper = Arc::new(Carbon::wrap(direction, &account.to_string(), original));
        let recipients: Vec<(SessionRecord, Option<String>)> = targets
            .iter()
            .map(|session| (session.clone(), Some(session.jid.to_string())))
            .collect();
        let unreached =
            deliver_to_sessions(&*self.bus, wrapper, &recipients, routing.routed_at).await;
        if !unreached.is_empty() {
            tracing::debug!(jid = %account, unreached = unreached.len(), "carbon copies reached no node, dropped");
        }
        self.metrics.count_carbons(
            direction,
            recipients.len() - unreached.len(),
            unreached.len(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::parse_element;

    fn message(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Default::default()).expect("test stanza parses")
    }

    fn both(xml: &str) -> (bool, bool) {
        let message = message(xml);
        (
            eligible(&message, Direction::Sent),
            eligible(&message, Direction::Received),
        )
    }

    #[test]
    fn chat_and_normal_with_body_are_copied() {
        assert_eq!(
            both("<message xmlns='jabber:client' type='chat'/>"),
            (true, true)
        );
        assert_eq!(
            both("<message xmlns='jabber:client'><body>hi</body></message>"),
            (true, true)
        );
        assert_eq!(
            both("<message xmlns='jabber:client' type='normal'><subject>s</subject></message>"),
            (false, false)
        );
        assert_eq!(
            both("<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts' id='x'/></message>"),
            (true, true)
        );
        assert_eq!(
            both("<message xmlns='jabber:client'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>"),
            (true, true)
        );
    }

    #[test]
    fn groupchat_and_headline_are_not() {
        assert_eq!(
            both("<message xmlns='jabber:client' type='groupchat'><body>all</body></message>"),
            (false, false)
        );
        assert_eq!(
            both("<message xmlns='jabber:client' type='headline'><body>news</body></message>"),
            (false, false)
        );
    }

    #[test]
    fn errors_that_answer_an_im_message_are_copied() {
        assert_eq!(
            both("<message xmlns='jabber:client' type='error'><body>hi</body><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
            (true, true)
        );
        assert_eq!(
            both("<message xmlns='jabber:client' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
            (false, false)
        );
    }

    #[test]
    fn private_and_no_copy_opt_out() {
        assert_eq!(
            both("<message xmlns='jabber:client' type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>"),
            (false, false)
        );
        assert_eq!(
            both("<message xmlns='jabber:client' type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>"),
            (false, false)
        );
        // Other hints do not.
        assert_eq!(
            both("<message xmlns='jabber:client' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"),
            (true, true)
        );
    }

    #[test]
    fn carbons_are_never_copied_again() {
        assert_eq!(
            both("<message xmlns='jabber:client' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' type='chat'><body>x</body></message></forwarded></sent></message>"),
            (false, false)
        );
        assert_eq!(
            both("<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>"),
            (false, false)
        );
    }

    #[test]
    fn muc_private_messages_are_copied_when_sent_only() {
        assert_eq!(
            both("<message xmlns='jabber:client' type='chat'><body>psst</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>"),
            (true, false)
        );
        assert_eq!(
            both("<message xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='a@example.com'/></x></message>"),
            (true, true)
        );
        assert_eq!(
            both("<message xmlns='jabber:client'><x xmlns='jabber:x:conference' jid='room@muc.example.com'/></message>"),
            (true, true)
        );
    }

    #[test]
    fn only_the_accounts_bare_jid_makes_a_server_carbon() {
        let account: BareJid = "romeo@example.com".parse().expect("bare jid");
        let carbon = message("<message xmlns='jabber:client' from='romeo@example.com' to='romeo@example.com/a'><sent xmlns='urn:xmpp:carbons:2'/></message>");
        assert!(is_server_carbon(&carbon, &account));
        let forged = message("<message xmlns='jabber:client' from='juliet@example.com/x' to='romeo@example.com/a'><sent xmlns='urn:xmpp:carbons:2'/></message>");
        assert!(!is_server_carbon(&forged, &account));
    }
}
