//! Which connection-managers the cluster has, whether they live and whether
//! they drain: from Redis in a cluster ([`RedisMembership`]: `nodes`,
//! `node:{id}`, `nodedrain:{id}`), from the process itself in one-process
//! mode without Redis ([`LocalMembership`]); and, the same two ways, the
//! server-to-server streams each node holds ([`S2sStreamSource`]).

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{ApiResult, S2sStreamInfo};
use starling_redis_client::RedisClient;
use starling_registry::{cluster_nodes, node_s2s_streams, NodeStatus};

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

/// Where the admin API reads the server-to-server streams of the cluster.
#[async_trait]
pub trait S2sStreamSource: Send + Sync + 'static {
    /// The rows of every node in `nodes`.
    async fn streams(&self, nodes: &[String]) -> ApiResult<Vec<S2sStreamInfo>>;
}

/// The rows each connection-manager publishes to Redis (`s2sstreams:{id}`,
/// see `starling_registry::spawn_s2s_streams_publisher`).
pub struct RedisS2sStreams {
    client: RedisClient,
}

impl RedisS2sStreams {
    pub fn new(client: RedisClient) -> Self {
        RedisS2sStreams { client }
    }
}

#[async_trait]
impl S2sStreamSource for RedisS2sStreams {
    async fn streams(&self, nodes: &[String]) -> ApiResult<Vec<S2sStreamInfo>> {
        let mut rows = Vec::new();
        for node in nodes {
            rows.extend(node_s2s_streams(&self.client, node).await?);
        }
        Ok(rows)
    }
}

/// Reads this process's own connection-manager.
pub type S2sStreamProbe = Arc<dyn Fn() -> Vec<S2sStreamInfo> + Send + Sync>;

/// `starling serve` without Redis: the streams of this process.
pub struct LocalS2sStreams {
    probe: S2sStreamProbe,
}

impl LocalS2sStreams {
    pub fn new(probe: S2sStreamProbe) -> Self {
        LocalS2sStreams { probe }
    }
}

#[async_trait]
impl S2sStreamSource for LocalS2sStreams {
    async fn streams(&self, nodes: &[String]) -> ApiResult<Vec<S2sStreamInfo>> {
        let mut rows = (self.probe)();
        rows.retain(|row| nodes.contains(&row.node));
        Ok(rows)
    }
}
