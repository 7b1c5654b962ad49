//! Where rooms live between stanzas: in the process (`starling serve`) or
//! in Redis (the cluster), one record per room, written before the room's
//! stanzas go out. A stanza is applied under the room's lease: one replica
//! at a time applies stanzas to a room, in the order it took the lease, so
//! the room's order is one order for every occupant (docs/muc.md).
//!
//! Redis keys: `muc:{<room>}` the room (JSON), `muc:{<room>}:lease` the
//! lease (a random token, with a TTL so that a killed replica's lease
//! lapses), `muc:rooms` the set of rooms (for the service's disco#items).

use std::collections::HashMap;
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

/// The rooms' records, and the leases that serialise the stanzas applied to each.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// Wait for the room's lease (bounded: `ApiError::Unavailable` past it).
    async fn acquire(&self, room: &str) -> ApiResult<Lease>;
    /// The room's record, `None` when it does not exist.
    async fn load(&self, lease: &Lease) -> ApiResult<Option<String>>;
    /// Write the room's record (`None`: the room is gone); fails when the
    /// lease lapsed meanwhile, so a stalled replica cannot overwrite the
    /// work of the one that took over.
    async fn save(&self, lease: &Lease, record: Option<&str>) -> ApiResult<()>;
    async fn release(&self, lease: Lease);
    /// The rooms that exist, at most `limit`.
    async fn rooms(&self, limit: usize) -> ApiResult<Vec<String>>;
    /// A room's record read without its lease (disco of the service).
    async fn peek(&self, room: &str) -> ApiResult<Option<String>>;
}

/// Rooms in this process (`starling serve`).
#[derive(Default)]
pub struct MemoryRoomStore {
    records: Mutex<HashMap<String, String>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[async_trait]
impl RoomStore for MemoryRoomStore {
    async fn acquire(&self, room: &str) -> ApiResult<Lease> {
        let lock = self
            .locks
            .lock()
            .entry(room.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        Ok(Lease {
            room: room.to_string(),
            token: String::new(),
            _guard: Some(guard),
        })
    }

    async fn load(&self, lease: &Lease) -> ApiResult<Option<String>> {
        Ok(self.records.lock().get(&lease.room).cloned())
    }

    async fn save(&self, lease: &Lease, record: Option<&str>) -> ApiResult<()> {
        let mut records = self.records.lock();
        match record {
            Some(record) => records.insert(lease.room.clone(), record.to_string()),
            None => records.remove(&lease.room),
        };
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
        let mut rooms: Vec<String> = self.records.lock().keys().cloned().collect();
        rooms.sort_unstable();
        rooms.truncate(limit);
        Ok(rooms)
    }

    async fn peek(&self, room: &str) -> ApiResult<Option<String>> {
        Ok(self.records.lock().get(room).cloned())
    }
}

/// How long a lease lasts without being released: what a killed replica
/// costs its rooms before another replica takes them over.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// How long a stanza waits for its room's lease before it fails (`wait`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(8);

const SAVE_SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('SET', KEYS[1], ARGV[3]) else redis.call('DEL', KEYS[1]) end
return 1";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Rooms in Redis (the cluster): any session-router replica serves any room.
pub struct RedisRoomStore {
    redis: RedisClient,
    save: Script,
    release: Script,
}

impl RedisRoomStore {
    pub fn new(redis: RedisClient) -> Self {
        RedisRoomStore {
            redis,
            save: Script::new(SAVE_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
        }
    }

    fn record_key(&self, room: &str) -> String {
        self.redis.key(&format!("muc:{}", hash_tag(room)))
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
    async fn acquire(&self, room: &str) -> ApiResult<Lease> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let key = self.lease_key(room);
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LEASE_TTL.as_millis() as u64)
                .query_async(&mut self.redis.connection())
                .await
                .map_err(unavailable)?;
            if taken.is_some() {
                return Ok(Lease {
                    room: room.to_string(),
                    token,
                    _guard: None,
                });
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

    async fn load(&self, lease: &Lease) -> ApiResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.record_key(&lease.room))
            .query_async(&mut self.redis.connection())
            .await
            .map_err(unavailable)
    }

    async fn save(&self, lease: &Lease, record: Option<&str>) -> ApiResult<()> {
        let saved: i64 = self
            .save
            .key(self.record_key(&lease.room))
            .key(self.lease_key(&lease.room))
            .arg(&lease.token)
            .arg(if record.is_some() { "1" } else { "0" })
            .arg(record.unwrap_or_default())
            .invoke_async(&mut self.redis.connection())
            .await
            .map_err(unavailable)?;
        if saved == 0 {
            return Err(ApiError::Unavailable(format!(
                "the lease of room {} lapsed before its change was written",
                lease.room
            )));
        }
        // The index lives in another slot (Redis Cluster): updated after.
        let command = if record.is_some() { "SADD" } else { "SREM" };
        redis::cmd(command)
            .arg(self.rooms_key())
            .arg(&lease.room)
            .query_async::<()>(&mut self.redis.connection())
            .await
            .map_err(unavailable)
    }

    async fn release(&self, lease: Lease) {
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

    /// What every store does: one lease per room at a time, records
    /// written, read, listed and removed.
    async fn contract(store: Arc<dyn RoomStore>) {
        let lease = store.acquire("r@muc").await.unwrap();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move {
                let lease = store.acquire("r@muc").await.unwrap();
                let seen = store.load(&lease).await.unwrap();
                store.release(lease).await;
                seen
            })
        };
        // Another room is not held up by this one's lease.
        let other = store.acquire("s@muc").await.unwrap();
        store.release(other).await;
        assert_eq!(store.load(&lease).await.unwrap(), None);
        store.save(&lease, Some("{\"v\":1}")).await.unwrap();
        assert!(!waiting.is_finished());
        store.release(lease).await;
        // The waiter took the lease after the write, and saw it.
        assert_eq!(waiting.await.unwrap().as_deref(), Some("{\"v\":1}"));
        assert_eq!(
            store.peek("r@muc").await.unwrap().as_deref(),
            Some("{\"v\":1}")
        );
        assert_eq!(store.rooms(10).await.unwrap(), vec!["r@muc".to_string()]);
        let lease = store.acquire("r@muc").await.unwrap();
        store.save(&lease, None).await.unwrap();
        store.release(lease).await;
        assert_eq!(store.peek("r@muc").await.unwrap(), None);
        assert!(store.rooms(10).await.unwrap().is_empty());
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
        let lease = store.acquire("r@muc").await.unwrap();
        // The lease lapses (its replica stalled past LEASE_TTL) and another takes the room.
        redis::cmd("DEL")
            .arg(store.lease_key("r@muc"))
            .query_async::<()>(&mut redis.connection())
            .await
            .unwrap();
        let successor = store.acquire("r@muc").await.unwrap();
        store.save(&successor, Some("new")).await.unwrap();
        assert!(matches!(
            store.save(&lease, Some("stale")).await,
            Err(ApiError::Unavailable(_))
        ));
        // Releasing the stale lease leaves the successor's alone.
        store.release(lease).await;
        store.save(&successor, Some("newer")).await.unwrap();
        store.release(successor).await;
        assert_eq!(store.peek("r@muc").await.unwrap().as_deref(), Some("newer"));
    }
}
