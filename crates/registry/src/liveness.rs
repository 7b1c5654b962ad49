//! Node liveness (DESIGN.md "Redis layout", `node:{id}`; "Dead nodes"): a
//! connection-manager keeps a key with a short TTL alive; when it stops
//! refreshing it, the key expires and the janitor declares the node dead.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::Script;
use starling_redis_client::{redis, RedisClient};
use tokio::sync::watch;
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

/// Keeps `node:{id}` alive while it exists; `stop()` or drop deletes the key.
pub struct NodeLiveness {
    client: RedisClient,
    node_key: String,
    token: String,
    refresher: Option<JoinHandle<()>>,
    key_lost_rx: watch::Receiver<u64>,
}

pub(crate) fn random_token() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

impl NodeLiveness {
    /// Set `node:{node_id}` with a TTL of `ttl` and refresh it every `ttl / 3`
    /// from a task (the first write happens at once, from the task).
    pub fn spawn(client: RedisClient, node_id: String, ttl: Duration) -> NodeLiveness {
        let node_key = client.node_key(&node_id);
        let token = random_token();
        let (key_lost_tx, key_lost_rx) = watch::channel(0u64);
        let refresher = tokio::spawn(refresh_loop(
            client.clone(),
            node_id,
            node_key.clone(),
            token.clone(),
            ttl,
            key_lost_tx,
        ));
        NodeLiveness {
            client,
            node_key,
            token,
            refresher: Some(refresher),
            key_lost_rx,
        }
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

    /// Stop refreshing and delete the key (the node leaves the cluster).
    pub async fn stop(mut self) -> Result<(), RegistryError> {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
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
) {
    let node_id: Arc<str> = node_id.into();
    let script = Script::new(REFRESH_SCRIPT);
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let mut ticker = tokio::time::interval((ttl / 3).max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first_write = true;
    loop {
        ticker.tick().await;
        let mut connection = client.connection();
        let outcome: Result<i64, _> = client
            .timed(
                starling_redis_client::RedisOperation::LivenessRefresh,
                script
                    .key(&node_key)
                    .arg(&token)
                    .arg(ttl_ms)
                    .invoke_async(&mut connection),
            )
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
