//! Cluster membership as Redis knows it (DESIGN.md "Redis layout"): the
//! connection-managers in `nodes`, whether their `node:{id}` liveness key
//! exists, and whether they drain (`nodedrain:{id}`, see [`crate::DrainMarker`]).

use starling_redis_client::{redis, RedisClient};

use crate::RegistryError;

/// One connection-manager of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: String,
    /// Its liveness key exists.
    pub alive: bool,
    /// Unix time in milliseconds its drain started, while it drains.
    pub draining_since_unix_ms: Option<u64>,
}

/// Every node in `nodes` (live nodes, and dead ones whose sessions the
/// janitor has not removed yet), ordered by id.
pub async fn cluster_nodes(client: &RedisClient) -> Result<Vec<NodeStatus>, RegistryError> {
    let mut connection = client.connection();
    let mut nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(client.nodes_key())
        .query_async(&mut connection)
        .await?;
    nodes.sort();
    let mut statuses = Vec::with_capacity(nodes.len());
    for node in nodes {
        let alive: bool = redis::cmd("EXISTS")
            .arg(client.node_key(&node))
            .query_async(&mut connection)
            .await?;
        let draining: Option<String> = redis::cmd("GET")
            .arg(client.node_drain_key(&node))
            .query_async(&mut connection)
            .await?;
        statuses.push(NodeStatus {
            node,
            alive,
            draining_since_unix_ms: draining.and_then(|since| since.parse().ok()),
        });
    }
    Ok(statuses)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::NodeLiveness;

    async fn wait_for_status(
        client: &RedisClient,
        what: &str,
        predicate: impl Fn(&[NodeStatus]) -> bool,
    ) -> Vec<NodeStatus> {
        starling_testing::wait_for(what, Duration::from_secs(5), async || {
            let nodes = cluster_nodes(client).await.unwrap();
            predicate(&nodes).then_some(nodes)
        })
        .await
    }

    #[tokio::test]
    async fn live_nodes_are_listed_with_their_drain_marker() {
        let Some(client) = starling_redis_client::testing::test_client().await else {
            return;
        };
        let first = NodeLiveness::spawn(client.clone(), "cm-a".into(), Duration::from_secs(2));
        let second = NodeLiveness::spawn(client.clone(), "cm-b".into(), Duration::from_secs(2));
        let nodes = wait_for_status(&client, "both nodes listed and alive", |nodes| {
            nodes.len() == 2 && nodes.iter().all(|node| node.alive)
        })
        .await;
        assert_eq!(nodes[0].node, "cm-a");
        assert_eq!(nodes[1].node, "cm-b");
        assert!(nodes
            .iter()
            .all(|node| node.draining_since_unix_ms.is_none()));

        second.drain_marker().mark(1_700_000_000_000);
        let nodes = wait_for_status(&client, "cm-b draining", |nodes| {
            nodes
                .iter()
                .any(|node| node.draining_since_unix_ms.is_some())
        })
        .await;
        assert_eq!(nodes[0].draining_since_unix_ms, None);
        assert_eq!(nodes[1].draining_since_unix_ms, Some(1_700_000_000_000));
        // Where the server may open a stream of its own: alive, not draining.
        let registry = crate::RedisRegistry::new(client.clone());
        assert_eq!(
            starling_api::SessionRegistry::live_nodes(&registry)
                .await
                .unwrap(),
            vec!["cm-a".to_string()]
        );

        // Leaving the cluster removes the liveness key and the drain marker.
        second.stop().await.unwrap();
        let nodes = cluster_nodes(&client).await.unwrap();
        let cm_b = nodes.iter().find(|node| node.node == "cm-b").unwrap();
        assert!(!cm_b.alive);
        assert_eq!(cm_b.draining_since_unix_ms, None);
        first.stop().await.unwrap();
    }
}
