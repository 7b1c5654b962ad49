//! Session registry implementations (DESIGN.md "Redis layout", "Atomic
//! binding", "Dead nodes"). `MemoryRegistry` serves `starling serve`; every
//! operation takes one lock, so each update is atomic as the contract asks.
//! `RedisRegistry` serves the cluster, with `NodeLiveness` (the `node:{id}`
//! keys) and the `Janitor` that removes the sessions of dead nodes.

#[cfg(test)]
mod contract_tests;
mod janitor;
mod liveness;
mod membership;
mod redis;
mod resumption;
#[cfg(test)]
mod resumption_tests;
mod s2s_streams;

pub use janitor::{DeadSessionCallback, Janitor, LeaderElection, RedisLock};
pub use liveness::{DrainMarker, NodeLiveness};
pub use membership::{cluster_nodes, NodeStatus};
pub use redis::RedisRegistry;
pub use resumption::{MemoryResumption, RedisResumption};
pub use s2s_streams::{node_s2s_streams, publish_s2s_streams, spawn_s2s_streams_publisher};

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_api::{ApiError, ApiResult, BindOutcome, SessionAddr, SessionRecord, SessionRegistry};
use starling_jid::{BareJid, FullJid, Jid};

/// The errors of the Redis registry, liveness and janitor.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Redis(#[from] starling_redis_client::RedisError),
    #[error("stored session of {jid} is corrupt: {reason}")]
    CorruptRecord { jid: String, reason: String },
    /// The janitor's leader election failed (a Kubernetes API error, ...).
    #[error("leader election ({kind}): {message}")]
    Election { kind: &'static str, message: String },
}

impl From<starling_redis_client::redis::RedisError> for RegistryError {
    fn from(error: starling_redis_client::redis::RedisError) -> Self {
        RegistryError::Redis(error.into())
    }
}

impl From<RegistryError> for starling_api::ApiError {
    fn from(error: RegistryError) -> Self {
        match &error {
            RegistryError::Redis(redis_error) if redis_error.is_unavailable() => {
                starling_api::ApiError::Unavailable(error.to_string())
            }
            _ => starling_api::ApiError::Internal(error.to_string()),
        }
    }
}

#[derive(Default)]
struct State {
    /// `sess:{bare}`: resource -> session.
    sessions: HashMap<BareJid, HashMap<String, SessionRecord>>,
    /// Directed presence sent by each session (RFC 6121 section 4.6).
    directed: HashMap<FullJid, HashSet<Jid>>,
}

/// The in-process session registry.
#[derive(Default)]
pub struct MemoryRegistry {
    state: Mutex<State>,
    /// The node of `starling serve`'s connection-manager, for `live_nodes`.
    local_node: Option<String>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry of one process whose connection-manager is `node`.
    pub fn with_local_node(mut self, node: impl Into<String>) -> Self {
        self.local_node = Some(node.into());
        self
    }
}

fn with_session<T>(
    state: &mut State,
    jid: &FullJid,
    addr: &SessionAddr,
    update: impl FnOnce(&mut SessionRecord) -> T,
) -> Option<T> {
    let record = state
        .sessions
        .get_mut(jid.bare())?
        .get_mut(jid.resource())?;
    if &record.addr != addr {
        return None;
    }
    Some(update(record))
}

#[async_trait]
impl SessionRegistry for MemoryRegistry {
    async fn bind_limited(
        &self,
        record: SessionRecord,
        max_resources: usize,
    ) -> ApiResult<BindOutcome> {
        let mut state = self.state.lock();
        let resources = state.sessions.entry(record.jid.to_bare()).or_default();
        if max_resources > 0
            && !resources.contains_key(record.jid.resource())
            && resources.len() >= max_resources
        {
            return Err(ApiError::LimitReached(format!(
                "{} sessions already bound",
                resources.len()
            )));
        }
        let replaced = resources.insert(record.jid.resource().to_string(), record.clone());
        if replaced.is_some() {
            state.directed.remove(&record.jid);
        }
        Ok(BindOutcome { replaced })
    }

    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<Option<SessionRecord>> {
        let mut state = self.state.lock();
        let Some(resources) = state.sessions.get_mut(jid.bare()) else {
            return Ok(None);
        };
        if resources.get(jid.resource()).map(|record| &record.addr) != Some(addr) {
            return Ok(None);
        }
        let removed = resources.remove(jid.resource());
        if resources.is_empty() {
            state.sessions.remove(jid.bare());
        }
        Ok(removed)
    }

    async fn sessions(&self, user: &BareJid) -> ApiResult<Vec<SessionRecord>> {
        let state = self.state.lock();
        Ok(state
            .sessions
            .get(user)
            .map(|resources| resources.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn session(&self, jid: &FullJid) -> ApiResult<Option<SessionRecord>> {
        let state = self.state.lock();
        Ok(state
            .sessions
            .get(jid.bare())
            .and_then(|resources| resources.get(jid.resource()).cloned()))
    }

    async fn set_presence(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
        available: bool,
        priority: i8,
        presence: Option<String>,
    ) -> ApiResult<bool> {
        let mut state = self.state.lock();
        Ok(with_session(&mut state, jid, addr, |record| {
            record.available = available;
            record.priority = priority;
            record.presence = presence;
        })
        .is_some())
    }

    async fn set_interested(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<bool> {
        let mut state = self.state.lock();
        Ok(with_session(&mut state, jid, addr, |record| record.interested = true).is_some())
    }

    async fn set_carbons(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
        enabled: bool,
    ) -> ApiResult<bool> {
        let mut state = self.state.lock();
        Ok(with_session(&mut state, jid, addr, |record| record.carbons = enabled).is_some())
    }

    async fn set_blocklist_interest(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<bool> {
        let mut state = self.state.lock();
        Ok(with_session(&mut state, jid, addr, |record| {
            record.blocklist_interest = true
        })
        .is_some())
    }

    async fn set_resumption(&self, jid: &FullJid, addr: &SessionAddr, id: &str) -> ApiResult<bool> {
        let mut state = self.state.lock();
        Ok(with_session(&mut state, jid, addr, |record| {
            record.resumption = Some(id.to_string())
        })
        .is_some())
    }

    async fn relocate(
        &self,
        jid: &FullJid,
        from: &SessionAddr,
        to: &SessionAddr,
    ) -> ApiResult<bool> {
        let mut state = self.state.lock();
        Ok(with_session(&mut state, jid, from, |record| record.addr = to.clone()).is_some())
    }

    async fn set_directed_presence(
        &self,
        jid: &FullJid,
        to: &Jid,
        available: bool,
        max_entries: usize,
    ) -> ApiResult<bool> {
        let mut state = self.state.lock();
        if available {
            let set = state.directed.entry(jid.clone()).or_default();
            if !set.contains(to) && set.len() >= max_entries {
                return Ok(false);
            }
            set.insert(to.clone());
        } else if let Some(set) = state.directed.get_mut(jid) {
            set.remove(to);
        }
        Ok(true)
    }

    async fn take_directed_presence(&self, jid: &FullJid) -> ApiResult<Vec<Jid>> {
        let mut state = self.state.lock();
        Ok(state
            .directed
            .remove(jid)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default())
    }

    async fn node_sessions(&self, node: &str) -> ApiResult<Vec<SessionRecord>> {
        let state = self.state.lock();
        Ok(state
            .sessions
            .values()
            .flat_map(|resources| resources.values())
            .filter(|record| record.addr.node == node)
            .cloned()
            .collect())
    }

    async fn live_nodes(&self) -> ApiResult<Vec<String>> {
        Ok(self.local_node.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(conn: u64) -> SessionAddr {
        SessionAddr {
            node: "cm1".into(),
            conn,
        }
    }

    #[tokio::test]
    async fn newest_bind_replaces_and_stale_unbind_is_ignored() {
        let registry = MemoryRegistry::new();
        let jid: FullJid = "a@example.com/phone".parse().unwrap();
        let first = registry
            .bind(SessionRecord::new(jid.clone(), addr(1)))
            .await
            .unwrap();
        assert!(first.replaced.is_none());
        let second = registry
            .bind(SessionRecord::new(jid.clone(), addr(2)))
            .await
            .unwrap();
        assert_eq!(second.replaced.map(|record| record.addr), Some(addr(1)));
        assert_eq!(registry.unbind(&jid, &addr(1)).await.unwrap(), None);
        assert_eq!(registry.sessions(jid.bare()).await.unwrap().len(), 1);
        assert!(registry.unbind(&jid, &addr(2)).await.unwrap().is_some());
        assert!(registry.sessions(jid.bare()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn presence_updates_only_the_current_session() {
        let registry = MemoryRegistry::new();
        let jid: FullJid = "a@example.com/phone".parse().unwrap();
        registry
            .bind(SessionRecord::new(jid.clone(), addr(1)))
            .await
            .unwrap();
        assert!(!registry
            .set_presence(&jid, &addr(9), true, 5, None)
            .await
            .unwrap());
        assert!(registry
            .set_presence(&jid, &addr(1), true, 5, Some("<presence/>".into()))
            .await
            .unwrap());
        let record = registry.session(&jid).await.unwrap().unwrap();
        assert!(record.available);
        assert_eq!(record.priority, 5);
    }
}
