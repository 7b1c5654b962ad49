//! Stream resumption state (XEP-0198), the [`ResumptionStore`] of
//! `starling serve` (in memory) and of the cluster (Redis).
//!
//! Redis keys (behind the configured prefix; `smres` and `smq` of one stream
//! share a slot):
//! - `smres:{id}`: HASH owner (bare JID), jid (full JID), node, conn, h_in,
//!   acked, timeout (s), max (the queue's bound), parked (how many of `smq`'s
//!   last entries were parked);
//! - `smq:{id}`: LIST of the serialised stanzas after `acked`, in order (sent
//!   but unacknowledged first, then parked ones);
//! - `smfly:{id}`: LIST of stanzas published to the stream's node and not yet
//!   journaled by it (written by the bus's publish script, removed by the
//!   journal); what is left when that node died joins `smq` when the stream
//!   is resumed from it or detached by the janitor, or at expiry, after the
//!   journaled stanzas and before the parked ones (`smres` counts those in
//!   `parked`);
//! - `smexp`: ZSET of detached ids by the Unix time (ms) their timeout passes.
//!
//! Every change is one Lua script; every write by a connection-manager names
//! the address it holds the stream at and is refused once the stream moved.
//! A connection-manager's journal entries go out as one pipeline per batch.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;
use starling_api::resumption::{
    acked_since, detached_addr, Expired, JournalEntry, Parked, ResumableStream, ResumeRefused,
    Resumed, DETACHED_NODE,
};
use starling_api::{ApiError, ApiResult, ResumptionStore, SessionAddr};
use starling_jid::{BareJid, FullJid};
use starling_redis_client::{redis, RedisClient, RedisOperation};

use crate::RegistryError;

/// A detached stream's keys outlive its timeout by this much, in case no
/// router took it when it expired (they then vanish on their own).
const SAFETY_TTL_MS: u64 = 10 * 60 * 1000;

struct MemoryStream {
    owner: BareJid,
    jid: FullJid,
    addr: SessionAddr,
    h_in: u32,
    acked: u32,
    timeout_secs: u64,
    max_unacked: usize,
    queue: VecDeque<String>,
    deadline: Option<Instant>,
}

/// The resumption store of `starling serve`.
#[derive(Default)]
pub struct MemoryResumption {
    streams: Mutex<HashMap<String, MemoryStream>>,
}

impl MemoryResumption {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ResumptionStore for MemoryResumption {
    async fn enable(&self, stream: ResumableStream) -> ApiResult<()> {
        self.streams.lock().insert(
            stream.id,
            MemoryStream {
                owner: stream.jid.to_bare(),
                jid: stream.jid,
                addr: stream.addr,
                h_in: 0,
                acked: 0,
                timeout_secs: stream.timeout_secs,
                max_unacked: stream.max_unacked,
                queue: VecDeque::new(),
                deadline: None,
            },
        );
        Ok(())
    }

    async fn journal(&self, entries: &[JournalEntry]) -> ApiResult<Vec<bool>> {
        let mut streams = self.streams.lock();
        Ok(entries
            .iter()
            .map(|entry| {
                let Some(stream) = streams.get_mut(&entry.id).filter(|s| s.addr == entry.addr)
                else {
                    return false;
                };
                let trim = (entry.newly_acked as usize).min(stream.queue.len());
                stream.queue.drain(..trim);
                stream.acked = entry.acked;
                stream.h_in = entry.h_in;
                stream.queue.extend(entry.appended.iter().cloned());
                true
            })
            .collect())
    }

    async fn park(&self, id: &str, stanza: &str) -> ApiResult<Parked> {
        let mut streams = self.streams.lock();
        let Some(stream) = streams.get_mut(id) else {
            return Ok(Parked::Gone);
        };
        if stream.queue.len() >= stream.max_unacked {
            return Ok(Parked::Full);
        }
        stream.queue.push_back(stanza.to_string());
        Ok(Parked::Queued)
    }

    async fn detach(&self, id: &str, addr: &SessionAddr, _node_dead: bool) -> ApiResult<bool> {
        let mut streams = self.streams.lock();
        let Some(stream) = streams.get_mut(id).filter(|s| &s.addr == addr) else {
            return Ok(false);
        };
        stream.addr = detached_addr(addr.conn);
        stream.deadline = Some(Instant::now() + Duration::from_secs(stream.timeout_secs));
        Ok(true)
    }

    async fn peek(
        &self,
        id: &str,
        owner: &BareJid,
        h: Option<u32>,
    ) -> ApiResult<Result<(FullJid, SessionAddr), ResumeRefused>> {
        let streams = self.streams.lock();
        let Some(stream) = streams.get(id).filter(|s| &s.owner == owner) else {
            return Ok(Err(ResumeRefused::NotFound));
        };
        if let Err(refused) = check_h(stream.acked, stream.queue.len(), stream.h_in, h) {
            return Ok(Err(refused));
        }
        Ok(Ok((stream.jid.clone(), stream.addr.clone())))
    }

    async fn resume(
        &self,
        id: &str,
        owner: &BareJid,
        h: Option<u32>,
        addr: &SessionAddr,
        _previous_node_dead: bool,
    ) -> ApiResult<Result<Resumed, ResumeRefused>> {
        let mut streams = self.streams.lock();
        let Some(stream) = streams.get_mut(id).filter(|s| &s.owner == owner) else {
            return Ok(Err(ResumeRefused::NotFound));
        };
        let newly_acked = match check_h(stream.acked, stream.queue.len(), stream.h_in, h) {
            Ok(newly_acked) => newly_acked,
            Err(refused) => return Ok(Err(refused)),
        };
        let h = h.unwrap_or(stream.acked);
        stream.queue.drain(..newly_acked);
        stream.acked = h;
        stream.deadline = None;
        let previous = std::mem::replace(&mut stream.addr, addr.clone());
        Ok(Ok(Resumed {
            jid: stream.jid.clone(),
            previous,
            timeout_secs: stream.timeout_secs,
            max_unacked: stream.max_unacked,
            h_in: stream.h_in,
            acked: h,
            unacked: stream.queue.iter().cloned().collect(),
        }))
    }

    async fn end(&self, id: &str, addr: &SessionAddr) -> ApiResult<Option<Vec<String>>> {
        let mut streams = self.streams.lock();
        if streams.get(id).is_some_and(|s| &s.addr == addr) {
            return Ok(streams
                .remove(id)
                .map(|stream| stream.queue.into_iter().collect()));
        }
        Ok(None)
    }

    async fn take_expired(&self, limit: usize) -> ApiResult<Vec<Expired>> {
        let now = Instant::now();
        let mut streams = self.streams.lock();
        let ids: Vec<String> = streams
            .iter()
            .filter(|(_, s)| s.deadline.is_some_and(|deadline| deadline <= now))
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| {
                let stream = streams.remove(&id)?;
                Some(Expired {
                    id,
                    jid: stream.jid,
                    addr: stream.addr,
                    stanzas: stream.queue.into_iter().collect(),
                })
            })
            .collect())
    }
}

/// How many queued stanzas `h` acknowledges, or why it cannot be right
/// (XEP-0198 section 4: counters wrap at 2^32).
fn check_h(acked: u32, queued: usize, h_in: u32, h: Option<u32>) -> Result<usize, ResumeRefused> {
    let Some(h) = h else { return Ok(0) };
    let newly_acked = acked_since(acked, h) as usize;
    if newly_acked > queued {
        return Err(ResumeRefused::HandledCountTooHigh {
            h,
            sent: acked.wrapping_add(queued as u32),
            h_in,
        });
    }
    Ok(newly_acked)
}

/// The in-flight merge shared by the resume and expiry scripts.
const MERGE_IN_FLIGHT: &str = r"
-- What was in flight to a dead node joins the queue after the journaled
-- stanzas and before the parked ones (KEYS[1] smres, KEYS[2] smq, KEYS[3] smfly).
local function merge_in_flight()
  local fly = redis.call('LRANGE', KEYS[3], 0, -1)
  redis.call('DEL', KEYS[3])
  if #fly == 0 then return end
  local parked = tonumber(redis.call('HGET', KEYS[1], 'parked') or '0')
  local parked_items = {}
  if parked > 0 then
    parked_items = redis.call('LRANGE', KEYS[2], -parked, -1)
    redis.call('LTRIM', KEYS[2], 0, -parked - 1)
  end
  for _, stanza in ipairs(fly) do redis.call('RPUSH', KEYS[2], stanza) end
  for _, stanza in ipairs(parked_items) do redis.call('RPUSH', KEYS[2], stanza) end
  redis.call('HSET', KEYS[1], 'parked', '0')
end
";

/// KEYS: smres, smq, smfly. ARGV: owner, jid, node, conn, timeout, max.
const ENABLE_SCRIPT: &str = r"
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'jid', ARGV[2], 'node', ARGV[3], 'conn', ARGV[4],
  'h_in', '0', 'acked', '0', 'timeout', ARGV[5], 'max', ARGV[6], 'parked', '0')
return 1
";

/// KEYS: smres, smq, smfly. ARGV: node, conn, newly acked, acked, h_in,
/// count of appended, appended..., consumed... Every stanza named is no
/// longer in flight, even when the writer no longer holds the stream (it
/// reroutes those itself).
const JOURNAL_SCRIPT: &str = r"
for i = 7, #ARGV do redis.call('LREM', KEYS[3], 1, ARGV[i]) end
local at = redis.call('HMGET', KEYS[1], 'node', 'conn')
if at[1] ~= ARGV[1] or at[2] ~= ARGV[2] then return 0 end
local trim = tonumber(ARGV[3])
if trim > 0 then redis.call('LTRIM', KEYS[2], trim, -1) end
redis.call('HSET', KEYS[1], 'acked', ARGV[4], 'h_in', ARGV[5])
local appended = tonumber(ARGV[6])
for i = 7, 6 + appended do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return 1
";

/// KEYS: smres, smq, smfly. ARGV: stanza. 1 queued, -1 full, 0 gone.
const PARK_SCRIPT: &str = r"
local max = redis.call('HGET', KEYS[1], 'max')
if not max then return 0 end
if redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) >= tonumber(max) then return -1 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'parked', 1)
return 1
";

/// KEYS: smres, smq, smfly, smexp. ARGV: node, conn, id, detached node,
/// safety ms, '1' when the node is dead (what was in flight to it joins the queue).
const DETACH_BODY: &str = r"
local at = redis.call('HMGET', KEYS[1], 'node', 'conn', 'timeout')
if at[1] ~= ARGV[1] or at[2] ~= ARGV[2] then return 0 end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local timeout_ms = tonumber(at[3]) * 1000
if ARGV[6] == '1' then merge_in_flight() end
redis.call('HSET', KEYS[1], 'node', ARGV[4])
redis.call('ZADD', KEYS[4], now_ms + timeout_ms, ARGV[3])
redis.call('PEXPIRE', KEYS[1], timeout_ms + tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[2], timeout_ms + tonumber(ARGV[5]))
return 1
";

/// KEYS: smres, smq, smfly, smexp. ARGV: owner, h ('' when the client gave
/// none), node, conn, id, '1' when the node that held it is dead.
/// {'missing'} | {'too-high', h_in, sent} | {'ok', jid, node, conn, h_in, timeout, max, acked, stanzas...}
const RESUME_BODY: &str = r"
local f = redis.call('HMGET', KEYS[1], 'owner', 'jid', 'node', 'conn', 'h_in', 'acked', 'timeout', 'max')
if not f[1] or f[1] ~= ARGV[1] then return {'missing'} end
local acked = tonumber(f[6])
local h = acked
if ARGV[2] ~= '' then h = tonumber(ARGV[2]) end
local len = redis.call('LLEN', KEYS[2])
local delta = (h - acked) % 4294967296
if delta > len then return {'too-high', f[5], tostring((acked + len) % 4294967296)} end
if delta > 0 then redis.call('LTRIM', KEYS[2], delta, -1) end
-- The node that held it is dead: what was in flight to it is not lost.
if ARGV[6] == '1' then merge_in_flight() end
redis.call('HSET', KEYS[1], 'node', ARGV[3], 'conn', ARGV[4], 'acked', tostring(h), 'parked', '0')
redis.call('ZREM', KEYS[4], ARGV[5])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
local out = {'ok', f[2], f[3], f[4], f[5], f[7], f[8], tostring(h)}
for _, stanza in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = stanza end
return out
";

/// KEYS: smres, smq, smfly, smexp. ARGV: node, conn, id. {'missing'} or
/// {'ok', stanzas...}. What is still in flight reaches the live node that
/// ends the stream, which reroutes it itself.
const END_SCRIPT: &str = r"
local at = redis.call('HMGET', KEYS[1], 'node', 'conn')
if at[1] ~= ARGV[1] or at[2] ~= ARGV[2] then return {'missing'} end
local out = {'ok'}
for _, stanza in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = stanza end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[3])
return out
";

/// KEYS: smres, smq. ARGV: owner. {'missing'} or {'ok', jid, node, conn, h_in, acked, queued}
const PEEK_SCRIPT: &str = r"
local f = redis.call('HMGET', KEYS[1], 'owner', 'jid', 'node', 'conn', 'h_in', 'acked')
if not f[1] or f[1] ~= ARGV[1] then return {'missing'} end
return {'ok', f[2], f[3], f[4], f[5], f[6], tostring(redis.call('LLEN', KEYS[2]))}
";

/// KEYS: smres, smq, smfly, smexp. ARGV: id. Take a stream whose deadline
/// passed: {} when it was resumed or taken meanwhile, else {jid, node, conn, stanzas...}.
const TAKE_EXPIRED_BODY: &str = r"
local deadline = redis.call('ZSCORE', KEYS[4], ARGV[1])
if not deadline then return {} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(deadline) > now_ms then return {} end
redis.call('ZREM', KEYS[4], ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'jid', 'node', 'conn')
if not f[1] then return {} end
merge_in_flight()
local out = {f[1], f[2], f[3]}
for _, stanza in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = stanza end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return out
";

/// The resumption store of the cluster.
pub struct RedisResumption {
    client: RedisClient,
    enable: Script,
    journal: Script,
    park: Script,
    detach: Script,
    resume: Script,
    end: Script,
    peek: Script,
    take_expired: Script,
}

fn corrupt(id: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("resumption state of {id}: {reason}"))
}

impl RedisResumption {
    pub fn new(client: RedisClient) -> Self {
        RedisResumption {
            client,
            enable: Script::new(ENABLE_SCRIPT),
            journal: Script::new(JOURNAL_SCRIPT),
            park: Script::new(PARK_SCRIPT),
            detach: Script::new(&format!("{MERGE_IN_FLIGHT}{DETACH_BODY}")),
            resume: Script::new(&format!("{MERGE_IN_FLIGHT}{RESUME_BODY}")),
            end: Script::new(END_SCRIPT),
            peek: Script::new(PEEK_SCRIPT),
            take_expired: Script::new(&format!("{MERGE_IN_FLIGHT}{TAKE_EXPIRED_BODY}")),
        }
    }

    fn keys(&self, id: &str) -> (String, String) {
        (
            self.client.resumption_key(id),
            self.client.resumption_queue_key(id),
        )
    }

    /// `script` on the keys of stream `id` (`smres`, `smq`, `smfly`, and
    /// `smexp` when `with_expiry`); the caller adds the arguments.
    fn invocation<'a>(
        &self,
        script: &'a Script,
        id: &str,
        with_expiry: bool,
    ) -> redis::ScriptInvocation<'a> {
        let (state, queue) = self.keys(id);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(state)
            .key(queue)
            .key(self.client.resumption_inflight_key(id));
        if with_expiry {
            invocation.key(self.client.resumption_expiry_key());
        }
        invocation
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RegistryError> {
        let mut connection = self.client.connection();
        Ok(invocation.invoke_async(&mut connection).await?)
    }

    /// One pipeline of EVALSHA calls of the journal script; loads the script
    /// and tries again once when Redis does not know it (a restart).
    async fn journal_pipeline(&self, entries: &[JournalEntry]) -> Result<Vec<i64>, RegistryError> {
        let mut pipe = redis::pipe();
        for entry in entries {
            let (state, queue) = self.keys(&entry.id);
            let command = pipe
                .cmd("EVALSHA")
                .arg(self.journal.get_hash())
                .arg(3)
                .arg(state)
                .arg(queue)
                .arg(self.client.resumption_inflight_key(&entry.id))
                .arg(&entry.addr.node)
                .arg(entry.addr.conn.to_string())
                .arg(entry.newly_acked)
                .arg(entry.acked)
                .arg(entry.h_in)
                .arg(entry.appended.len());
            for stanza in entry.appended.iter().chain(&entry.consumed) {
                command.arg(stanza);
            }
        }
        let mut connection = self.client.connection();
        match pipe.query_async::<Vec<i64>>(&mut connection).await {
            Ok(results) => Ok(results),
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                    || error.to_string().contains("NOSCRIPT") =>
            {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(JOURNAL_SCRIPT)
                    .query_async::<String>(&mut connection)
                    .await?;
                Ok(pipe.query_async::<Vec<i64>>(&mut connection).await?)
            }
            Err(error) => Err(error.into()),
        }
    }
}

#[async_trait]
impl ResumptionStore for RedisResumption {
    async fn enable(&self, stream: ResumableStream) -> ApiResult<()> {
        self.client
            .timed(RedisOperation::Resumption, async {
                let mut invocation = self.invocation(&self.enable, &stream.id, false);
                invocation
                    .arg(stream.jid.bare().to_string())
                    .arg(stream.jid.to_string())
                    .arg(&stream.addr.node)
                    .arg(stream.addr.conn.to_string())
                    .arg(stream.timeout_secs)
                    .arg(stream.max_unacked);
                self.invoke::<i64>(&invocation).await?;
                Ok(())
            })
            .await
    }

    async fn journal(&self, entries: &[JournalEntry]) -> ApiResult<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .timed(RedisOperation::Resumption, async {
                let results = self.journal_pipeline(entries).await?;
                Ok(results.into_iter().map(|held| held == 1).collect())
            })
            .await
    }

    async fn park(&self, id: &str, stanza: &str) -> ApiResult<Parked> {
        self.client
            .timed(RedisOperation::Resumption, async {
                let mut invocation = self.invocation(&self.park, id, false);
                invocation.arg(stanza);
                let parked: i64 = self.invoke(&invocation).await?;
                Ok(match parked {
                    1 => Parked::Queued,
                    -1 => Parked::Full,
                    _ => Parked::Gone,
                })
            })
            .await
    }

    async fn detach(&self, id: &str, addr: &SessionAddr, node_dead: bool) -> ApiResult<bool> {
        self.client
            .timed(RedisOperation::Resumption, async {
                let mut invocation = self.invocation(&self.detach, id, true);
                invocation
                    .arg(&addr.node)
                    .arg(addr.conn.to_string())
                    .arg(id)
                    .arg(DETACHED_NODE)
                    .arg(SAFETY_TTL_MS)
                    .arg(if node_dead { "1" } else { "0" });
                let detached: i64 = self.invoke(&invocation).await?;
                Ok(detached == 1)
            })
            .await
    }

    async fn peek(
        &self,
        id: &str,
        owner: &BareJid,
        h: Option<u32>,
    ) -> ApiResult<Result<(FullJid, SessionAddr), ResumeRefused>> {
        self.client
            .timed(RedisOperation::Resumption, async {
                let mut invocation = self.invocation(&self.peek, id, false);
                invocation.arg(owner.to_string());
                let reply: Vec<String> = self.invoke(&invocation).await?;
                if reply.first().map(String::as_str) != Some("ok") || reply.len() < 7 {
                    return Ok(Err(ResumeRefused::NotFound));
                }
                let number = |index: usize| -> ApiResult<u64> {
                    reply[index]
                        .parse()
                        .map_err(|_| corrupt(id, format!("field {index} is not a number")))
                };
                let jid: FullJid = reply[1].parse().map_err(|_| corrupt(id, "jid"))?;
                let addr = SessionAddr {
                    node: reply[2].clone(),
                    conn: number(3)?,
                };
                if let Err(refused) =
                    check_h(number(5)? as u32, number(6)? as usize, number(4)? as u32, h)
                {
                    return Ok(Err(refused));
                }
                Ok(Ok((jid, addr)))
            })
            .await
    }

    async fn resume(
        &self,
        id: &str,
        owner: &BareJid,
        h: Option<u32>,
        addr: &SessionAddr,
        previous_node_dead: bool,
    ) -> ApiResult<Result<Resumed, ResumeRefused>> {
        self.client
            .timed(RedisOperation::Resumption, async {
                let mut invocation = self.invocation(&self.resume, id, true);
                invocation
                    .arg(owner.to_string())
                    .arg(h.map(|h| h.to_string()).unwrap_or_default())
                    .arg(&addr.node)
                    .arg(addr.conn.to_string())
                    .arg(id)
                    .arg(if previous_node_dead { "1" } else { "0" });
                let reply: Vec<String> = self.invoke(&invocation).await?;
                let number = |index: usize| -> ApiResult<u64> {
                    reply
                        .get(index)
                        .and_then(|value| value.parse().ok())
                        .ok_or_else(|| corrupt(id, format!("field {index} is not a number")))
                };
                match reply.first().map(String::as_str) {
                    Some("ok") => {
                        let jid: FullJid = reply[1].parse().map_err(|_| corrupt(id, "jid"))?;
                        Ok(Ok(Resumed {
                            jid,
                            previous: SessionAddr {
                                node: reply[2].clone(),
                                conn: number(3)?,
                            },
                            h_in: number(4)? as u32,
                            timeout_secs: number(5)?,
                            max_unacked: number(6)? as usize,
                            acked: number(7)? as u32,
                            unacked: reply[8..].to_vec(),
                        }))
                    }
                    Some("too-high") => Ok(Err(ResumeRefused::HandledCountTooHigh {
                        h: h.unwrap_or_default(),
                        h_in: number(1)? as u32,
                        sent: number(2)? as u32,
                    })),
                    _ => Ok(Err(ResumeRefused::NotFound)),
                }
            })
            .await
    }

    async fn end(&self, id: &str, addr: &SessionAddr) -> ApiResult<Option<Vec<String>>> {
        self.client
            .timed(RedisOperation::Resumption, async {
                let mut invocation = self.invocation(&self.end, id, true);
                invocation
                    .arg(&addr.node)
                    .arg(addr.conn.to_string())
                    .arg(id);
                let ended: Vec<String> = self.invoke(&invocation).await?;
                if ended.first().map(String::as_str) != Some("ok") {
                    return Ok(None);
                }
                Ok(Some(ended[1..].to_vec()))
            })
            .await
    }

    async fn take_expired(&self, limit: usize) -> ApiResult<Vec<Expired>> {
        self.client
            .timed(RedisOperation::Resumption, async {
                let mut connection = self.client.connection();
                let (seconds, micros): (u64, u64) = redis::cmd("TIME")
                    .query_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                let now_ms = seconds * 1000 + micros / 1000;
                let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(self.client.resumption_expiry_key())
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut connection)
                    .await
                    .map_err(RegistryError::from)?;
                let mut expired = Vec::new();
                for id in ids {
                    let mut invocation = self.invocation(&self.take_expired, &id, true);
                    invocation.arg(&id);
                    let taken: Vec<String> = self.invoke(&invocation).await?;
                    if taken.len() < 3 {
                        continue;
                    }
                    let Ok(jid) = taken[0].parse::<FullJid>() else {
                        tracing::warn!(id = %id, "expired resumption state with an invalid jid dropped");
                        continue;
                    };
                    expired.push(Expired {
                        id,
                        jid,
                        addr: SessionAddr {
                            node: taken[1].clone(),
                            conn: taken[2].parse().unwrap_or_default(),
                        },
                        stanzas: taken[3..].to_vec(),
                    });
                }
                Ok(expired)
            })
            .await
    }
}
