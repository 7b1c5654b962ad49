//! The session-router's Prometheus metrics (docs/operations.md):
//! `starling_router_routed_total{kind,decision}`, one count per stanza that
//! `RouterApi::route` handled, and `starling_router_route_duration_seconds{kind}`,
//! from the router receiving the stanza until its last publish (or store) is done;
//! `starling_router_carbons_total{direction,outcome}`, one count per XEP-0280
//! copy made for one resource (`sent`/`received`; `delivered`, `unreached` when
//! its node had no subscriber, `failed` once per message whose copies could not
//! be computed).
//!
//! The decision is recorded where it is taken, deep in the routing rules,
//! into the [`RouteOutcome`] of the stanza, which each rule is given with the
//! stanza (`Routing`). Every label value comes from a fixed set.

use crate::push::PushOutcome;
use crate::upload::SlotOutcome;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use starling_xmpp::xep::carbons::Direction;
use starling_xmpp::StanzaKind;

/// Buckets from 100 microseconds to 5 seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What the router did with a stanza (the `decision` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Published to sessions that are all on the sender's own connection-manager.
    Local,
    /// Published to a session on another connection-manager (or the stanza
    /// came from the server itself, which has no node).
    Remote,
    /// Stored in the recipient's offline queue (XEP-0160).
    Offline,
    /// Handled by the server: answered by a server-side handler, consumed, or
    /// handed to the presence service.
    Server,
    /// Answered with a stanza error the RFCs prescribe (no such account,
    /// remote domain, offline queue full, ...).
    Bounced,
    /// Silently discarded as the RFCs prescribe (an error message to a bare
    /// JID, a headline or chat state nobody is online for, ...).
    Dropped,
    /// A dependency failed (Redis, storage, presence): the sender got a `wait`
    /// or `internal-server-error` error, or the call failed.
    Error,
}

impl Decision {
    const ALL: [Decision; 7] = [
        Decision::Local,
        Decision::Remote,
        Decision::Offline,
        Decision::Server,
        Decision::Bounced,
        Decision::Dropped,
        Decision::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Decision::Local => "local",
            Decision::Remote => "remote",
            Decision::Offline => "offline",
            Decision::Server => "server",
            Decision::Bounced => "bounced",
            Decision::Dropped => "dropped",
            Decision::Error => "error",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

const KINDS: [StanzaKind; 3] = [StanzaKind::Message, StanzaKind::Presence, StanzaKind::Iq];

fn kind_label(kind: StanzaKind) -> &'static str {
    match kind {
        StanzaKind::Message => "message",
        StanzaKind::Presence => "presence",
        StanzaKind::Iq => "iq",
    }
}

fn kind_index(kind: StanzaKind) -> usize {
    match kind {
        StanzaKind::Message => 0,
        StanzaKind::Presence => 1,
        StanzaKind::Iq => 2,
    }
}

/// The router's metrics; cheap to clone. [`RouterMetrics::default`] counts
/// into a registry nobody scrapes.
#[derive(Clone)]
pub struct RouterMetrics {
    routed: [[IntCounter; 7]; 3],
    duration: [Histogram; 3],
    /// Per direction (sent, received): delivered, unreached, failed.
    carbons: [[IntCounter; 3]; 2],
    /// PEP notifications (XEP-0163), one per resource: delivered, unreached, failed.
    pep_notifications: [IntCounter; 3],
    /// XEP-0115 disco#info queries: sent, verified, refused (hash mismatch or invalid).
    caps_queries: [IntCounter; 3],
    /// Archive entries (XEP-0313) by outcome, in [`ARCHIVE_OUTCOMES`] order.
    archive: [IntCounter; 5],
    /// XEP-0363 slot requests by outcome, in [`SlotOutcome::ALL`] order.
    upload_slots: [IntCounter; 6],
    /// XEP-0357 notifications by outcome, in [`PushOutcome::ALL`] order.
    push: [IntCounter; 5],
    /// XEP-0357 enable/disable requests: enabled, disabled, refused.
    push_registrations: [IntCounter; 3],
    /// XEP-0398 and XEP-0411 conversions by kind, direction and outcome.
    conversions: IntCounterVec,
    /// Stanzas to remote domains answered `remote-server-not-found` by the
    /// s2s policy (`s2s.enabled`, `s2s.allow`, `s2s.deny`).
    s2s_policy_refused: IntCounter,
}

const PUSH_REGISTRATION_EVENTS: [&str; 3] = ["enabled", "disabled", "refused"];

const PEP_OUTCOMES: [&str; 3] = ["delivered", "unreached", "failed"];
const CAPS_OUTCOMES: [&str; 3] = ["sent", "verified", "refused"];

/// What became of one XEP-0115 disco#info query (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapsOutcome {
    Sent,
    Verified,
    Refused,
}

/// What became of a message's archive entries: queued for the batched
/// writer, written by storage, lost because the write failed, not
/// archived because the preferences could not be read, or because the
/// message is over `mam.max_message_bytes`.
pub(crate) const ARCHIVE_OUTCOMES: [&str; 5] =
    ["queued", "written", "failed", "undecided", "too_large"];

const CARBON_DIRECTIONS: [Direction; 2] = [Direction::Sent, Direction::Received];
const CARBON_OUTCOMES: [&str; 3] = ["delivered", "unreached", "failed"];

fn direction_index(direction: Direction) -> usize {
    match direction {
        Direction::Sent => 0,
        Direction::Received => 1,
    }
}

impl std::fmt::Debug for RouterMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RouterMetrics")
            .finish_non_exhaustive()
    }
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl RouterMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let routed = IntCounterVec::new(
            Opts::new(
                "starling_router_routed_total",
                "Stanzas routed, by kind and routing decision (local, remote, offline, server, bounced, dropped, error)",
            ),
            &["kind", "decision"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "starling_router_route_duration_seconds",
                "Time the router spends on one stanza, from receiving it to its last bus publish or offline store, by kind",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let carbons = IntCounterVec::new(
            Opts::new(
                "starling_router_carbons_total",
                "XEP-0280 carbon copies, one per resource, by direction (sent, received) and outcome (delivered, unreached, failed)",
            ),
            &["direction", "outcome"],
        )?;
        registry.register(Box::new(routed.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let pep_notifications = IntCounterVec::new(
            Opts::new(
                "starling_router_pep_notifications_total",
                "PEP (XEP-0163) event notifications, one per resource, by outcome (delivered, unreached, failed)",
            ),
            &["outcome"],
        )?;
        let caps_queries = IntCounterVec::new(
            Opts::new(
                "starling_router_caps_queries_total",
                "XEP-0115 disco#info queries for unknown capabilities, by outcome (sent, verified, refused)",
            ),
            &["outcome"],
        )?;
        let archive = IntCounterVec::new(
            Opts::new(
                "starling_router_archive_total",
                "XEP-0313 archive entries (one per archive a message goes to), by outcome: queued for the batched writer, written, failed (the write failed after retries, entries lost), undecided (the preferences could not be read: not archived), too_large (a message over mam.max_message_bytes: delivered, not archived)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(carbons.clone()))?;
        registry.register(Box::new(pep_notifications.clone()))?;
        registry.register(Box::new(caps_queries.clone()))?;
        registry.register(Box::new(archive.clone()))?;
        let upload_slots = IntCounterVec::new(
            Opts::new(
                "starling_upload_slots_total",
                "XEP-0363 upload slot requests, by outcome: granted, too_large (over upload.max_file_bytes), quota (over upload.quota_bytes), not_allowed (not a local account), bad_request, failed (storage failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(upload_slots.clone()))?;
        let push = IntCounterVec::new(
            Opts::new(
                "starling_push_notifications_total",
                "XEP-0357 push notifications, one per app server registration, by outcome: sent, throttled (within push.min_interval_secs of the previous one), unreachable (no route to the app server), rejected (the app server answered an error: registration disabled), failed (the registrations could not be read)",
            ),
            &["outcome"],
        )?;
        let push_registrations = IntCounterVec::new(
            Opts::new(
                "starling_push_registrations_total",
                "XEP-0357 enable and disable requests, by event: enabled, disabled, refused (an error was answered)",
            ),
            &["event"],
        )?;
        registry.register(Box::new(push.clone()))?;
        registry.register(Box::new(push_registrations.clone()))?;
        let conversions = IntCounterVec::new(
            Opts::new(
                "starling_router_conversions_total",
                "Server-side conversions between two stores of one thing: conversion avatar (XEP-0398; direction pep_to_vcard, vcard_to_pep) or bookmarks (XEP-0411; direction pep_to_private, private_to_pep), by outcome: converted, removed (the avatar was disabled), unchanged, invalid (bad base64, a hash that does not match the id, no data item, not a bookmarks storage), too_large (over pep.max_item_bytes), not_private (the bookmarks node is readable by others: not converted), failed (storage failed)",
            ),
            &["conversion", "direction", "outcome"],
        )?;
        registry.register(Box::new(conversions.clone()))?;
        let s2s_policy_refused = IntCounter::new(
            "starling_s2s_policy_refused_total",
            "Stanzas to remote domains answered remote-server-not-found at once by the federation policy (s2s.enabled off, domain denied or not allowed)",
        )?;
        registry.register(Box::new(s2s_policy_refused.clone()))?;
        Ok(RouterMetrics {
            conversions,
            s2s_policy_refused,
            push: PushOutcome::ALL.map(|outcome| push.with_label_values(&[outcome.label()])),
            push_registrations: PUSH_REGISTRATION_EVENTS
                .map(|event| push_registrations.with_label_values(&[event])),
            upload_slots: SlotOutcome::ALL
                .map(|outcome| upload_slots.with_label_values(&[outcome.label()])),
            pep_notifications: PEP_OUTCOMES
                .map(|outcome| pep_notifications.with_label_values(&[outcome])),
            caps_queries: CAPS_OUTCOMES.map(|outcome| caps_queries.with_label_values(&[outcome])),
            archive: ARCHIVE_OUTCOMES.map(|outcome| archive.with_label_values(&[outcome])),
            routed: KINDS.map(|kind| {
                Decision::ALL
                    .map(|decision| routed.with_label_values(&[kind_label(kind), decision.label()]))
            }),
            duration: KINDS.map(|kind| duration.with_label_values(&[kind_label(kind)])),
            carbons: CARBON_DIRECTIONS.map(|direction| {
                CARBON_OUTCOMES
                    .map(|outcome| carbons.with_label_values(&[direction.element_name(), outcome]))
            }),
        })
    }

    pub(crate) fn count_upload_slot(&self, outcome: SlotOutcome) {
        let index = SlotOutcome::ALL
            .iter()
            .position(|candidate| *candidate == outcome)
            .unwrap_or(0);
        self.upload_slots[index].inc();
    }

    pub(crate) fn count_push(&self, outcome: PushOutcome) {
        let index = PushOutcome::ALL
            .iter()
            .position(|candidate| *candidate == outcome)
            .unwrap_or(0);
        self.push[index].inc();
    }

    /// One enable or disable request had `event` (one of enabled, disabled, refused).
    /// Count one conversion (`conversion`: `avatar` or `bookmarks`).
    pub(crate) fn count_conversion(&self, conversion: &str, direction: &str, outcome: &str) {
        self.conversions
            .with_label_values(&[conversion, direction, outcome])
            .inc();
    }

    pub(crate) fn count_push_registration(&self, event: &str) {
        if let Some(index) = PUSH_REGISTRATION_EVENTS
            .iter()
            .position(|known| *known == event)
        {
            self.push_registrations[index].inc();
        }
    }

    pub(crate) fn s2s_policy_refused(&self) {
        self.s2s_policy_refused.inc();
    }

    pub(crate) fn routed(&self, kind: StanzaKind, decision: Decision, elapsed: Duration) {
        self.routed[kind_index(kind)][decision.index()].inc();
        self.duration[kind_index(kind)].observe(elapsed.as_secs_f64());
    }

    /// Copies published to `delivered` resources; `unreached` more whose node
    /// had no subscriber (dropped: the original was delivered or stored).
    pub(crate) fn count_carbons(&self, direction: Direction, delivered: usize, unreached: usize) {
        let counters = &self.carbons[direction_index(direction)];
        counters[0].inc_by(delivered as u64);
        counters[1].inc_by(unreached as u64);
    }

    /// PEP notifications published to `delivered` resources; `unreached`
    /// more whose node had no subscriber (a notification is not stored:
    /// the item is, and is sent again on the next available presence).
    pub(crate) fn count_pep_notifications(&self, delivered: usize, unreached: usize) {
        self.pep_notifications[0].inc_by(delivered as u64);
        self.pep_notifications[1].inc_by(unreached as u64);
    }

    /// The notifications of one publish could not be computed (a dependency failed).
    pub(crate) fn pep_notifications_failed(&self) {
        self.pep_notifications[2].inc();
    }

    pub(crate) fn count_caps_query(&self, outcome: CapsOutcome) {
        let index = match outcome {
            CapsOutcome::Sent => 0,
            CapsOutcome::Verified => 1,
            CapsOutcome::Refused => 2,
        };
        self.caps_queries[index].inc();
    }

    /// `count` archive entries had `outcome` (one of [`ARCHIVE_OUTCOMES`]).
    pub(crate) fn count_archive(&self, outcome: &str, count: usize) {
        if let Some(index) = ARCHIVE_OUTCOMES.iter().position(|known| *known == outcome) {
            self.archive[index].inc_by(count as u64);
        }
    }

    /// The copies of one message could not be computed (the registry failed).
    pub(crate) fn carbons_failed(&self, direction: Direction) {
        self.carbons[direction_index(direction)][2].inc();
    }
}

/// The decision taken for the stanza `route` is handling, and the node it
/// came from. Each routing rule that decides records into the outcome it is
/// given (routing never spawns a task per stanza, see the crate docs); the
/// last record wins.
pub(crate) struct RouteOutcome {
    sender_node: Option<String>,
    /// 0 while nothing is recorded, else the decision's index plus one.
    decision: AtomicU8,
}

impl RouteOutcome {
    pub(crate) fn new(sender_node: Option<String>) -> Self {
        RouteOutcome {
            sender_node,
            decision: AtomicU8::new(0),
        }
    }

    /// The decision recorded last, if any.
    pub(crate) fn decision(&self) -> Option<Decision> {
        match self.decision.load(Ordering::Relaxed) {
            0 => None,
            recorded => Decision::ALL.get(usize::from(recorded) - 1).copied(),
        }
    }

    /// Record the decision for the stanza.
    pub(crate) fn record(&self, decision: Decision) {
        // The index of one of seven decisions always fits.
        let recorded = u8::try_from(decision.index() + 1).unwrap_or(u8::MAX);
        self.decision.store(recorded, Ordering::Relaxed);
    }

    /// Record a delivery that reached sessions on `nodes`: local when every
    /// one is the sender's node, remote otherwise.
    pub(crate) fn record_delivered<'a>(&self, mut nodes: impl Iterator<Item = &'a str>) {
        let local = match &self.sender_node {
            Some(sender) => nodes.all(|node| node == sender),
            None => false,
        };
        self.record(if local {
            Decision::Local
        } else {
            Decision::Remote
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_record_wins() {
        let outcome = RouteOutcome::new(Some("cm-1".into()));
        assert_eq!(outcome.decision(), None);
        outcome.record(Decision::Dropped);
        assert_eq!(outcome.decision(), Some(Decision::Dropped));
        outcome.record_delivered(["cm-1", "cm-1"].into_iter());
        assert_eq!(outcome.decision(), Some(Decision::Local));
        let outcome = RouteOutcome::new(Some("cm-1".into()));
        outcome.record_delivered(["cm-1", "cm-2"].into_iter());
        assert_eq!(outcome.decision(), Some(Decision::Remote));
        let outcome = RouteOutcome::new(None);
        outcome.record_delivered(["cm-1"].into_iter());
        assert_eq!(outcome.decision(), Some(Decision::Remote));
    }

    #[test]
    fn every_decision_is_read_back_as_recorded() {
        let outcome = RouteOutcome::new(None);
        for decision in Decision::ALL {
            outcome.record(decision);
            assert_eq!(outcome.decision(), Some(decision));
        }
    }
}
