//! Explicit subscriptions to PEP nodes (XEP-0060 section 6.1), the owner's
//! approval of those to an `authorize` node (section 6.1.4: the subscriber
//! is `pending`; section 8.6: the owner gets a `subscribe_authorization`
//! form in a message and submits it back to its PEP service, its own bare
//! JID), and the notification of a subscription's new state to the
//! subscriber (sections 8.6 and 8.8.4).

use std::collections::HashSet;

use starling_api::{Origin, PepNode, PepSubscriptionState};
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{ns, Element, StanzaErrorCondition};

use super::{new_id, LastItemTrigger};
use crate::router::{Routing, SessionRouter};

/// An owner's answer to a subscription approval request (XEP-0060 section 8.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthorizationAnswer {
    /// The form submitted: allow or deny `subscriber` on `node`.
    Decided {
        node: String,
        subscriber: Jid,
        allow: bool,
    },
    /// The form cancelled: "the subscription request MUST remain in the
    /// pending state".
    Cancelled,
    /// A submitted form without a node, a subscriber or a boolean
    /// `pubsub#allow`.
    Malformed(&'static str),
}

fn form_type(form: &Element) -> Option<String> {
    field_value(form, "FORM_TYPE")
}

fn field_value(form: &Element, var: &str) -> Option<String> {
    form.children()
        .find(|field| field.is("field", ns::DATA_FORMS) && field.attr("var") == Some(var))
        .and_then(|field| field.get_child("value", ns::DATA_FORMS))
        .map(|value| value.text().trim().to_string())
}

/// The approval answer `message` carries, when a session sent it to its
/// own account's PEP service (its bare JID, or no `to`): a
/// `subscribe_authorization` form of type `submit` or `cancel`.
pub(crate) fn authorization_answer(
    sender: &FullJid,
    message: &Element,
) -> Option<AuthorizationAnswer> {
    if let Some(to) = message.attr("to") {
        match to.parse::<Jid>() {
            Ok(Jid::Bare(bare)) if bare == sender.to_bare() => {}
            _ => return None,
        }
    }
    let form = message.children().find(|child| {
        child.is("x", ns::DATA_FORMS)
            && form_type(child).as_deref() == Some(ns::PUBSUB_SUBSCRIBE_AUTHORIZATION)
    })?;
    match form.attr("type") {
        Some("cancel") => return Some(AuthorizationAnswer::Cancelled),
        Some("submit") => {}
        // The request form itself (a copy, or a forward to oneself) is no answer.
        _ => return None,
    }
    let Some(node) = field_value(form, "pubsub#node").filter(|node| !node.is_empty()) else {
        return Some(AuthorizationAnswer::Malformed(
            "the form names no pubsub#node",
        ));
    };
    // The request example of section 8.6 spells the field `pusub#subscriber_jid`.
    let subscriber = field_value(form, "pubsub#subscriber_jid")
        .or_else(|| field_value(form, "pusub#subscriber_jid"))
        .and_then(|jid| jid.parse::<Jid>().ok());
    let Some(subscriber) = subscriber else {
        return Some(AuthorizationAnswer::Malformed(
            "the form names no valid pubsub#subscriber_jid",
        ));
    };
    let allow = match field_value(form, "pubsub#allow").as_deref() {
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        _ => return Some(AuthorizationAnswer::Malformed("pubsub#allow is a boolean")),
    };
    Some(AuthorizationAnswer::Decided {
        node,
        subscriber,
        allow,
    })
}

fn form_field(var: &str, kind: &str, label: Option<&str>, value: &str) -> Element {
    let mut field = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    if let Some(label) = label {
        field.set_attr("label", label);
    }
    field.with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

/// The approval request of XEP-0060 section 8.6 for the owner, from its PEP
/// service (its bare JID). It has a body, so that it waits in offline
/// storage when no resource of the owner is online.
pub(crate) fn approval_request(owner: &BareJid, node: &str, subscriber: &Jid) -> Element {
    let instructions = "To approve this entity's subscription request, submit this form with \
                        pubsub#allow true; to deny it, with false.";
    Element::new("message", ns::CLIENT)
        .with_attr("from", owner.to_string())
        .with_attr("to", owner.to_string())
        .with_attr("id", new_id())
        .with_child(Element::new("body", ns::CLIENT).with_text(format!(
            "{subscriber} asks to subscribe to your node {node}. {instructions}"
        )))
        .with_child(
            Element::new("x", ns::DATA_FORMS)
                .with_attr("type", "form")
                .with_child(
                    Element::new("title", ns::DATA_FORMS).with_text("PubSub subscriber request"),
                )
                .with_child(Element::new("instructions", ns::DATA_FORMS).with_text(instructions))
                .with_child(form_field(
                    "FORM_TYPE",
                    "hidden",
                    None,
                    ns::PUBSUB_SUBSCRIBE_AUTHORIZATION,
                ))
                .with_child(form_field(
                    "pubsub#node",
                    "text-single",
                    Some("Node ID"),
                    node,
                ))
                .with_child(form_field(
                    "pubsub#subscriber_jid",
                    "jid-single",
                    Some("Subscriber Address"),
                    &subscriber.to_string(),
                ))
                .with_child(form_field(
                    "pubsub#allow",
                    "boolean",
                    Some("Allow this JID to subscribe to this pubsub node?"),
                    "false",
                )),
        )
}

/// `<subscription node jid subscription/>` in `namespace`: the state of a
/// subscription (`none` for `None`), as an IQ result or a notification carries it.
pub(crate) fn subscription_element(
    namespace: &str,
    node: &str,
    jid: &Jid,
    state: Option<PepSubscriptionState>,
) -> Element {
    Element::new("subscription", namespace)
        .with_attr("node", node)
        .with_attr("jid", jid.to_string())
        .with_attr(
            "subscription",
            state.map_or("none", PepSubscriptionState::as_str),
        )
}

/// The notification of a subscription's new state to the subscriber
/// (XEP-0060 sections 8.6 and 8.8.4).
pub(crate) fn subscription_notice(
    owner: &BareJid,
    node: &str,
    jid: &Jid,
    state: Option<PepSubscriptionState>,
) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", owner.to_string())
        .with_attr("to", jid.to_string())
        .with_attr("id", new_id())
        .with_child(
            Element::new("pubsub", ns::PUBSUB).with_child(subscription_element(
                ns::PUBSUB,
                node,
                jid,
                state,
            )),
        )
}

impl SessionRouter {
    /// Route a message the PEP service of an account generated (an
    /// approval request or a subscription notice) like any server stanza:
    /// to the available resources, or offline storage.
    async fn send_pep_message(&self, message: Element) {
        // Boxed: routing a message may come back here (an owner's answer).
        if let Err(error) = Box::pin(self.send_reply(&Origin::Server, message, None)).await {
            self.metrics.pep_notifications_failed();
            tracing::warn!(%error, "pep subscription message not routed");
        }
    }

    /// XEP-0060 section 6.1.4: a subscription to an `authorize` node is
    /// pending; the owner is asked (section 8.6).
    pub(crate) async fn request_pep_subscription_approval(
        &self,
        owner: &BareJid,
        node: &str,
        subscriber: &Jid,
    ) {
        self.send_pep_message(approval_request(owner, node, subscriber))
            .await;
    }

    /// After a subscription of `jid` to `node` went from `previous` to
    /// `now`: an approval (from pending) or a removal is notified to the
    /// subscriber (sections 8.6 and 8.8.4), and a new `subscribed` one gets
    /// the last published item (section 6.1.7, `on_sub` and
    /// `on_sub_and_presence`) on each available resource it names.
    pub(crate) async fn pep_subscription_changed(
        &self,
        owner: &BareJid,
        node: &PepNode,
        jid: &Jid,
        previous: Option<PepSubscriptionState>,
        now: Option<PepSubscriptionState>,
        notify: bool,
    ) {
        if previous == now {
            return;
        }
        if notify {
            self.send_pep_message(subscription_notice(owner, &node.name, jid, now))
                .await;
        }
        if now != Some(PepSubscriptionState::Subscribed)
            || jid.bare().domain() != self.config.domain
        {
            return;
        }
        let sessions = match self.registry.sessions(jid.bare()).await {
            Ok(sessions) => sessions,
            Err(error) => {
                tracing::warn!(owner = %owner, subscriber = %jid, %error, "sessions of a new pep subscriber unknown");
                return;
            }
        };
        let interests = [node.name.clone()];
        for session in sessions {
            let named = match jid {
                Jid::Bare(_) => true,
                Jid::Full(full) => *full == session.jid,
            };
            if !session.available || !named {
                continue;
            }
            if let Err(error) = self
                .send_last_items_of(
                    owner,
                    &session,
                    &interests,
                    LastItemTrigger::Subscription,
                    &mut HashSet::new(),
                )
                .await
            {
                tracing::warn!(owner = %owner, subscriber = %jid, %error, "the last published item to a new subscriber failed");
            }
        }
    }

    /// The owner's answer to an approval request (XEP-0060 section 8.6),
    /// sent by `owner_session` to its own PEP service; the error reply for
    /// the message, if any (`item-not-found` for no such node or no such
    /// pending subscription, `bad-request` for an incomplete form).
    pub(crate) async fn pep_authorization_answered(
        &self,
        routing: &Routing<'_>,
        owner_session: &FullJid,
        message: &Element,
        answer: AuthorizationAnswer,
    ) -> Option<Element> {
        let owner = owner_session.to_bare();
        let (node_name, subscriber, allow) = match answer {
            AuthorizationAnswer::Cancelled => return None,
            AuthorizationAnswer::Malformed(reason) => {
                tracing::debug!(owner = %owner, reason, "malformed pep approval form");
                return routing.bounce(message, StanzaErrorCondition::BadRequest);
            }
            AuthorizationAnswer::Decided {
                node,
                subscriber,
                allow,
            } => (node, subscriber, allow),
        };
        let node = match self.storage.pep_node(&owner, &node_name).await {
            Ok(Some(node)) => node,
            Ok(None) => return routing.bounce(message, StanzaErrorCondition::ItemNotFound),
            Err(error) => return routing.failure_reply(message, &error),
        };
        let pending = match self.storage.pep_subscriptions(&owner, &node_name).await {
            Ok(subscriptions) => subscriptions.iter().any(|subscription| {
                subscription.jid == subscriber
                    && subscription.state == PepSubscriptionState::Pending
            }),
            Err(error) => return routing.failure_reply(message, &error),
        };
        if !pending {
            tracing::debug!(owner = %owner, subscriber = %subscriber, "pep approval for no pending subscription");
            return routing.bounce(message, StanzaErrorCondition::ItemNotFound);
        }
        let now = allow.then_some(PepSubscriptionState::Subscribed);
        let previous = match self
            .storage
            .set_pep_subscription(
                &owner,
                &node_name,
                &subscriber,
                now,
                self.config.pep.max_subscriptions_per_node,
            )
            .await
        {
            Ok(previous) => previous,
            Err(error) => return routing.failure_reply(message, &error),
        };
        self.pep_subscription_changed(&owner, &node, &subscriber, previous, now, true)
            .await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::{parse_element, Limits};

    fn element(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Limits::default()).expect("test XML parses")
    }

    fn answer_form(kind: &str, fields: &str) -> String {
        format!(
            "<message xmlns='jabber:client' to='hamlet@denmark.lit'><x xmlns='jabber:x:data' type='{kind}'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_authorization</value></field>\
             {fields}</x></message>"
        )
    }

    #[test]
    fn an_owner_submitting_the_form_to_its_bare_jid_decides() {
        let hamlet: FullJid = "hamlet@denmark.lit/elsinore".parse().unwrap();
        let submitted = element(&answer_form(
            "submit",
            "<field var='pubsub#node'><value>princely_musings</value></field>\
             <field var='pubsub#subscriber_jid'><value>horatio@denmark.lit</value></field>\
             <field var='pubsub#allow'><value>true</value></field>",
        ));
        assert_eq!(
            authorization_answer(&hamlet, &submitted),
            Some(AuthorizationAnswer::Decided {
                node: "princely_musings".into(),
                subscriber: "horatio@denmark.lit".parse().unwrap(),
                allow: true,
            })
        );
        let cancelled = element(&answer_form("cancel", ""));
        assert_eq!(
            authorization_answer(&hamlet, &cancelled),
            Some(AuthorizationAnswer::Cancelled)
        );
        let no_allow = element(&answer_form(
            "submit",
            "<field var='pubsub#node'><value>n</value></field>\
             <field var='pubsub#subscriber_jid'><value>horatio@denmark.lit</value></field>",
        ));
        assert!(matches!(
            authorization_answer(&hamlet, &no_allow),
            Some(AuthorizationAnswer::Malformed(_))
        ));
        // Another account's bare JID, or the request form itself: no answer.
        let ophelia: FullJid = "ophelia@denmark.lit/garden".parse().unwrap();
        assert_eq!(authorization_answer(&ophelia, &submitted), None);
        assert_eq!(
            authorization_answer(&hamlet, &element(&answer_form("form", ""))),
            None
        );
    }

    #[test]
    fn the_approval_request_and_the_notice_are_those_of_section_8_6() {
        let hamlet: BareJid = "hamlet@denmark.lit".parse().unwrap();
        let horatio: Jid = "horatio@denmark.lit".parse().unwrap();
        let request = approval_request(&hamlet, "princely_musings", &horatio).to_xml();
        assert!(request.starts_with("<message xmlns='jabber:client' from='hamlet@denmark.lit' to='hamlet@denmark.lit' id='"), "{request}");
        assert!(request.contains("<field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_authorization</value></field><field var='pubsub#node' type='text-single' label='Node ID'><value>princely_musings</value></field><field var='pubsub#subscriber_jid' type='jid-single' label='Subscriber Address'><value>horatio@denmark.lit</value></field><field var='pubsub#allow' type='boolean' label='Allow this JID to subscribe to this pubsub node?'><value>false</value></field>"), "{request}");
        // The request answered: the form it carries, submitted, decides.
        let notice = subscription_notice(
            &hamlet,
            "princely_musings",
            &horatio,
            Some(PepSubscriptionState::Subscribed),
        )
        .to_xml();
        assert!(notice.ends_with("<pubsub xmlns='http://jabber.org/protocol/pubsub'><subscription node='princely_musings' jid='horatio@denmark.lit' subscription='subscribed'/></pubsub></message>"), "{notice}");
        let denied = subscription_notice(&hamlet, "n", &horatio, None).to_xml();
        assert!(denied.contains("subscription='none'"), "{denied}");
    }
}
