//! The server-to-server streams of each connection-manager, as Redis
//! holds them for the admin API (`s2sstreams:{id}`): the node rewrites its
//! rows every `period` with a TTL of three periods, so a node that dies
//! leaves no rows behind for long, and a reader sees rows at most one
//! period old.

use std::time::Duration;

use starling_api::S2sStreamInfo;
use starling_redis_client::{redis, RedisClient};
use tokio::task::JoinHandle;

use crate::RegistryError;

/// Write `rows` as the node's streams (delete the key when there are none).
pub async fn publish_s2s_streams(
    client: &RedisClient,
    node: &str,
    rows: &[S2sStreamInfo],
    ttl: Duration,
) -> Result<(), RegistryError> {
    let key = client.s2s_streams_key(node);
    let mut connection = client.connection();
    if rows.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await?;
        return Ok(());
    }
    let value: Vec<String> = rows.iter().map(S2sStreamInfo::encode).collect();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(value.join("\n"))
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(&mut connection)
        .await?;
    Ok(())
}

/// The rows `node` published last (none when it has no stream, or its rows
/// expired); a line that does not decode is skipped.
pub async fn node_s2s_streams(
    client: &RedisClient,
    node: &str,
) -> Result<Vec<S2sStreamInfo>, RegistryError> {
    let mut connection = client.connection();
    let value: Option<String> = redis::cmd("GET")
        .arg(client.s2s_streams_key(node))
        .query_async(&mut connection)
        .await?;
    Ok(value
        .unwrap_or_default()
        .lines()
        .filter_map(S2sStreamInfo::decode)
        .collect())
}

/// Publish `rows()` every `period` until the task is aborted; an unchanged
/// empty table is not rewritten.
pub fn spawn_s2s_streams_publisher(
    client: RedisClient,
    node: String,
    rows: impl Fn() -> Vec<S2sStreamInfo> + Send + 'static,
    period: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_empty = false;
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let current = rows();
            if current.is_empty() && was_empty {
                continue;
            }
            match publish_s2s_streams(&client, &node, &current, period * 3).await {
                Ok(()) => was_empty = current.is_empty(),
                Err(error) => tracing::warn!(%error, "publishing the s2s streams failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(domain: &str) -> S2sStreamInfo {
        S2sStreamInfo {
            node: "cm-s2s-test".into(),
            domain: domain.into(),
            direction: "in".into(),
            authentication: "dialback".into(),
            tls: true,
            stanzas_in: 4,
            stanzas_out: 0,
            queued: 0,
            since_unix_ms: 1,
        }
    }

    #[tokio::test]
    async fn rows_are_written_read_and_removed() {
        let Some(client) = starling_redis_client::testing::test_client().await else {
            return;
        };
        let rows = vec![row("a.example"), row("b.example")];
        publish_s2s_streams(&client, "cm-s2s-test", &rows, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            node_s2s_streams(&client, "cm-s2s-test").await.unwrap(),
            rows
        );
        publish_s2s_streams(&client, "cm-s2s-test", &[], Duration::from_secs(30))
            .await
            .unwrap();
        assert!(node_s2s_streams(&client, "cm-s2s-test")
            .await
            .unwrap()
            .is_empty());
        assert!(node_s2s_streams(&client, "cm-never-there")
            .await
            .unwrap()
            .is_empty());
    }
}
