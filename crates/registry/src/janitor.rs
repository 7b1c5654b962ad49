//! The janitor (DESIGN.md "Dead nodes"): one leader in the cluster, chosen
//! by a Redis lock (`SET NX PX`, refreshed while held), removes the sessions
//! of nodes whose `node:{id}` key expired, so that their contacts receive
//! unavailable presence (RFC 6121 section 4.5.2, through `on_dead_session`).
//!
//! A sweep is idempotent and safe to run twice at once: each session is removed
//! by the atomic unbind script, only if the record still points at the dead
//! node and connection, and `on_dead_session` runs only for the sweep whose
//! script removed it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::Script;
use starling_api::SessionRecord;
use starling_redis_client::{redis, RedisClient};
use tokio::task::JoinHandle;

use crate::liveness::{random_token, release, release_in_background};
use crate::redis::parse_node_index_entry;
use crate::{RedisRegistry, RegistryError};

/// Called once for every session the janitor removed.
pub type DeadSessionCallback = Arc<dyn Fn(SessionRecord) -> BoxFuture<'static, ()> + Send + Sync>;

/// KEYS: lock. ARGV: token, lease in ms. Take the lock if free, extend it if
/// ours; 1 when we hold it afterwards.
const ACQUIRE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// The running janitor; `stop()` or drop ends it and releases the lock.
pub struct Janitor {
    client: RedisClient,
    lock_key: String,
    token: String,
    leader: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Janitor {
    /// Every `interval`, try to be (or stay) the leader; the leader sweeps.
    /// The lock's lease is three intervals, so a leader that died is replaced
    /// within about three intervals.
    pub fn spawn(
        client: RedisClient,
        registry: Arc<RedisRegistry>,
        on_dead_session: DeadSessionCallback,
        interval: Duration,
    ) -> Janitor {
        let lock_key = client.janitor_lock_key();
        let token = random_token();
        let leader = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(leader_loop(
            client.clone(),
            registry,
            on_dead_session,
            interval.max(Duration::from_millis(10)),
            lock_key.clone(),
            token.clone(),
            leader.clone(),
        ));
        Janitor {
            client,
            lock_key,
            token,
            leader,
            task: Some(task),
        }
    }

    /// Whether this janitor held the lock at its last attempt.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Stop and release the lock, so another janitor takes over at once.
    pub async fn stop(mut self) -> Result<(), RegistryError> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        release(&self.client, &self.lock_key, &self.token).await
    }

    /// One sweep, leader or not: for each node in `nodes` whose liveness key
    /// is gone, remove each of its sessions (only if still at that node and
    /// connection) and call `on_dead_session` for each removed one. Returns how
    /// many sessions were removed. Safe to run concurrently with itself.
    pub async fn sweep(
        registry: &RedisRegistry,
        on_dead_session: &DeadSessionCallback,
    ) -> Result<usize, RegistryError> {
        let client = registry.client();
        let mut connection = client.connection();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(client.nodes_key())
            .query_async(&mut connection)
            .await?;
        let mut removed_count = 0;
        for node in nodes {
            let alive: bool = redis::cmd("EXISTS")
                .arg(client.node_key(&node))
                .query_async(&mut connection)
                .await?;
            if alive {
                continue;
            }
            let entries = registry.node_index(&node).await?;
            tracing::info!(node = %node, sessions = entries.len(), "removing the sessions of a dead node");
            for entry in entries {
                if let Some((conn, jid)) = parse_node_index_entry(&entry) {
                    let addr = starling_api::SessionAddr {
                        node: node.clone(),
                        conn,
                    };
                    if detach_resumable(registry, &jid, &addr).await? {
                        // Its stream waits for a resumption on another node
                        // (XEP-0198): the session stays, nobody sees it leave.
                        continue;
                    }
                    if let Some(record) = registry.unbind_record(&jid, &addr).await? {
                        removed_count += 1;
                        on_dead_session(record).await;
                    }
                }
                redis::cmd("SREM")
                    .arg(client.node_sessions_key(&node))
                    .arg(&entry)
                    .query_async::<()>(&mut connection)
                    .await?;
            }
            forget_node_if_empty(client, &node).await?;
        }
        Ok(removed_count)
    }
}

/// A dead node's session whose stream is resumable is detached instead of
/// removed: its resumption state is marked detached (its timeout starts now)
/// and its record moves to the detached pseudo-node, where stanzas for it are
/// parked. True when it was detached.
async fn detach_resumable(
    registry: &RedisRegistry,
    jid: &starling_jid::FullJid,
    addr: &starling_api::SessionAddr,
) -> Result<bool, RegistryError> {
    use starling_api::{ResumptionStore, SessionRegistry};
    let record = match registry.session(jid).await {
        Ok(Some(record)) if &record.addr == addr => record,
        _ => return Ok(false),
    };
    let Some(id) = record.resumption.as_deref() else {
        return Ok(false);
    };
    let store = crate::RedisResumption::new(registry.client().clone());
    let detached = store.detach(id, addr, true).await.unwrap_or(false);
    if !detached {
        return Ok(false);
    }
    let to = starling_api::resumption::detached_addr(addr.conn);
    let moved = registry.relocate(jid, addr, &to).await.unwrap_or(false);
    tracing::info!(jid = %jid, node = %addr.node, moved, "a dead node's resumable stream detached");
    Ok(moved)
}

/// Remove a dead node from `nodes` when it has no indexed session left. A
/// bind writes its index entry BEFORE adding its node to `nodes`, so checking
/// the index (and liveness) AFTER the SREM and putting the node back when
/// either shows up never loses a node that binds concurrently.
async fn forget_node_if_empty(client: &RedisClient, node: &str) -> Result<(), RegistryError> {
    let mut connection = client.connection();
    redis::cmd("SREM")
        .arg(client.nodes_key())
        .arg(node)
        .query_async::<()>(&mut connection)
        .await?;
    let indexed: u64 = redis::cmd("SCARD")
        .arg(client.node_sessions_key(node))
        .query_async(&mut connection)
        .await?;
    let alive: bool = redis::cmd("EXISTS")
        .arg(client.node_key(node))
        .query_async(&mut connection)
        .await?;
    if indexed > 0 || alive {
        redis::cmd("SADD")
            .arg(client.nodes_key())
            .arg(node)
            .query_async::<()>(&mut connection)
            .await?;
    }
    Ok(())
}

impl Drop for Janitor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            release_in_background(&self.client, &self.lock_key, &self.token);
        }
    }
}

async fn leader_loop(
    client: RedisClient,
    registry: Arc<RedisRegistry>,
    on_dead_session: DeadSessionCallback,
    interval: Duration,
    lock_key: String,
    token: String,
    leader: Arc<AtomicBool>,
) {
    let acquire = Script::new(ACQUIRE_SCRIPT);
    let lease_ms = (interval * 3).as_millis() as u64;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut connection = client.connection();
        let held: Result<i64, _> = acquire
            .key(&lock_key)
            .arg(&token)
            .arg(lease_ms)
            .invoke_async(&mut connection)
            .await;
        match held {
            Ok(1) => {
                if !leader.swap(true, Ordering::SeqCst) {
                    tracing::info!("janitor became leader");
                }
            }
            Ok(_) => {
                if leader.swap(false, Ordering::SeqCst) {
                    tracing::warn!("janitor lost its leadership");
                }
                continue;
            }
            Err(error) => {
                leader.store(false, Ordering::SeqCst);
                tracing::warn!(error = %error, "janitor lock attempt failed");
                continue;
            }
        }
        match Janitor::sweep(&registry, &on_dead_session).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "janitor removed the sessions of dead nodes"),
            Err(error) => tracing::warn!(error = %error, "janitor sweep failed"),
        }
    }
}
