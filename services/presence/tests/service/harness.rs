//! The pieces the presence service runs with, for real: MemoryRegistry,
//! InProcessBus (two fake connection-manager nodes, "cm1" and "cm2"), SQLite
//! storage in memory, and a router fake that records what it is handed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_api::{
    AccountStore, ApiResult, BindError, Origin, PresenceApi, RosterStore, RouterApi,
    ScramCredentials, SessionAddr, SessionRecord, SessionRegistry, StorageApi, StoredCredentials,
};
use starling_bus::{Bus, Delivery, DeliveryReceiver, InProcessBus, Recipient};
use starling_jid::{BareJid, FullJid};
use starling_presence::{PresenceConfig, PresenceService};
use starling_registry::MemoryRegistry;
use starling_storage::{Storage, StorageConfig};
use starling_xmpp::{parse_element, Element, Limits};

pub const DOMAIN: &str = "example.com";

/// Parse literal XML written in a test (a stanza as a client sends it).
pub fn xml(text: &str) -> Element {
    let mut element = parse_element(text.as_bytes(), &Limits::default()).expect("test XML parses");
    if element.namespace().is_empty() {
        element.set_namespace_deep(starling_xmpp::ns::CLIENT);
    }
    element
}

/// What the router fake was handed.
#[derive(Default)]
pub struct RecordingRouter {
    pub routed: Mutex<Vec<String>>,
    pub undeliverable: Mutex<Vec<String>>,
}

#[async_trait]
impl RouterApi for RecordingRouter {
    async fn bind(
        &self,
        _user: &BareJid,
        _requested: Option<&str>,
        _addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        Err(BindError::NotAllowed)
    }

    async fn unbind(&self, _jid: &FullJid, _addr: &SessionAddr) -> ApiResult<()> {
        Ok(())
    }

    async fn route(
        &self,
        origin: Origin,
        stanza: Element,
        _routed_at: Option<std::time::SystemTime>,
    ) -> ApiResult<()> {
        assert_eq!(
            origin,
            Origin::Server,
            "the presence service routes as the server"
        );
        self.routed.lock().push(stanza.to_stanza_xml());
        Ok(())
    }

    async fn undeliverable(&self, stanza: Element, _failed: &SessionAddr) -> ApiResult<()> {
        self.undeliverable.lock().push(stanza.to_stanza_xml());
        Ok(())
    }
}

/// A bound session of a test user.
#[derive(Debug, Clone)]
pub struct Session {
    pub jid: FullJid,
    pub addr: SessionAddr,
}

/// One envelope a node received.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub recipients: Vec<Recipient>,
    pub stanza: Arc<Element>,
    /// When the stanza that caused it entered the cluster.
    pub routed_at: Option<std::time::SystemTime>,
}

pub struct Harness {
    pub service: PresenceService,
    pub registry: Arc<MemoryRegistry>,
    pub storage: Arc<Storage>,
    pub router: Arc<RecordingRouter>,
    nodes: HashMap<&'static str, DeliveryReceiver>,
    sessions: Mutex<HashMap<(String, u64), FullJid>>,
    next_conn: AtomicU64,
    /// Each account's roster version at creation: versions in what sessions
    /// receive are shown relative to it, so tests read 'ver=1' for the first change.
    base_versions: HashMap<BareJid, u64>,
}

fn credentials() -> StoredCredentials {
    let keys = ScramCredentials {
        salt: vec![1; 16],
        iterations: 4096,
        stored_key: vec![2; 20],
        server_key: vec![3; 20],
    };
    let keys256 = ScramCredentials {
        salt: vec![1; 16],
        iterations: 4096,
        stored_key: vec![2; 32],
        server_key: vec![3; 32],
    };
    StoredCredentials {
        sha1: keys,
        sha256: keys256,
    }
}

impl Harness {
    /// The service for example.com with accounts alice, bob and carol.
    pub async fn new() -> Self {
        let registry = Arc::new(MemoryRegistry::new());
        let bus = Arc::new(InProcessBus::new());
        let storage = Arc::new(
            Storage::connect(&StorageConfig {
                url: "sqlite::memory:".into(),
                ..Default::default()
            })
            .await
            .expect("sqlite in memory"),
        );
        let router = Arc::new(RecordingRouter::default());
        let mut nodes = HashMap::new();
        let mut base_versions = HashMap::new();
        for node in ["cm1", "cm2"] {
            nodes.insert(node, bus.subscribe(node).await.unwrap());
        }
        for user in ["alice", "bob", "carol"] {
            let jid: BareJid = format!("{user}@{DOMAIN}").parse().unwrap();
            storage.create_account(&jid, &credentials()).await.unwrap();
            let (version, _) = storage.roster(&jid).await.unwrap();
            base_versions.insert(jid, version);
        }
        let service = PresenceService::new(
            PresenceConfig {
                domain: DOMAIN.into(),
                stored_stanza_limits: starling_xmpp::Limits::default().for_server_copies(),
                max_directed_presences: 1000,
            },
            Arc::clone(&registry) as Arc<dyn SessionRegistry>,
            bus as Arc<dyn Bus>,
            Arc::clone(&storage) as Arc<dyn StorageApi>,
            Arc::clone(&router) as Arc<dyn RouterApi>,
        );
        Harness {
            service,
            registry,
            storage,
            router,
            nodes,
            sessions: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            base_versions,
        }
    }

    /// The absolute roster version `changes` changes after the account's creation.
    pub fn version(&self, user: &str, changes: u64) -> u64 {
        let user: BareJid = user.parse().unwrap();
        self.base_versions[&user] + changes
    }

    /// Bind a session on a node, as the router would.
    pub async fn bind(&self, full_jid: &str, node: &str) -> Session {
        let jid: FullJid = full_jid.parse().unwrap();
        let addr = SessionAddr {
            node: node.into(),
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
        };
        self.registry
            .bind(SessionRecord::new(jid.clone(), addr.clone()))
            .await
            .unwrap();
        self.sessions
            .lock()
            .insert((addr.node.clone(), addr.conn), jid.clone());
        Session { jid, addr }
    }

    /// Stamp `from` as the connection-manager does and hand the presence over.
    pub async fn presence(&self, session: &Session, text: &str) {
        let mut stanza = xml(text);
        stanza.set_attr("from", session.jid.to_string());
        self.service
            .outbound_presence(&session.jid, &session.addr, stanza, None)
            .await
            .unwrap();
    }

    pub async fn roster_iq(&self, session: &Session, text: &str) {
        let mut stanza = xml(text);
        stanza.set_attr("from", session.jid.to_string());
        self.service
            .roster_iq(&session.jid, &session.addr, stanza, None)
            .await
            .unwrap();
    }

    /// A session that fetched its roster and sent initial presence; what it received is drained.
    pub async fn online(&mut self, full_jid: &str, node: &str) -> Session {
        let session = self.bind(full_jid, node).await;
        self.roster_iq(
            &session,
            "<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
        self.presence(&session, "<presence/>").await;
        self.drain_all();
        session
    }

    /// Every envelope a node received since the last drain.
    pub fn envelopes(&mut self, node: &str) -> Vec<Envelope> {
        let receiver = self.nodes.get_mut(node).expect("a test node");
        let mut envelopes = Vec::new();
        while let Ok(delivery) = receiver.try_recv() {
            match delivery {
                Delivery::Stanza {
                    recipients,
                    stanza,
                    routed_at,
                } => envelopes.push(Envelope {
                    recipients,
                    stanza,
                    routed_at,
                }),
                Delivery::Close { .. } => panic!("the presence service closes no stream"),
                Delivery::Drain { .. } => panic!("the presence service drains no node"),
                Delivery::Undecodable { .. } => panic!("an in-process bus decodes nothing"),
            }
        }
        envelopes
    }

    /// What each session on a node received, in order, as
    /// "full-jid <stanza with the recipient's to>"; push ids read 'push'.
    pub fn received(&mut self, node: &str) -> Vec<String> {
        let envelopes = self.envelopes(node);
        let sessions = self.sessions.lock().clone();
        let mut lines = Vec::new();
        for envelope in envelopes {
            for recipient in &envelope.recipients {
                let mut stanza = (*envelope.stanza).clone();
                if let Some(to) = &recipient.to {
                    stanza.set_attr("to", to.clone());
                }
                if stanza.attr("id").is_some_and(|id| id.starts_with("push-")) {
                    stanza.set_attr("id", "push");
                }
                let session = sessions.get(&(node.to_string(), recipient.conn));
                if let Some(base) = session.and_then(|jid| self.base_versions.get(jid.bare())) {
                    if let Some(query) = stanza.get_child_mut("query", starling_xmpp::ns::ROSTER) {
                        if let Some(version) =
                            query.attr("ver").and_then(|ver| ver.parse::<u64>().ok())
                        {
                            query.set_attr("ver", version.saturating_sub(*base).to_string());
                        }
                    }
                }
                let session = session
                    .map(ToString::to_string)
                    .unwrap_or_else(|| format!("conn {}", recipient.conn));
                lines.push(format!("{session} {}", stanza.to_stanza_xml()));
            }
        }
        lines
    }

    /// Both nodes' deliveries, cm1 first.
    pub fn received_all(&mut self) -> Vec<String> {
        let mut lines = self.received("cm1");
        lines.extend(self.received("cm2"));
        lines
    }

    pub fn drain_all(&mut self) {
        self.envelopes("cm1");
        self.envelopes("cm2");
        self.router.routed.lock().clear();
    }

    pub fn routed(&self) -> Vec<String> {
        std::mem::take(&mut *self.router.routed.lock())
    }

    /// The roster as storage holds it, as roster item XML, placeholders marked.
    pub async fn roster_of(&self, user: &str) -> Vec<String> {
        let user: BareJid = user.parse().unwrap();
        let (_, items) = self.storage.roster(&user).await.unwrap();
        items
            .iter()
            .map(|item| {
                let mut line = starling_presence::roster::roster_item_element(item).to_stanza_xml();
                if item.pending_in {
                    line.push_str(" +pending-in");
                }
                if !item.in_roster {
                    line.push_str(" (placeholder)");
                }
                line
            })
            .collect()
    }

    /// Make `user` and `contact` subscribed both ways through the protocol,
    /// both with an available session; deliveries drained.
    pub async fn befriend(&mut self, user: &Session, contact: &Session) {
        let contact_bare = contact.jid.bare().to_string();
        let user_bare = user.jid.bare().to_string();
        self.presence(
            user,
            &format!("<presence to='{contact_bare}' type='subscribe'/>"),
        )
        .await;
        self.presence(
            contact,
            &format!("<presence to='{user_bare}' type='subscribed'/>"),
        )
        .await;
        self.presence(
            contact,
            &format!("<presence to='{user_bare}' type='subscribe'/>"),
        )
        .await;
        self.presence(
            user,
            &format!("<presence to='{contact_bare}' type='subscribed'/>"),
        )
        .await;
        self.drain_all();
    }
}
