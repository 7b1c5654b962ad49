//! Block lists (XEP-0191) as the router and the presence service read them
//! for every stanza: a bounded in-memory cache in front of the durable
//! [`BlockingStore`], so that routing a stanza costs no database read, and
//! kept true across the cluster by invalidation (DESIGN.md "Knowledge the
//! whole cluster needs": the lists live in the database, never only here).
//!
//! - A change ([`Blocklists::changed`], called after the store committed it)
//!   drops the account's entry here and, in the cluster, publishes the
//!   account's bare JID on the Redis channel `blocklists` (behind the key
//!   prefix); every session-router and presence process subscribes to it
//!   and drops its own entry. In `starling serve` the router and the
//!   presence service share one `Blocklists`: the local drop is all there is.
//! - Redis pub/sub is at-most-once: when the subscription connection drops
//!   or is made again, the whole cache is cleared (an invalidation may have
//!   been missed meanwhile), and every entry is reloaded at most
//!   [`ENTRY_TTL`] after it was read, a bound on staleness whatever happens.
//! - A read that races a change cannot put the old list back: every
//!   invalidation bumps an epoch, and a list loaded under an older epoch is
//!   returned but not cached.
//! - The cache holds at most [`MAX_CACHED_ITEMS`] addresses (an account
//!   with an empty list counts one); past that, entries are evicted.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts, Registry};
use starling_api::blocking::any_covers;
use starling_api::{ApiResult, BlockingStore};
use starling_jid::{BareJid, Jid};
use starling_redis_client::redis::{PushInfo, PushKind, Value};
use starling_redis_client::RedisClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::BusError;

/// How long a cached list is trusted without an invalidation.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);

/// The most addresses the cache holds, all accounts together.
pub const MAX_CACHED_ITEMS: usize = 200_000;

/// How often the invalidation subscription is pinged, so that a lost
/// connection is noticed (and the cache cleared) within a second.
const SUBSCRIPTION_KEEPALIVE: Duration = Duration::from_secs(1);

/// The Redis channel (behind the prefix) that carries invalidations.
const CHANNEL: &str = "blocklists";

/// Which way a stanza went, relative to the account whose list stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockDirection {
    /// From a blocked entity to the account (XEP-0191 section 3.3, inbound).
    Inbound,
    /// From the account to an entity it blocked.
    Outbound,
}

impl BlockDirection {
    fn label(self) -> &'static str {
        match self {
            BlockDirection::Inbound => "inbound",
            BlockDirection::Outbound => "outbound",
        }
    }
}

/// The blocking metrics (docs/operations.md); cheap to clone.
#[derive(Clone)]
pub struct BlockingMetrics {
    stanzas: IntCounterVec,
    cache: IntCounterVec,
    invalidations: IntCounterVec,
}

impl std::fmt::Debug for BlockingMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BlockingMetrics")
            .finish_non_exhaustive()
    }
}

impl Default for BlockingMetrics {
    fn default() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry takes every metric")
    }
}

impl BlockingMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let stanzas = IntCounterVec::new(
            Opts::new(
                "starling_blocking_stanzas_total",
                "Stanzas stopped by a block list (XEP-0191), by direction (inbound: from a blocked entity; outbound: to one), stanza kind and action (bounced: answered with the XEP's error; dropped: no answer allowed)",
            ),
            &["direction", "kind", "action"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "starling_blocking_cache_lookups_total",
                "Block list lookups by result: hit (from this process's cache) or miss (read from storage)",
            ),
            &["result"],
        )?;
        let invalidations = IntCounterVec::new(
            Opts::new(
                "starling_blocking_invalidations_total",
                "Block list cache invalidations by source: local (a change here), remote (announced by another process), reset (the invalidation channel was lost or made again: everything dropped)",
            ),
            &["source"],
        )?;
        registry.register(Box::new(stanzas.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(invalidations.clone()))?;
        Ok(BlockingMetrics {
            stanzas,
            cache,
            invalidations,
        })
    }
}

struct Entry {
    items: Arc<[Jid]>,
    loaded: Instant,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<BareJid, Entry>,
    /// Addresses held, an empty list counting one.
    weight: usize,
    /// Bumped by every invalidation (see the module documentation).
    epoch: u64,
}

fn weight_of(items: &[Jid]) -> usize {
    items.len().max(1)
}

impl CacheState {
    fn remove(&mut self, user: &BareJid) {
        if let Some(entry) = self.entries.remove(user) {
            self.weight -= weight_of(&entry.items);
        }
        self.epoch += 1;
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.weight = 0;
        self.epoch += 1;
    }

    fn insert(&mut self, user: BareJid, items: Arc<[Jid]>) {
        let weight = weight_of(&items);
        if weight > MAX_CACHED_ITEMS {
            return;
        }
        if let Some(previous) = self.entries.remove(&user) {
            self.weight -= weight_of(&previous.items);
        }
        if self.weight + weight > MAX_CACHED_ITEMS {
            // One pass evicts arbitrary entries down to seven eighths of the
            // budget (less the new entry): amortised O(1) per insert.
            let target = (MAX_CACHED_ITEMS - weight).min(MAX_CACHED_ITEMS - MAX_CACHED_ITEMS / 8);
            let mut held = self.weight;
            self.entries.retain(|_, entry| {
                if held <= target {
                    return true;
                }
                held -= weight_of(&entry.items);
                false
            });
            self.weight = held;
        }
        self.weight += weight;
        self.entries.insert(
            user,
            Entry {
                items,
                loaded: Instant::now(),
            },
        );
    }
}

/// Told when an account's entry is invalidated (`Some`), or every entry
/// (`None`: the subscription was lost or remade).
type InvalidationListener = Box<dyn Fn(Option<&BareJid>) + Send + Sync>;

/// The block lists of every account, cached (see the module documentation).
pub struct Blocklists {
    store: Arc<dyn BlockingStore>,
    state: Mutex<CacheState>,
    /// Other per-account caches of this process that follow the same
    /// invalidations (the router's archiving preferences, XEP-0441).
    listeners: Mutex<Vec<InvalidationListener>>,
    /// Where changes are announced to the other processes (the cluster).
    redis: Option<RedisClient>,
    metrics: BlockingMetrics,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Blocklists {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Blocklists")
            .field("cluster", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Blocklists {
    fn drop(&mut self) {
        for task in self.tasks.lock().iter() {
            task.abort();
        }
    }
}

impl Blocklists {
    /// The block lists of one process (`starling serve`, tests): changes are
    /// made through this value only, so nothing needs announcing.
    pub fn in_process(store: Arc<dyn BlockingStore>, metrics: BlockingMetrics) -> Arc<Self> {
        Arc::new(Blocklists {
            store,
            state: Mutex::default(),
            listeners: Mutex::default(),
            redis: None,
            metrics,
            tasks: Mutex::default(),
        })
    }

    /// The block lists of a cluster process: changes are announced on Redis
    /// and the announcements of the other processes are followed.
    pub async fn on_redis(
        store: Arc<dyn BlockingStore>,
        client: RedisClient,
        metrics: BlockingMetrics,
    ) -> Result<Arc<Self>, BusError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let mut subscriber = client.subscriber(push_tx).await?;
        let channel = client.key(CHANNEL);
        subscriber.subscribe(&channel).await?;
        let blocklists = Arc::new(Blocklists {
            store,
            state: Mutex::default(),
            listeners: Mutex::default(),
            redis: Some(client),
            metrics,
            tasks: Mutex::default(),
        });
        let follower = tokio::spawn(follow_invalidations(
            push_rx,
            channel,
            Arc::downgrade(&blocklists),
        ));
        let keepalive = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SUBSCRIPTION_KEEPALIVE);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = subscriber.ping().await {
                    tracing::warn!(%error, "block list invalidation connection lost, reconnecting");
                }
            }
        });
        blocklists.tasks.lock().extend([follower, keepalive]);
        Ok(blocklists)
    }

    /// Have `listener` told of every invalidation this cache follows (an
    /// account's, by [`Blocklists::changed`] here or in another process, or
    /// all of them), so that another per-account cache of the process stays
    /// as true across the cluster as this one.
    pub fn on_invalidation(&self, listener: impl Fn(Option<&BareJid>) + Send + Sync + 'static) {
        self.listeners.lock().push(Box::new(listener));
    }

    fn tell_listeners(&self, user: Option<&BareJid>) {
        for listener in self.listeners.lock().iter() {
            listener(user);
        }
    }

    /// The metrics this cache counts into.
    pub fn metrics(&self) -> &BlockingMetrics {
        &self.metrics
    }

    /// The addresses `user` blocked: from the cache, or read from storage
    /// (and cached) on a miss.
    pub async fn items(&self, user: &BareJid) -> ApiResult<Arc<[Jid]>> {
        let epoch = {
            let state = self.state.lock();
            if let Some(entry) = state.entries.get(user) {
                if entry.loaded.elapsed() < ENTRY_TTL {
                    self.metrics.cache.with_label_values(&["hit"]).inc();
                    return Ok(entry.items.clone());
                }
            }
            state.epoch
        };
        self.metrics.cache.with_label_values(&["miss"]).inc();
        let items: Arc<[Jid]> = match self.store.blocklist(user).await {
            Ok(items) => items.into_iter().map(|item| item.jid).collect(),
            Err(error) => {
                // Storage is down: an expired entry (never an invalidated
                // one, which is gone) is better than no list at all.
                if let Some(entry) = self.state.lock().entries.get(user) {
                    tracing::warn!(user = %user, %error, "block list not read, using the expired cached one");
                    return Ok(entry.items.clone());
                }
                return Err(error);
            }
        };
        let mut state = self.state.lock();
        if state.epoch == epoch {
            state.insert(user.clone(), items.clone());
        }
        Ok(items)
    }

    /// Whether `user` (a local account) blocked `address` (XEP-0191 section
    /// 3.3 matching). Only accounts have block lists: a domain-only JID never blocks.
    pub async fn blocks(&self, user: &BareJid, address: &Jid) -> ApiResult<bool> {
        if user.node().is_none() {
            return Ok(false);
        }
        Ok(any_covers(self.items(user).await?.iter(), address))
    }

    /// `user`'s list changed in storage: forget it here and tell the other
    /// processes. A failed announcement is logged; the other processes'
    /// entries then expire within [`ENTRY_TTL`].
    pub async fn changed(&self, user: &BareJid) {
        self.state.lock().remove(user);
        self.tell_listeners(Some(user));
        self.metrics
            .invalidations
            .with_label_values(&["local"])
            .inc();
        if let Some(client) = &self.redis {
            let channel = client.key(CHANNEL);
            if let Err(error) = client.publish(&channel, user.to_string().as_bytes()).await {
                tracing::warn!(user = %user, %error, "block list invalidation not announced");
            }
        }
    }

    /// Count a stanza a block list stopped.
    pub fn count_stopped(&self, direction: BlockDirection, kind: &str, bounced: bool) {
        self.metrics
            .stanzas
            .with_label_values(&[
                direction.label(),
                kind,
                if bounced { "bounced" } else { "dropped" },
            ])
            .inc();
    }

    fn invalidate_remote(&self, user: &BareJid) {
        self.state.lock().remove(user);
        self.tell_listeners(Some(user));
        self.metrics
            .invalidations
            .with_label_values(&["remote"])
            .inc();
    }

    fn reset(&self) {
        self.state.lock().clear();
        self.tell_listeners(None);
        self.metrics
            .invalidations
            .with_label_values(&["reset"])
            .inc();
    }

    #[cfg(test)]
    fn cached_weight(&self) -> usize {
        self.state.lock().weight
    }
}

fn bulk_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// Read the invalidation subscription until the cache is gone.
async fn follow_invalidations(
    mut push_rx: mpsc::UnboundedReceiver<PushInfo>,
    channel: String,
    blocklists: Weak<Blocklists>,
) {
    while let Some(push) = push_rx.recv().await {
        let Some(blocklists) = blocklists.upgrade() else {
            return;
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(from_channel), Some(payload)) = (
                    push.data.first().and_then(bulk_bytes),
                    push.data.get(1).and_then(bulk_bytes),
                ) else {
                    continue;
                };
                if from_channel != channel.as_bytes() {
                    continue;
                }
                match std::str::from_utf8(payload)
                    .ok()
                    .and_then(|text| text.parse::<BareJid>().ok())
                {
                    Some(user) => blocklists.invalidate_remote(&user),
                    // Not an address: forget everything rather than guess.
                    None => blocklists.reset(),
                }
            }
            // The connection dropped, or the subscription was made again
            // after one did: invalidations may have been missed.
            PushKind::Disconnection | PushKind::Subscribe | PushKind::SSubscribe => {
                blocklists.reset();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use starling_api::BlockedItem;

    #[derive(Default)]
    struct CountingStore {
        lists: Mutex<HashMap<BareJid, Vec<Jid>>>,
        reads: Mutex<usize>,
    }

    #[async_trait]
    impl BlockingStore for CountingStore {
        async fn blocklist(&self, user: &BareJid) -> ApiResult<Vec<BlockedItem>> {
            *self.reads.lock() += 1;
            Ok(self
                .lists
                .lock()
                .get(user)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(BlockedItem::new)
                .collect())
        }
        async fn block(&self, user: &BareJid, items: &[BlockedItem]) -> ApiResult<()> {
            self.lists
                .lock()
                .entry(user.clone())
                .or_default()
                .extend(items.iter().map(|item| item.jid.clone()));
            Ok(())
        }
        async fn unblock(&self, user: &BareJid, _jids: &[Jid]) -> ApiResult<Vec<Jid>> {
            Ok(self.lists.lock().remove(user).unwrap_or_default())
        }
    }

    fn bare(text: &str) -> BareJid {
        text.parse().expect("bare jid")
    }

    fn jid(text: &str) -> Jid {
        text.parse().expect("jid")
    }

    #[tokio::test]
    async fn listeners_follow_every_invalidation() {
        let store = Arc::new(CountingStore::default());
        let blocklists = Blocklists::in_process(store, BlockingMetrics::default());
        let told: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let record = told.clone();
        blocklists.on_invalidation(move |user| record.lock().push(user.map(ToString::to_string)));
        blocklists.changed(&bare("juliet@example.com")).await;
        blocklists.invalidate_remote(&bare("romeo@example.com"));
        blocklists.reset();
        assert_eq!(
            *told.lock(),
            [
                Some("juliet@example.com".to_string()),
                Some("romeo@example.com".to_string()),
                None
            ]
        );
    }

    #[tokio::test]
    async fn lists_are_read_once_until_they_change() {
        let store = Arc::new(CountingStore::default());
        let blocklists = Blocklists::in_process(store.clone(), BlockingMetrics::default());
        let juliet = bare("juliet@example.com");
        assert!(!blocklists
            .blocks(&juliet, &jid("romeo@example.net/x"))
            .await
            .unwrap());
        assert!(!blocklists
            .blocks(&juliet, &jid("iago@example.net"))
            .await
            .unwrap());
        assert_eq!(*store.reads.lock(), 1);

        store
            .block(&juliet, &[BlockedItem::new(jid("example.net"))])
            .await
            .unwrap();
        // Not yet announced: the cached (empty) list still answers.
        assert!(!blocklists
            .blocks(&juliet, &jid("iago@example.net"))
            .await
            .unwrap());
        blocklists.changed(&juliet).await;
        assert!(blocklists
            .blocks(&juliet, &jid("iago@example.net"))
            .await
            .unwrap());
        assert!(blocklists
            .blocks(&juliet, &jid("romeo@chat.example.net/y"))
            .await
            .unwrap());
        assert_eq!(*store.reads.lock(), 2);
        // A domain-only address has no block list.
        assert!(!blocklists
            .blocks(&bare("example.com"), &jid("example.net"))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bound() {
        let store = Arc::new(CountingStore::default());
        let blocklists = Blocklists::in_process(store, BlockingMetrics::default());
        for index in 0..(MAX_CACHED_ITEMS + 10) {
            blocklists
                .items(&bare(&format!("user{index}@example.com")))
                .await
                .unwrap();
        }
        assert!(blocklists.cached_weight() <= MAX_CACHED_ITEMS);
    }

    #[tokio::test]
    async fn a_reset_forgets_everything() {
        let store = Arc::new(CountingStore::default());
        let blocklists = Blocklists::in_process(store.clone(), BlockingMetrics::default());
        let juliet = bare("juliet@example.com");
        blocklists.items(&juliet).await.unwrap();
        blocklists.reset();
        assert_eq!(blocklists.cached_weight(), 0);
        blocklists.items(&juliet).await.unwrap();
        assert_eq!(*store.reads.lock(), 2);
    }
}
