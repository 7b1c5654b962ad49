//! The router itself: configuration, wiring, and the dispatch of each stanza
//! by kind (RFC 6120 section 8) to the message, presence and IQ rules.

use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use starling_api::{
    ApiError, ApiResult, BindError, FeatureSpec, Origin, PresenceApi, RouterApi, SessionAddr,
    SessionRecord, SessionRegistry, StorageApi,
};
use starling_bus::{deliver_to_session, BlockingMetrics, Blocklists, Bus};
use starling_jid::{normalize_domainpart, BareJid, FullJid, Jid};
use starling_xmpp::{
    stanza, Element, InvalidStanza, StanzaError, StanzaErrorCondition, StanzaKind,
};

use crate::address::{classify, Destination};
use crate::features::FeatureRegistry;
use crate::handlers::{iq_handlers, WITHOUT_IQ_HANDLER};
use crate::metrics::{Decision, RouteOutcome, RouterMetrics};

/// What the router needs to know about the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// The served domain (normalised).
    pub domain: String,
    /// How many resources one account may bind at once; binding past it fails
    /// with `resource-constraint` (RFC 6120 section 7.6.2.1). 0 means no limit.
    pub max_resources_per_user: usize,
    /// The software name answered to XEP-0092 queries, "Starling".
    pub server_name: String,
    /// The software version answered to XEP-0092 queries.
    pub server_version: String,
    /// Message Carbons (XEP-0280): answered, advertised and copied when on.
    pub carbons: bool,
    /// The most items one account's block list may hold (XEP-0191,
    /// `blocking.max_items`); a block request past it gets `policy-violation`.
    pub blocking_max_items: usize,
    /// The PEP limits (XEP-0163, `pep.*`).
    pub pep: crate::pep::PepSettings,
    /// Message Archive Management (XEP-0313, `mam.enabled`): one-to-one
    /// messages archived and stamped with a XEP-0359 stanza id, archive
    /// queries and preferences answered.
    pub mam: bool,
    /// The most messages one archive query returns (`mam.max_page_size`).
    pub mam_max_page_size: u32,
    /// The largest message archived, as sent on (`mam.max_message_bytes`).
    pub mam_max_message_bytes: usize,
    /// The limits archived messages are parsed under when a query returns
    /// them (`Limits::for_server_copies` of the configured limits).
    pub stored_stanza_limits: starling_xmpp::Limits,
    /// The HTTP File Upload service (XEP-0363, `upload.*`) the router
    /// answers at its domain and lists in the server's disco#items; `None`: off.
    pub upload: Option<crate::upload::UploadSettings>,
    /// The domains of the external components (XEP-0114, `[[components]]`,
    /// normalised): every address at one of them goes to its component's
    /// connection, or is answered `service-unavailable`. Set it alike on
    /// every router replica.
    pub components: Vec<String>,
    /// Push notifications (XEP-0357, `push.*`): enable/disable answered,
    /// `urn:xmpp:push:0` advertised on accounts, notifications sent; `None`: off.
    pub push: Option<crate::push::PushSettings>,
    /// Federation (RFC 6120 server-to-server, `s2s.*`): which remote
    /// domains stanzas may go to. Set it alike on every router replica.
    pub s2s: crate::remote::S2sPolicy,
}

/// One stanza being routed: who sent it, when it entered the cluster (the
/// sending connection-manager's clock, for the delivery latency; `None` for
/// what no client sent just now), and the decision taken for it (metrics).
pub(crate) struct Routing<'a> {
    pub(crate) origin: &'a Origin,
    pub(crate) routed_at: Option<SystemTime>,
    pub(crate) outcome: RouteOutcome,
}

impl<'a> Routing<'a> {
    pub(crate) fn new(origin: &'a Origin, routed_at: Option<SystemTime>) -> Self {
        let sender_node = match origin {
            Origin::Session { addr, .. } => Some(addr.node.clone()),
            Origin::Server => None,
        };
        Routing {
            origin,
            routed_at,
            outcome: RouteOutcome::new(sender_node),
        }
    }

    /// The error reply for `stanza_element` with a condition and its default
    /// type; `None` for a stanza that must not be answered (RFC 6120 section 8.3.1).
    pub(crate) fn bounce(
        &self,
        stanza_element: &Element,
        condition: StanzaErrorCondition,
    ) -> Option<Element> {
        self.bounced(stanza::error_reply(
            stanza_element,
            &StanzaError::new(condition),
        ))
    }

    /// The error reply to a stanza that broke a rule of its kind (the typed
    /// stanza's check, e.g. RFC 6120 section 8.2.3): bounced with its reason.
    pub(crate) fn reject(&self, invalid: &InvalidStanza) -> Option<Element> {
        self.bounced(invalid.error_reply())
    }

    /// Record a bounce: an error reply, or a drop for a stanza that must not
    /// be answered (RFC 6120 section 8.3.1).
    pub(crate) fn bounced(&self, reply: Option<Element>) -> Option<Element> {
        note_decision("bounced");
        self.outcome.record(if reply.is_some() {
            Decision::Bounced
        } else {
            Decision::Dropped
        });
        reply
    }

    /// The error reply when a dependency failed while routing: the sender
    /// learns the stanza was not handled (DESIGN.md "Delivery guarantees":
    /// delivered, stored or bounced).
    pub(crate) fn failure_reply(
        &self,
        stanza_element: &Element,
        error: &ApiError,
    ) -> Option<Element> {
        note_decision("failed");
        tracing::warn!(
            kind = stanza_element.name(),
            to = stanza_element.attr("to").unwrap_or(""),
            %error,
            "routing failed, bouncing the stanza"
        );
        self.outcome.record(Decision::Error);
        stanza::error_reply(stanza_element, &error.to_stanza_error())
    }
}

/// The per-account caches of a router (archiving preferences of XEP-0441,
/// avatar hashes of XEP-0398) follow the invalidations of the process's
/// block lists: one channel for what the cluster learns about an account.
fn follow_invalidations(
    blocklists: &Blocklists,
    prefs: &Arc<crate::archive::PrefsCache>,
    avatar_hashes: &Arc<AvatarHashes>,
    push_accounts: &Arc<PushAccounts>,
) {
    let prefs = Arc::downgrade(prefs);
    let avatar_hashes = Arc::downgrade(avatar_hashes);
    let push_accounts = Arc::downgrade(push_accounts);
    blocklists.on_invalidation(move |user| {
        if let Some(prefs) = prefs.upgrade() {
            prefs.invalidate(user);
        }
        if let Some(avatar_hashes) = avatar_hashes.upgrade() {
            avatar_hashes.invalidate(user);
        }
        if let Some(push_accounts) = push_accounts.upgrade() {
            push_accounts.invalidate(user);
        }
    });
}

/// Whether each account has push registrations (XEP-0357).
pub(crate) type PushAccounts = crate::account_cache::AccountCache<bool>;

/// The hash of each account's vCard photo (XEP-0153), `None` without one.
pub(crate) type AvatarHashes = crate::account_cache::AccountCache<Option<Arc<str>>>;

/// The session-router: binds resources and routes every stanza.
pub struct SessionRouter {
    pub(crate) config: RouterConfig,
    pub(crate) registry: Arc<dyn SessionRegistry>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) storage: Arc<dyn StorageApi>,
    /// Rosters and presence (RFC 6121 sections 2-4) belong to the presence
    /// service: the router hands it presence stanzas, roster IQs and ended sessions.
    pub(crate) presence: Arc<dyn PresenceApi>,
    /// The features the server answers IQs for and advertises in disco#info.
    pub(crate) features: FeatureRegistry,
    /// Where offline delay stamps take the time from.
    pub(crate) clock: fn() -> SystemTime,
    /// When this router started: the server's uptime (XEP-0012 section 5).
    pub(crate) started_at: SystemTime,
    pub(crate) metrics: RouterMetrics,
    /// Stream resumption state (XEP-0198), whose expired streams this router
    /// ends ([`SessionRouter::expire_detached_streams`]).
    pub(crate) resumption: Option<Arc<dyn starling_api::ResumptionStore>>,
    /// The block lists (XEP-0191) every stanza is checked against, cached.
    pub(crate) blocklists: Arc<Blocklists>,
    /// Verified entity capabilities (XEP-0115) this router used, in front
    /// of the records storage shares with the whole cluster.
    pub(crate) caps: crate::pep::caps::CapsCache,
    /// Archive ids (XEP-0313) and the batched archive writes.
    pub(crate) archive: crate::archive::Archiver,
    /// The per-registration notification windows (XEP-0357, `push.min_interval_secs`).
    pub(crate) push_windows: crate::push::PushWindows,
    /// The vCard photo hashes stamped on presence (XEP-0398 section 4).
    pub(crate) avatar_hashes: Arc<AvatarHashes>,
    /// Whether accounts have push registrations (XEP-0357).
    pub(crate) push_accounts: Arc<PushAccounts>,
    /// Multi-user chat (XEP-0045, `muc.*`): the service of `muc.domain`; `None`: off.
    pub(crate) muc: Option<Arc<starling_muc::MucService>>,
}

impl SessionRouter {
    pub fn new(
        config: RouterConfig,
        registry: Arc<dyn SessionRegistry>,
        bus: Arc<dyn Bus>,
        storage: Arc<dyn StorageApi>,
        presence: Arc<dyn PresenceApi>,
    ) -> Self {
        let mut config = config;
        match normalize_domainpart(&config.domain) {
            Ok(domain) => config.domain = domain,
            Err(error) => {
                tracing::warn!(domain = %config.domain, %error, "served domain does not normalise, using it as given")
            }
        }
        // A feature that is off is not registered: neither answered nor advertised.
        let blocklists = Blocklists::in_process(storage.clone(), BlockingMetrics::default());
        let archive = crate::archive::Archiver::new();
        let avatar_hashes = Arc::new(AvatarHashes::default());
        let push_accounts = Arc::new(PushAccounts::default());
        follow_invalidations(&blocklists, &archive.prefs, &avatar_hashes, &push_accounts);
        SessionRouter {
            features: FeatureRegistry::new(&iq_handlers(&config), WITHOUT_IQ_HANDLER),
            config,
            registry,
            bus,
            storage,
            blocklists,
            presence,
            clock: SystemTime::now,
            started_at: SystemTime::now(),
            metrics: RouterMetrics::default(),
            resumption: None,
            caps: crate::pep::caps::CapsCache::default(),
            archive,
            push_windows: crate::push::PushWindows::default(),
            avatar_hashes,
            push_accounts,
            muc: None,
        }
    }

    /// End the detached streams of `store` whose resumption timeout passed
    /// (see [`SessionRouter::expire_detached_streams`]).
    pub fn with_resumption(mut self, store: Arc<dyn starling_api::ResumptionStore>) -> Self {
        self.resumption = Some(store);
        self
    }

    /// Check stanzas against `blocklists` (XEP-0191), shared with the
    /// presence service of the process and, in the cluster, invalidated
    /// over Redis; by default a cache of this router's own.
    pub fn with_blocklists(mut self, blocklists: Arc<Blocklists>) -> Self {
        follow_invalidations(
            &blocklists,
            &self.archive.prefs,
            &self.avatar_hashes,
            &self.push_accounts,
        );
        self.blocklists = blocklists;
        self
    }

    /// Count routing decisions and durations in `metrics` (docs/operations.md).
    pub fn with_metrics(mut self, metrics: RouterMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Advertise, in the server's disco#info, features whose IQs another
    /// service answers before they reach the router: the connection-manager's
    /// in-band registration (XEP-0077) when it is enabled.
    pub fn with_advertised_features(mut self, features: &[&'static FeatureSpec]) -> Self {
        self.features.advertise(features);
        self
    }

    /// Build a router whose presence service calls it back, both in one
    /// process: `build` gets a [`RouterHandle`] on the router being built (for
    /// the presence service it makes first) and returns the router.
    pub fn new_cyclic(build: impl FnOnce(Arc<dyn RouterApi>) -> SessionRouter) -> Arc<Self> {
        Arc::new_cyclic(|router| {
            build(Arc::new(RouterHandle {
                router: router.clone(),
            }))
        })
    }

    /// The presence service this router hands presence to.
    pub fn presence(&self) -> &Arc<dyn PresenceApi> {
        &self.presence
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    /// The destination of a stanza, or the error reply for a `to` that is not
    /// a valid JID (`jid-malformed`, RFC 6120 section 8.3.3.8).
    pub(crate) fn destination(
        &self,
        routing: &Routing<'_>,
        stanza_element: &Element,
    ) -> Result<Destination, Option<Element>> {
        match stanza::to(stanza_element) {
            Ok(to) => Ok(classify(to, &self.config.domain)),
            Err(error) => {
                tracing::debug!(to = stanza_element.attr("to").unwrap_or(""), %error, "stanza addressed to a malformed jid");
                Err(routing.bounce(stanza_element, StanzaErrorCondition::JidMalformed))
            }
        }
    }

    /// Whether an account exists: it has a session, or storage knows it.
    pub(crate) async fn account_exists(
        &self,
        user: &BareJid,
        sessions: &[SessionRecord],
    ) -> ApiResult<bool> {
        if !sessions.is_empty() {
            return Ok(true);
        }
        Ok(self.storage.credentials(user).await?.is_some())
    }

    /// Route one stanza and return the reply the router generated for its
    /// sender, if any (an error, or the answer of a server-side handler).
    async fn route_once(
        &self,
        routing: &Routing<'_>,
        stanza_element: Element,
    ) -> ApiResult<Option<Element>> {
        let kind = StanzaKind::of(&stanza_element);
        if let Some(kind) = kind {
            if let Some(reply) = self.enforce_blocking(routing, &stanza_element, kind).await {
                return Ok(reply);
            }
        }
        match kind {
            Some(StanzaKind::Message) => Ok(self.route_message(routing, stanza_element).await),
            Some(StanzaKind::Iq) => Ok(self.route_iq(routing, stanza_element).await),
            Some(StanzaKind::Presence) => self.route_presence(routing, stanza_element).await,
            None => {
                tracing::warn!(
                    name = stanza_element.name(),
                    namespace = stanza_element.namespace(),
                    "not a stanza, dropped"
                );
                Ok(None)
            }
        }
    }

    /// Presence belongs to the presence service: outbound processing for a
    /// local session's presence (RFC 6121 sections 3 and 4), inbound for
    /// presence addressed to a local entity; presence to a component or a
    /// remote domain goes there (or its sender gets the section 10.4.3 error).
    async fn route_presence(
        &self,
        routing: &Routing<'_>,
        mut presence_stanza: Element,
    ) -> ApiResult<Option<Element>> {
        let presence = &self.presence;
        note_decision("presence");
        match routing.origin {
            Origin::Session { jid, addr } => {
                self.stamp_avatar_hash(jid, &mut presence_stanza).await;
                // XEP-0115 for PEP (XEP-0163 section 4.3): the capabilities
                // of an available presence are read once the presence
                // service has recorded it (the session's `+notify` interests
                // are then those of its stored presence).
                let previous = self
                    .session_before_caps_presence(jid, &presence_stanza)
                    .await;
                let caps_presence = previous.is_some().then(|| presence_stanza.clone());
                // XEP-0163 section 4.3.4: a contact the user approves
                // becomes a PEP subscriber and gets the last items.
                let approved = self.subscription_to_approve(jid, &presence_stanza).await;
                presence
                    .outbound_presence(jid, addr, presence_stanza, routing.routed_at)
                    .await?;
                if let Some(caps_presence) = caps_presence {
                    self.caps_on_presence(jid, addr, &caps_presence, previous)
                        .await;
                }
                if let Some(contact) = approved {
                    self.pep_on_subscription_approved(&jid.to_bare(), &contact)
                        .await;
                }
                Ok(None)
            }
            Origin::Server => match self.destination(routing, &presence_stanza) {
                Ok(Destination::Absent) => {
                    tracing::debug!("server presence without a to address, dropped");
                    Ok(None)
                }
                Ok(Destination::Remote(remote)) if self.is_muc_domain(remote.domain()) => {
                    // XEP-0045: joins, presence updates and leaves (the
                    // presence service recorded them as directed presence,
                    // so a session's end reaches its rooms, RFC 6121 section 4.6.3).
                    Ok(self.route_to_muc(routing, presence_stanza).await)
                }
                Ok(Destination::Remote(remote)) => {
                    // RFC 6120 section 10.4.3: the sender learns that the
                    // component or remote domain is not there, except for
                    // what the server sends on a user's behalf without
                    // waiting for an answer (probes, unavailable).
                    let answered =
                        !matches!(presence_stanza.attr("type"), Some("probe" | "unavailable"));
                    let reply = self
                        .route_to_other_domain(routing, presence_stanza, &remote)
                        .await;
                    Ok(reply.filter(|_| answered))
                }
                Ok(_) => presence
                    .inbound_presence(presence_stanza, routing.routed_at)
                    .await
                    .map(|()| None),
                Err(_) => Ok(None),
            },
        }
    }

    /// Send a reply the router generated. A reply to the sending session goes
    /// straight back to its connection; any other goes through the routing
    /// rules as a server stanza. Replies are results or errors, which are never
    /// answered again (RFC 6120 section 8.3.1), so this ends here.
    /// The reply's routing decision is not counted: the stanza it answers was.
    pub(crate) async fn send_reply(
        &self,
        origin: &Origin,
        reply: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        if let Origin::Session { jid, addr } = origin {
            if reply.attr("to").is_some_and(|to| is_same_full_jid(to, jid)) {
                let session = SessionRecord::new(jid.clone(), addr.clone());
                if !deliver_to_session(&*self.bus, Arc::new(reply), &session, routed_at).await {
                    tracing::debug!(jid = %jid, "sender's session is gone, reply dropped");
                }
                return Ok(());
            }
        }
        let reply_routing = Routing::new(&Origin::Server, routed_at);
        if let Some(unexpected) = self.route_once(&reply_routing, reply).await? {
            tracing::warn!(
                to = unexpected.attr("to").unwrap_or(""),
                "reply to a reply dropped"
            );
        }
        Ok(())
    }

    /// Fill in `from` for a session's stanza if the connection-manager left it
    /// out (RFC 6120 section 8.1.2.1: the server stamps the full JID).
    fn stamp_from(origin: &Origin, stanza_element: &mut Element) {
        if let Origin::Session { jid, .. } = origin {
            if stanza_element.attr("from").is_none() {
                stanza_element.set_attr("from", jid.to_string());
            }
        }
    }
}

fn is_same_full_jid(to: &str, jid: &FullJid) -> bool {
    to == jid.to_string() || to.parse::<Jid>().ok().as_ref() == Some(&Jid::Full(jid.clone()))
}

/// Take the element back out of an `Arc` after a delivery attempt that did
/// not reach its target (cloning only if the bus still holds a reference).
pub(crate) fn unshare(shared: Arc<Element>) -> Element {
    Arc::try_unwrap(shared).unwrap_or_else(|still_shared| (*still_shared).clone())
}

/// Record how the router decided on the stanza of the current `router.route`
/// span (no addresses: attributes never carry JIDs or bodies).
pub(crate) fn note_decision(decision: &'static str) {
    if starling_telemetry::is_enabled() {
        tracing::Span::current().record("route.decision", decision);
    }
}

fn origin_name(origin: &Origin) -> &'static str {
    match origin {
        Origin::Session { .. } => "session",
        Origin::Server => "server",
    }
}

// The spans of the router's operations, the same whether the caller is in
// this process or across gRPC (the caller's context is then the parent).
#[async_trait]
impl RouterApi for SessionRouter {
    #[tracing::instrument(target = "starling_trace", name = "router.bind", skip_all)]
    async fn bind(
        &self,
        user: &BareJid,
        requested: Option<&str>,
        addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        self.bind_resource(user, requested, addr).await
    }

    #[tracing::instrument(target = "starling_trace", name = "router.unbind", skip_all)]
    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<()> {
        self.unbind_resource(jid, addr).await
    }

    #[tracing::instrument(
        target = "starling_trace",
        name = "router.route",
        skip_all,
        fields(
            stanza.kind = stanza_element.name(),
            stanza.type = stanza_element.attr("type"),
            route.origin = origin_name(&origin),
            route.decision = tracing::field::Empty,
            route.replied = tracing::field::Empty,
        )
    )]
    async fn route(
        &self,
        origin: Origin,
        mut stanza_element: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        Self::stamp_from(&origin, &mut stanza_element);
        let started = Instant::now();
        let kind = StanzaKind::of(&stanza_element);
        let routing = Routing::new(&origin, routed_at);
        let routed = self.route_once(&routing, stanza_element).await;
        let decision = routing.outcome.decision().unwrap_or(match (&routed, kind) {
            (Err(_), _) => Decision::Error,
            (Ok(Some(reply)), _) if stanza::stanza_type(reply) == "error" => Decision::Bounced,
            (Ok(Some(_)), _) => Decision::Server,
            (Ok(None), Some(StanzaKind::Message)) => Decision::Dropped,
            // Handed to the presence service, or an IQ the server consumed.
            (Ok(None), _) => Decision::Server,
        });
        let result = match routed {
            Ok(Some(reply)) => {
                tracing::Span::current().record("route.replied", true);
                self.send_reply(&origin, reply, routed_at).await
            }
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        if let Some(kind) = kind {
            let decision = if result.is_err() {
                Decision::Error
            } else {
                decision
            };
            self.metrics.routed(kind, decision, started.elapsed());
        }
        result
    }

    #[tracing::instrument(
        target = "starling_trace",
        name = "router.undeliverable",
        skip_all,
        fields(
            stanza.kind = stanza_element.name(),
            route.decision = tracing::field::Empty,
        )
    )]
    async fn undeliverable(&self, stanza_element: Element, failed: &SessionAddr) -> ApiResult<()> {
        if let Some(reply) = self.reroute_undeliverable(stanza_element, failed).await {
            self.send_reply(&Origin::Server, reply, None).await?;
        }
        Ok(())
    }
}

/// A router as seen by the presence service of the same process
/// ([`SessionRouter::new_cyclic`]): it does not keep the router alive, and
/// once the router is gone every call fails as unavailable.
pub struct RouterHandle {
    router: Weak<SessionRouter>,
}

impl RouterHandle {
    fn router(&self) -> ApiResult<Arc<SessionRouter>> {
        self.router
            .upgrade()
            .ok_or_else(|| ApiError::Unavailable("the session router has stopped".into()))
    }
}

#[async_trait]
impl RouterApi for RouterHandle {
    async fn bind(
        &self,
        user: &BareJid,
        requested: Option<&str>,
        addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        self.router()?.bind(user, requested, addr).await
    }

    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<()> {
        self.router()?.unbind(jid, addr).await
    }

    async fn route(
        &self,
        origin: Origin,
        stanza_element: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        self.router()?
            .route(origin, stanza_element, routed_at)
            .await
    }

    async fn undeliverable(&self, stanza_element: Element, failed: &SessionAddr) -> ApiResult<()> {
        self.router()?.undeliverable(stanza_element, failed).await
    }
}
