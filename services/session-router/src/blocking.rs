//! Enforcement of block lists where stanzas are routed (XEP-0191 version
//! 1.1, section 3.3), from the cache of `starling_bus::Blocklists` (no
//! database read per stanza), and the presence the server sends when a list
//! changes.
//!
//! - Outbound: a stanza a local session sends to an address its account
//!   blocked is not routed; it gets `not-acceptable` with
//!   `<blocked xmlns='urn:xmpp:blocking:errors'/>`. A stanza that cannot be
//!   answered (an error, an IQ result) is dropped and counted.
//! - Inbound, for messages and IQs (presence is the presence service's,
//!   which applies the same lists): a stanza from an address the local
//!   recipient blocked is not delivered; a message gets
//!   `service-unavailable` ("For message stanzas, the server SHOULD return
//!   an error, which SHOULD be <service-unavailable/>"), an IQ get or set
//!   `service-unavailable`, and an IQ result or error, or a message error,
//!   is dropped (counted), so that the user appears offline to the contact.
//!
//! The account's own addresses and the served domain itself are never
//! blocked for their owner: a block of one's own domain stops its users,
//! not the account's requests to its server.

use std::sync::Arc;

use starling_api::{ApiResult, Origin, SessionRecord};
use starling_bus::{deliver_to_sessions, BlockDirection};
use starling_jid::{BareJid, Jid};
use starling_xmpp::xep::blocking::add_blocked_condition;
use starling_xmpp::{
    ns, parse_element, stanza, Element, Limits, StanzaError, StanzaErrorCondition, StanzaErrorType,
    StanzaKind,
};

use crate::router::{note_decision, Routing, SessionRouter};

/// What the lists say of one stanza.
enum Verdict {
    Pass,
    /// The sender's account blocked the addressee.
    Outbound,
    /// The addressee's account blocked the sender.
    Inbound,
}

impl SessionRouter {
    /// Whether `address` is a local account (not the served domain itself).
    fn local_account_of(&self, address: &Jid) -> Option<BareJid> {
        (address.node().is_some() && address.domain() == self.config.domain)
            .then(|| address.to_bare())
    }

    async fn verdict(
        &self,
        routing: &Routing<'_>,
        stanza_element: &Element,
        kind: StanzaKind,
    ) -> ApiResult<Verdict> {
        let Ok(Some(to)) = stanza::to(stanza_element) else {
            return Ok(Verdict::Pass);
        };
        let from = stanza_element
            .attr("from")
            .and_then(|from| from.parse::<Jid>().ok());
        if let Origin::Session { jid, .. } = routing.origin {
            let own_account = to.bare() == jid.bare();
            let the_server = to.node().is_none() && to.domain() == self.config.domain;
            if !own_account && !the_server && self.blocklists.blocks(jid.bare(), &to).await? {
                return Ok(Verdict::Outbound);
            }
        }
        // Presence addressed to a local account is the presence service's to
        // check (it applies the same lists to broadcasts and probes).
        if kind == StanzaKind::Presence {
            return Ok(Verdict::Pass);
        }
        if let (Some(recipient), Some(from)) = (self.local_account_of(&to), from) {
            if from.bare() != &recipient && self.blocklists.blocks(&recipient, &from).await? {
                return Ok(Verdict::Inbound);
            }
        }
        Ok(Verdict::Pass)
    }

    /// XEP-0191 section 3.3 for one stanza: `None` when it may be routed,
    /// else the reply to its sender (`Some(None)`: stopped without one).
    pub(crate) async fn enforce_blocking(
        &self,
        routing: &Routing<'_>,
        stanza_element: &Element,
        kind: StanzaKind,
    ) -> Option<Option<Element>> {
        let verdict = match self.verdict(routing, stanza_element, kind).await {
            Ok(verdict) => verdict,
            // The lists cannot be read: the stanza is not routed past them.
            Err(error) => return Some(routing.failure_reply(stanza_element, &error)),
        };
        let (direction, reply) = match verdict {
            Verdict::Pass => return None,
            Verdict::Outbound => {
                // The XEP's example: type `cancel` (retrying will not help).
                let reply = stanza::error_reply(
                    stanza_element,
                    &StanzaError::new(StanzaErrorCondition::NotAcceptable)
                        .with_type(StanzaErrorType::Cancel),
                )
                .map(|mut reply| {
                    add_blocked_condition(&mut reply);
                    reply
                });
                (BlockDirection::Outbound, reply)
            }
            Verdict::Inbound => (
                BlockDirection::Inbound,
                stanza::error_reply(
                    stanza_element,
                    &StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                ),
            ),
        };
        tracing::debug!(
            kind = kind.as_str(),
            direction = ?direction,
            answered = reply.is_some(),
            "stanza stopped by a block list"
        );
        note_decision("blocked");
        self.blocklists
            .count_stopped(direction, kind.as_str(), reply.is_some());
        Some(routing.bounced(reply))
    }

    /// XEP-0191 section 3.3: "When the user blocks communications with the
    /// contact, the user's server MUST send unavailable presence information
    /// to the contact (but only if the contact is allowed to receive
    /// presence notifications from the user)": from each available resource
    /// of `user` to the available sessions of the subscribers that `blocked`
    /// covers.
    pub(crate) async fn presence_after_block(
        &self,
        user: &BareJid,
        blocked: &[Jid],
    ) -> ApiResult<()> {
        let own_resources = self.available_sessions(user).await?;
        if own_resources.is_empty() {
            return Ok(());
        }
        let contacts = self
            .covered_contacts(user, blocked, &[], Direction::From)
            .await?;
        for resource in &own_resources {
            let unavailable = Element::new("presence", ns::CLIENT)
                .with_attr("from", resource.jid.to_string())
                .with_attr("type", "unavailable");
            self.deliver_presence(unavailable, &contacts).await;
        }
        Ok(())
    }

    /// XEP-0191 section 3.4: "When the user unblocks communications with the
    /// contact, the user's server MUST send the user's current presence
    /// information to the contact" (subscribers only). The user, subscribed
    /// to the contact, also gets the contact's current presence, which the
    /// block kept from it.
    pub(crate) async fn presence_after_unblock(
        &self,
        user: &BareJid,
        unblocked: &[Jid],
    ) -> ApiResult<()> {
        let still_blocked = self.blocklists.items(user).await?;
        let own_resources = self.available_sessions(user).await?;
        if own_resources.is_empty() {
            return Ok(());
        }
        let subscribers = self
            .covered_contacts(user, unblocked, &still_blocked, Direction::From)
            .await?;
        for resource in &own_resources {
            if let Some(presence) = stored_presence(resource) {
                self.deliver_presence(presence, &subscribers).await;
            }
        }
        let own_targets: Vec<(SessionRecord, Option<String>)> = own_resources
            .iter()
            .map(|record| (record.clone(), Some(record.jid.to_string())))
            .collect();
        for (contact, _) in self
            .covered_contacts(user, unblocked, &still_blocked, Direction::To)
            .await?
        {
            if let Some(presence) = stored_presence(&contact) {
                self.deliver_presence(presence, &own_targets).await;
            }
        }
        Ok(())
    }

    async fn available_sessions(&self, user: &BareJid) -> ApiResult<Vec<SessionRecord>> {
        let mut sessions = self.registry.sessions(user).await?;
        sessions.retain(|record| record.available);
        sessions.sort_by(|left, right| left.jid.cmp(&right.jid));
        Ok(sessions)
    }

    /// The available sessions of `user`'s local contacts with a subscription
    /// in `direction` whose address one of `changed` covers and none of
    /// `still_blocked` does, each with its `to`.
    async fn covered_contacts(
        &self,
        user: &BareJid,
        changed: &[Jid],
        still_blocked: &[Jid],
        direction: Direction,
    ) -> ApiResult<Vec<(SessionRecord, Option<String>)>> {
        let roster = self.storage.subscriptions(user).await?;
        let mut targets = Vec::new();
        for item in roster.iter().filter(|item| match direction {
            Direction::From => item.subscription.has_from(),
            Direction::To => item.subscription.has_to(),
        }) {
            if &item.jid == user
                || self
                    .local_account_of(&Jid::Bare(item.jid.clone()))
                    .is_none()
            {
                continue;
            }
            for session in self.available_sessions(&item.jid).await? {
                let address = Jid::Full(session.jid.clone());
                if starling_api::blocking::any_covers(changed, &address)
                    && !starling_api::blocking::any_covers(still_blocked.iter(), &address)
                {
                    let to = session.jid.to_string();
                    targets.push((session, Some(to)));
                }
            }
        }
        Ok(targets)
    }

    async fn deliver_presence(
        &self,
        presence: Element,
        targets: &[(SessionRecord, Option<String>)],
    ) {
        if targets.is_empty() {
            return;
        }
        let unreached = deliver_to_sessions(&*self.bus, Arc::new(presence), targets, None).await;
        if !unreached.is_empty() {
            tracing::debug!(
                unreached = unreached.len(),
                "block list presence reached no node"
            );
        }
    }
}

/// Which subscribers: those who see the user's presence (`From`) or those
/// whose presence the user sees (`To`).
#[derive(Clone, Copy)]
enum Direction {
    From,
    To,
}

/// A session's last available presence (`pres:{full}`), from its full JID.
fn stored_presence(record: &SessionRecord) -> Option<Element> {
    let xml = record.presence.as_deref()?;
    let mut presence = parse_element(xml.as_bytes(), &Limits::default()).ok()?;
    if presence.namespace().is_empty() {
        presence.set_namespace_deep(ns::CLIENT);
    }
    presence.set_attr("from", record.jid.to_string());
    Some(presence)
}
