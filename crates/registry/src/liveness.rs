//! Node liveness (DESIGN.md "Redis layout", `node:{id}`; "Dead nodes"): a
//! connection-manager keeps a key with a short TTL alive; when it stops
//! refreshing it, the key expires and the janitor declares the node dead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::Script;
use starling_redis_client::{redis, RedisClient};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::RegistryError;

/// KEYS: node. ARGV: token, ttl in ms. Set the key; answer 1 when it held our
/// token, 2 when it held another's (two processes with one node id), 0 when it was gone.
const REFRESH_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if current == ARGV[1] then return 1 end
if current then return 2 end
return 0
";

/// KEYS: key. ARGV: token. Delete the key if it holds the token.
pub(crate) const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Keeps `node:{id}` alive while it exists, and the node in `nodes` (the
/// cluster membership the admin API lists); while the node drains, keeps
/// `nodedrain:{id}` with the same TTL. `stop()` or drop deletes both keys.
pub struct NodeLiveness {
    client: RedisClient,
    node_key: String,
    drain_key: String,
    token: String,
    refresher: Option<JoinHandle<()>>,
    key_lost_rx: watch::Receiver<u64>,
    drain: DrainMarker,
}

/// Marks the node as draining in Redis (`nodedrain:{id}`), from any task.
#[derive(Clone, Default)]
pub struct DrainMarker {
    /// Unix time in milliseconds the drain started; 0 while not draining.
    since_unix_ms: Arc<AtomicU64>,
    wake: Arc<Notify>,
}

impl DrainMarker {
    /// From now on the node is draining: the marker is written at once and
    /// refreshed with the liveness key.
    pub fn mark(&self, since_unix_ms: u64) {
        self.since_unix_ms
            .store(since_unix_ms.max(1), Ordering::SeqCst);
        self.wake.notify_one();
    }
}

pub(crate) fn random_token() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

impl NodeLiveness {
    /// Set `node:{node_id}` with a TTL of `ttl` and refresh it every `ttl / 3`
    /// from a task (the first write happens at once, from the task).
    pub fn spawn(client: RedisClient, node_id: String, ttl: Duration) -> NodeLiveness {
        let node_key = client.node_key(&node_id);
        let drain_key = client.node_drain_key(&node_id);
        let token = random_token();
        let (key_lost_tx, key_lost_rx) = watch::channel(0u64);
        let drain = DrainMarker::default();
        let refresher = tokio::spawn(refresh_loop(
            client.clone(),
            node_id,
            node_key.clone(),
            token.clone(),
            ttl,
            key_lost_tx,
            drain.clone(),
        ));
        NodeLiveness {
            client,
            node_key,
            drain_key,
            token,
            refresher: Some(refresher),
            key_lost_rx,
            drain,
        }
    }

    /// The handle that marks this node as draining.
    pub fn drain_marker(&self) -> DrainMarker {
        self.drain.clone()
    }

    /// Whether `node:{node_id}` exists, that is the node is alive.
    pub async fn is_alive(client: &RedisClient, node_id: &str) -> Result<bool, RegistryError> {
        let mut connection = client.connection();
        let exists: bool = redis::cmd("EXISTS")
            .arg(client.node_key(node_id))
            .query_async(&mut connection)
            .await?;
        Ok(exists)
    }

    /// Counts the times a refresh found the key gone although this node kept
    /// it alive: Redis restarted (or the node stalled past its TTL and may have
    /// been declared dead). The connection-manager watches it and calls
    /// `RedisRegistry::reregister` with its live sessions.
    pub fn key_lost(&self) -> watch::Receiver<u64> {
        self.key_lost_rx.clone()
    }

    /// Stop refreshing WITHOUT deleting the key, as a crashed node does.
    #[cfg(test)]
    pub(crate) fn halt_as_if_crashed(mut self) {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
    }

    /// Stop refreshing and delete the keys (the node leaves the cluster).
    pub async fn stop(mut self) -> Result<(), RegistryError> {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
        if self.drain.since_unix_ms.load(Ordering::SeqCst) > 0 {
            let mut connection = self.client.connection();
            redis::cmd("DEL")
                .arg(&self.drain_key)
                .query_async::<()>(&mut connection)
                .await?;
        }
        release(&self.client, &self.node_key, &self.token).await
    }
}

pub(crate) async fn release(
    client: &RedisClient,
    key: &str,
    token: &str,
) -> Result<(), RegistryError> {
    let mut connection = client.connection();
    Script::new(RELEASE_SCRIPT)
        .key(key)
        .arg(token)
        .invoke_async::<()>(&mut connection)
        .await?;
    Ok(())
}

/// Release `key` from a destructor: on the current runtime, if there is one.
pub(crate) fn release_in_background(client: &RedisClient, key: &str, token: &str) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (client, key, token) = (client.clone(), key.to_string(), token.to_string());
    runtime.spawn(async move {
        if let Err(error) = release(&client, &key, &token).await {
            tracing::warn!(key = %key, error = %error, "could not release a redis key");
        }
    });
}

impl Drop for NodeLiveness {
    fn drop(&mut self) {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
            release_in_background(&self.client, &self.node_key, &self.token);
        }
    }
}

async fn refresh_loop(
    client: RedisClient,
    node_id: String,
    node_key: String,
    token: String,
    ttl: Duration,
    key_lost_tx: watch::Sender<u64>,
    drain: DrainMarker,
) {
    let node_id: Arc<str> = node_id.into();
    let drain_key = client.node_drain_key(&node_id);
    let nodes_key = client.nodes_key();
    let script = Script::new(REFRESH_SCRIPT);
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let mut ticker = tokio::time::interval((ttl / 3).max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first_write = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // A drain started: write its marker now, not at the next tick.
            _ = drain.wake.notified() => {}
        }
        let mut connection = client.connection();
        let draining_since = drain.since_unix_ms.load(Ordering::SeqCst);
        if draining_since > 0 {
            if let Err(error) = redis::cmd("SET")
                .arg(&drain_key)
                .arg(draining_since)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut connection)
                .await
            {
                tracing::warn!(node = %node_id, error = %error, "node drain marker refresh failed");
            }
        }
        // Membership: a live node is listed even before it holds a session
        // (the janitor forgets it once it is dead and has none).
        if let Err(error) = redis::cmd("SADD")
            .arg(&nodes_key)
            .arg(&*node_id)
            .query_async::<()>(&mut connection)
            .await
        {
            tracing::warn!(node = %node_id, error = %error, "adding the node to the cluster membership failed");
        }
        let outcome: Result<i64, _> = script
            .key(&node_key)
            .arg(&token)
            .arg(ttl_ms)
            .invoke_async(&mut connection)
            .await;
        match outcome {
            Ok(1) => {}
            Ok(0) if first_write => {}
            Ok(0) => {
                tracing::warn!(node = %node_id, "node liveness key was gone: redis lost it or this node stalled");
                key_lost_tx.send_modify(|lost| *lost += 1);
            }
            Ok(_) => {
                tracing::error!(node = %node_id, "another process refreshes this node's liveness key: node ids must be unique");
            }
            Err(error) => {
                tracing::warn!(node = %node_id, error = %error, "node liveness refresh failed");
                continue;
            }
        }
        first_write = false;
    }
}
