//! Subscription processing, RFC 6121 section 3, for both ends: outbound
//! processing for a local user who sends subscribe, subscribed, unsubscribe or
//! unsubscribed (sections 3.1.2, 3.1.5, 3.2.2, 3.3.2) and inbound processing
//! for a local contact who receives one (3.1.3, 3.1.6, 3.2.3, 3.3.3), with
//! the state tables of Appendix A. Pre-approval (section 3.4) is not offered.
//!
//! Each roster read-modify-write runs under the user's lock; stanzas that
//! result from it are sent after the lock is released, because their local
//! processing takes the other user's lock.

use starling_api::{ApiResult, RosterItem, SessionAddr, SessionRecord, SubscriptionEntry};
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{stanza, Element, StanzaError, StanzaErrorCondition};

use crate::roster::subscription_presence;
use crate::subscription::{InboundAction, SubscriptionStanza, SubscriptionState};
use crate::Call;

/// A roster item that exists only in storage, to remember subscription state
/// for a contact the user never added (RFC 6121 section 3.1.3).
fn placeholder_item(contact: &BareJid) -> RosterItem {
    let mut item = RosterItem::new(contact.clone());
    item.in_roster = false;
    item
}

impl Call<'_> {
    /// A local user sends a subscription stanza (RFC 6121 sections 3.1.2,
    /// 3.1.5, 3.2.2, 3.3.2): update the user's item, push it, route the stanza
    /// stamped with the user's bare JID.
    pub(crate) async fn outbound_subscription(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        mut presence: Element,
        kind: SubscriptionStanza,
    ) -> ApiResult<()> {
        let user = from.to_bare();
        let contact = match presence.attr("to").map(str::parse::<Jid>) {
            Some(Ok(to)) => to.to_bare(),
            Some(Err(_)) => {
                // Section 3.1.2: a request that cannot be routed for a bad address.
                let error = StanzaError::new(StanzaErrorCondition::JidMalformed);
                return self.bounce_to_session(from, addr, &presence, &error).await;
            }
            None => {
                let error = StanzaError::new(StanzaErrorCondition::BadRequest)
                    .with_text("a subscription stanza needs a to address");
                return self.bounce_to_session(from, addr, &presence, &error).await;
            }
        };
        if contact == user {
            // An entity is implicitly subscribed to its own presence (section 4.2.2).
            tracing::debug!(jid = %from, kind = kind.as_str(), "subscription stanza to self ignored");
            return Ok(());
        }
        // Section 3.1.2: stamp the user's bare JID, address the contact's bare JID.
        presence.set_attr("from", user.to_string());
        presence.set_attr("to", contact.to_string());

        let before_state = {
            let _guard = self.user_locks.lock(&user).await;
            let existing = self.storage.roster_item(&user, &contact).await?;
            let before = existing
                .clone()
                .unwrap_or_else(|| placeholder_item(&contact));
            let before_state = SubscriptionState::of(&before);
            // Section 3.1.5 without pre-approval (Appendix A.2.2): `subscribed` only
            // answers a pending inbound request; otherwise it is ignored, not routed.
            if kind == SubscriptionStanza::Subscribed && !before_state.pending_in {
                tracing::debug!(jid = %from, contact = %contact, "subscribed without a pending request ignored");
                return Ok(());
            }
            let mut after = before.clone();
            before_state.outbound(kind).apply_to(&mut after);
            if matches!(
                kind,
                SubscriptionStanza::Subscribe | SubscriptionStanza::Subscribed
            ) {
                // Sections 3.1.2 and 3.1.5: the contact is (now) in the roster.
                after.in_roster = true;
            }
            self.store_item_change(&user, existing.as_ref(), after)
                .await?;
            before_state
        };
        // Sections 3.1.2, 3.2.2, 3.3.2: the stanza goes to the contact whatever the
        // state; the contact's server decides from its own tables.
        self.send_presence(presence).await?;
        match kind {
            SubscriptionStanza::Subscribed => {
                // Sections 3.1.5/3.1.6: the new subscriber receives the presence of
                // every available resource of the user.
                self.send_current_presence_to(&user, &Jid::Bare(contact.clone()))
                    .await?;
            }
            SubscriptionStanza::Unsubscribed if before_state.subscription.has_from() => {
                // Section 3.2.2: the former subscriber sees the user go unavailable.
                self.send_unavailable_from_each_resource(&user, &contact)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A subscription stanza reaches a local user (RFC 6121 sections 3.1.3,
    /// 3.1.6, 3.2.3, 3.3.3): update the user's item for the sender, push it,
    /// deliver to the available resources when Appendix A.3 says so.
    pub(crate) async fn inbound_subscription(
        &self,
        sender: &Jid,
        to: &Jid,
        mut presence: Element,
        kind: SubscriptionStanza,
    ) -> ApiResult<()> {
        let sender = sender.to_bare();
        let user = to.to_bare();
        if user.node().is_none() || sender == user {
            tracing::debug!(to = %user, from = %sender, kind = kind.as_str(), "subscription stanza ignored");
            return Ok(());
        }
        if self.storage.credentials(&user).await?.is_none() {
            // Section 3.1.3 (and 8.5.1): no such user; a request is refused with
            // `unsubscribed`, other subscription stanzas are dropped.
            if kind == SubscriptionStanza::Subscribe {
                let refusal =
                    subscription_presence(&user, &sender, SubscriptionStanza::Unsubscribed);
                self.send_presence(refusal).await?;
            }
            return Ok(());
        }
        // Section 3.1.3: a request to a full JID is handled as one to the bare JID.
        presence.set_attr("from", sender.to_string());
        presence.set_attr("to", user.to_string());

        let (before_state, action) = {
            let _guard = self.user_locks.lock(&user).await;
            let existing = self.storage.roster_item(&user, &sender).await?;
            let before = existing
                .clone()
                .unwrap_or_else(|| placeholder_item(&sender));
            let before_state = SubscriptionState::of(&before);
            let (after_state, action) = before_state.inbound(kind);
            let mut after = before.clone();
            after_state.apply_to(&mut after);
            if kind == SubscriptionStanza::Subscribe && action == InboundAction::Deliver {
                // Kept until approved or denied, and redelivered at each login (section 3.1.3).
                after.pending_in_stanza = Some(presence.to_stanza_xml());
            }
            self.store_item_change(&user, existing.as_ref(), after)
                .await?;
            (before_state, action)
        };
        match action {
            InboundAction::Deliver => {
                let targets: Vec<_> = self
                    .available_sessions(&user)
                    .await?
                    .into_iter()
                    .map(|record| (record, None))
                    .collect();
                if targets.is_empty() && kind == SubscriptionStanza::Subscribe {
                    tracing::debug!(to = %user, from = %sender, "subscription request kept for the next login");
                }
                self.deliver(presence, &targets).await;
            }
            InboundAction::AutoReplySubscribed => {
                // Section 3.1.3: the sender already has a subscription; answer for the user.
                let approval =
                    subscription_presence(&user, &sender, SubscriptionStanza::Subscribed);
                self.send_presence(approval).await?;
            }
            InboundAction::Ignore => {}
        }
        if kind == SubscriptionStanza::Unsubscribe
            && action == InboundAction::Deliver
            && before_state.subscription.has_from()
        {
            // Section 3.3.3: the former subscriber sees the user go unavailable.
            self.send_unavailable_from_each_resource(&user, &sender)
                .await?;
        }
        Ok(())
    }

    /// Redeliver the inbound subscription requests still waiting for an answer
    /// to a session that just became available (RFC 6121 section 3.1.3).
    pub(crate) async fn redeliver_pending_requests(
        &self,
        user: &BareJid,
        session: &SessionRecord,
        roster: &[SubscriptionEntry],
    ) -> ApiResult<()> {
        // The stored request is read only for the (few) items pending in.
        for entry in roster
            .iter()
            .filter(|entry| entry.pending_in && !entry.subscription.has_from())
        {
            let Some(item) = self
                .storage
                .roster_item(user, &entry.jid)
                .await?
                .filter(|item| SubscriptionState::of(item).pending_in)
            else {
                continue;
            };
            let request = item
                .pending_in_stanza
                .as_deref()
                .and_then(|xml| self.parse_stored(xml))
                .unwrap_or_else(|| {
                    subscription_presence(&item.jid, user, SubscriptionStanza::Subscribe)
                });
            self.deliver(request, &[(session.clone(), None)]).await;
        }
        Ok(())
    }

    /// Return a presence stanza to the session that sent it, with an error (RFC 6120 section 8.3.1).
    pub(crate) async fn bounce_to_session(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        presence: &Element,
        error: &StanzaError,
    ) -> ApiResult<()> {
        match stanza::error_reply(presence, error) {
            Some(reply) => self.reply_to_session(from, addr, reply).await,
            None => Ok(()),
        }
    }
}
