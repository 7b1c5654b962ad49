//! A per-account value the router reads on a hot path (the archiving
//! preferences of XEP-0441, the avatar hash of XEP-0398, whether an account
//! has push registrations), cached in the process in front of storage.
//!
//! Kept true across the cluster the way the block lists are: a change made
//! through any router calls `Blocklists::changed` for the account, which
//! drops the entry here and, in the cluster, in every other process
//! (`starling_bus::Blocklists::on_invalidation`, DESIGN.md "Knowledge the
//! whole cluster needs"). Entries are trusted [`ENTRY_TTL`] at most, a bound
//! on staleness whatever happens to the invalidation channel; a value read
//! while an invalidation happened is returned but not cached (it may predate
//! the change).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use starling_api::ApiResult;
use starling_jid::BareJid;

/// How long a cached value is trusted without an invalidation.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(60);
/// The most accounts one cache holds; past it the cache starts over.
const MAX_ENTRIES: usize = 100_000;

struct State<V> {
    entries: HashMap<BareJid, (V, Instant)>,
    /// Bumped by every invalidation.
    epoch: u64,
}

/// One cached value per account (see the module documentation).
pub(crate) struct AccountCache<V> {
    state: Mutex<State<V>>,
}

impl<V> Default for AccountCache<V> {
    fn default() -> Self {
        AccountCache {
            state: Mutex::new(State {
                entries: HashMap::new(),
                epoch: 0,
            }),
        }
    }
}

impl<V: Clone> AccountCache<V> {
    /// Forget one account's value, or everyone's.
    pub(crate) fn invalidate(&self, user: Option<&BareJid>) {
        let mut state = self.state.lock();
        state.epoch += 1;
        match user {
            Some(user) => {
                state.entries.remove(user);
            }
            None => state.entries.clear(),
        }
    }

    /// The value of `user`: cached, or `load`ed (and cached).
    pub(crate) async fn get_or_load<F, Fut>(&self, user: &BareJid, load: F) -> ApiResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ApiResult<V>>,
    {
        let epoch = {
            let state = self.state.lock();
            if let Some((value, loaded)) = state.entries.get(user) {
                if loaded.elapsed() < ENTRY_TTL {
                    return Ok(value.clone());
                }
            }
            state.epoch
        };
        let value = load().await?;
        let mut state = self.state.lock();
        if state.epoch == epoch {
            if state.entries.len() >= MAX_ENTRIES {
                state.entries.clear();
            }
            state
                .entries
                .insert(user.clone(), (value.clone(), Instant::now()));
        }
        Ok(value)
    }

    #[cfg(test)]
    pub(crate) fn cached(&self, user: &BareJid) -> Option<V> {
        self.state.lock().entries.get(user).map(|(v, _)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn juliet() -> BareJid {
        "juliet@example.com".parse().unwrap()
    }

    #[tokio::test]
    async fn a_value_is_loaded_once_until_invalidated() {
        let cache = AccountCache::<u32>::default();
        let loads = std::sync::atomic::AtomicU32::new(0);
        let load = || async { Ok(loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1) };
        assert_eq!(cache.get_or_load(&juliet(), load).await.unwrap(), 1);
        assert_eq!(cache.get_or_load(&juliet(), load).await.unwrap(), 1);
        cache.invalidate(Some(&juliet()));
        assert_eq!(cache.get_or_load(&juliet(), load).await.unwrap(), 2);
        cache.invalidate(None);
        assert_eq!(cache.cached(&juliet()), None);
    }

    #[tokio::test]
    async fn a_value_read_across_an_invalidation_is_not_cached() {
        let cache = AccountCache::<u32>::default();
        let value = cache
            .get_or_load(&juliet(), || async {
                cache.invalidate(Some(&juliet()));
                Ok(7)
            })
            .await
            .unwrap();
        assert_eq!(value, 7);
        assert_eq!(cache.cached(&juliet()), None);
    }
}
