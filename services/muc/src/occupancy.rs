//! Which rooms each user (bare JID) occupies, across the service, for the
//! `muc.max_rooms_per_user` bound: one set per user, in the process
//! (`starling serve`) or in Redis (`muc:user:{<bare>}`, the cluster: any
//! replica applies any room's stanzas). The service updates it after each
//! room change it wrote (under the room's lease), from the room's occupants
//! before and after. An entry a killed replica left behind is found when
//! the user reaches the bound: the rooms are then read again, at most once
//! a minute per user ([`OccupancyIndex::heal_due`]).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_api::{ApiError, ApiResult};
use starling_redis_client::redis;
use starling_redis_client::{hash_tag, RedisClient};

/// How often one user's entries may be checked against the rooms.
pub const HEAL_EVERY: Duration = Duration::from_secs(60);

#[async_trait]
pub trait OccupancyIndex: Send + Sync + 'static {
    /// The rooms `user` occupies, as recorded.
    async fn rooms(&self, user: &str) -> ApiResult<Vec<String>>;
    async fn enter(&self, user: &str, room: &str) -> ApiResult<()>;
    async fn leave(&self, user: &str, room: &str) -> ApiResult<()>;
    /// Whether `user`'s entries may be checked now (then not again for [`HEAL_EVERY`]).
    async fn heal_due(&self, user: &str) -> ApiResult<bool>;
}

/// The index in this process (`starling serve`).
#[derive(Default)]
pub struct MemoryOccupancy {
    rooms: Mutex<HashMap<String, BTreeSet<String>>>,
    healed: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl OccupancyIndex for MemoryOccupancy {
    async fn rooms(&self, user: &str) -> ApiResult<Vec<String>> {
        Ok(self
            .rooms
            .lock()
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn enter(&self, user: &str, room: &str) -> ApiResult<()> {
        self.rooms
            .lock()
            .entry(user.to_string())
            .or_default()
            .insert(room.to_string());
        Ok(())
    }

    async fn leave(&self, user: &str, room: &str) -> ApiResult<()> {
        let mut rooms = self.rooms.lock();
        if let Some(set) = rooms.get_mut(user) {
            set.remove(room);
            if set.is_empty() {
                rooms.remove(user);
            }
        }
        Ok(())
    }

    async fn heal_due(&self, user: &str) -> ApiResult<bool> {
        let now = Instant::now();
        let mut healed = self.healed.lock();
        // Bounded: the entries of users not healed for a while go.
        healed.retain(|_, at| now.duration_since(*at) < HEAL_EVERY);
        if healed.contains_key(user) {
            return Ok(false);
        }
        healed.insert(user.to_string(), now);
        Ok(true)
    }
}

/// The index in Redis (the cluster).
pub struct RedisOccupancy {
    redis: RedisClient,
}

impl RedisOccupancy {
    pub fn new(redis: RedisClient) -> Self {
        RedisOccupancy { redis }
    }

    fn rooms_key(&self, user: &str) -> String {
        self.redis.key(&format!("muc:user:{}", hash_tag(user)))
    }

    fn heal_key(&self, user: &str) -> String {
        self.redis
            .key(&format!("muc:user:{}:healed", hash_tag(user)))
    }
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("redis: {error}"))
}

#[async_trait]
impl OccupancyIndex for RedisOccupancy {
    async fn rooms(&self, user: &str) -> ApiResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(self.rooms_key(user))
            .query_async(&mut self.redis.connection())
            .await
            .map_err(unavailable)
    }

    async fn enter(&self, user: &str, room: &str) -> ApiResult<()> {
        redis::cmd("SADD")
            .arg(self.rooms_key(user))
            .arg(room)
            .query_async::<()>(&mut self.redis.connection())
            .await
            .map_err(unavailable)
    }

    async fn leave(&self, user: &str, room: &str) -> ApiResult<()> {
        redis::cmd("SREM")
            .arg(self.rooms_key(user))
            .arg(room)
            .query_async::<()>(&mut self.redis.connection())
            .await
            .map_err(unavailable)
    }

    async fn heal_due(&self, user: &str) -> ApiResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.heal_key(user))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(HEAL_EVERY.as_millis() as u64)
            .query_async(&mut self.redis.connection())
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn contract(index: &dyn OccupancyIndex, user: &str) {
        index.enter(user, "a@muc").await.unwrap();
        index.enter(user, "b@muc").await.unwrap();
        index.enter(user, "a@muc").await.unwrap();
        let mut rooms = index.rooms(user).await.unwrap();
        rooms.sort();
        assert_eq!(rooms, ["a@muc", "b@muc"]);
        index.leave(user, "a@muc").await.unwrap();
        index.leave(user, "b@muc").await.unwrap();
        assert!(index.rooms(user).await.unwrap().is_empty());
        assert!(index.heal_due(user).await.unwrap());
        assert!(!index.heal_due(user).await.unwrap());
    }

    #[tokio::test]
    async fn the_memory_index_keeps_the_contract() {
        let index = MemoryOccupancy::default();
        contract(&index, "hag66@shakespeare.lit").await;
        assert!(index.rooms.lock().is_empty());
    }

    #[tokio::test]
    async fn the_redis_index_keeps_the_contract() {
        let Some(redis) = starling_redis_client::testing::test_client().await else {
            return;
        };
        let user = format!("{}@shakespeare.lit", uuid::Uuid::new_v4().simple());
        contract(&RedisOccupancy::new(redis), &user).await;
    }
}
