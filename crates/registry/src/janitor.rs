//! The janitor (DESIGN.md "Dead nodes"): one leader in the cluster removes
//! the sessions of nodes whose `node:{id}` key expired, so that their contacts
//! receive unavailable presence (RFC 6121 section 4.5.2, through
//! `on_dead_session`).
//!
//! Who leads is a [`LeaderElection`]: the Redis lock here ([`RedisLock`],
//! `SET NX PX`, refreshed while held), or a Kubernetes `coordination.k8s.io`
//! Lease (crates/kubernetes, adapted in crates/server). The sweep is the same
//! whichever elects it.
//!
//! A sweep is idempotent and safe to run twice at once: each session is removed
//! by the atomic unbind script, only if the record still points at the dead
//! node and connection, and `on_dead_session` runs only for the sweep whose
//! script removed it. So two leaders for a moment (a lease that expired while
//! its holder was paused) cost a duplicate sweep, never a wrong one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use redis::Script;
use starling_api::SessionRecord;
use starling_redis_client::{redis, RedisClient};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::liveness::{random_token, release};
use crate::redis::parse_node_index_entry;
use crate::{RedisRegistry, RegistryError};

/// Called once for every session the janitor removed.
pub type DeadSessionCallback = Arc<dyn Fn(SessionRecord) -> BoxFuture<'static, ()> + Send + Sync>;

/// How one janitor among several becomes the leader. The janitor calls
/// [`acquire_or_renew`](LeaderElection::acquire_or_renew) every interval,
/// sweeps while it answers true, and calls [`release`](LeaderElection::release)
/// once when it stops.
#[async_trait]
pub trait LeaderElection: Send + 'static {
    /// Become the leader, or stay it: true when this candidate leads now and
    /// until at least its next attempt (an implementation renews well before
    /// its lease expires, and answers false once it may have expired).
    async fn acquire_or_renew(&mut self) -> Result<bool, RegistryError>;
    /// Give the leadership up (if held), so that another candidate takes over
    /// at its next attempt instead of waiting for the lease to expire.
    async fn release(&mut self) -> Result<(), RegistryError>;
    /// What elects: `"redis"` or `"kubernetes"` (logs and metrics).
    fn kind(&self) -> &'static str;
}

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

/// The Redis lock: a key holding a random token with a TTL (the lease),
/// taken only when free and extended only by its holder.
pub struct RedisLock {
    client: RedisClient,
    lock_key: String,
    token: String,
    lease: Duration,
    acquire: Script,
}

impl RedisLock {
    /// The janitor's lock of `client`'s cluster, with a TTL of `lease`.
    pub fn new(client: RedisClient, lease: Duration) -> RedisLock {
        RedisLock {
            lock_key: client.janitor_lock_key(),
            client,
            token: random_token(),
            lease,
            acquire: Script::new(ACQUIRE_SCRIPT),
        }
    }
}

#[async_trait]
impl LeaderElection for RedisLock {
    async fn acquire_or_renew(&mut self) -> Result<bool, RegistryError> {
        let mut connection = self.client.connection();
        let held: i64 = self
            .acquire
            .key(&self.lock_key)
            .arg(&self.token)
            .arg(self.lease.as_millis() as u64)
            .invoke_async(&mut connection)
            .await?;
        Ok(held == 1)
    }

    async fn release(&mut self) -> Result<(), RegistryError> {
        release(&self.client, &self.lock_key, &self.token).await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// The running janitor; `stop()` ends it and releases the leadership (drop
/// does too, from a task of the current runtime).
pub struct Janitor {
    leader: Arc<AtomicBool>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Janitor {
    /// Every `interval`, try to be (or stay) the leader by the Redis lock;
    /// the leader sweeps. The lock's lease is three intervals, so a leader
    /// that died is replaced within about three intervals.
    pub fn spawn(
        client: RedisClient,
        registry: Arc<RedisRegistry>,
        on_dead_session: DeadSessionCallback,
        interval: Duration,
    ) -> Janitor {
        let interval = interval.max(Duration::from_millis(10));
        let election = RedisLock::new(client, interval * 3);
        Janitor::spawn_elected(Box::new(election), registry, on_dead_session, interval)
    }

    /// Every `interval`, try to be (or stay) the leader by `election`; the
    /// leader sweeps. `interval` must be well under the election's lease.
    pub fn spawn_elected(
        election: Box<dyn LeaderElection>,
        registry: Arc<RedisRegistry>,
        on_dead_session: DeadSessionCallback,
        interval: Duration,
    ) -> Janitor {
        let leader = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(leader_loop(
            election,
            registry,
            on_dead_session,
            interval.max(Duration::from_millis(10)),
            leader.clone(),
            stop_rx,
        ));
        Janitor {
            leader,
            stop_tx: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Whether this janitor held the lock at its last attempt.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Stop (a sweep in progress is cut short: sweeps are idempotent) and
    /// release the leadership, so another janitor takes over at once.
    pub async fn stop(mut self) -> Result<(), RegistryError> {
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        Ok(())
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
        // The task releases the leadership and ends on its own.
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
    }
}

async fn leader_loop(
    mut election: Box<dyn LeaderElection>,
    registry: Arc<RedisRegistry>,
    on_dead_session: DeadSessionCallback,
    interval: Duration,
    leader: Arc<AtomicBool>,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let kind = election.kind();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let attempts = async {
        loop {
            ticker.tick().await;
            match election.acquire_or_renew().await {
                Ok(true) => {
                    if !leader.swap(true, Ordering::SeqCst) {
                        tracing::info!(election = kind, "janitor became leader");
                    }
                }
                Ok(false) => {
                    if leader.swap(false, Ordering::SeqCst) {
                        tracing::warn!(election = kind, "janitor lost its leadership");
                    }
                    continue;
                }
                Err(error) => {
                    if leader.swap(false, Ordering::SeqCst) {
                        tracing::warn!(election = kind, "janitor lost its leadership");
                    }
                    tracing::warn!(election = kind, error = %error, "janitor election attempt failed");
                    continue;
                }
            }
            match Janitor::sweep(&registry, &on_dead_session).await {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(removed, "janitor removed the sessions of dead nodes")
                }
                Err(error) => tracing::warn!(error = %error, "janitor sweep failed"),
            }
        }
    };
    tokio::select! {
        _ = attempts => {}
        _ = &mut stop_rx => {}
    }
    leader.store(false, Ordering::SeqCst);
    if let Err(error) = election.release().await {
        tracing::warn!(election = kind, error = %error, "janitor could not release its leadership");
    }
}
