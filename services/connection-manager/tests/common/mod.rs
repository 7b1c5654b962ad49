//! Test harness: a connection-manager on 127.0.0.1 port 0 with an in-test
//! storage and router (binding through `MemoryRegistry`, delivering through
//! the in-process bus), and a raw-XML client that can do STARTTLS, direct TLS
//! and SCRAM/PLAIN.

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Digest;
use starling_api::{
    AccountStore, ApiError, ApiResult, BindError, BlockedItem, BlockingStore, OfflineStore, Origin,
    RosterItem, RosterStore, RouterApi, SessionAddr, SessionRecord, SessionRegistry, StorageApi,
    StoredCredentials,
};
use starling_bus::{Bus, Delivery, InProcessBus, Recipient};
use starling_connection_manager::{CmConfig, CmError, CmLimits, ConnectionManager, TlsSettings};
use starling_jid::{BareJid, FullJid, Jid};
use starling_registry::MemoryRegistry;
use starling_xmpp::{Element, StreamErrorCondition};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "example.com";
pub const WAIT: Duration = Duration::from_secs(10);

/// The bounded wait every test uses instead of a fixed sleep.
#[allow(unused_imports, reason = "not every test binary waits")]
pub use starling_testing::wait_until;

// ---------------------------------------------------------------- storage

#[derive(Default)]
pub struct FakeStorage {
    accounts: Mutex<HashMap<BareJid, StoredCredentials>>,
    pub unavailable: std::sync::atomic::AtomicBool,
}

/// Credentials as `starling user add` makes them.
pub fn credentials_for(password: &str) -> StoredCredentials {
    StoredCredentials::for_password(password)
}

impl FakeStorage {
    fn check_available(&self) -> ApiResult<()> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(ApiError::Unavailable("storage down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl AccountStore for FakeStorage {
    async fn create_account(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        self.check_available()?;
        let mut accounts = self.accounts.lock();
        if accounts.contains_key(user) {
            return Err(ApiError::AlreadyExists(user.to_string()));
        }
        accounts.insert(user.clone(), credentials.clone());
        Ok(())
    }

    async fn set_credentials(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        self.check_available()?;
        match self.accounts.lock().get_mut(user) {
            Some(stored) => {
                *stored = credentials.clone();
                Ok(())
            }
            None => Err(ApiError::NotFound(user.to_string())),
        }
    }

    async fn remove_account(&self, user: &BareJid) -> ApiResult<()> {
        self.check_available()?;
        self.accounts
            .lock()
            .remove(user)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFound(user.to_string()))
    }

    async fn list_accounts(&self, domain: &str) -> ApiResult<Vec<BareJid>> {
        let mut accounts: Vec<BareJid> = self
            .accounts
            .lock()
            .keys()
            .filter(|user| user.domain() == domain)
            .cloned()
            .collect();
        accounts.sort();
        Ok(accounts)
    }

    async fn credentials(&self, user: &BareJid) -> ApiResult<Option<StoredCredentials>> {
        self.check_available()?;
        Ok(self.accounts.lock().get(user).cloned())
    }
}

#[async_trait]
impl RosterStore for FakeStorage {
    async fn roster(&self, _user: &BareJid) -> ApiResult<(u64, Vec<RosterItem>)> {
        Ok((0, Vec::new()))
    }

    async fn subscriptions(
        &self,
        _user: &BareJid,
    ) -> ApiResult<Vec<starling_api::SubscriptionEntry>> {
        Ok(Vec::new())
    }

    async fn roster_item(
        &self,
        _user: &BareJid,
        _contact: &BareJid,
    ) -> ApiResult<Option<RosterItem>> {
        Ok(None)
    }

    async fn put_roster_item(&self, _user: &BareJid, _item: &RosterItem) -> ApiResult<u64> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn remove_roster_item(
        &self,
        _user: &BareJid,
        _contact: &BareJid,
    ) -> ApiResult<Option<u64>> {
        Ok(None)
    }
}

#[async_trait]
impl OfflineStore for FakeStorage {
    async fn store_offline(&self, _user: &BareJid, _stanza_xml: &str) -> ApiResult<()> {
        Ok(())
    }

    async fn take_offline(
        &self,
        _user: &BareJid,
        _max_messages: u32,
        _max_bytes: u64,
    ) -> ApiResult<starling_api::OfflinePage> {
        Ok(starling_api::OfflinePage::default())
    }

    async fn count_offline(&self, _user: &BareJid) -> ApiResult<u64> {
        Ok(0)
    }
}

/// The connection-manager never reads an account's documents.
#[async_trait]
impl starling_api::AccountDataStore for FakeStorage {
    async fn account_data(&self, _user: &BareJid, _key: &str) -> ApiResult<Option<String>> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn put_account_data(
        &self,
        _user: &BareJid,
        _key: &str,
        _xml: Option<&str>,
    ) -> ApiResult<()> {
        Err(ApiError::Internal("not in this fake".into()))
    }
}

#[async_trait]
impl BlockingStore for FakeStorage {
    async fn blocklist(&self, _user: &BareJid) -> ApiResult<Vec<BlockedItem>> {
        Ok(Vec::new())
    }

    async fn block(&self, _user: &BareJid, _items: &[BlockedItem]) -> ApiResult<()> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn unblock(&self, _user: &BareJid, _jids: &[Jid]) -> ApiResult<Vec<Jid>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl starling_api::RoomArchiveStore for FakeStorage {
    async fn archive_room_messages(
        &self,
        _entries: &[starling_api::ArchiveEntry],
    ) -> ApiResult<u64> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn query_room_archive(
        &self,
        _room: &BareJid,
        _query: &starling_api::ArchiveQuery,
    ) -> ApiResult<starling_api::ArchivePage> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn room_archive_message(
        &self,
        _room: &BareJid,
        _id: starling_api::ArchiveId,
    ) -> ApiResult<Option<starling_api::ArchivedMessage>> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn replace_room_archive_message(
        &self,
        _room: &BareJid,
        _id: starling_api::ArchiveId,
        _stanza_xml: &str,
    ) -> ApiResult<bool> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn remove_room_archive(&self, _room: &BareJid) -> ApiResult<u64> {
        Err(ApiError::Internal("not in this fake".into()))
    }
}

/// The connection-manager never reads the message archive.
#[async_trait]
impl starling_api::ArchiveStore for FakeStorage {
    async fn archive_decisions(&self, pairs: &[(BareJid, Jid)]) -> ApiResult<Vec<bool>> {
        Ok(vec![false; pairs.len()])
    }

    async fn archive_messages(&self, _entries: &[starling_api::ArchiveEntry]) -> ApiResult<u64> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn query_archive(
        &self,
        _owner: &BareJid,
        _query: &starling_api::ArchiveQuery,
    ) -> ApiResult<starling_api::ArchivePage> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn archive_bounds(
        &self,
        _owner: &BareJid,
    ) -> ApiResult<Option<(starling_api::ArchiveId, starling_api::ArchiveId)>> {
        Ok(None)
    }

    async fn archive_prefs(&self, _owner: &BareJid) -> ApiResult<starling_api::ArchivePrefs> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn set_archive_prefs(
        &self,
        _owner: &BareJid,
        _prefs: &starling_api::ArchivePrefs,
    ) -> ApiResult<()> {
        Err(ApiError::Internal("not in this fake".into()))
    }
}

#[async_trait]
impl starling_api::PepStore for FakeStorage {
    async fn pep_nodes(&self, _owner: &BareJid) -> ApiResult<Vec<starling_api::PepNode>> {
        Ok(Vec::new())
    }

    async fn pep_node(
        &self,
        _owner: &BareJid,
        _node: &str,
    ) -> ApiResult<Option<starling_api::PepNode>> {
        Ok(None)
    }

    async fn create_pep_node(
        &self,
        _owner: &BareJid,
        _node: &starling_api::PepNode,
        _limits: starling_api::PepLimits,
    ) -> ApiResult<bool> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn configure_pep_node(
        &self,
        _owner: &BareJid,
        _node: &starling_api::PepNode,
        _limits: starling_api::PepLimits,
    ) -> ApiResult<()> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn delete_pep_node(&self, _owner: &BareJid, _node: &str) -> ApiResult<bool> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn publish_pep_item(
        &self,
        _owner: &BareJid,
        _publish: &starling_api::PepPublish,
        _limits: starling_api::PepLimits,
    ) -> ApiResult<starling_api::PepPublishOutcome> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn pep_items(
        &self,
        _owner: &BareJid,
        _node: &str,
        _ids: &[String],
        _max: Option<u32>,
    ) -> ApiResult<Vec<starling_api::PepItem>> {
        Ok(Vec::new())
    }

    async fn pep_last_items(
        &self,
        _owner: &BareJid,
        _nodes: &[String],
    ) -> ApiResult<Vec<(starling_api::PepNode, starling_api::PepItem)>> {
        Ok(Vec::new())
    }

    async fn retract_pep_item(
        &self,
        _owner: &BareJid,
        _node: &str,
        _item_id: &str,
    ) -> ApiResult<bool> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn pep_whitelist(&self, _owner: &BareJid, _node: &str) -> ApiResult<Vec<BareJid>> {
        Ok(Vec::new())
    }

    async fn update_pep_whitelist(
        &self,
        _owner: &BareJid,
        _node: &str,
        _add: &[BareJid],
        _remove: &[BareJid],
        _max_members: u32,
    ) -> ApiResult<()> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn caps_features(&self, _hash: &str, _ver: &str) -> ApiResult<Option<Vec<String>>> {
        Ok(None)
    }

    async fn put_caps(&self, _record: &starling_api::CapsRecord) -> ApiResult<()> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn pep_subscriptions(
        &self,
        _owner: &BareJid,
        _node: &str,
    ) -> ApiResult<Vec<starling_api::PepSubscription>> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn set_pep_subscription(
        &self,
        _owner: &BareJid,
        _node: &str,
        _jid: &starling_jid::Jid,
        _state: Option<starling_api::PepSubscriptionState>,
        _max_subscriptions: u32,
    ) -> ApiResult<Option<starling_api::PepSubscriptionState>> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn pep_subscribed_nodes(
        &self,
        _subscriber: &BareJid,
    ) -> ApiResult<Vec<starling_api::PepSubscribedNode>> {
        Err(ApiError::Internal("not in this fake".into()))
    }
}

#[async_trait]
impl starling_api::UploadStore for FakeStorage {
    async fn create_upload_slot(
        &self,
        _user: &BareJid,
        _slot: &starling_api::UploadSlotRecord,
        _quota: starling_api::UploadQuota,
    ) -> ApiResult<starling_api::UploadSlotGrant> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn upload_slot(&self, _id: &str) -> ApiResult<Option<starling_api::UploadSlotRecord>> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn complete_upload_slot(&self, _id: &str, _uploaded_at_millis: i64) -> ApiResult<bool> {
        Err(ApiError::Internal("not in this fake".into()))
    }
}

#[async_trait]
impl starling_api::MucRoomStore for FakeStorage {
    async fn muc_room(&self, _room: &BareJid) -> ApiResult<Option<starling_api::MucRoomRecord>> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn put_muc_room(&self, _room: &starling_api::MucRoomRecord) -> ApiResult<bool> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn remove_muc_room(&self, _room: &BareJid) -> ApiResult<bool> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn listed_muc_rooms(
        &self,
        _domain: &str,
        _limit: u32,
    ) -> ApiResult<Vec<starling_api::ListedMucRoom>> {
        Err(ApiError::Internal("not in this fake".into()))
    }
}

#[async_trait]
impl starling_api::PushStore for FakeStorage {
    async fn push_registrations(
        &self,
        _user: &BareJid,
    ) -> ApiResult<Vec<starling_api::PushRegistration>> {
        Ok(Vec::new())
    }

    async fn put_push_registration(
        &self,
        _user: &BareJid,
        _registration: &starling_api::PushRegistration,
        _max_per_account: u32,
    ) -> ApiResult<()> {
        Err(ApiError::Internal("not in this fake".into()))
    }

    async fn remove_push_registrations(
        &self,
        _user: &BareJid,
        _service_jid: &str,
        _node: Option<&str>,
    ) -> ApiResult<u64> {
        Ok(0)
    }
}

#[async_trait]
impl starling_api::FastTokenStore for FakeStorage {
    async fn put_fast_token(
        &self,
        _user: &BareJid,
        _token: &starling_api::FastTokenRecord,
    ) -> ApiResult<()> {
        Ok(())
    }

    async fn fast_tokens(
        &self,
        _user: &BareJid,
        _agent_id: &str,
    ) -> ApiResult<Vec<starling_api::FastTokenRecord>> {
        Ok(Vec::new())
    }

    async fn remove_fast_tokens(
        &self,
        _user: &BareJid,
        _agent_id: Option<&str>,
        _issued_before_millis: Option<i64>,
    ) -> ApiResult<u64> {
        Ok(0)
    }
}

// ---------------------------------------------------------------- router

/// Records what the connection-manager hands it; binds through the
/// registry; delivers stanzas addressed to a bound full JID over the bus.
pub struct TestRouter {
    pub registry: MemoryRegistry,
    bus: Arc<InProcessBus>,
    pub routed: Mutex<Vec<Element>>,
    pub undeliverable: Mutex<Vec<Element>>,
    pub unbound: Mutex<Vec<FullJid>>,
    next_resource: AtomicU64,
}

impl TestRouter {
    pub fn new(bus: Arc<InProcessBus>) -> Self {
        TestRouter {
            registry: MemoryRegistry::new(),
            bus,
            routed: Mutex::new(Vec::new()),
            undeliverable: Mutex::new(Vec::new()),
            unbound: Mutex::new(Vec::new()),
            next_resource: AtomicU64::new(1),
        }
    }

    pub fn routed_xml(&self) -> Vec<String> {
        self.routed
            .lock()
            .iter()
            .map(Element::to_stanza_xml)
            .collect()
    }
}

#[async_trait]
impl RouterApi for TestRouter {
    async fn bind(
        &self,
        user: &BareJid,
        requested: Option<&str>,
        addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        let resource = match requested {
            Some("forbidden") => return Err(BindError::NotAllowed),
            Some("crowded") => return Err(BindError::ResourceConstraint),
            Some(resource) => resource.to_string(),
            None => format!("gen{}", self.next_resource.fetch_add(1, Ordering::SeqCst)),
        };
        let jid = user
            .with_resource(&resource)
            .map_err(|_| BindError::BadRequest)?;
        let outcome = self
            .registry
            .bind(SessionRecord::new(jid.clone(), addr.clone()))
            .await?;
        if let Some(replaced) = outcome.replaced {
            self.bus
                .publish(
                    &replaced.addr.node,
                    Delivery::Close {
                        conn: replaced.addr.conn,
                        condition: StreamErrorCondition::Conflict,
                        text: Some("replaced by a new session".into()),
                    },
                )
                .await?;
        }
        Ok(jid)
    }

    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<()> {
        self.registry.unbind(jid, addr).await?;
        self.unbound.lock().push(jid.clone());
        Ok(())
    }

    async fn route(
        &self,
        _origin: Origin,
        stanza: Element,
        routed_at: Option<std::time::SystemTime>,
    ) -> ApiResult<()> {
        self.routed.lock().push(stanza.clone());
        if stanza.attr("to") == Some("fail@example.com") {
            return Err(ApiError::Unavailable("the test router refuses".into()));
        }
        if let Some(to) = stanza.attr("to").and_then(|to| to.parse::<FullJid>().ok()) {
            if let Some(record) = self.registry.session(&to).await? {
                self.bus
                    .publish(
                        &record.addr.node,
                        Delivery::Stanza {
                            recipients: vec![Recipient::conn(record.addr.conn)],
                            stanza: Arc::new(stanza),
                            // As the real router does: the time the edge handed it over.
                            routed_at,
                        },
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn undeliverable(&self, stanza: Element, _failed: &SessionAddr) -> ApiResult<()> {
        self.undeliverable.lock().push(stanza);
        Ok(())
    }
}

// ---------------------------------------------------------------- server

static NEXT_DIRECTORY: AtomicU64 = AtomicU64::new(0);

pub struct TestServer {
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
    /// The HTTP listener serving the connection-manager's WebSocket routes.
    pub http: SocketAddr,
    pub node_id: String,
    pub router: Arc<TestRouter>,
    pub storage: Arc<dyn StorageApi>,
    /// The in-test storage, when the server runs on it.
    pub fake_storage: Option<Arc<FakeStorage>>,
    pub bus: Arc<InProcessBus>,
    pub data_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), CmError>>>,
}

pub fn config(configure: impl FnOnce(&mut CmConfig)) -> CmConfig {
    let data_dir = std::env::temp_dir().join(format!(
        "starling-cm-test-{}-{}",
        std::process::id(),
        NEXT_DIRECTORY.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut config = CmConfig {
        node_id: "cm-test".into(),
        domain: DOMAIN.into(),
        c2s_addr: Some("127.0.0.1:0".parse().unwrap()),
        c2s_tls_addr: Some("127.0.0.1:0".parse().unwrap()),
        component_addr: None,
        s2s_addr: None,
        s2s_tls_addr: None,
        s2s: Default::default(),
        components: Vec::new(),
        tls: TlsSettings {
            cert_path: None,
            key_path: None,
            data_dir,
        },
        limits: CmLimits {
            stanzas_per_second: 0,
            ..CmLimits::default()
        },
        registration_enabled: true,
        csi_enabled: true,
        sasl2_enabled: false,
        carbons_enabled: true,
        fast_token_ttl_secs: 0,
        require_tls: true,
        proxies: Default::default(),
        drain_window: starling_connection_manager::DEFAULT_DRAIN_WINDOW,
        sm: Default::default(),
        metrics: Default::default(),
    };
    configure(&mut config);
    config
}

impl TestServer {
    /// A server on the in-test storage.
    pub async fn start(configure: impl FnOnce(&mut CmConfig)) -> TestServer {
        let fake = Arc::new(FakeStorage::default());
        let mut server = TestServer::start_with_storage(fake.clone(), configure).await;
        server.fake_storage = Some(fake);
        server
    }

    pub async fn start_with_storage(
        storage: Arc<dyn StorageApi>,
        configure: impl FnOnce(&mut CmConfig),
    ) -> TestServer {
        let config = config(configure);
        let data_dir = config.tls.data_dir.clone();
        let node_id = config.node_id.clone();
        let bus = Arc::new(InProcessBus::new());
        let router = Arc::new(TestRouter::new(Arc::clone(&bus)));
        let manager =
            ConnectionManager::new(config, router.clone(), storage.clone(), bus.clone(), None)
                .unwrap();
        let bound = manager.bind().await.unwrap();
        let addrs: HashMap<&str, SocketAddr> = bound.local_addrs().into_iter().collect();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let routes = bound.websocket_router();
        tokio::spawn(async move {
            let _ = axum::serve(
                http_listener,
                routes.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = shutdown_rx.await;
        }));
        TestServer {
            c2s: addrs["c2s"],
            c2s_tls: addrs["c2s_tls"],
            http,
            node_id,
            router,
            storage,
            fake_storage: None,
            bus,
            data_dir,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        }
    }

    /// Signal shutdown and wait for `run` to return.
    pub async fn shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("run returns")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn add_user(&self, localpart: &str, password: &str) {
        let user = BareJid::from_parts(Some(localpart), DOMAIN).unwrap();
        self.storage
            .create_account(&user, &credentials_for(password))
            .await
            .unwrap();
    }

    pub async fn has_user(&self, localpart: &str) -> bool {
        let user = BareJid::from_parts(Some(localpart), DOMAIN).unwrap();
        self.storage.credentials(&user).await.unwrap().is_some()
    }

    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("tls/cert.pem")).unwrap()
    }

    /// The connection id of a bound session.
    pub async fn conn_of(&self, jid: &str) -> u64 {
        let jid: FullJid = jid.parse().unwrap();
        self.router
            .registry
            .session(&jid)
            .await
            .unwrap()
            .expect("session bound")
            .addr
            .conn
    }

    pub async fn deliver(&self, conn: u64, stanza: Element) {
        self.bus
            .publish(
                &self.node_id,
                Delivery::Stanza {
                    recipients: vec![Recipient::conn(conn)],
                    stanza: Arc::new(stanza),
                    routed_at: None,
                },
            )
            .await
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

// ---------------------------------------------------------------- client

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Client {
    plain: Option<TcpStream>,
    io: Option<Box<dyn Io>>,
    received: String,
    cursor: usize,
    cert_pem: Vec<u8>,
    pending_bytes: Vec<u8>,
    /// The TLS session's tls-exporter data (RFC 9266) as this client
    /// computed it, and the certificate the server presented.
    pub tls_binding: Option<(Vec<u8>, Vec<u8>)>,
}

/// What channel binding needs of a client's TLS session.
fn tls_binding(connection: &rustls::ClientConnection) -> (Vec<u8>, Vec<u8>) {
    let exporter = connection
        .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
        .unwrap();
    let certificate = connection.peer_certificates().unwrap()[0].to_vec();
    (exporter, certificate)
}

pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

fn tls_client_config(cert_pem: &[u8], alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut &cert_pem[..]) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Arc::new(config)
}

impl Client {
    pub async fn connect(server: &TestServer) -> Client {
        let tcp = TcpStream::connect(server.c2s).await.unwrap();
        Client {
            plain: Some(tcp),
            io: None,
            received: String::new(),
            cursor: 0,
            cert_pem: server.cert_pem(),
            pending_bytes: Vec::new(),
            tls_binding: None,
        }
    }

    /// Connect to the direct TLS port (XEP-0368) with ALPN `xmpp-client`.
    pub async fn connect_direct_tls(server: &TestServer) -> Client {
        let tcp = TcpStream::connect(server.c2s_tls).await.unwrap();
        let config = tls_client_config(&server.cert_pem(), Some(b"xmpp-client"));
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"xmpp-client"[..]));
        let binding = tls_binding(tls.get_ref().1);
        Client {
            plain: None,
            io: Some(Box::new(tls)),
            received: String::new(),
            cursor: 0,
            cert_pem: server.cert_pem(),
            pending_bytes: Vec::new(),
            tls_binding: Some(binding),
        }
    }

    fn io(&mut self) -> &mut (dyn Io + '_) {
        match (&mut self.io, &mut self.plain) {
            (Some(io), _) => io.as_mut(),
            (None, Some(plain)) => plain,
            _ => panic!("no connection"),
        }
    }

    pub async fn send(&mut self, xml: &str) {
        self.send_bytes(xml.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let io = self.io();
        io.write_all(bytes).await.unwrap();
        io.flush().await.unwrap();
    }

    /// Read until `pattern` appears after what was already consumed; return
    /// everything up to and including it.
    pub async fn read_until(&mut self, pattern: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(position) = self.received[self.cursor..].find(pattern) {
                let end = self.cursor + position + pattern.len();
                let out = self.received[self.cursor..end].to_string();
                self.cursor = end;
                return out;
            }
            let mut buffer = vec![0u8; 64 * 1024];
            let read = tokio::time::timeout_at(deadline, self.io().read(&mut buffer)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    panic!(
                        "connection closed while waiting for {pattern:?}; got {:?}",
                        &self.received[self.cursor..]
                    )
                }
                Ok(Ok(count)) => {
                    self.pending_bytes.extend_from_slice(&buffer[..count]);
                    let valid = match std::str::from_utf8(&self.pending_bytes) {
                        Ok(text) => text.len(),
                        Err(error) => error.valid_up_to(),
                    };
                    let text =
                        String::from_utf8(self.pending_bytes.drain(..valid).collect()).unwrap();
                    self.received.push_str(&text);
                }
                Err(_) => panic!(
                    "timed out waiting for {pattern:?}; got {:?}",
                    &self.received[self.cursor..]
                ),
            }
        }
    }

    /// Read until the server closes the connection; return what came after the cursor.
    pub async fn read_to_close(&mut self) -> String {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, async {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match self.io().read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(count) => rest.extend_from_slice(&buffer[..count]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the server did not close the connection");
        let mut out = self.received[self.cursor..].to_string();
        out.push_str(&String::from_utf8_lossy(&rest));
        self.cursor = self.received.len();
        out
    }

    /// Open a stream and read its features.
    pub async fn open(&mut self) -> String {
        self.send(HEADER).await;
        self.read_until("</stream:features>").await
    }

    pub async fn starttls(&mut self) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        self.read_until("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let tcp = self.plain.take().expect("plain connection");
        let connector = tokio_rustls::TlsConnector::from(tls_client_config(&self.cert_pem, None));
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        self.tls_binding = Some(tls_binding(tls.get_ref().1));
        self.io = Some(Box::new(tls));
    }

    /// STARTTLS and the new stream's features.
    pub async fn secure(&mut self) -> String {
        self.open().await;
        self.starttls().await;
        self.open().await
    }

    /// Read the next top-level element the server sends (a SASL
    /// `<challenge>`, `<success>` or `<failure>`, or a stream error).
    pub async fn read_sasl(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(element) = self.earliest_sasl_element() {
                return element;
            }
            let mut buffer = vec![0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.io().read(&mut buffer)).await {
                Ok(Ok(count)) if count > 0 => self
                    .received
                    .push_str(&String::from_utf8_lossy(&buffer[..count])),
                _ => panic!("no sasl answer; got {:?}", &self.received[self.cursor..]),
            }
        }
    }

    fn earliest_sasl_element(&mut self) -> Option<String> {
        let pending = &self.received[self.cursor..];
        let start = pending.find('<')?;
        let rest = &pending[start..];
        let name_end = rest.find([' ', '>', '/'])?;
        let name = &rest[1..name_end];
        let open_end = rest.find('>')?;
        let end = if rest[..open_end].ends_with('/') {
            open_end + 1
        } else {
            let close = format!("</{name}>");
            rest.find(&close)? + close.len()
        };
        let element = rest[..end].to_string();
        self.cursor += start + end;
        Some(element)
    }

    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        match resource {
            Some(resource) => {
                self.send(&format!(
                    "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
                ))
                .await
            }
            None => self.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").await,
        }
        let reply = self.read_until("</iq>").await;
        let jid = text_between(&reply, "<jid>", "</jid>")
            .unwrap_or_else(|| panic!("bind failed: {reply}"));
        jid.to_string()
    }

    pub async fn scram(
        &mut self,
        hash: ScramTestHash,
        username: &str,
        password: &str,
    ) -> Result<(), String> {
        self.scram_bound(hash.name(), hash, "n,,", b"", username, password)
            .await
    }

    /// SCRAM with any mechanism name, gs2 header and channel binding data
    /// (the -PLUS mechanisms, RFC 5802 section 6).
    pub async fn scram_bound(
        &mut self,
        mechanism: &str,
        hash: ScramTestHash,
        gs2_header: &str,
        channel_binding: &[u8],
        username: &str,
        password: &str,
    ) -> Result<(), String> {
        let client_nonce = "ClientNonce0123456789";
        let client_first_bare = format!("n={username},r={client_nonce}");
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
            b64(format!("{gs2_header}{client_first_bare}").as_bytes())
        ))
        .await;
        let challenge = self.read_sasl().await;
        if !challenge.starts_with("<challenge") {
            return Err(challenge);
        }
        let server_first = String::from_utf8(unb64(
            text_between(&challenge, "'>", "</challenge>").unwrap(),
        ))
        .unwrap();
        let mut cbind_input = gs2_header.as_bytes().to_vec();
        cbind_input.extend_from_slice(channel_binding);
        let (client_final, server_signature) =
            hash.client_final_bound(password, &client_first_bare, &server_first, &cbind_input);
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64(client_final.as_bytes())
        ))
        .await;
        let answer = self.read_sasl().await;
        if !answer.starts_with("<success") {
            return Err(answer);
        }
        let additional =
            String::from_utf8(unb64(text_between(&answer, "'>", "</success>").unwrap())).unwrap();
        // Mutual authentication: the server proves it knows the ServerKey.
        assert_eq!(additional, format!("v={}", b64(&server_signature)));
        Ok(())
    }

    pub async fn plain(&mut self, username: &str, password: &str) -> Result<(), String> {
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            b64(format!("\0{username}\0{password}").as_bytes())
        ))
        .await;
        let answer = self.read_sasl().await;
        if answer.starts_with("<success") {
            Ok(())
        } else {
            Err(answer)
        }
    }

    /// STARTTLS, SCRAM-SHA-256, restart, bind.
    pub async fn login(
        server: &TestServer,
        username: &str,
        password: &str,
        resource: Option<&str>,
    ) -> (Client, String) {
        let mut client = Client::connect(server).await;
        client.secure().await;
        client
            .scram(ScramTestHash::Sha256, username, password)
            .await
            .unwrap();
        let features = client.open().await;
        assert!(
            features.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
            "{features}"
        );
        let jid = client.bind(resource).await;
        (client, jid)
    }
}

pub fn text_between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(data: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap()
}

// ---------------------------------------------------------------- scram client

#[derive(Debug, Clone, Copy)]
pub enum ScramTestHash {
    Sha1,
    Sha256,
}

impl ScramTestHash {
    pub fn name(self) -> &'static str {
        match self {
            ScramTestHash::Sha1 => "SCRAM-SHA-1",
            ScramTestHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramTestHash::Sha1 => {
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramTestHash::Sha256 => {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramTestHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            ScramTestHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramTestHash::Sha1 => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password.as_bytes(), salt, iterations, &mut out);
                out
            }
            ScramTestHash::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                    password.as_bytes(),
                    salt,
                    iterations,
                    &mut out,
                );
                out
            }
        }
    }

    /// The client-final-message and the ServerSignature to expect.
    pub fn client_final(
        self,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        self.client_final_bound(password, client_first_bare, server_first, b"n,,")
    }

    /// The same with `c=` carrying `cbind_input` (gs2 header and channel binding data).
    pub fn client_final_bound(
        self,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        cbind_input: &[u8],
    ) -> (String, Vec<u8>) {
        let nonce = text_between(server_first, "r=", ",").unwrap();
        let salt = unb64(text_between(server_first, ",s=", ",").unwrap());
        // Optional extensions may follow (RFC 5802 section 7; XEP-0474's h=).
        let iterations: u32 = server_first
            .split(',')
            .find_map(|attribute| attribute.strip_prefix("i="))
            .unwrap()
            .parse()
            .unwrap();
        let salted = self.salted_password(password, &salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        let stored_key = self.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", b64(cbind_input));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = self.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = self.hmac(&salted, b"Server Key");
        let server_signature = self.hmac(&server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", b64(&proof)),
            server_signature,
        )
    }
}
