//! The presence subscription state machine of RFC 6121 Appendix A: the nine
//! states (A.1) and the transitions for outbound (A.2) and inbound (A.3)
//! subscription stanzas, as pure functions over a roster item's
//! `subscription`, `pending_out` and `pending_in`.

use starling_api::{RosterItem, Subscription};

/// The four presence types that manage subscriptions (RFC 6121 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStanza {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubscriptionStanza {
    /// The subscription stanza named by a presence `type` attribute, if it is one.
    pub fn from_presence_type(presence_type: &str) -> Option<Self> {
        Some(match presence_type {
            "subscribe" => SubscriptionStanza::Subscribe,
            "subscribed" => SubscriptionStanza::Subscribed,
            "unsubscribe" => SubscriptionStanza::Unsubscribe,
            "unsubscribed" => SubscriptionStanza::Unsubscribed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStanza::Subscribe => "subscribe",
            SubscriptionStanza::Subscribed => "subscribed",
            SubscriptionStanza::Unsubscribe => "unsubscribe",
            SubscriptionStanza::Unsubscribed => "unsubscribed",
        }
    }
}

/// One of the nine subscription states of RFC 6121 Appendix A.1, as stored
/// on a roster item. `pending_out` is only meaningful without a "to"
/// subscription and `pending_in` only without a "from" one; the transitions
/// below keep it that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionState {
    pub subscription: Subscription,
    pub pending_out: bool,
    pub pending_in: bool,
}

/// What the user's or contact's server does with an inbound subscription
/// stanza besides changing the state (the "Deliver?" column of A.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundAction {
    /// Deliver the stanza to the local user (the state changed).
    Deliver,
    /// Do not deliver; the contact already has a subscription, so the server
    /// answers `subscribed` on the user's behalf (RFC 6121 section 3.1.3).
    AutoReplySubscribed,
    /// Neither deliver nor answer (no state change).
    Ignore,
}

fn with_to(subscription: Subscription) -> Subscription {
    match subscription {
        Subscription::None | Subscription::To => Subscription::To,
        Subscription::From | Subscription::Both => Subscription::Both,
    }
}

fn without_to(subscription: Subscription) -> Subscription {
    match subscription {
        Subscription::None | Subscription::To => Subscription::None,
        Subscription::From | Subscription::Both => Subscription::From,
    }
}

fn with_from(subscription: Subscription) -> Subscription {
    match subscription {
        Subscription::None | Subscription::From => Subscription::From,
        Subscription::To | Subscription::Both => Subscription::Both,
    }
}

fn without_from(subscription: Subscription) -> Subscription {
    match subscription {
        Subscription::None | Subscription::From => Subscription::None,
        Subscription::To | Subscription::Both => Subscription::To,
    }
}

impl SubscriptionState {
    pub const NONE: SubscriptionState = SubscriptionState {
        subscription: Subscription::None,
        pending_out: false,
        pending_in: false,
    };

    pub fn of(item: &RosterItem) -> Self {
        SubscriptionState {
            subscription: item.subscription,
            pending_out: item.pending_out && !item.subscription.has_to(),
            pending_in: item.pending_in && !item.subscription.has_from(),
        }
    }

    /// Write the state back onto a roster item; the stored inbound request
    /// is dropped once nothing is pending in any more.
    pub fn apply_to(self, item: &mut RosterItem) {
        item.subscription = self.subscription;
        item.pending_out = self.pending_out;
        item.pending_in = self.pending_in;
        if !self.pending_in {
            item.pending_in_stanza = None;
        }
    }

    /// RFC 6121 Appendix A.2: the user sends a subscription stanza to the
    /// contact. Returns the new state of the contact's item in the user's roster.
    pub fn outbound(self, stanza: SubscriptionStanza) -> SubscriptionState {
        let mut next = self;
        match stanza {
            // A.2.1: None -> None + Pending Out, None + Pending In -> None + Pending Out/In,
            // From -> From + Pending Out; every other state is unchanged.
            SubscriptionStanza::Subscribe => {
                if !self.subscription.has_to() {
                    next.pending_out = true;
                }
            }
            // A.2.2 (pre-approval not supported): only a pending inbound request
            // is approved: None + Pending In -> From, None + Pending Out/In ->
            // From + Pending Out, To + Pending In -> Both.
            SubscriptionStanza::Subscribed => {
                if self.pending_in {
                    next.pending_in = false;
                    next.subscription = with_from(self.subscription);
                }
            }
            // A.2.3: None + Pending Out -> None, None + Pending Out/In -> None + Pending In,
            // To -> None, To + Pending In -> None + Pending In, From + Pending Out -> From,
            // Both -> From.
            SubscriptionStanza::Unsubscribe => {
                next.pending_out = false;
                next.subscription = without_to(self.subscription);
            }
            // A.2.4: None + Pending In -> None, None + Pending Out/In -> None + Pending Out,
            // To + Pending In -> To, From -> None, From + Pending Out -> None + Pending Out,
            // Both -> To.
            SubscriptionStanza::Unsubscribed => {
                next.pending_in = false;
                next.subscription = without_from(self.subscription);
            }
        }
        next
    }

    /// RFC 6121 Appendix A.3: a subscription stanza from the contact reaches
    /// the user. Returns the new state of the contact's item in the user's
    /// roster and whether to deliver the stanza.
    pub fn inbound(self, stanza: SubscriptionStanza) -> (SubscriptionState, InboundAction) {
        let mut next = self;
        let action = match stanza {
            // A.3.1: the contact already receives the user's presence -> auto-reply
            // (section 3.1.3); a request already pending is not delivered again;
            // otherwise None -> None + Pending In, None + Pending Out -> None +
            // Pending Out/In, To -> To + Pending In, delivered.
            SubscriptionStanza::Subscribe => {
                if self.subscription.has_from() {
                    InboundAction::AutoReplySubscribed
                } else if self.pending_in {
                    InboundAction::Ignore
                } else {
                    next.pending_in = true;
                    InboundAction::Deliver
                }
            }
            // A.3.2: None + Pending In -> None, None + Pending Out/In -> None +
            // Pending Out, To + Pending In -> To, From -> None, From + Pending Out
            // -> None + Pending Out, Both -> To; delivered. Other states: ignored.
            SubscriptionStanza::Unsubscribe => {
                if self.pending_in || self.subscription.has_from() {
                    next.pending_in = false;
                    next.subscription = without_from(self.subscription);
                    InboundAction::Deliver
                } else {
                    InboundAction::Ignore
                }
            }
            // A.3.3: only an outstanding request is approved: None + Pending Out
            // -> To, None + Pending Out/In -> To + Pending In, From + Pending Out
            // -> Both; delivered. Other states: ignored.
            SubscriptionStanza::Subscribed => {
                if self.pending_out {
                    next.pending_out = false;
                    next.subscription = with_to(self.subscription);
                    InboundAction::Deliver
                } else {
                    InboundAction::Ignore
                }
            }
            // A.3.4: None + Pending Out -> None, None + Pending Out/In -> None +
            // Pending In, To -> None, To + Pending In -> None + Pending In, From +
            // Pending Out -> From, Both -> From; delivered. Other states: ignored.
            SubscriptionStanza::Unsubscribed => {
                if self.pending_out || self.subscription.has_to() {
                    next.pending_out = false;
                    next.subscription = without_to(self.subscription);
                    InboundAction::Deliver
                } else {
                    InboundAction::Ignore
                }
            }
        };
        (next, action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InboundAction::{AutoReplySubscribed as Auto, Deliver, Ignore};
    use SubscriptionStanza::*;

    /// The nine states of RFC 6121 Appendix A.1, by their names.
    fn state(name: &str) -> SubscriptionState {
        let (subscription, pending_out, pending_in) = match name {
            "None" => (Subscription::None, false, false),
            "None + Pending Out" => (Subscription::None, true, false),
            "None + Pending In" => (Subscription::None, false, true),
            "None + Pending Out/In" => (Subscription::None, true, true),
            "To" => (Subscription::To, false, false),
            "To + Pending In" => (Subscription::To, false, true),
            "From" => (Subscription::From, false, false),
            "From + Pending Out" => (Subscription::From, true, false),
            "Both" => (Subscription::Both, false, false),
            other => panic!("no state {other}"),
        };
        SubscriptionState {
            subscription,
            pending_out,
            pending_in,
        }
    }

    const STATES: [&str; 9] = [
        "None",
        "None + Pending Out",
        "None + Pending In",
        "None + Pending Out/In",
        "To",
        "To + Pending In",
        "From",
        "From + Pending Out",
        "Both",
    ];

    fn check_outbound(stanza: SubscriptionStanza, table: [&str; 9]) {
        for (before, after) in STATES.iter().zip(table) {
            assert_eq!(
                state(before).outbound(stanza),
                state(after),
                "outbound {stanza:?} from {before}"
            );
        }
    }

    fn check_inbound(stanza: SubscriptionStanza, table: [(InboundAction, &str); 9]) {
        for (before, (action, after)) in STATES.iter().zip(table) {
            assert_eq!(
                state(before).inbound(stanza),
                (state(after), action),
                "inbound {stanza:?} in {before}"
            );
        }
    }

    #[test]
    fn outbound_subscribe_table_a_2_1() {
        check_outbound(
            Subscribe,
            [
                "None + Pending Out",
                "None + Pending Out",
                "None + Pending Out/In",
                "None + Pending Out/In",
                "To",
                "To + Pending In",
                "From + Pending Out",
                "From + Pending Out",
                "Both",
            ],
        );
    }

    #[test]
    fn outbound_subscribed_table_a_2_2_without_pre_approval() {
        check_outbound(
            Subscribed,
            [
                "None",
                "None + Pending Out",
                "From",
                "From + Pending Out",
                "To",
                "Both",
                "From",
                "From + Pending Out",
                "Both",
            ],
        );
    }

    #[test]
    fn outbound_unsubscribe_table_a_2_3() {
        check_outbound(
            Unsubscribe,
            [
                "None",
                "None",
                "None + Pending In",
                "None + Pending In",
                "None",
                "None + Pending In",
                "From",
                "From",
                "From",
            ],
        );
    }

    #[test]
    fn outbound_unsubscribed_table_a_2_4() {
        check_outbound(
            Unsubscribed,
            [
                "None",
                "None + Pending Out",
                "None",
                "None + Pending Out",
                "To",
                "To",
                "None",
                "None + Pending Out",
                "To",
            ],
        );
    }

    #[test]
    fn inbound_subscribe_table_a_3_1() {
        check_inbound(
            Subscribe,
            [
                (Deliver, "None + Pending In"),
                (Deliver, "None + Pending Out/In"),
                (Ignore, "None + Pending In"),
                (Ignore, "None + Pending Out/In"),
                (Deliver, "To + Pending In"),
                (Ignore, "To + Pending In"),
                (Auto, "From"),
                (Auto, "From + Pending Out"),
                (Auto, "Both"),
            ],
        );
    }

    #[test]
    fn inbound_unsubscribe_table_a_3_2() {
        check_inbound(
            Unsubscribe,
            [
                (Ignore, "None"),
                (Ignore, "None + Pending Out"),
                (Deliver, "None"),
                (Deliver, "None + Pending Out"),
                (Ignore, "To"),
                (Deliver, "To"),
                (Deliver, "None"),
                (Deliver, "None + Pending Out"),
                (Deliver, "To"),
            ],
        );
    }

    #[test]
    fn inbound_subscribed_table_a_3_3() {
        check_inbound(
            Subscribed,
            [
                (Ignore, "None"),
                (Deliver, "To"),
                (Ignore, "None + Pending In"),
                (Deliver, "To + Pending In"),
                (Ignore, "To"),
                (Ignore, "To + Pending In"),
                (Ignore, "From"),
                (Deliver, "Both"),
                (Ignore, "Both"),
            ],
        );
    }

    #[test]
    fn inbound_unsubscribed_table_a_3_4() {
        check_inbound(
            Unsubscribed,
            [
                (Ignore, "None"),
                (Deliver, "None"),
                (Ignore, "None + Pending In"),
                (Deliver, "None + Pending In"),
                (Deliver, "None"),
                (Deliver, "None + Pending In"),
                (Ignore, "From"),
                (Deliver, "From"),
                (Deliver, "From"),
            ],
        );
    }

    #[test]
    fn stale_pending_flags_are_normalised_when_read() {
        let mut item = RosterItem::new("bob@example.com".parse().unwrap());
        item.subscription = Subscription::Both;
        item.pending_out = true;
        item.pending_in = true;
        assert_eq!(SubscriptionState::of(&item), state("Both"));
    }

    #[test]
    fn presence_types_round_trip() {
        for stanza in [Subscribe, Subscribed, Unsubscribe, Unsubscribed] {
            assert_eq!(
                SubscriptionStanza::from_presence_type(stanza.as_str()),
                Some(stanza)
            );
        }
        assert_eq!(SubscriptionStanza::from_presence_type("probe"), None);
    }
}
