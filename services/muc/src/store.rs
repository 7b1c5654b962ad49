//! Where rooms live between stanzas: in the process (`starling serve`) or
//! in Redis (the cluster), written before the room's stanzas go out. A
//! stanza is applied under the room's lease: one replica at a time applies
//! stanzas to a room, in the order it took the lease, so the room's order is
//! one order for every occupant (docs/muc.md).
//!
//! A room is two things: its record (JSON: configuration, affiliations,
//! occupants, subject; rewritten when it changes) and its history (a list
//! bounded by the service's limits, appended to by each groupchat message,
//! so that a message does not rewrite the room).
//!
//! Redis keys, all in the room's slot: `muc:{<room>}` the record,
//! `muc:{<room>}:history` the history (one JSON entry per message, oldest
//! first), `muc:{<room>}:history_bytes` the bytes the list holds,
//! `muc:{<room>}:last_stanza_id` the room's last stanza-id,
//! `muc:{<room>}:lease` the lease (a random token, with a TTL so that a
//! killed replica's lease lapses); and `muc:rooms` the set of rooms (for the
//! service's disco#items). Per stanza: one round trip takes the lease and
//! reads the room, one writes (only when something changed), one releases.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_api::{ApiError, ApiResult};
use starling_redis_client::redis::{self, Script};
use starling_redis_client::{hash_tag, RedisClient};

/// The right to change one room, for one stanza.
#[derive(Debug)]
pub struct Lease {
    pub room: String,
    token: String,
    /// Held, not read: the room's mutex in the process, released when the lease is dropped.
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// A room as read under its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The record, `None` when the room is not in the store.
    pub record: Option<String>,
    /// The history entries, oldest first (empty unless asked for).
    pub history: Vec<String>,
    /// The last XEP-0359 stanza-id the room stamped (0: none): kept beside
    /// the history, not in the record, so that a message, which moves it,
    /// leaves the record as it is.
    pub last_stanza_id: i64,
}

/// What a write does to the room's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordWrite<'a> {
    /// Unchanged (a message that only adds to the history).
    Keep,
    Put(&'a str),
    /// The room is gone, with its history.
    Delete,
}

/// The bounds of a room's history (`muc.history_max_stanzas`,
/// `muc.history_max_bytes`): past either, the oldest entries go. The bytes
/// are those of the stored entries (the message's XML, its time and sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_stanzas: usize,
    pub max_bytes: usize,
}

/// The rooms' records and histories, and the leases that serialise the
/// stanzas applied to each.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// Wait for the room's lease (bounded: `ApiError::Unavailable` past it)
    /// and read the room under it, with its history when `with_history`.
    async fn acquire(&self, room: &str, with_history: bool) -> ApiResult<(Lease, Loaded)>;
    /// Write the record, append `history` entries (then bounded by
    /// `limits`) and set the last stanza-id (when `Some`) as one change;
    /// fails when the lease lapsed meanwhile, so a stalled replica cannot
    /// overwrite the work of the one that took over.
    async fn save(
        &self,
        lease: &Lease,
        record: RecordWrite<'_>,
        history: &[String],
        last_stanza_id: Option<i64>,
        limits: HistoryLimits,
    ) -> ApiResult<()>;
    async fn release(&self, lease: Lease);
    /// The rooms that exist, at most `limit`.
    async fn rooms(&self, limit: usize) -> ApiResult<Vec<String>>;
    /// A room's record read without its lease (disco of the service).
    async fn peek(&self, room: &str) -> ApiResult<Option<String>>;
}

/// The entries to append that fit at all (one larger than the byte bound
/// is not kept, as none is with a zero stanza bound).
fn keepable(history: &[String], limits: HistoryLimits) -> impl Iterator<Item = &String> {
    history
        .iter()
        .filter(move |entry| limits.max_stanzas > 0 && entry.len() <= limits.max_bytes)
}

/// One room in the process.
#[derive(Default)]
struct MemoryRoom {
    record: Option<String>,
    history: VecDeque<String>,
    history_bytes: usize,
    last_stanza_id: i64,
}

/// Rooms in this process (`starling serve`).
#[derive(Default)]
pub struct MemoryRoomStore {
    rooms: Mutex<HashMap<String, MemoryRoom>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[async_trait]
impl RoomStore for MemoryRoomStore {
    async fn acquire(&self, room: &str, with_history: bool) -> ApiResult<(Lease, Loaded)> {
        let lock = self
            .locks
            .lock()
            .entry(room.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        let loaded = match self.rooms.lock().get(room) {
            Some(stored) => Loaded {
                record: stored.record.clone(),
                history: if with_history {
                    stored.history.iter().cloned().collect()
                } else {
                    Vec::new()
                },
                last_stanza_id: stored.last_stanza_id,
            },
            None => Loaded::default(),
        };
        let lease = Lease {
            room: room.to_string(),
            token: String::new(),
            _guard: Some(guard),
        };
        Ok((lease, loaded))
    }

    async fn save(
        &self,
        lease: &Lease,
        record: RecordWrite<'_>,
        history: &[String],
        last_stanza_id: Option<i64>,
        limits: HistoryLimits,
    ) -> ApiResult<()> {
        let mut rooms = self.rooms.lock();
        match record {
            RecordWrite::Delete => {
                rooms.remove(&lease.room);
                return Ok(());
            }
            RecordWrite::Put(record) => {
                rooms.entry(lease.room.clone()).or_default().record = Some(record.to_string());
            }
            RecordWrite::Keep => {}
        }
        let Some(stored) = rooms.get_mut(&lease.room) else {
            return Ok(());
        };
        if let Some(id) = last_stanza_id {
            stored.last_stanza_id = id;
        }
        for entry in keepable(history, limits) {
            stored.history_bytes += entry.len();
            stored.history.push_back(entry.clone());
        }
        while stored.history.len() > limits.max_stanzas || stored.history_bytes > limits.max_bytes {
            match stored.history.pop_front() {
                Some(dropped) => stored.history_bytes -= dropped.len(),
                None => break,
            }
        }
        Ok(())
    }

    async fn release(&self, lease: Lease) {
        let room = lease.room.clone();
        drop(lease);
        let mut locks = self.locks.lock();
        // Forget the lock of a room nobody waits for (bounded memory).
        if locks
            .get(&room)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&room);
        }
    }

    async fn rooms(&self, limit: usize) -> ApiResult<Vec<String>> {
        let mut rooms: Vec<String> = self
            .rooms
            .lock()
            .iter()
            .filter(|(_, stored)| stored.record.is_some())
            .map(|(room, _)| room.clone())
            .collect();
        rooms.sort_unstable();
        rooms.truncate(limit);
        Ok(rooms)
    }

    async fn peek(&self, room: &str) -> ApiResult<Option<String>> {
        Ok(self
            .rooms
            .lock()
            .get(room)
            .and_then(|stored| stored.record.clone()))
    }
}

/// How long a lease lasts without being released: what a killed replica
/// costs its rooms before another replica takes them over.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// How long a stanza waits for its room's lease before it fails (`wait`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(8);

/// Take the lease and read the room in one round trip. KEYS: lease, record,
/// history, last stanza-id; ARGV: token, TTL in ms, '1' to read the history.
/// Nil when the lease is taken; else {record or nil, history, last id or nil}.
const ACQUIRE_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local history = {}
if ARGV[3] == '1' then history = redis.call('LRANGE', KEYS[3], 0, -1) end
return {redis.call('GET', KEYS[2]), history, redis.call('GET', KEYS[4])}";

/// Write under the lease, in one round trip. KEYS: record, lease, history,
/// history bytes, last stanza-id; ARGV: token, 'keep'/'put'/'delete', the
/// record, the most entries, the most bytes, the last stanza-id ('' to keep
/// it), then the entries to append. Returns 0 when the lease is not the
/// token's, 2 when the record was created, 3 when the room was deleted, 1
/// otherwise.
const SAVE_SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'delete' then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5])
  return 3
end
local outcome = 1
if ARGV[2] == 'put' then
  if redis.call('EXISTS', KEYS[1]) == 0 then outcome = 2 end
  redis.call('SET', KEYS[1], ARGV[3])
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[5], ARGV[6]) end
if #ARGV > 6 then
  local length = 0
  local bytes = tonumber(redis.call('GET', KEYS[4]) or '0')
  for index = 7, #ARGV do
    length = redis.call('RPUSH', KEYS[3], ARGV[index])
    bytes = bytes + #ARGV[index]
  end
  local max_entries = tonumber(ARGV[4])
  local max_bytes = tonumber(ARGV[5])
  while length > 0 and (length > max_entries or bytes > max_bytes) do
    bytes = bytes - #redis.call('LPOP', KEYS[3])
    length = length - 1
  end
  if length == 0 then redis.call('DEL', KEYS[3], KEYS[4]) else redis.call('SET', KEYS[4], bytes) end
end
return outcome";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Rooms in Redis (the cluster): any session-router replica serves any room.
pub struct RedisRoomStore {
    redis: RedisClient,
    acquire: Script,
    save: Script,
    release: Script,
    /// Redis round trips made, for the tests that count them per stanza.
    round_trips: AtomicU64,
}

impl RedisRoomStore {
    pub fn new(redis: RedisClient) -> Self {
        RedisRoomStore {
            redis,
            acquire: Script::new(ACQUIRE_SCRIPT),
            save: Script::new(SAVE_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            round_trips: AtomicU64::new(0),
        }
    }

    /// The Redis round trips this store made so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn round_trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    fn record_key(&self, room: &str) -> String {
        self.redis.key(&format!("muc:{}", hash_tag(room)))
    }

    fn history_key(&self, room: &str) -> String {
        self.redis.key(&format!("muc:{}:history", hash_tag(room)))
    }

    fn history_bytes_key(&self, room: &str) -> String {
        self.redis
            .key(&format!("muc:{}:history_bytes", hash_tag(room)))
    }

    fn last_stanza_id_key(&self, room: &str) -> String {
        self.redis
            .key(&format!("muc:{}:last_stanza_id", hash_tag(room)))
    }

    fn lease_key(&self, room: &str) -> String {
        self.redis.key(&format!("muc:{}:lease", hash_tag(room)))
    }

    fn rooms_key(&self) -> String {
        self.redis.key("muc:rooms")
    }
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("redis: {error}"))
}

#[async_trait]
impl RoomStore for RedisRoomStore {
    async fn acquire(&self, room: &str, with_history: bool) -> ApiResult<(Lease, Loaded)> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            self.round_trip();
            let taken: Option<(Option<String>, Vec<String>, Option<i64>)> = self
                .acquire
                .key(self.lease_key(room))
                .key(self.record_key(room))
                .key(self.history_key(room))
                .key(self.last_stanza_id_key(room))
                .arg(&token)
                .arg(LEASE_TTL.as_millis() as u64)
                .arg(if with_history { "1" } else { "0" })
                .invoke_async(&mut self.redis.connection())
                .await
                .map_err(unavailable)?;
            if let Some((record, history, last_stanza_id)) = taken {
                let lease = Lease {
                    room: room.to_string(),
                    token,
                    _guard: None,
                };
                let loaded = Loaded {
                    record,
                    history,
                    last_stanza_id: last_stanza_id.unwrap_or(0),
                };
                return Ok((lease, loaded));
            }
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "room {room} is busy (its lease was not released)"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn save(
        &self,
        lease: &Lease,
        record: RecordWrite<'_>,
        history: &[String],
        last_stanza_id: Option<i64>,
        limits: HistoryLimits,
    ) -> ApiResult<()> {
        let mut invocation = self.save.prepare_invoke();
        invocation
            .key(self.record_key(&lease.room))
            .key(self.lease_key(&lease.room))
            .key(self.history_key(&lease.room))
            .key(self.history_bytes_key(&lease.room))
            .key(self.last_stanza_id_key(&lease.room))
            .arg(&lease.token);
        match record {
            RecordWrite::Keep => invocation.arg("keep").arg(""),
            RecordWrite::Put(record) => invocation.arg("put").arg(record),
            RecordWrite::Delete => invocation.arg("delete").arg(""),
        };
        invocation
            .arg(limits.max_stanzas)
            .arg(limits.max_bytes)
            .arg(last_stanza_id.map(|id| id.to_string()).unwrap_or_default());
        for entry in keepable(history, limits) {
            invocation.arg(entry);
        }
        self.round_trip();
        let outcome: i64 = invocation
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(unavailable)?;
        let index_command = match outcome {
            0 => {
                return Err(ApiError::Unavailable(format!(
                    "the lease of room {} lapsed before its change was written",
                    lease.room
                )))
            }
            2 => "SADD",
            3 => "SREM",
            _ => return Ok(()),
        };
        // The index lives in another slot (Redis Cluster): updated after,
        // only when the room comes or goes.
        self.round_trip();
        redis::cmd(index_command)
            .arg(self.rooms_key())
            .arg(&lease.room)
            .query_async::<()>(&mut self.redis.connection())
            .await
            .map_err(unavailable)
    }

    async fn release(&self, lease: Lease) {
        self.round_trip();
        let released: Result<i64, _> = self
            .release
            .key(self.lease_key(&lease.room))
            .arg(&lease.token)
            .invoke_async(&mut self.redis.connection())
            .await;
        if let Err(error) = released {
            tracing::warn!(room = %lease.room, %error, "room lease not released, it lapses by itself");
        }
    }

    async fn rooms(&self, limit: usize) -> ApiResult<Vec<String>> {
        let (_, rooms): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(self.rooms_key())
            .arg(0)
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.redis.connection())
            .await
            .map_err(unavailable)?;
        let mut rooms = rooms;
        rooms.sort_unstable();
        rooms.truncate(limit);
        Ok(rooms)
    }

    async fn peek(&self, room: &str) -> ApiResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.record_key(room))
            .query_async(&mut self.redis.connection())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HistoryLimits = HistoryLimits {
        max_stanzas: 3,
        max_bytes: 10,
    };

    /// What every store does: one lease per room at a time, records
    /// written, read, listed and removed, histories appended and bounded.
    async fn contract(store: Arc<dyn RoomStore>) {
        let (lease, loaded) = store.acquire("r@muc", true).await.unwrap();
        assert_eq!(loaded, Loaded::default());
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move {
                let (lease, seen) = store.acquire("r@muc", false).await.unwrap();
                store.release(lease).await;
                seen
            })
        };
        // Another room is not held up by this one's lease.
        let (other, _) = store.acquire("s@muc", false).await.unwrap();
        store.release(other).await;
        store
            .save(
                &lease,
                RecordWrite::Put("{\"v\":1}"),
                &["aa".into()],
                Some(7),
                LIMITS,
            )
            .await
            .unwrap();
        assert!(!waiting.is_finished());
        store.release(lease).await;
        // The waiter took the lease after the write, and saw it (without
        // the history, which it did not ask for).
        assert_eq!(
            waiting.await.unwrap(),
            Loaded {
                record: Some("{\"v\":1}".into()),
                history: Vec::new(),
                last_stanza_id: 7,
            }
        );
        assert_eq!(
            store.peek("r@muc").await.unwrap().as_deref(),
            Some("{\"v\":1}")
        );
        assert_eq!(store.rooms(10).await.unwrap(), vec!["r@muc".to_string()]);

        // Appends keep the record and bound the list: at most 3 entries, at
        // most 10 bytes; an entry larger than the bound is not kept.
        let (lease, _) = store.acquire("r@muc", false).await.unwrap();
        store
            .save(
                &lease,
                RecordWrite::Keep,
                &["bb".into(), "cc".into(), "dd".into(), "x".repeat(11)],
                None,
                LIMITS,
            )
            .await
            .unwrap();
        store.release(lease).await;
        let (lease, loaded) = store.acquire("r@muc", true).await.unwrap();
        assert_eq!(loaded.record.as_deref(), Some("{\"v\":1}"));
        assert_eq!(loaded.history, ["bb", "cc", "dd"]);
        store
            .save(&lease, RecordWrite::Keep, &["eeeeeee".into()], None, LIMITS)
            .await
            .unwrap();
        store.release(lease).await;
        let (lease, loaded) = store.acquire("r@muc", true).await.unwrap();
        assert_eq!(loaded.history, ["dd", "eeeeeee"]);
        // A new record leaves the history.
        store
            .save(&lease, RecordWrite::Put("{\"v\":2}"), &[], None, LIMITS)
            .await
            .unwrap();
        store.release(lease).await;
        let (lease, loaded) = store.acquire("r@muc", true).await.unwrap();
        assert_eq!(loaded.record.as_deref(), Some("{\"v\":2}"));
        assert_eq!(loaded.history, ["dd", "eeeeeee"]);
        // Deleted: the record and the history go.
        store
            .save(&lease, RecordWrite::Delete, &[], None, LIMITS)
            .await
            .unwrap();
        store.release(lease).await;
        assert_eq!(store.peek("r@muc").await.unwrap(), None);
        assert!(store.rooms(10).await.unwrap().is_empty());
        let (lease, loaded) = store.acquire("r@muc", true).await.unwrap();
        assert_eq!(loaded, Loaded::default());
        store.release(lease).await;
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        let store = Arc::new(MemoryRoomStore::default());
        contract(store.clone()).await;
        // Idle rooms' locks are forgotten (bounded memory).
        assert!(store.locks.lock().is_empty());
    }

    #[tokio::test]
    async fn the_redis_store_keeps_the_contract() {
        let Some(redis) = starling_redis_client::testing::test_client().await else {
            return;
        };
        contract(Arc::new(RedisRoomStore::new(redis))).await;
    }

    #[tokio::test]
    async fn a_lapsed_redis_lease_cannot_write() {
        let Some(redis) = starling_redis_client::testing::test_client().await else {
            return;
        };
        let store = RedisRoomStore::new(redis.clone());
        let (lease, _) = store.acquire("r@muc", false).await.unwrap();
        // The lease lapses (its replica stalled past LEASE_TTL) and another takes the room.
        redis::cmd("DEL")
            .arg(store.lease_key("r@muc"))
            .query_async::<()>(&mut redis.connection())
            .await
            .unwrap();
        let (successor, _) = store.acquire("r@muc", false).await.unwrap();
        store
            .save(&successor, RecordWrite::Put("new"), &[], None, LIMITS)
            .await
            .unwrap();
        // Neither a record nor a history append of the stale lease is written.
        for (record, history) in [
            (RecordWrite::Put("stale"), Vec::new()),
            (RecordWrite::Keep, vec!["stale".to_string()]),
            (RecordWrite::Delete, Vec::new()),
        ] {
            assert!(matches!(
                store.save(&lease, record, &history, None, LIMITS).await,
                Err(ApiError::Unavailable(_))
            ));
        }
        // Releasing the stale lease leaves the successor's alone.
        store.release(lease).await;
        store
            .save(&successor, RecordWrite::Put("newer"), &[], None, LIMITS)
            .await
            .unwrap();
        store.release(successor).await;
        let (lease, loaded) = store.acquire("r@muc", true).await.unwrap();
        assert_eq!(
            loaded,
            Loaded {
                record: Some("newer".into()),
                history: Vec::new(),
                last_stanza_id: 0,
            }
        );
        store.release(lease).await;
    }
}
