//! Router tests with the real registry (`MemoryRegistry`), bus
//! (`InProcessBus`, read as fake connection-manager nodes) and storage
//! (`Storage` on in-memory SQLite), and a presence fake that records calls.
//! Every rule is exercised with literal XML.

mod avatar;
mod bind;
mod blocking;
mod bookmarks;
mod carbons;
mod component;
mod iq;
mod mam;
mod message;
mod metrics;
mod muc;
mod pep;
mod presence;
mod push;
mod remote;
mod undeliverable;
mod upload;
mod xml;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_api::{
    AccountStore, ApiError, ApiResult, BlockedItem, BlockingStore, OfflineStore, Origin,
    PresenceApi, RosterItem, RosterStore, RouterApi, ScramCredentials, SessionAddr,
    SessionRegistry, StorageApi, StoredCredentials,
};
use starling_bus::{Bus, Delivery, DeliveryReceiver, InProcessBus, Recipient};
use starling_jid::{BareJid, FullJid, Jid};
use starling_registry::MemoryRegistry;
use starling_storage::{Storage, StorageConfig};
use starling_xmpp::{Element, StreamErrorCondition};

use crate::{RouterConfig, SessionRouter};

pub use xml::xml;

/// The node the tests read deliveries from.
pub const CM_TEST: &str = "cm-test";
/// A second node, for fan-out across nodes.
pub const CM_OTHER: &str = "cm-other";

/// The fixed instant offline delay stamps use in tests: 2002-09-10T23:08:25Z.
pub fn fixed_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_031_699_305)
}

pub fn addr(node: &str, conn: u64) -> SessionAddr {
    SessionAddr {
        node: node.to_string(),
        conn,
    }
}

pub fn full(jid: &str) -> FullJid {
    jid.parse().expect("valid full jid")
}

pub fn bare(jid: &str) -> BareJid {
    jid.parse().expect("valid bare jid")
}

// ------------------------------------------------------------------- storage

/// Credentials for test accounts; the router only asks whether they exist.
fn test_credentials() -> StoredCredentials {
    let keys = ScramCredentials {
        salt: vec![1; 16],
        iterations: 4096,
        stored_key: vec![2; 20],
        server_key: vec![3; 20],
    };
    StoredCredentials {
        sha1: keys.clone(),
        sha256: keys,
    }
}

/// A storage service whose database is down: every call fails.
pub struct UnavailableStorage;

#[async_trait]
impl AccountStore for UnavailableStorage {
    async fn create_account(
        &self,
        _user: &BareJid,
        _credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        Err(database_down())
    }

    async fn set_credentials(
        &self,
        _user: &BareJid,
        _credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        Err(database_down())
    }

    async fn remove_account(&self, _user: &BareJid) -> ApiResult<()> {
        Err(database_down())
    }

    async fn list_accounts(&self, _domain: &str) -> ApiResult<Vec<BareJid>> {
        Err(database_down())
    }

    async fn credentials(&self, _user: &BareJid) -> ApiResult<Option<StoredCredentials>> {
        Err(database_down())
    }
}

#[async_trait]
impl RosterStore for UnavailableStorage {
    async fn roster(&self, _user: &BareJid) -> ApiResult<(u64, Vec<RosterItem>)> {
        Err(database_down())
    }

    async fn subscriptions(
        &self,
        _user: &BareJid,
    ) -> ApiResult<Vec<starling_api::SubscriptionEntry>> {
        Err(database_down())
    }

    async fn roster_item(
        &self,
        _user: &BareJid,
        _contact: &BareJid,
    ) -> ApiResult<Option<RosterItem>> {
        Err(database_down())
    }

    async fn put_roster_item(&self, _user: &BareJid, _item: &RosterItem) -> ApiResult<u64> {
        Err(database_down())
    }

    async fn remove_roster_item(
        &self,
        _user: &BareJid,
        _contact: &BareJid,
    ) -> ApiResult<Option<u64>> {
        Err(database_down())
    }
}

#[async_trait]
impl OfflineStore for UnavailableStorage {
    async fn store_offline(&self, _user: &BareJid, _stanza_xml: &str) -> ApiResult<()> {
        Err(database_down())
    }

    async fn take_offline(
        &self,
        _user: &BareJid,
        _max_messages: u32,
        _max_bytes: u64,
    ) -> ApiResult<starling_api::OfflinePage> {
        Err(database_down())
    }

    async fn count_offline(&self, _user: &BareJid) -> ApiResult<u64> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::AccountDataStore for UnavailableStorage {
    async fn account_data(&self, _user: &BareJid, _key: &str) -> ApiResult<Option<String>> {
        Err(database_down())
    }

    async fn put_account_data(
        &self,
        _user: &BareJid,
        _key: &str,
        _xml: Option<&str>,
    ) -> ApiResult<()> {
        Err(database_down())
    }
}

#[async_trait]
impl BlockingStore for UnavailableStorage {
    async fn blocklist(&self, _user: &BareJid) -> ApiResult<Vec<BlockedItem>> {
        Err(database_down())
    }

    async fn block(&self, _user: &BareJid, _items: &[BlockedItem]) -> ApiResult<()> {
        Err(database_down())
    }

    async fn unblock(&self, _user: &BareJid, _jids: &[Jid]) -> ApiResult<Vec<Jid>> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::PepStore for UnavailableStorage {
    async fn pep_nodes(&self, _owner: &BareJid) -> ApiResult<Vec<starling_api::PepNode>> {
        Err(database_down())
    }

    async fn pep_node(
        &self,
        _owner: &BareJid,
        _node: &str,
    ) -> ApiResult<Option<starling_api::PepNode>> {
        Err(database_down())
    }

    async fn create_pep_node(
        &self,
        _owner: &BareJid,
        _node: &starling_api::PepNode,
        _limits: starling_api::PepLimits,
    ) -> ApiResult<bool> {
        Err(database_down())
    }

    async fn configure_pep_node(
        &self,
        _owner: &BareJid,
        _node: &starling_api::PepNode,
        _limits: starling_api::PepLimits,
    ) -> ApiResult<()> {
        Err(database_down())
    }

    async fn delete_pep_node(&self, _owner: &BareJid, _node: &str) -> ApiResult<bool> {
        Err(database_down())
    }

    async fn publish_pep_item(
        &self,
        _owner: &BareJid,
        _publish: &starling_api::PepPublish,
        _limits: starling_api::PepLimits,
    ) -> ApiResult<starling_api::PepPublishOutcome> {
        Err(database_down())
    }

    async fn pep_items(
        &self,
        _owner: &BareJid,
        _node: &str,
        _ids: &[String],
        _max: Option<u32>,
    ) -> ApiResult<Vec<starling_api::PepItem>> {
        Err(database_down())
    }

    async fn pep_last_items(
        &self,
        _owner: &BareJid,
        _nodes: &[String],
    ) -> ApiResult<Vec<(starling_api::PepNode, starling_api::PepItem)>> {
        Err(database_down())
    }

    async fn retract_pep_item(
        &self,
        _owner: &BareJid,
        _node: &str,
        _item_id: &str,
    ) -> ApiResult<bool> {
        Err(database_down())
    }

    async fn pep_whitelist(&self, _owner: &BareJid, _node: &str) -> ApiResult<Vec<BareJid>> {
        Err(database_down())
    }

    async fn update_pep_whitelist(
        &self,
        _owner: &BareJid,
        _node: &str,
        _add: &[BareJid],
        _remove: &[BareJid],
        _max_members: u32,
    ) -> ApiResult<()> {
        Err(database_down())
    }

    async fn caps_features(&self, _hash: &str, _ver: &str) -> ApiResult<Option<Vec<String>>> {
        Err(database_down())
    }

    async fn put_caps(&self, _record: &starling_api::CapsRecord) -> ApiResult<()> {
        Err(database_down())
    }

    async fn pep_subscriptions(
        &self,
        _owner: &BareJid,
        _node: &str,
    ) -> ApiResult<Vec<starling_api::PepSubscription>> {
        Err(database_down())
    }

    async fn set_pep_subscription(
        &self,
        _owner: &BareJid,
        _node: &str,
        _jid: &starling_jid::Jid,
        _state: Option<starling_api::PepSubscriptionState>,
        _max_subscriptions: u32,
    ) -> ApiResult<Option<starling_api::PepSubscriptionState>> {
        Err(database_down())
    }

    async fn pep_subscribed_nodes(
        &self,
        _subscriber: &BareJid,
    ) -> ApiResult<Vec<starling_api::PepSubscribedNode>> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::RoomArchiveStore for UnavailableStorage {
    async fn archive_room_messages(
        &self,
        _entries: &[starling_api::ArchiveEntry],
    ) -> ApiResult<u64> {
        Err(database_down())
    }

    async fn query_room_archive(
        &self,
        _room: &BareJid,
        _query: &starling_api::ArchiveQuery,
    ) -> ApiResult<starling_api::ArchivePage> {
        Err(database_down())
    }

    async fn room_archive_message(
        &self,
        _room: &BareJid,
        _id: starling_api::ArchiveId,
    ) -> ApiResult<Option<starling_api::ArchivedMessage>> {
        Err(database_down())
    }

    async fn replace_room_archive_message(
        &self,
        _room: &BareJid,
        _id: starling_api::ArchiveId,
        _stanza_xml: &str,
    ) -> ApiResult<bool> {
        Err(database_down())
    }

    async fn remove_room_archive(&self, _room: &BareJid) -> ApiResult<u64> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::ArchiveStore for UnavailableStorage {
    async fn archive_decisions(&self, _pairs: &[(BareJid, Jid)]) -> ApiResult<Vec<bool>> {
        Err(database_down())
    }

    async fn archive_messages(&self, _entries: &[starling_api::ArchiveEntry]) -> ApiResult<u64> {
        Err(database_down())
    }

    async fn query_archive(
        &self,
        _owner: &BareJid,
        _query: &starling_api::ArchiveQuery,
    ) -> ApiResult<starling_api::ArchivePage> {
        Err(database_down())
    }

    async fn archive_bounds(
        &self,
        _owner: &BareJid,
    ) -> ApiResult<Option<(starling_api::ArchiveId, starling_api::ArchiveId)>> {
        Err(database_down())
    }

    async fn archive_prefs(&self, _owner: &BareJid) -> ApiResult<starling_api::ArchivePrefs> {
        Err(database_down())
    }

    async fn set_archive_prefs(
        &self,
        _owner: &BareJid,
        _prefs: &starling_api::ArchivePrefs,
    ) -> ApiResult<()> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::UploadStore for UnavailableStorage {
    async fn create_upload_slot(
        &self,
        _user: &BareJid,
        _slot: &starling_api::UploadSlotRecord,
        _quota: starling_api::UploadQuota,
    ) -> ApiResult<starling_api::UploadSlotGrant> {
        Err(database_down())
    }

    async fn upload_slot(&self, _id: &str) -> ApiResult<Option<starling_api::UploadSlotRecord>> {
        Err(database_down())
    }

    async fn complete_upload_slot(&self, _id: &str, _uploaded_at_millis: i64) -> ApiResult<bool> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::MucRoomStore for UnavailableStorage {
    async fn muc_room(&self, _room: &BareJid) -> ApiResult<Option<starling_api::MucRoomRecord>> {
        Err(database_down())
    }

    async fn put_muc_room(&self, _room: &starling_api::MucRoomRecord) -> ApiResult<bool> {
        Err(database_down())
    }

    async fn remove_muc_room(&self, _room: &BareJid) -> ApiResult<bool> {
        Err(database_down())
    }

    async fn listed_muc_rooms(
        &self,
        _domain: &str,
        _limit: u32,
    ) -> ApiResult<Vec<starling_api::ListedMucRoom>> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::PushStore for UnavailableStorage {
    async fn push_registrations(
        &self,
        _user: &BareJid,
    ) -> ApiResult<Vec<starling_api::PushRegistration>> {
        Err(database_down())
    }

    async fn put_push_registration(
        &self,
        _user: &BareJid,
        _registration: &starling_api::PushRegistration,
        _max_per_account: u32,
    ) -> ApiResult<()> {
        Err(database_down())
    }

    async fn remove_push_registrations(
        &self,
        _user: &BareJid,
        _service_jid: &str,
        _node: Option<&str>,
    ) -> ApiResult<u64> {
        Err(database_down())
    }
}

#[async_trait]
impl starling_api::FastTokenStore for UnavailableStorage {
    async fn put_fast_token(
        &self,
        _user: &BareJid,
        _token: &starling_api::FastTokenRecord,
    ) -> ApiResult<()> {
        Err(database_down())
    }

    async fn fast_tokens(
        &self,
        _user: &BareJid,
        _agent_id: &str,
    ) -> ApiResult<Vec<starling_api::FastTokenRecord>> {
        Err(database_down())
    }

    async fn remove_fast_tokens(
        &self,
        _user: &BareJid,
        _agent_id: Option<&str>,
        _issued_before_millis: Option<i64>,
    ) -> ApiResult<u64> {
        Err(database_down())
    }
}

fn database_down() -> ApiError {
    ApiError::Unavailable("database down".into())
}

// --------------------------------------------------------------- presence fake

/// One call the router made to the presence service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceCall {
    Outbound {
        from: String,
        addr: SessionAddr,
        stanza: String,
    },
    Inbound {
        stanza: String,
    },
    Roster {
        from: String,
        addr: SessionAddr,
        stanza: String,
    },
    SessionEnded {
        jid: String,
        was_available: bool,
    },
}

/// Records every call; roster requests fail with the configured error, if any.
#[derive(Default)]
pub struct RecordingPresence {
    calls: Mutex<Vec<PresenceCall>>,
    roster_failure: Mutex<Option<ApiError>>,
}

impl RecordingPresence {
    pub fn take_calls(&self) -> Vec<PresenceCall> {
        std::mem::take(&mut *self.calls.lock())
    }

    pub fn fail_roster_with(&self, error: ApiError) {
        *self.roster_failure.lock() = Some(error);
    }
}

#[async_trait]
impl PresenceApi for RecordingPresence {
    async fn outbound_presence(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        _routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        self.calls.lock().push(PresenceCall::Outbound {
            from: from.to_string(),
            addr: addr.clone(),
            stanza: stanza.to_stanza_xml(),
        });
        Ok(())
    }

    async fn inbound_presence(
        &self,
        stanza: Element,
        _routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        self.calls.lock().push(PresenceCall::Inbound {
            stanza: stanza.to_stanza_xml(),
        });
        Ok(())
    }

    async fn roster_iq(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        _routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        self.calls.lock().push(PresenceCall::Roster {
            from: from.to_string(),
            addr: addr.clone(),
            stanza: stanza.to_stanza_xml(),
        });
        match self.roster_failure.lock().clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn session_ended(&self, jid: &FullJid, was_available: bool) -> ApiResult<()> {
        self.calls.lock().push(PresenceCall::SessionEnded {
            jid: jid.to_string(),
            was_available,
        });
        Ok(())
    }
}

// --------------------------------------------------------------------- harness

/// What a fake node read from its delivery channel, in comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Recipient connections (with any `to` rewrite) and the stanza's XML.
    Stanza(Vec<Recipient>, String),
    Close(u64, StreamErrorCondition, Option<String>),
}

pub struct Harness {
    pub router: Arc<SessionRouter>,
    pub registry: Arc<MemoryRegistry>,
    pub bus: Arc<InProcessBus>,
    pub storage: Arc<dyn StorageApi>,
    /// The same storage as a `Storage`, for its maintenance calls (none
    /// when `storage_down`).
    pub sqlite: Option<Storage>,
    pub presence: Arc<RecordingPresence>,
    pub cm_test: DeliveryReceiver,
    pub cm_other: DeliveryReceiver,
    /// The router's metrics (`crate::RouterMetrics`) are registered here.
    pub metrics: prometheus::Registry,
}

pub struct HarnessOptions {
    pub max_resources_per_user: usize,
    pub offline_limit: u32,
    /// Route against a storage service whose every call fails.
    pub storage_down: bool,
    /// Message Carbons (XEP-0280) switched on.
    pub carbons: bool,
    /// Message Archive Management (XEP-0313).
    pub mam: bool,
    /// HTTP File Upload (XEP-0363).
    pub upload: Option<crate::upload::UploadSettings>,
    /// Multi-user chat (XEP-0045) at `conference.example.com`, rooms in memory.
    pub muc: bool,
    /// Federation (`s2s.*`).
    pub s2s: crate::remote::S2sPolicy,
    /// The live connection-manager the registry knows (as in `starling serve`).
    pub live_node: Option<&'static str>,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        HarnessOptions {
            max_resources_per_user: 16,
            offline_limit: 100,
            storage_down: false,
            carbons: true,
            mam: false,
            upload: None,
            muc: false,
            s2s: crate::remote::S2sPolicy::default(),
            live_node: None,
        }
    }
}

/// The router configuration of a harness built with `options`.
fn router_config(options: &HarnessOptions) -> RouterConfig {
    RouterConfig {
        domain: "example.com".into(),
        max_resources_per_user: options.max_resources_per_user,
        server_name: "Starling".into(),
        server_version: "0.1.0".into(),
        carbons: options.carbons,
        blocking_max_items: 5,
        pep: crate::pep::PepSettings::default(),
        mam: options.mam,
        mam_max_page_size: 5,
        mam_max_message_bytes: 65_536,
        upload: options.upload.clone(),
        stored_stanza_limits: starling_xmpp::Limits::default().for_server_copies(),
        components: vec!["irc.example.com".into()],
        s2s: options.s2s.clone(),
        push: Some(crate::push::PushSettings {
            include_body: false,
            min_interval: std::time::Duration::ZERO,
        }),
    }
}

impl Harness {
    /// Another router of the same deployment (registry, bus, storage and
    /// presence service shared), with its own caches in front of `blocklists`.
    pub fn another_router(&self, blocklists: Arc<starling_bus::Blocklists>) -> SessionRouter {
        SessionRouter::new(
            router_config(&HarnessOptions::default()),
            self.registry.clone(),
            self.bus.clone(),
            self.storage.clone(),
            self.presence.clone(),
        )
        .with_clock(fixed_clock)
        .with_blocklists(blocklists)
    }

    pub async fn new() -> Self {
        Self::with_options(HarnessOptions::default()).await
    }

    pub async fn with_options(options: HarnessOptions) -> Self {
        let registry = Arc::new(match options.live_node {
            Some(node) => MemoryRegistry::new().with_local_node(node),
            None => MemoryRegistry::new(),
        });
        let bus = Arc::new(InProcessBus::new());
        let mut sqlite = None;
        let storage: Arc<dyn StorageApi> = if options.storage_down {
            Arc::new(UnavailableStorage)
        } else {
            let config = StorageConfig {
                url: "sqlite::memory:".into(),
                max_offline_per_user: options.offline_limit,
                max_blocklist_items: 5,
                ..Default::default()
            };
            let storage = Storage::connect(&config).await.expect("in-memory storage");
            for account in [
                "juliet@example.com",
                "romeo@example.com",
                "nurse@example.com",
            ] {
                storage
                    .create_account(&bare(account), &test_credentials())
                    .await
                    .expect("create account");
            }
            sqlite = Some(storage.clone());
            Arc::new(storage)
        };
        let presence = Arc::new(RecordingPresence::default());
        let cm_test = bus.subscribe(CM_TEST).await.expect("subscribe cm-test");
        let cm_other = bus.subscribe(CM_OTHER).await.expect("subscribe cm-other");
        let router = SessionRouter::new(
            router_config(&options),
            registry.clone(),
            bus.clone(),
            storage.clone(),
            presence.clone(),
        )
        .with_clock(fixed_clock);
        let metrics = prometheus::Registry::new();
        let router = router.with_metrics(
            crate::RouterMetrics::register(&metrics).expect("a fresh registry takes them"),
        );
        let router = if options.muc {
            router.with_muc(Arc::new(starling_muc::MucService::new(
                starling_muc::Settings::for_domain("conference.example.com"),
                Arc::new(starling_muc::MemoryRoomStore::default()),
                registry.clone(),
                bus.clone(),
            )))
        } else {
            router
        };
        let router = Arc::new(router);
        Harness {
            router,
            registry,
            bus,
            storage,
            sqlite,
            presence,
            cm_test,
            cm_other,
            metrics,
        }
    }

    /// Take the offline queue of an account from storage.
    pub async fn offline_of(&self, user: &str) -> Vec<String> {
        self.storage
            .take_all_offline(&bare(user))
            .await
            .expect("take offline")
    }

    /// Bind a resource through the router and return its full JID.
    pub async fn bind(&self, jid: &str, node: &str, conn: u64) -> FullJid {
        let jid = full(jid);
        let bound = self
            .router
            .bind(jid.bare(), Some(jid.resource()), &addr(node, conn))
            .await
            .expect("bind succeeds");
        assert_eq!(bound, jid);
        bound
    }

    /// Bind and mark available with capabilities (XEP-0115) whose verified
    /// record, `ver`, holds `features` (such as `NODE+notify` interests).
    pub async fn online_with_caps(
        &self,
        jid: &str,
        node: &str,
        conn: u64,
        ver: &str,
        features: &[&str],
    ) -> FullJid {
        self.storage
            .put_caps(&starling_api::CapsRecord {
                hash: "sha-1".into(),
                ver: ver.into(),
                features: features.iter().map(|feature| feature.to_string()).collect(),
            })
            .await
            .expect("store caps");
        let bound = self.online(jid, node, conn, 0).await;
        self.registry
            .set_presence(
                &bound,
                &addr(node, conn),
                true,
                0,
                Some(format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='{ver}'/></presence>")),
            )
            .await
            .expect("set presence");
        bound
    }

    /// Bind and mark available with a priority, as initial presence would.
    pub async fn online(&self, jid: &str, node: &str, conn: u64, priority: i8) -> FullJid {
        let bound = self.bind(jid, node, conn).await;
        assert!(self
            .registry
            .set_presence(
                &bound,
                &addr(node, conn),
                true,
                priority,
                Some("<presence/>".into())
            )
            .await
            .expect("set presence"));
        bound
    }

    /// Route a literal stanza as sent by the session `jid` at `node`/`conn`.
    pub async fn send(&self, jid: &str, node: &str, conn: u64, stanza: &str) {
        self.send_at(jid, node, conn, stanza, None).await;
    }

    /// [`Harness::send`] for a stanza that entered the cluster at `routed_at`.
    pub async fn send_at(
        &self,
        jid: &str,
        node: &str,
        conn: u64,
        stanza: &str,
        routed_at: Option<SystemTime>,
    ) {
        let origin = Origin::Session {
            jid: full(jid),
            addr: addr(node, conn),
        };
        self.router
            .route(origin, xml(stanza), routed_at)
            .await
            .expect("route");
    }

    /// Route a literal stanza from the server itself.
    pub async fn send_from_server(&self, stanza: &str) {
        self.router
            .route(Origin::Server, xml(stanza), None)
            .await
            .expect("route");
    }

    /// Everything the node `cm-test` has received so far.
    pub fn seen_on_test(&mut self) -> Vec<Seen> {
        drain(&mut self.cm_test)
    }

    /// Everything the node `cm-other` has received so far.
    pub fn seen_on_other(&mut self) -> Vec<Seen> {
        drain(&mut self.cm_other)
    }

    /// The value of one series of the router's metrics, such as
    /// `starling_router_routed_total{decision="local",kind="message"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.metrics.gather())
            .unwrap();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Assert that neither node received anything.
    pub fn assert_nothing_delivered(&mut self) {
        assert_eq!(
            self.seen_on_test(),
            Vec::new(),
            "cm-test received something"
        );
        assert_eq!(
            self.seen_on_other(),
            Vec::new(),
            "cm-other received something"
        );
    }
}

fn drain(receiver: &mut DeliveryReceiver) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Ok(delivery) = receiver.try_recv() {
        seen.push(match delivery {
            Delivery::Stanza {
                mut recipients,
                stanza,
                ..
            } => {
                // The registry lists sessions in no particular order.
                recipients.sort_by_key(|recipient| recipient.conn);
                Seen::Stanza(recipients, stanza.to_stanza_xml())
            }
            Delivery::Close {
                conn,
                condition,
                text,
            } => Seen::Close(conn, condition, text),
            Delivery::Drain { .. } => panic!("the router drains no node"),
            Delivery::Undecodable { .. } => panic!("an in-process bus decodes nothing"),
        });
    }
    seen
}

/// A stanza delivered to one connection, `to` kept.
pub fn to_conn(conn: u64, stanza: &str) -> Seen {
    Seen::Stanza(vec![Recipient::conn(conn)], stanza.to_string())
}

/// A stanza delivered to several connections of one node, `to` kept.
pub fn to_conns(conns: &[u64], stanza: &str) -> Seen {
    Seen::Stanza(
        conns.iter().map(|conn| Recipient::conn(*conn)).collect(),
        stanza.to_string(),
    )
}
