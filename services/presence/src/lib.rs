//! The presence service: rosters, the subscription state machine and presence broadcast (RFC 6121 sections 2-4).
//!
//! `starling serve` builds it with [`PresenceService::new`] and hands it to the
//! router and connection-managers as a [`PresenceApi`].
//!
//! - [`roster`]: roster get/set/remove, versioning and pushes (RFC 6121 section 2);
//! - [`subscription`]: the state tables of RFC 6121 Appendix A, and
//!   `subscription_flow` the outbound and inbound processing of section 3;
//! - `presence_broadcast`: initial, subsequent, unavailable and directed presence,
//!   probes and offline delivery at login (RFC 6121 section 4, XEP-0160);
//! - delivery to sessions goes through `starling_bus::deliver_to_sessions`:
//!   one bus envelope per node (DESIGN.md "Fan-out cost").
//!
//! Every stanza for a local session goes out through the bus; the router is
//! called only for remote domains (`Origin::Server`) and for stanzas a gone
//! session could not take (`undeliverable`), never for local presence, which
//! it would hand back to this service.

#![forbid(unsafe_code)]

pub mod error;
mod locks;
mod presence_broadcast;
pub mod roster;
pub mod subscription;
mod subscription_flow;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use starling_api::{
    ApiResult, Origin, PresenceApi, RosterItem, RouterApi, SessionAddr, SessionRecord,
    SessionRegistry, StorageApi,
};
use starling_bus::{deliver_to_sessions, BlockDirection, BlockingMetrics, Blocklists, Bus};
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{ns, parse_element, Element, Limits, ParseError};

use crate::locks::UserLocks;
use crate::roster::roster_item_element;

pub use crate::error::PresenceError;

/// The presence service's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConfig {
    /// The domain whose users this server hosts; contacts on any other domain are remote.
    pub domain: String,
    /// The limits a stanza the server kept as text (the offline queue, a
    /// session's last presence, a pending subscription request) is parsed
    /// under: the stream limits' `Limits::for_server_copies`, so that what
    /// the edge accepted always parses again.
    pub stored_stanza_limits: Limits,
    /// Addressees of directed presence (RFC 6121 section 4.6) one session
    /// may have outstanding (`limits.max_directed_presences`); past it a
    /// directed presence to a new addressee is refused with `policy-violation`.
    pub max_directed_presences: usize,
}

/// Rosters, subscriptions and presence for the users of one domain.
pub struct PresenceService {
    domain: String,
    registry: Arc<dyn SessionRegistry>,
    bus: Arc<dyn Bus>,
    storage: Arc<dyn StorageApi>,
    router: Arc<dyn RouterApi>,
    user_locks: UserLocks,
    /// The block lists (XEP-0191) presence is checked against.
    blocklists: Arc<Blocklists>,
    stored_stanza_limits: Limits,
    max_directed_presences: usize,
}

/// A session to deliver to, with the `to` its recipient sees.
type DeliveryTarget = (SessionRecord, Option<String>);

/// A boxed future, for the mutually recursive presence paths (a stanza
/// generated while processing one may itself need local processing).
type PresenceFuture<'a> = Pin<Box<dyn Future<Output = ApiResult<()>> + Send + 'a>>;

impl PresenceService {
    pub fn new(
        config: PresenceConfig,
        registry: Arc<dyn SessionRegistry>,
        bus: Arc<dyn Bus>,
        storage: Arc<dyn StorageApi>,
        router: Arc<dyn RouterApi>,
    ) -> Self {
        // Compare domains in their normalised form (RFC 7622 section 3.2).
        let domain = BareJid::domain_jid(&config.domain)
            .map(|jid| jid.domain().to_string())
            .unwrap_or_else(|_| config.domain.to_lowercase());
        let blocklists = Blocklists::in_process(storage.clone(), BlockingMetrics::default());
        PresenceService {
            domain,
            registry,
            bus,
            storage,
            router,
            user_locks: UserLocks::default(),
            blocklists,
            stored_stanza_limits: config.stored_stanza_limits,
            max_directed_presences: config.max_directed_presences,
        }
    }

    /// Check presence against `blocklists` (XEP-0191), the cache shared with
    /// the router of the process (invalidated over Redis in the cluster); by
    /// default a cache of this service's own.
    pub fn with_blocklists(mut self, blocklists: Arc<Blocklists>) -> Self {
        self.blocklists = blocklists;
        self
    }

    /// One call into the service, for a stanza that entered the cluster at `routed_at`.
    fn call(&self, routed_at: Option<SystemTime>) -> Call<'_> {
        Call {
            domain: &self.domain,
            registry: self.registry.as_ref(),
            bus: self.bus.as_ref(),
            storage: self.storage.as_ref(),
            router: self.router.as_ref(),
            user_locks: &self.user_locks,
            blocklists: &self.blocklists,
            stored_stanza_limits: &self.stored_stanza_limits,
            max_directed_presences: self.max_directed_presences,
            routed_at,
        }
    }
}

/// One call into the presence service: what it works with, and when the
/// stanza that caused it entered the cluster (the sending connection-manager's
/// clock, `starling_api::origin_time`), which every delivery of the call
/// carries for the end-to-end latency; `None` when no client stanza caused it
/// (a session that ended). The rules of RFC 6121 sections 2-4 are its methods.
pub(crate) struct Call<'a> {
    domain: &'a str,
    registry: &'a dyn SessionRegistry,
    bus: &'a dyn Bus,
    storage: &'a dyn StorageApi,
    router: &'a dyn RouterApi,
    user_locks: &'a UserLocks,
    blocklists: &'a Blocklists,
    stored_stanza_limits: &'a Limits,
    max_directed_presences: usize,
    routed_at: Option<SystemTime>,
}

impl Call<'_> {
    fn is_local_domain(&self, domain: &str) -> bool {
        domain == self.domain
    }

    /// Whether the block lists (XEP-0191 section 3.3) stop presence from
    /// `from` to `to`: `to`'s account blocked `from` (inbound: "the server
    /// MUST NOT respond and MUST NOT return an error"), or `from`'s account
    /// blocked `to` (the server sends nothing to a blocked entity on the
    /// user's behalf). A stopped stanza is counted. A list that cannot be
    /// read stops nothing (logged): presence is never answered with an error.
    async fn presence_blocked(&self, from: &Jid, to: &Jid) -> bool {
        if from.bare() == to.bare() {
            return false;
        }
        for (account, other, direction) in [
            (to, from, BlockDirection::Inbound),
            (from, to, BlockDirection::Outbound),
        ] {
            if account.node().is_none() || !self.is_local_domain(account.domain()) {
                continue;
            }
            match self.blocklists.blocks(account.bare(), other).await {
                Ok(true) => {
                    self.blocklists.count_stopped(direction, "presence", false);
                    tracing::debug!(from = %from, to = %to, ?direction, "presence stopped by a block list");
                    return true;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(account = %account, %error, "block list not read, presence not checked");
                }
            }
        }
        false
    }

    /// A stored stanza, parsed; one that does not parse is logged and skipped
    /// (its sender is answered where there is one: the offline queue).
    fn parse_stored(&self, xml: &str) -> Option<Element> {
        parse_stored_stanza(xml, self.stored_stanza_limits)
            .inspect_err(|error| tracing::warn!(error = %error, "stored stanza does not parse"))
            .ok()
    }

    /// Publish one stanza to sessions, one envelope per node; each target
    /// carries the `to` its recipient sees (`None` keeps the stanza's own).
    /// Returns the sessions whose node could not be reached.
    async fn deliver(&self, stanza: Element, targets: &[DeliveryTarget]) -> Vec<SessionRecord> {
        if targets.is_empty() {
            return Vec::new();
        }
        deliver_to_sessions(self.bus, Arc::new(stanza), targets, self.routed_at).await
    }

    /// Answer the session that sent a request.
    async fn reply_to_session(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        mut reply: Element,
    ) -> ApiResult<()> {
        reply.set_attr("to", from.to_string());
        let session = SessionRecord::new(from.clone(), addr.clone());
        if !self.deliver(reply, &[(session, None)]).await.is_empty() {
            tracing::debug!(jid = %from, "reply not delivered: the session's node is gone");
        }
        Ok(())
    }

    /// The user's sessions that sent initial presence and are still
    /// available (RFC 6121 section 4.2), in full JID order.
    async fn available_sessions(&self, user: &BareJid) -> ApiResult<Vec<SessionRecord>> {
        let mut sessions = self.sessions_in_order(user).await?;
        sessions.retain(|record| record.available);
        Ok(sessions)
    }

    /// The user's sessions in full JID order, so that deliveries are deterministic.
    async fn sessions_in_order(&self, user: &BareJid) -> ApiResult<Vec<SessionRecord>> {
        let mut sessions = self.registry.sessions(user).await?;
        sessions.sort_by(|left, right| left.jid.cmp(&right.jid));
        Ok(sessions)
    }

    /// Hand a presence stanza to a remote domain through the router. A failure
    /// is logged, not returned, so that one unreachable domain does not stop a broadcast.
    async fn route_remote(&self, stanza: Element) {
        let to = stanza.attr("to").unwrap_or_default().to_string();
        if let Err(error) = self
            .router
            .route(Origin::Server, stanza, self.routed_at)
            .await
        {
            tracing::warn!(to = %to, error = %error, "routing presence to a remote domain failed");
        }
    }

    /// Send a server-generated presence stanza to its `to`: local users get
    /// the inbound processing of RFC 6121 sections 3 and 4 here; other
    /// domains go through the router.
    fn send_presence(&self, stanza: Element) -> PresenceFuture<'_> {
        Box::pin(async move {
            let Some(to) = stanza.attr("to").and_then(|to| to.parse::<Jid>().ok()) else {
                tracing::warn!("server-generated presence without a valid to dropped");
                return Ok(());
            };
            if self.is_local_domain(to.domain()) {
                self.process_inbound_presence(stanza).await
            } else {
                self.route_remote(stanza).await;
                Ok(())
            }
        })
    }

    /// Store a changed roster item and push it when the change is visible
    /// (RFC 6121 section 2.1.6). A placeholder left with no state is deleted;
    /// placeholders are never pushed (section 3.1.3).
    async fn store_item_change(
        &self,
        user: &BareJid,
        before: Option<&RosterItem>,
        after: RosterItem,
    ) -> ApiResult<()> {
        if before == Some(&after) {
            return Ok(());
        }
        let nothing_left = !after.in_roster
            && after.subscription == starling_api::Subscription::None
            && !after.pending_in
            && !after.pending_out;
        if nothing_left {
            if before.is_some() {
                self.storage.remove_roster_item(user, &after.jid).await?;
            }
            return Ok(());
        }
        let version = self.storage.put_roster_item(user, &after).await?;
        let visible_change = before.is_none_or(|before| {
            !before.in_roster || roster_item_element(before) != roster_item_element(&after)
        });
        if after.in_roster && visible_change {
            self.push_roster_change(user, version, roster_item_element(&after))
                .await?;
        }
        Ok(())
    }
}

/// Parse a stanza kept as text (`pres:{full}`, the offline queue, a pending
/// subscription request) under `limits`; stanzas serialised without a
/// namespace declaration are put back in `jabber:client`.
fn parse_stored_stanza(xml: &str, limits: &Limits) -> Result<Element, ParseError> {
    let mut element = parse_element(xml.as_bytes(), limits)?;
    if element.namespace().is_empty() {
        element.set_namespace_deep(ns::CLIENT);
    }
    Ok(element)
}

// One span per operation, the same in one process and behind gRPC.
#[async_trait]
impl PresenceApi for PresenceService {
    #[tracing::instrument(target = "starling_trace", name = "presence.outbound_presence", skip_all, fields(stanza.type = stanza.attr("type")))]
    async fn outbound_presence(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        self.call(routed_at)
            .process_outbound_presence(from, addr, stanza)
            .await
    }

    #[tracing::instrument(target = "starling_trace", name = "presence.inbound_presence", skip_all, fields(stanza.type = stanza.attr("type")))]
    async fn inbound_presence(
        &self,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        self.call(routed_at).process_inbound_presence(stanza).await
    }

    /// Every get or set is answered to the session here, with the result or
    /// the error of RFC 6121 section 2; `Err` means even that answer failed.
    #[tracing::instrument(target = "starling_trace", name = "presence.roster_iq", skip_all, fields(stanza.type = stanza.attr("type")))]
    async fn roster_iq(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        self.call(routed_at)
            .handle_roster_iq(from, addr, stanza)
            .await
    }

    #[tracing::instrument(target = "starling_trace", name = "presence.session_ended", skip_all)]
    async fn session_ended(&self, jid: &FullJid, was_available: bool) -> ApiResult<()> {
        self.call(None)
            .process_session_ended(jid, was_available)
            .await
    }
}
