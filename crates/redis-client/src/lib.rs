//! Redis configuration and connections for Starling's routing state
//! (DESIGN.md "Redis layout"): one Redis server, or a Redis Cluster given by
//! a list of seed nodes. Both reconnect by themselves.
//!
//! Keys are built with [`RedisClient::key`] and [`hash_tag`]: every key that a
//! multi-key script touches carries the same `{...}` hash tag, so in Redis
//! Cluster they live in one slot (Redis Cluster specification, "Hash tags").
//! Delivery channels use sharded pub/sub (SPUBLISH/SSUBSCRIBE) in a cluster and
//! plain PUBLISH/SUBSCRIBE on one server.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisFuture, Value};

pub use redis;

mod metrics;
pub use metrics::{RedisMetrics, RedisOperation};

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` URLs: the one server, or the cluster's seed nodes.
    pub urls: Vec<String>,
    /// Redis Cluster (hash-tagged keys, sharded pub/sub) instead of one server.
    pub cluster: bool,
    /// Prepended to every key and channel: "" in production; tests use a
    /// random prefix so that parallel runs never collide. May not contain `{` or `}`.
    pub key_prefix: String,
}

impl RedisConfig {
    /// One Redis server at `url`, no prefix.
    pub fn single(url: impl Into<String>) -> Self {
        RedisConfig {
            urls: vec![url.into()],
            cluster: false,
            key_prefix: String::new(),
        }
    }

    fn validate(&self) -> Result<(), RedisError> {
        if self.urls.is_empty() {
            return Err(RedisError::Config(
                "redis urls: at least one url is required".into(),
            ));
        }
        if !self.cluster && self.urls.len() > 1 {
            return Err(RedisError::Config(
                "redis urls: a single server takes exactly one url (set cluster = true for seed nodes)".into(),
            ));
        }
        if self.key_prefix.contains(['{', '}']) {
            return Err(RedisError::Config(
                "redis key_prefix: may not contain '{' or '}'".into(),
            ));
        }
        Ok(())
    }
}

/// The errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The configuration is not usable.
    #[error("invalid redis configuration: {0}")]
    Config(String),
    /// Redis answered with an error, or cannot be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RedisError {
    /// True when retrying later may succeed (Redis unreachable, cluster resharding).
    pub fn is_unavailable(&self) -> bool {
        match self {
            RedisError::Config(_) => false,
            RedisError::Redis(error) => {
                error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_timeout()
                    || error.is_cluster_error()
            }
        }
    }
}

/// A connection to Redis: cheap to clone, multiplexed, reconnecting by itself.
#[derive(Clone)]
pub struct RedisClient {
    connection: RedisConnection,
    config: Arc<RedisConfig>,
    metrics: RedisMetrics,
}

/// The command connection behind a [`RedisClient`]; runs commands and scripts
/// (`redis::Cmd::query_async(&mut connection)`, `Script::invoke_async`).
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_command(cmd),
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// How long to wait for a TCP connection and for an answer before failing a
/// command (the caller then answers `wait`/`internal-server-error`).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

fn single_client(url: &str, protocol: ProtocolVersion) -> Result<redis::Client, RedisError> {
    let info = url
        .into_connection_info()
        .map_err(|error| RedisError::Config(format!("redis urls: {url}: {error}")))?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    Ok(redis::Client::open(info.set_redis_settings(settings))?)
}

fn cluster_builder(urls: &[String], protocol: ProtocolVersion) -> ClusterClientBuilder {
    ClusterClientBuilder::new(urls.to_vec())
        .use_protocol(protocol)
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(3)
        .max_retry_wait(500)
}

impl RedisClient {
    /// Connect to the server (or the cluster, through its seed nodes) and check it answers.
    pub async fn connect(config: &RedisConfig) -> Result<Self, RedisError> {
        config.validate()?;
        let connection = if config.cluster {
            let client = cluster_builder(&config.urls, ProtocolVersion::RESP2).build()?;
            RedisConnection::Cluster(client.get_async_connection().await?)
        } else {
            let client = single_client(&config.urls[0], ProtocolVersion::RESP2)?;
            RedisConnection::Single(
                client
                    .get_connection_manager_with_config(manager_config())
                    .await?,
            )
        };
        let client = RedisClient {
            connection,
            config: Arc::new(config.clone()),
            metrics: RedisMetrics::default(),
        };
        client.ping().await?;
        Ok(client)
    }

    /// PING: Redis (or a node of the cluster) answers.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut connection = self.connection();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    /// Observe this client's operations in `metrics` (clones made afterwards share them).
    pub fn with_metrics(mut self, metrics: RedisMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Run one operation of the routing state, observing its latency in
    /// `starling_redis_operation_duration_seconds`.
    pub async fn timed<T, E>(
        &self,
        operation: RedisOperation,
        future: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.metrics.time(operation, future).await
    }

    /// The configuration this client was made from.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// True for Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.config.cluster
    }

    /// A handle to run commands on (clones share one multiplexed connection).
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// The full name of a key or channel: the configured prefix, then `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.config.key_prefix, name)
    }

    /// `sess:{bare}`: HASH resource -> session record.
    pub fn session_key(&self, bare_jid: &str) -> String {
        self.key(&format!("sess:{}", hash_tag(bare_jid)))
    }

    /// `dir:{bare}/resource`: SET of the entities a session sent directed
    /// presence to; tagged by the bare JID, so it shares the slot of `sess:{bare}`.
    pub fn directed_presence_key(&self, bare_jid: &str, resource: &str) -> String {
        self.key(&format!("dir:{}/{}", hash_tag(bare_jid), resource))
    }

    /// `node:{id}`: a connection-manager's liveness key (short TTL).
    pub fn node_key(&self, node_id: &str) -> String {
        self.key(&format!("node:{}", hash_tag(node_id)))
    }

    /// `nodedrain:{id}`: present while a connection-manager drains; holds the
    /// Unix time in milliseconds its drain started (same slot and TTL as `node:{id}`).
    pub fn node_drain_key(&self, node_id: &str) -> String {
        self.key(&format!("nodedrain:{}", hash_tag(node_id)))
    }

    /// `nodesess:{id}`: SET of `"<conn> <full JID>"` entries of the sessions
    /// bound on a node (same slot as `node:{id}`).
    pub fn node_sessions_key(&self, node_id: &str) -> String {
        self.key(&format!("nodesess:{}", hash_tag(node_id)))
    }

    /// `s2sstreams:{id}`: the server-to-server streams open on a
    /// connection-manager, one `starling_api::S2sStreamInfo` row a line,
    /// rewritten by the node every few seconds with a TTL (the admin API's
    /// ListS2sStreams reads it; same slot as `node:{id}`).
    pub fn s2s_streams_key(&self, node_id: &str) -> String {
        self.key(&format!("s2sstreams:{}", hash_tag(node_id)))
    }

    /// `nodes`: SET of every node that registered a session or keeps a liveness
    /// key (what the janitor scans and the admin API lists as the cluster's nodes).
    pub fn nodes_key(&self) -> String {
        self.key("nodes")
    }

    /// `smres:{id}`: HASH of a resumable stream's state (XEP-0198).
    pub fn resumption_key(&self, id: &str) -> String {
        self.key(&format!("smres:{}", hash_tag(id)))
    }

    /// `smq:{id}`: LIST of a resumable stream's unacked stanzas (same slot as `smres:{id}`).
    pub fn resumption_queue_key(&self, id: &str) -> String {
        self.key(&format!("smq:{}", hash_tag(id)))
    }

    /// `smfly:{id}`: LIST of stanzas published to a resumable stream's node
    /// and not yet journaled by it (same slot as `smres:{id}`).
    pub fn resumption_inflight_key(&self, id: &str) -> String {
        self.key(&format!("smfly:{}", hash_tag(id)))
    }

    /// `smexp`: ZSET of detached streams by the Unix time (ms) their resumption timeout passes.
    pub fn resumption_expiry_key(&self) -> String {
        self.key("smexp")
    }

    /// `janitor:lock`: the janitor's leader lock.
    pub fn janitor_lock_key(&self) -> String {
        self.key("janitor:lock")
    }

    /// `deliver:{node}`: a node's delivery channel.
    pub fn delivery_channel(&self, node_id: &str) -> String {
        self.key(&format!("deliver:{}", hash_tag(node_id)))
    }

    /// How many subscribers `channel` (already prefixed) has now
    /// (`PUBSUB SHARDNUMSUB` in a cluster, `PUBSUB NUMSUB` otherwise).
    pub async fn channel_subscribers(&self, channel: &str) -> Result<usize, RedisError> {
        let subcommand = if self.config.cluster {
            "SHARDNUMSUB"
        } else {
            "NUMSUB"
        };
        let mut connection = self.connection();
        let (_, count): (String, usize) = redis::cmd("PUBSUB")
            .arg(subcommand)
            .arg(channel)
            .query_async(&mut connection)
            .await?;
        Ok(count)
    }

    /// Publish `payload` on `channel` and, in the same step, record each
    /// `(list key, stanza)` of `in_flight` (the resumable streams it carries a
    /// stanza for, XEP-0198) when a subscriber took it: one script, so that a
    /// stanza in flight to a node that dies before reading it is not lost. On
    /// a Redis Cluster the keys and the channel live in different slots: a
    /// plain publish, with no record (docs/cluster.md says so).
    pub async fn publish_in_flight(
        &self,
        channel: &str,
        payload: &[u8],
        in_flight: &[(String, String)],
    ) -> Result<usize, RedisError> {
        if self.config.cluster || in_flight.is_empty() {
            return self.publish(channel, payload).await;
        }
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(PUBLISH_IN_FLIGHT_SCRIPT));
        let mut invocation = script.prepare_invoke();
        invocation.arg(channel).arg(payload);
        for (key, stanza) in in_flight {
            invocation.key(key).arg(stanza);
        }
        let mut connection = self.connection();
        let receivers: usize = self
            .timed(
                RedisOperation::Publish,
                invocation.invoke_async(&mut connection),
            )
            .await?;
        Ok(receivers)
    }

    /// Publish `payload` on `channel` (already prefixed): SPUBLISH in a
    /// cluster, PUBLISH otherwise. Returns how many subscribers received it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<usize, RedisError> {
        let command = if self.config.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut connection = self.connection();
        let receivers: usize = self
            .timed(
                RedisOperation::Publish,
                redis::cmd(command)
                    .arg(channel)
                    .arg(payload)
                    .query_async(&mut connection),
            )
            .await?;
        Ok(receivers)
    }

    /// A dedicated pub/sub connection (RESP3) whose messages arrive on
    /// `push_tx`. It reconnects and resubscribes to its channels by itself
    /// after a lost connection (a Redis restart); [`RedisSubscriber::ping`]
    /// called periodically makes sure a dead connection is noticed.
    pub async fn subscriber(
        &self,
        push_tx: impl redis::aio::AsyncPushSender,
    ) -> Result<RedisSubscriber, RedisError> {
        let connection = if self.config.cluster {
            let client = cluster_builder(&self.config.urls, ProtocolVersion::RESP3)
                .push_sender(push_tx)
                .build()?;
            RedisConnection::Cluster(client.get_async_connection().await?)
        } else {
            let client = single_client(&self.config.urls[0], ProtocolVersion::RESP3)?;
            let config = manager_config()
                .set_push_sender(push_tx)
                .set_automatic_resubscription();
            RedisConnection::Single(client.get_connection_manager_with_config(config).await?)
        };
        Ok(RedisSubscriber { connection })
    }
}

/// A dedicated pub/sub connection made by [`RedisClient::subscriber`].
pub struct RedisSubscriber {
    connection: RedisConnection,
}

impl RedisSubscriber {
    /// Subscribe to `channel` (already prefixed): SSUBSCRIBE in a cluster, SUBSCRIBE otherwise.
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), RedisError> {
        match &mut self.connection {
            RedisConnection::Single(connection) => connection.subscribe(channel).await?,
            RedisConnection::Cluster(connection) => connection.ssubscribe(channel).await?,
        }
        Ok(())
    }

    /// Unsubscribe from `channel`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), RedisError> {
        match &mut self.connection {
            RedisConnection::Single(connection) => connection.unsubscribe(channel).await?,
            RedisConnection::Cluster(connection) => connection.sunsubscribe(channel).await?,
        }
        Ok(())
    }

    /// PING on the subscription connection; a failure makes it reconnect (and resubscribe).
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.connection)
            .await?;
        Ok(())
    }
}

/// A Redis Cluster hash tag for `value`: `{value}` with `%`, `{` and `}`
/// percent-encoded, so that the tag always ends where `value` ends (a JID may
/// contain braces) and two different values never share a tag by accident.
/// KEYS: the in-flight lists. ARGV: channel, payload, one stanza per key.
/// In flight only when a subscriber took it (else the caller parks it).
const PUBLISH_IN_FLIGHT_SCRIPT: &str = r"
local receivers = redis.call('PUBLISH', ARGV[1], ARGV[2])
if receivers > 0 then
  for i, key in ipairs(KEYS) do
    if redis.call('RPUSH', key, ARGV[i + 2]) == 1 then redis.call('PEXPIRE', key, 86400000) end
  end
end
return receivers
";

pub fn hash_tag(value: &str) -> String {
    let mut tag = String::with_capacity(value.len() + 2);
    tag.push('{');
    for character in value.chars() {
        match character {
            '%' => tag.push_str("%25"),
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            other => tag.push(other),
        }
    }
    tag.push('}');
    tag
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn hash_tags_escape_braces() {
        assert_eq!(hash_tag("alice@example.com"), "{alice@example.com}");
        assert_eq!(hash_tag("}a{%@x"), "{%7Da%7B%25@x}");
    }

    #[tokio::test]
    async fn connects_pings_and_publishes_to_nobody() {
        let Some(client) = testing::test_client().await else {
            return;
        };
        client.ping().await.unwrap();
        assert!(!client.is_cluster());
        assert!(client.key("x").starts_with("test-"));
        let channel = client.delivery_channel("cm-nobody");
        assert_eq!(client.publish(&channel, b"payload").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn unreachable_redis_is_unavailable() {
        let port = testing::free_port();
        let config = RedisConfig::single(format!("redis://127.0.0.1:{port}"));
        let error = RedisClient::connect(&config)
            .await
            .err()
            .expect("nothing listens there");
        assert!(error.is_unavailable(), "{error}");
    }

    #[tokio::test]
    async fn subscriber_receives_what_is_published() {
        let Some(client) = testing::test_client().await else {
            return;
        };
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut subscriber = client.subscriber(push_tx).await.unwrap();
        let channel = client.delivery_channel("cm1");
        subscriber.subscribe(&channel).await.unwrap();
        assert_eq!(client.publish(&channel, b"hello").await.unwrap(), 1);
        let message = loop {
            let push = tokio::time::timeout(Duration::from_secs(5), push_rx.recv())
                .await
                .unwrap()
                .unwrap();
            if push.kind == redis::PushKind::Message {
                break push;
            }
        };
        assert_eq!(
            message.data.get(1),
            Some(&Value::BulkString(b"hello".to_vec()))
        );
        subscriber.unsubscribe(&channel).await.unwrap();
        subscriber.ping().await.unwrap();
        assert_eq!(client.publish(&channel, b"again").await.unwrap(), 0);
    }

    #[test]
    fn configuration_is_validated() {
        let mut config = RedisConfig::single("redis://127.0.0.1:6379");
        assert!(config.validate().is_ok());
        config.key_prefix = "a{b".into();
        assert!(matches!(config.validate(), Err(RedisError::Config(_))));
        let config = RedisConfig {
            urls: vec![],
            cluster: true,
            key_prefix: String::new(),
        };
        assert!(matches!(config.validate(), Err(RedisError::Config(_))));
        let config = RedisConfig {
            urls: vec!["redis://a".into(), "redis://b".into()],
            cluster: false,
            key_prefix: String::new(),
        };
        assert!(matches!(config.validate(), Err(RedisError::Config(_))));
    }
}
