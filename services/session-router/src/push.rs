//! Push notifications, XEP-0357 section 7: when a message worth notifying
//! reaches an account none of whose clients is connected (it was stored
//! offline, XEP-0160, or parked for a detached stream-management session,
//! XEP-0198), the server publishes a `<notification/>` to every app server
//! the account enabled (`handlers/push.rs`), from the account's bare JID.
//!
//! - **What is sent.** The `urn:xmpp:push:summary` form: `message-count`
//!   (the messages this router saw for the registration since its last
//!   notification, this one included), `last-message-sender`, and
//!   `last-message-body` only with `push.include_body` (section 12: bodies
//!   go through third parties; the operator decides, never the client in
//!   band). The publish options the client gave are sent back as given.
//! - **Which messages.** Chat and normal messages with a body (section 12
//!   asks to limit what leaves the server: receipts, markers and chat states
//!   alone wake no device); groupchat, headlines and errors never.
//! - **Rate.** At most one notification per registration every
//!   `push.min_interval_secs`; the ones in between are counted as
//!   `throttled` and folded into the next `message-count`. The window is
//!   kept per router replica (in memory): in a cluster with N routers a
//!   registration gets at most N notifications per window.
//! - **Errors (section 7.1).** An IQ error from the app server disables the
//!   (JID, node) pair, unless its type is `wait` (transient, section 7.1
//!   allows keeping it). A notification that cannot be routed (the
//!   component is not connected; no server-to-server yet for other
//!   domains) keeps the registration: nothing answered it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use starling_api::Origin;
use starling_jid::{BareJid, Jid};
use starling_xmpp::xep::push::{notification_publish, Enable, Summary};
use starling_xmpp::{ns, stanza, Element, MessageType};

use crate::handlers::push::{load_registrations, remove_registrations};
use crate::router::{Routing, SessionRouter};

/// The push settings of a router (`push.*`); `None` in the config: off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSettings {
    /// `push.include_body`: send `last-message-body`.
    pub include_body: bool,
    /// `push.min_interval_secs`: the least time between two notifications
    /// to one registration (zero: every message).
    pub min_interval: Duration,
}

/// The id prefix of the server's notification IQs; the node follows, so
/// that an error names the registration it is about.
const ID_PREFIX: &str = "push-";

/// Past this many remembered registrations, those whose window ended are
/// forgotten (they would not throttle anything).
const MAX_REMEMBERED: usize = 100_000;

/// What became of one notification (the `outcome` label of
/// `starling_push_notifications_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    /// Routed to the app server.
    Sent,
    /// Within `push.min_interval_secs` of the previous one: not sent.
    Throttled,
    /// No route to the app server (component not connected, remote domain).
    Unreachable,
    /// The app server answered with an error: the registration was disabled.
    Rejected,
    /// The registrations could not be read (storage failed).
    Failed,
}

impl PushOutcome {
    pub(crate) const ALL: [PushOutcome; 5] = [
        PushOutcome::Sent,
        PushOutcome::Throttled,
        PushOutcome::Unreachable,
        PushOutcome::Rejected,
        PushOutcome::Failed,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            PushOutcome::Sent => "sent",
            PushOutcome::Throttled => "throttled",
            PushOutcome::Unreachable => "unreachable",
            PushOutcome::Rejected => "rejected",
            PushOutcome::Failed => "failed",
        }
    }
}

/// The notification windows of this router: per (account, JID, node), when
/// the last notification went and how many messages came since.
#[derive(Default)]
pub(crate) struct PushWindows {
    windows: Mutex<HashMap<(String, String, String), Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    last_sent: Instant,
    pending: u32,
}

impl PushWindows {
    /// Count one message for the registration; `Some(count)` when a
    /// notification goes now (the messages it summarises), `None` when it
    /// is throttled.
    fn admit(
        &self,
        key: (String, String, String),
        now: Instant,
        min_interval: Duration,
    ) -> Option<u32> {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= MAX_REMEMBERED {
            windows.retain(|_, window| now.duration_since(window.last_sent) < min_interval);
        }
        match windows.get_mut(&key) {
            Some(window) if now.duration_since(window.last_sent) < min_interval => {
                window.pending = window.pending.saturating_add(1);
                None
            }
            Some(window) => {
                let count = window.pending.saturating_add(1);
                *window = Window {
                    last_sent: now,
                    pending: 0,
                };
                Some(count)
            }
            None => {
                if !min_interval.is_zero() {
                    windows.insert(
                        key,
                        Window {
                            last_sent: now,
                            pending: 0,
                        },
                    );
                }
                Some(1)
            }
        }
    }

    /// Forget a registration (disabled by an error).
    fn forget(&self, key: &(String, String, String)) {
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

/// Whether a message warrants a notification: a chat or normal message
/// with a non-empty body (see the module's documentation).
pub(crate) fn warrants_notification(message: &Element) -> bool {
    matches!(
        MessageType::from_attr(stanza::stanza_type(message)),
        MessageType::Chat | MessageType::Normal
    ) && message
        .children()
        .any(|child| child.is("body", ns::CLIENT) && !child.text().trim().is_empty())
}

/// The notification IQ (section 7) from `account` to the registration's app server.
pub(crate) fn notification_iq(
    account: &BareJid,
    registration: &Enable,
    summary: &Summary,
) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("from", account.to_string())
        .with_attr("to", registration.jid.clone())
        .with_attr(
            "id",
            format!(
                "{ID_PREFIX}{:016x}-{}",
                rand::random::<u64>(),
                registration.node
            ),
        )
        .with_child(notification_publish(
            &registration.node,
            summary,
            registration.publish_options.as_ref(),
        ))
}

/// The node a notification IQ's answer is about, read from its id.
fn answered_node(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(ID_PREFIX)?;
    let (random, node) = rest.split_once('-')?;
    (random.len() == 16 && !node.is_empty()).then_some(node)
}

/// Whether an IQ result or error answers one of the server's notifications.
pub(crate) fn is_push_answer(iq: &Element) -> bool {
    iq.attr("id").and_then(answered_node).is_some()
}

/// The summary of `message` for a notification counting `count` messages.
fn summary_of(message: &Element, count: u32, include_body: bool) -> Summary {
    let body = include_body
        .then(|| {
            message
                .children()
                .find(|child| child.is("body", ns::CLIENT))
                .map(Element::text)
        })
        .flatten();
    Summary {
        message_count: count,
        last_message_sender: message.attr("from").map(str::to_string),
        last_message_body: body,
    }
}

impl SessionRouter {
    /// A message for `account` was stored offline or parked for a detached
    /// stream: notify the account's app servers, if it warrants it.
    pub(crate) async fn notify_push(&self, account: &BareJid, message: &Element) {
        let Some(settings) = &self.config.push else {
            return;
        };
        if !warrants_notification(message) {
            return;
        }
        // An account without registrations costs no database read.
        match self.has_push_registrations(account).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(user = %account, %error, "push registrations could not be read");
                self.metrics.count_push(PushOutcome::Failed);
                return;
            }
        }
        let registrations = match load_registrations(self, account).await {
            Ok(registrations) => registrations,
            Err(error) => {
                tracing::warn!(user = %account, %error, "push registrations could not be read");
                self.metrics.count_push(PushOutcome::Failed);
                return;
            }
        };
        let now = Instant::now();
        for registration in &registrations {
            let key = (
                account.to_string(),
                registration.jid.clone(),
                registration.node.clone(),
            );
            let Some(count) = self.push_windows.admit(key, now, settings.min_interval) else {
                self.metrics.count_push(PushOutcome::Throttled);
                continue;
            };
            let summary = summary_of(message, count, settings.include_body);
            let iq = notification_iq(account, registration, &summary);
            let outcome = self.send_notification(iq, &registration.jid).await;
            tracing::debug!(user = %account, service = %registration.jid, outcome = outcome.label(), "push notification");
            self.metrics.count_push(outcome);
        }
    }

    /// Route a notification to its app server: a component of this
    /// deployment (XEP-0114), or a server of another domain over a
    /// server-to-server stream (when `s2s.*` lets the domain be reached).
    async fn send_notification(&self, iq: Element, service: &str) -> PushOutcome {
        let Ok(to) = service.parse::<Jid>() else {
            return PushOutcome::Unreachable;
        };
        if to.domain() == self.config.domain {
            return PushOutcome::Unreachable;
        }
        let routing = Routing::new(&Origin::Server, None);
        match self.route_to_other_domain(&routing, iq, &to).await {
            None => PushOutcome::Sent,
            Some(_) => PushOutcome::Unreachable,
        }
    }

    /// The app server answered a notification sent on behalf of `account`:
    /// an error disables the registration (section 7.1) unless it is of
    /// type `wait`; a result needs nothing.
    pub(crate) async fn push_answer(&self, account: &BareJid, iq: &Element) {
        if stanza::stanza_type(iq) != "error" {
            return;
        }
        let (Some(node), Some(from)) = (iq.attr("id").and_then(answered_node), iq.attr("from"))
        else {
            return;
        };
        let error_type = iq
            .get_child("error", ns::CLIENT)
            .and_then(|error| error.attr("type"))
            .unwrap_or("cancel");
        if error_type == "wait" {
            tracing::debug!(user = %account, service = from, "push notification refused for now, registration kept");
            return;
        }
        let Ok(service) = from.parse::<Jid>().map(|jid| jid.to_string()) else {
            return;
        };
        match remove_registrations(self, account, &service, Some(node)).await {
            Ok(0) => {}
            Ok(_) => {
                tracing::info!(user = %account, %service, error_type, "app server refused a push notification, registration disabled");
                self.push_windows
                    .forget(&(account.to_string(), service, node.to_string()));
                self.metrics.count_push(PushOutcome::Rejected);
            }
            Err(error) => {
                tracing::warn!(user = %account, %service, %error, "a refused push registration could not be removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::parse_element;

    fn parse(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Default::default()).expect("test xml parses")
    }

    #[test]
    fn only_chat_and_normal_messages_with_a_body_warrant_a_notification() {
        assert!(warrants_notification(&parse(
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>"
        )));
        assert!(warrants_notification(&parse(
            "<message xmlns='jabber:client'><body>hi</body></message>"
        )));
        for xml in [
            "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>",
            "<message xmlns='jabber:client' type='chat'><body> </body></message>",
            "<message xmlns='jabber:client' type='headline'><body>news</body></message>",
            "<message xmlns='jabber:client' type='groupchat'><body>all</body></message>",
            "<message xmlns='jabber:client' type='error'><body>no</body></message>",
        ] {
            assert!(!warrants_notification(&parse(xml)), "{xml}");
        }
    }

    #[test]
    fn the_notification_iq_carries_the_summary_without_the_body_by_default() {
        let account: BareJid = "romeo@montague.example".parse().unwrap();
        let registration = Enable {
            jid: "push.montague.example".into(),
            node: "n-1".into(),
            publish_options: None,
        };
        let message = parse(
            "<message xmlns='jabber:client' from='juliet@capulet.example/balcony' type='chat'><body>Wherefore?</body></message>",
        );
        let iq = notification_iq(&account, &registration, &summary_of(&message, 2, false));
        let id = iq.attr("id").unwrap().to_string();
        assert_eq!(answered_node(&id), Some("n-1"));
        assert!(is_push_answer(&iq));
        assert_eq!(
            iq.to_xml(),
            format!("<iq xmlns='jabber:client' type='set' from='romeo@montague.example' to='push.montague.example' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n-1'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field><field var='message-count'><value>2</value></field><field var='last-message-sender'><value>juliet@capulet.example/balcony</value></field></x></notification></item></publish></pubsub></iq>")
        );
        let with_body = summary_of(&message, 1, true);
        assert_eq!(with_body.last_message_body.as_deref(), Some("Wherefore?"));
    }

    #[test]
    fn windows_throttle_and_fold_the_count_into_the_next_notification() {
        let windows = PushWindows::default();
        let key = || ("a@x".to_string(), "push.x".to_string(), "n".to_string());
        let start = Instant::now();
        let interval = Duration::from_secs(10);
        assert_eq!(windows.admit(key(), start, interval), Some(1));
        assert_eq!(
            windows.admit(key(), start + Duration::from_secs(1), interval),
            None
        );
        assert_eq!(
            windows.admit(key(), start + Duration::from_secs(2), interval),
            None
        );
        assert_eq!(
            windows.admit(key(), start + Duration::from_secs(11), interval),
            Some(3)
        );
        // Without an interval every message is notified and nothing is kept.
        let unthrottled = PushWindows::default();
        assert_eq!(unthrottled.admit(key(), start, Duration::ZERO), Some(1));
        assert_eq!(unthrottled.admit(key(), start, Duration::ZERO), Some(1));
        assert!(unthrottled.windows.lock().unwrap().is_empty());
    }

    #[test]
    fn answers_are_recognised_by_their_id() {
        assert_eq!(
            answered_node("push-0123456789abcdef-node-x"),
            Some("node-x")
        );
        assert_eq!(answered_node("push-short-node"), None);
        assert_eq!(answered_node("caps-0123456789abcdef-ver"), None);
    }
}
