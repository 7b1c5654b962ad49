//! Which connection-managers the cluster has, whether they live and whether
//! they drain: from Redis in a cluster ([`RedisMembership`]: `nodes`,
//! `node:{id}`, `nodedrain:{id}`), from the process itself in one-process
//! mode without Redis ([`LocalMembership`]).

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::ApiResult;
use starling_redis_client::RedisClient;
use starling_registry::{cluster_nodes, NodeStatus};

/// The source of cluster membership.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Every known connection-manager, ordered by id.
    async fn nodes(&self) -> ApiResult<Vec<NodeStatus>>;
}

/// Membership as Redis records it.
pub struct RedisMembership {
    client: RedisClient,
}

impl RedisMembership {
    pub fn new(client: RedisClient) -> Self {
        RedisMembership { client }
    }
}

#[async_trait]
impl Membership for RedisMembership {
    async fn nodes(&self) -> ApiResult<Vec<NodeStatus>> {
        Ok(cluster_nodes(&self.client).await?)
    }
}

/// Reports when the local node started draining (Unix milliseconds).
pub type DrainProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// `starling serve` without Redis: the one connection-manager of this process.
pub struct LocalMembership {
    node: String,
    draining_since: DrainProbe,
}

impl LocalMembership {
    pub fn new(node: impl Into<String>, draining_since: DrainProbe) -> Self {
        LocalMembership {
            node: node.into(),
            draining_since,
        }
    }
}

#[async_trait]
impl Membership for LocalMembership {
    async fn nodes(&self) -> ApiResult<Vec<NodeStatus>> {
        Ok(vec![NodeStatus {
            node: self.node.clone(),
            alive: true,
            draining_since_unix_ms: (self.draining_since)(),
        }])
    }
}
