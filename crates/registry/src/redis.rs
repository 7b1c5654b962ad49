//! The Redis session registry of the cluster (DESIGN.md "Redis layout" and
//! "Atomic binding").
//!
//! Keys (all behind the configured prefix):
//! - `sess:{bare}`: HASH resource -> session record (JSON, see [`StoredSession`]);
//! - `dir:{bare}/resource`: SET of the entities the session sent directed
//!   presence to (RFC 6121 section 4.6); same hash tag, same slot as `sess:{bare}`;
//! - `nodesess:{node}`: SET of `"<conn> <full JID>"` entries, the sessions bound
//!   on a node, for the janitor and for re-registration;
//! - `nodes`: SET of every node that registered a session.
//!
//! Every update of a session record is ONE Lua script on the keys of one slot
//! (bind-and-return-the-replaced, unbind-if-at-addr, set-presence-if-at-addr,
//! set-a-field-if-at-addr for roster interest, block list interest, carbons and the resumption id), never a read followed by a write. The per-node
//! index lives in another slot and is written in a second step: it is written
//! BEFORE the record (so a crash leaves a stale index entry, never an unindexed
//! session), its entries name the connection, and every reader checks an entry
//! against the record before trusting it.
//!
//! Records are JSON (serde_json here, `cjson` inside the scripts) so that the
//! scripts can compare the address and update single fields; the connection id
//! is a string because Lua numbers are doubles.

use async_trait::async_trait;
use futures::future::try_join_all;
use redis::Script;
use serde::{Deserialize, Serialize};
use starling_api::{ApiError, ApiResult, BindOutcome, SessionAddr, SessionRecord, SessionRegistry};
use starling_jid::{BareJid, FullJid, Jid};
use starling_redis_client::{redis, RedisClient, RedisOperation};

use crate::RegistryError;

/// A session record as stored in `sess:{bare}` (the JID is the key and the field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    node: String,
    conn: String,
    priority: i8,
    available: bool,
    interested: bool,
    #[serde(default)]
    presence: Option<String>,
    /// The XEP-0198 resumption id of a resumable stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resumption: Option<String>,
    /// Absent from records written before Message Carbons existed: off.
    #[serde(default)]
    carbons: bool,
    /// Absent from records written before blocking existed: not interested.
    #[serde(default)]
    blocklist_interest: bool,
}

impl StoredSession {
    fn from_record(record: &SessionRecord) -> Self {
        StoredSession {
            node: record.addr.node.clone(),
            conn: record.addr.conn.to_string(),
            priority: record.priority,
            available: record.available,
            interested: record.interested,
            presence: record.presence.clone(),
            resumption: record.resumption.clone(),
            carbons: record.carbons,
            blocklist_interest: record.blocklist_interest,
        }
    }

    fn into_record(self, jid: FullJid) -> Result<SessionRecord, RegistryError> {
        let conn = self
            .conn
            .parse()
            .map_err(|_| RegistryError::CorruptRecord {
                jid: jid.to_string(),
                reason: format!("connection id {:?} is not a number", self.conn),
            })?;
        Ok(SessionRecord {
            jid,
            addr: SessionAddr {
                node: self.node,
                conn,
            },
            priority: self.priority,
            available: self.available,
            interested: self.interested,
            presence: self.presence,
            resumption: self.resumption,
            carbons: self.carbons,
            blocklist_interest: self.blocklist_interest,
        })
    }
}

pub(crate) fn encode_record(record: &SessionRecord) -> String {
    // Serialising plain strings, integers and booleans cannot fail.
    serde_json::to_string(&StoredSession::from_record(record)).unwrap_or_default()
}

pub(crate) fn decode_record(jid: FullJid, raw: &str) -> Result<SessionRecord, RegistryError> {
    let stored: StoredSession =
        serde_json::from_str(raw).map_err(|error| RegistryError::CorruptRecord {
            jid: jid.to_string(),
            reason: error.to_string(),
        })?;
    stored.into_record(jid)
}

/// The entry of a session in `nodesess:{node}`.
pub(crate) fn node_index_entry(jid: &FullJid, conn: u64) -> String {
    format!("{conn} {jid}")
}

/// Split a `nodesess` entry into its connection id and full JID.
pub(crate) fn parse_node_index_entry(entry: &str) -> Option<(u64, FullJid)> {
    let (conn, jid) = entry.split_once(' ')?;
    Some((conn.parse().ok()?, jid.parse().ok()?))
}

/// KEYS: sess, dir. ARGV: resource, record. Replace the record, return the old
/// one; a replaced session's directed presence set goes with it.
const BIND_SCRIPT: &str = r"
local previous = redis.call('HGET', KEYS[1], ARGV[1])
local limit = tonumber(ARGV[3])
if not previous and limit > 0 and redis.call('HLEN', KEYS[1]) >= limit then
  return redis.error_reply('STARLING_RESOURCE_LIMIT')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if previous then redis.call('DEL', KEYS[2]) end
return previous
";

/// KEYS: sess. ARGV: resource, node, conn. Remove the record if it is still at that address.
const UNBIND_SCRIPT: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local record = cjson.decode(raw)
if record.node ~= ARGV[2] or record.conn ~= ARGV[3] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
return raw
";

/// KEYS: sess. ARGV: resource, node, conn, available (1/0), priority, has presence (1/0), presence.
const SET_PRESENCE_SCRIPT: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if record.node ~= ARGV[2] or record.conn ~= ARGV[3] then return 0 end
record.available = (ARGV[4] == '1')
record.priority = tonumber(ARGV[5])
if ARGV[6] == '1' then record.presence = ARGV[7] else record.presence = nil end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return 1
";

/// KEYS: sess. ARGV: resource, node, conn, field, value (JSON). Set one
/// field of the record (roster interest, carbons, resumption id) if the record
/// is still at that address.
const SET_FIELD_SCRIPT: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if record.node ~= ARGV[2] or record.conn ~= ARGV[3] then return 0 end
record[ARGV[4]] = cjson.decode(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return 1
";

/// KEYS: sess. ARGV: resource, from node, from conn, to node, to conn. Move
/// the record if it is still at `from`, keeping everything else.
const RELOCATE_SCRIPT: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if record.node ~= ARGV[2] or record.conn ~= ARGV[3] then return 0 end
record.node = ARGV[4]
record.conn = ARGV[5]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return 1
";

/// KEYS: sess. ARGV: resource, node, conn, record. Write the record unless
/// another session (another address) holds the resource now.
const REREGISTER_SCRIPT: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local record = cjson.decode(raw)
  if record.node ~= ARGV[2] or record.conn ~= ARGV[3] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
";

/// KEYS: dir. Return the members and delete the set.
/// SADD unless the set already holds ARGV[2] other members: 1 when `to` is
/// (now) a member, 0 when the session's bound was reached.
const ADD_DIRECTED_SCRIPT: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

const TAKE_DIRECTED_SCRIPT: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
";

/// The session registry of the cluster, in Redis (single server or Redis Cluster).
pub struct RedisRegistry {
    client: RedisClient,
    bind_script: Script,
    unbind_script: Script,
    set_presence_script: Script,
    set_field_script: Script,
    reregister_script: Script,
    take_directed_script: Script,
    add_directed_script: Script,
    relocate_script: Script,
}

impl RedisRegistry {
    pub fn new(client: RedisClient) -> Self {
        RedisRegistry {
            client,
            bind_script: Script::new(BIND_SCRIPT),
            unbind_script: Script::new(UNBIND_SCRIPT),
            set_presence_script: Script::new(SET_PRESENCE_SCRIPT),
            set_field_script: Script::new(SET_FIELD_SCRIPT),
            reregister_script: Script::new(REREGISTER_SCRIPT),
            take_directed_script: Script::new(TAKE_DIRECTED_SCRIPT),
            add_directed_script: Script::new(ADD_DIRECTED_SCRIPT),
            relocate_script: Script::new(RELOCATE_SCRIPT),
        }
    }

    /// The client this registry runs on.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    /// Write a node's live sessions back after Redis lost them (a restart
    /// without persistence, a failover), as the cluster issue asks.
    ///
    /// The mechanism: a connection-manager runs [`crate::NodeLiveness`], whose
    /// refresh notices when its `node:{id}` key vanished although the node kept
    /// refreshing it (`NodeLiveness::key_lost` changes). Redis came back empty,
    /// so the connection-manager calls `reregister` with the records of every
    /// stream it still holds. A record is written unless another session (a
    /// different address) took its resource meanwhile; the node index and the
    /// `nodes` set are restored too. Returns how many records were written.
    ///
    /// If instead the node was declared dead by the janitor (its sessions
    /// removed and their unavailable presence broadcast), the connection-manager
    /// should rather close those streams: a session that is re-registered
    /// silently would have contacts believing it is offline.
    pub async fn reregister(&self, records: Vec<SessionRecord>) -> ApiResult<usize> {
        self.client
            .timed(RedisOperation::Reregister, async {
            let mut registered = 0;
            for record in records {
                self.add_to_node_index(&record).await?;
                let mut connection = self.client.connection();
                let written: i64 = self
                    .reregister_script
                    .key(self.client.session_key(&record.jid.bare().to_string()))
                    .arg(record.jid.resource())
                    .arg(&record.addr.node)
                    .arg(record.addr.conn.to_string())
                    .arg(encode_record(&record))
                    .invoke_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                if written == 1 {
                    registered += 1;
                } else {
                    tracing::info!(jid = %record.jid, "not re-registering a session whose resource another session holds now");
                }
            }
            Ok(registered)
            })
            .await
    }

    /// The index entries of a node step 2 of a bind writes (before the record).
    async fn add_to_node_index(&self, record: &SessionRecord) -> Result<(), RegistryError> {
        let mut connection = self.client.connection();
        let node = &record.addr.node;
        redis::cmd("SADD")
            .arg(self.client.node_sessions_key(node))
            .arg(node_index_entry(&record.jid, record.addr.conn))
            .query_async::<()>(&mut connection)
            .await?;
        // After the index entry: the janitor removes a node from `nodes` only
        // when it then finds its index empty (see `janitor.rs`).
        redis::cmd("SADD")
            .arg(self.client.nodes_key())
            .arg(node)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    pub(crate) async fn remove_from_node_index(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
    ) -> Result<(), RegistryError> {
        let mut connection = self.client.connection();
        redis::cmd("SREM")
            .arg(self.client.node_sessions_key(&addr.node))
            .arg(node_index_entry(jid, addr.conn))
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    /// The unbind script alone (no index clean-up); used by the janitor too.
    pub(crate) async fn unbind_record(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
    ) -> Result<Option<SessionRecord>, RegistryError> {
        let mut connection = self.client.connection();
        let removed: Option<String> = self
            .unbind_script
            .key(self.client.session_key(&jid.bare().to_string()))
            .arg(jid.resource())
            .arg(&addr.node)
            .arg(addr.conn.to_string())
            .invoke_async(&mut connection)
            .await?;
        removed
            .map(|raw| decode_record(jid.clone(), &raw))
            .transpose()
    }

    /// One field of a session record, set if the session is still at `addr`
    /// (the set-field script); `value` is JSON. Whether it was.
    async fn set_field(
        &self,
        operation: RedisOperation,
        jid: &FullJid,
        addr: &SessionAddr,
        field: &str,
        value: String,
    ) -> ApiResult<bool> {
        self.client
            .timed(operation, async {
                let mut connection = self.client.connection();
                let updated: i64 = self
                    .set_field_script
                    .key(self.client.session_key(&jid.bare().to_string()))
                    .arg(jid.resource())
                    .arg(&addr.node)
                    .arg(addr.conn.to_string())
                    .arg(field)
                    .arg(value)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                Ok(updated == 1)
            })
            .await
    }

    /// The raw entries of a node's index.
    pub(crate) async fn node_index(&self, node: &str) -> Result<Vec<String>, RegistryError> {
        let mut connection = self.client.connection();
        Ok(redis::cmd("SMEMBERS")
            .arg(self.client.node_sessions_key(node))
            .query_async(&mut connection)
            .await?)
    }
}

#[async_trait]
impl SessionRegistry for RedisRegistry {
    async fn bind_limited(
        &self,
        record: SessionRecord,
        max_resources: usize,
    ) -> ApiResult<BindOutcome> {
        self.client
            .timed(RedisOperation::Bind, async {
            self.add_to_node_index(&record).await?;
            let bare = record.jid.bare().to_string();
            let mut connection = self.client.connection();
            let previous: Result<Option<String>, redis::RedisError> = self
                .bind_script
                .key(self.client.session_key(&bare))
                .key(
                    self.client
                        .directed_presence_key(&bare, record.jid.resource()),
                )
                .arg(record.jid.resource())
                .arg(encode_record(&record))
                .arg(max_resources)
                .invoke_async(&mut connection)
                .await;
            let previous: Option<String> = match previous {
                Ok(previous) => previous,
                Err(error) if error.to_string().contains("STARLING_RESOURCE_LIMIT") => {
                    // Refused: the index entry written ahead must not linger.
                    if let Err(error) = self.remove_from_node_index(&record.jid, &record.addr).await {
                        tracing::warn!(jid = %record.jid, error = %error, "stale node index entry left behind");
                    }
                    return Err(ApiError::LimitReached(format!(
                        "{max_resources} sessions already bound"
                    )));
                }
                Err(error) => return Err(RegistryError::from(error).into()),
            };
            let replaced = previous
                .map(|raw| decode_record(record.jid.clone(), &raw))
                .transpose()?;
            if let Some(replaced) = &replaced {
                // The entry names the replaced connection: removing it cannot remove a newer session's.
                // A failure only leaves a stale entry, which every reader tolerates.
                if replaced.addr != record.addr {
                    if let Err(error) = self
                        .remove_from_node_index(&replaced.jid, &replaced.addr)
                        .await
                    {
                        tracing::warn!(jid = %replaced.jid, node = %replaced.addr.node, error = %error, "stale node index entry left behind");
                    }
                }
            }
            Ok(BindOutcome { replaced })
            })
            .await
    }

    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<Option<SessionRecord>> {
        self.client
            .timed(RedisOperation::Unbind, async {
            let removed = self.unbind_record(jid, addr).await?;
            if removed.is_some() {
                // The session is gone; a failure here only leaves a stale index entry.
                if let Err(error) = self.remove_from_node_index(jid, addr).await {
                    tracing::warn!(jid = %jid, node = %addr.node, error = %error, "stale node index entry left behind");
                }
            }
            Ok(removed)
            })
            .await
    }

    async fn sessions(&self, user: &BareJid) -> ApiResult<Vec<SessionRecord>> {
        self.client
            .timed(RedisOperation::Sessions, async {
            let mut connection = self.client.connection();
            let fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(self.client.session_key(&user.to_string()))
                .query_async(&mut connection)
                .await
                .map_err(RegistryError::from)?;
            let mut records = Vec::with_capacity(fields.len());
            for (resource, raw) in fields {
                let Ok(jid) = user.with_resource(&resource) else {
                    tracing::warn!(user = %user, resource = %resource, "skipping a session with an invalid resource");
                    continue;
                };
                records.push(decode_record(jid, &raw)?);
            }
            Ok(records)
            })
            .await
    }

    async fn session(&self, jid: &FullJid) -> ApiResult<Option<SessionRecord>> {
        self.client
            .timed(RedisOperation::Session, async {
                let mut connection = self.client.connection();
                let raw: Option<String> = redis::cmd("HGET")
                    .arg(self.client.session_key(&jid.bare().to_string()))
                    .arg(jid.resource())
                    .query_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                Ok(raw
                    .map(|raw| decode_record(jid.clone(), &raw))
                    .transpose()?)
            })
            .await
    }

    async fn set_presence(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
        available: bool,
        priority: i8,
        presence: Option<String>,
    ) -> ApiResult<bool> {
        self.client
            .timed(RedisOperation::SetPresence, async {
                let mut connection = self.client.connection();
                let updated: i64 = self
                    .set_presence_script
                    .key(self.client.session_key(&jid.bare().to_string()))
                    .arg(jid.resource())
                    .arg(&addr.node)
                    .arg(addr.conn.to_string())
                    .arg(if available { "1" } else { "0" })
                    .arg(priority.to_string())
                    .arg(if presence.is_some() { "1" } else { "0" })
                    .arg(presence.unwrap_or_default())
                    .invoke_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                Ok(updated == 1)
            })
            .await
    }

    async fn set_interested(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<bool> {
        self.set_field(
            RedisOperation::SetInterested,
            jid,
            addr,
            "interested",
            "true".to_string(),
        )
        .await
    }

    async fn set_carbons(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
        enabled: bool,
    ) -> ApiResult<bool> {
        self.set_field(
            RedisOperation::SetCarbons,
            jid,
            addr,
            "carbons",
            enabled.to_string(),
        )
        .await
    }

    async fn set_blocklist_interest(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<bool> {
        self.set_field(
            RedisOperation::SetInterested,
            jid,
            addr,
            "blocklist_interest",
            "true".to_string(),
        )
        .await
    }

    async fn set_resumption(&self, jid: &FullJid, addr: &SessionAddr, id: &str) -> ApiResult<bool> {
        self.set_field(
            RedisOperation::Relocate,
            jid,
            addr,
            "resumption",
            serde_json::Value::from(id).to_string(),
        )
        .await
    }

    async fn relocate(
        &self,
        jid: &FullJid,
        from: &SessionAddr,
        to: &SessionAddr,
    ) -> ApiResult<bool> {
        self.client
            .timed(RedisOperation::Relocate, async {
                // The new node's index entry first (as a bind writes it), the
                // old one's removed after: a crash leaves a stale entry, never
                // an unindexed session. A detached session is in no node's index.
                if !starling_api::resumption::is_detached(to) {
                    self.add_to_node_index(&SessionRecord::new(jid.clone(), to.clone()))
                        .await?;
                }
                let mut connection = self.client.connection();
                let moved: i64 = self
                    .relocate_script
                    .key(self.client.session_key(&jid.bare().to_string()))
                    .arg(jid.resource())
                    .arg(&from.node)
                    .arg(from.conn.to_string())
                    .arg(&to.node)
                    .arg(to.conn.to_string())
                    .invoke_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                // The entry of the address that does not hold the session now.
                let stale = if moved == 1 { from } else { to };
                if !starling_api::resumption::is_detached(stale) {
                    if let Err(error) = self.remove_from_node_index(jid, stale).await {
                        tracing::warn!(jid = %jid, node = %stale.node, error = %error, "stale node index entry left behind");
                    }
                }
                Ok(moved == 1)
            })
            .await
    }

    async fn set_directed_presence(
        &self,
        jid: &FullJid,
        to: &Jid,
        available: bool,
        max_entries: usize,
    ) -> ApiResult<bool> {
        self.client
            .timed(RedisOperation::SetDirectedPresence, async {
                let mut connection = self.client.connection();
                let key = self
                    .client
                    .directed_presence_key(&jid.bare().to_string(), jid.resource());
                if !available {
                    redis::cmd("SREM")
                        .arg(key)
                        .arg(to.to_string())
                        .query_async::<()>(&mut connection)
                        .await
                        .map_err(RegistryError::from)?;
                    return Ok(true);
                }
                let added: i64 = self
                    .add_directed_script
                    .key(key)
                    .arg(to.to_string())
                    .arg(max_entries)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                Ok(added == 1)
            })
            .await
    }

    async fn take_directed_presence(&self, jid: &FullJid) -> ApiResult<Vec<Jid>> {
        self.client
            .timed(RedisOperation::TakeDirectedPresence, async {
            let mut connection = self.client.connection();
            let members: Vec<String> = self
                .take_directed_script
                .key(
                    self.client
                        .directed_presence_key(&jid.bare().to_string(), jid.resource()),
                )
                .invoke_async(&mut connection)
                .await
                .map_err(RegistryError::from)?;
            Ok(members
                .into_iter()
                .filter_map(|member| match member.parse::<Jid>() {
                    Ok(to) => Some(to),
                    Err(_) => {
                        tracing::warn!(jid = %jid, to = %member, "dropping an invalid directed presence entry");
                        None
                    }
                })
                .collect())
            })
            .await
    }

    async fn node_sessions(&self, node: &str) -> ApiResult<Vec<SessionRecord>> {
        self.client
            .timed(RedisOperation::NodeSessions, async {
                let entries = self.node_index(node).await?;
                let lookups =
                    entries
                        .iter()
                        .filter_map(|entry| parse_node_index_entry(entry))
                        .map(|(conn, jid)| async move {
                            let record = self.session(&jid).await?;
                            // A stale entry (the resource moved, or was replaced) is not this node's session.
                            Ok::<_, starling_api::ApiError>(record.filter(|record| {
                                record.addr.node == node && record.addr.conn == conn
                            }))
                        });
                Ok(try_join_all(lookups).await?.into_iter().flatten().collect())
            })
            .await
    }

    async fn live_nodes(&self) -> ApiResult<Vec<String>> {
        Ok(crate::cluster_nodes(&self.client)
            .await?
            .into_iter()
            .filter(|status| status.alive && status.draining_since_unix_ms.is_none())
            .map(|status| status.node)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid() -> FullJid {
        "alice@example.com/phone".parse().unwrap()
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut record = SessionRecord::new(
            jid(),
            SessionAddr {
                node: "cm1".into(),
                conn: u64::MAX,
            },
        );
        record.priority = -5;
        record.available = true;
        record.carbons = true;
        record.presence =
            Some("<presence xmlns='jabber:client'><show>away</show></presence>".into());
        let raw = encode_record(&record);
        assert_eq!(decode_record(jid(), &raw).unwrap(), record);
    }

    #[test]
    fn records_written_by_lua_cjson_decode() {
        // cjson escapes '/' and drops a nil field.
        let raw = r#"{"node":"cm\/1","conn":"7","priority":5,"available":true,"interested":false}"#;
        let record = decode_record(jid(), raw).unwrap();
        assert_eq!(
            record.addr,
            SessionAddr {
                node: "cm/1".into(),
                conn: 7
            }
        );
        assert_eq!(record.presence, None);
        // Written before Message Carbons existed: off.
        assert!(!record.carbons);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(matches!(
            decode_record(jid(), "not json"),
            Err(RegistryError::CorruptRecord { .. })
        ));
        let raw = r#"{"node":"cm1","conn":"x","priority":0,"available":false,"interested":false}"#;
        assert!(matches!(
            decode_record(jid(), raw),
            Err(RegistryError::CorruptRecord { .. })
        ));
    }

    #[test]
    fn node_index_entries_round_trip() {
        let full: FullJid = "a@example.com/with space".parse().unwrap();
        let entry = node_index_entry(&full, 42);
        assert_eq!(entry, "42 a@example.com/with space");
        assert_eq!(parse_node_index_entry(&entry), Some((42, full)));
        assert_eq!(parse_node_index_entry("nonsense"), None);
    }
}
