//! Per-user serialisation of roster read-modify-write (RFC 6121 section 3:
//! two subscription stanzas for one user must not interleave their updates).
//!
//! Inside one process a fixed set of async mutexes, picked by a hash of the
//! bare JID, is enough. A cluster with several presence replicas needs the
//! same guarantee across processes: either route every stanza for one bare
//! JID to one replica (consistent hashing) or take a short-lived Redis lock
//! (`lock:roster:{bare}`) around the same sections, or make the storage
//! update a compare-and-set on the roster version.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use starling_jid::BareJid;
use tokio::sync::{Mutex, MutexGuard};

/// How many shards: collisions only serialise unrelated users briefly.
const USER_LOCK_SHARDS: usize = 256;

pub struct UserLocks {
    shards: Vec<Mutex<()>>,
}

impl Default for UserLocks {
    fn default() -> Self {
        UserLocks {
            shards: (0..USER_LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl UserLocks {
    /// Hold the user's shard until the guard drops. Never hold two guards at
    /// once: two users may share a shard, and the mutex is not reentrant.
    pub async fn lock(&self, user: &BareJid) -> MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        user.hash(&mut hasher);
        let index = (hasher.finish() % self.shards.len() as u64) as usize;
        self.shards[index].lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Waker};
    use std::time::Duration;

    #[tokio::test]
    async fn the_same_user_is_serialised() {
        let locks = UserLocks::default();
        let alice: BareJid = "alice@example.com".parse().unwrap();
        let guard = locks.lock(&alice).await;
        // Polled once, a second lock on the held mutex is pending: no timer
        // decides it, and the same attempt gets the lock once it is free.
        let mut second = std::pin::pin!(locks.lock(&alice));
        let mut context = Context::from_waker(Waker::noop());
        assert!(
            second.as_mut().poll(&mut context).is_pending(),
            "a second lock on the same user must wait"
        );
        drop(guard);
        let relocked = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert!(relocked.is_ok());
    }
}
