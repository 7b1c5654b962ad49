//! Per-IP and per-session limits against abuse (RFC 6120 section 13.12):
//! concurrent connections per address, a sliding window of failed
//! authentications per address, and the per-session stanza token bucket.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failures are swept from idle addresses every this many recorded failures,
/// so the map stays bounded by the addresses active within one window.
const SWEEP_EVERY_FAILURES: u32 = 1024;

#[derive(Default)]
struct IpState {
    connections: HashMap<IpAddr, u32>,
    /// Times of recent failed authentications, oldest first, at most the limit.
    failures: HashMap<IpAddr, VecDeque<Instant>>,
    failures_since_sweep: u32,
}

/// Counters shared by every connection of the node.
pub(crate) struct IpLimits {
    max_connections_per_ip: u32,
    failed_auth_per_ip: u32,
    failed_auth_window: Duration,
    state: Mutex<IpState>,
}

/// One open connection counted against its address; released on drop.
pub(crate) struct ConnectionPermit {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut state = self.limits.state.lock();
        if let Some(count) = state.connections.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                state.connections.remove(&self.ip);
            }
        }
    }
}

impl IpLimits {
    /// 0 disables a limit.
    pub fn new(
        max_connections_per_ip: u32,
        failed_auth_per_ip: u32,
        failed_auth_window: Duration,
    ) -> Arc<Self> {
        Arc::new(IpLimits {
            max_connections_per_ip,
            failed_auth_per_ip,
            failed_auth_window,
            state: Mutex::new(IpState::default()),
        })
    }

    /// Count a new connection from `ip`, or `None` when the address is at its limit.
    pub fn try_connect(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let mut state = self.state.lock();
        let count = state.connections.entry(ip).or_insert(0);
        if self.max_connections_per_ip != 0 && *count >= self.max_connections_per_ip {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// Whether `ip` failed to authenticate too often within the window.
    pub fn auth_throttled(&self, ip: IpAddr, now: Instant) -> bool {
        if self.failed_auth_per_ip == 0 {
            return false;
        }
        let mut state = self.state.lock();
        let Some(failures) = state.failures.get_mut(&ip) else {
            return false;
        };
        prune(failures, now, self.failed_auth_window);
        failures.len() >= self.failed_auth_per_ip as usize
    }

    /// Remember a failed authentication from `ip`.
    pub fn record_auth_failure(&self, ip: IpAddr, now: Instant) {
        if self.failed_auth_per_ip == 0 {
            return;
        }
        let mut state = self.state.lock();
        let limit = self.failed_auth_per_ip as usize;
        let failures = state.failures.entry(ip).or_default();
        prune(failures, now, self.failed_auth_window);
        failures.push_back(now);
        while failures.len() > limit {
            failures.pop_front();
        }
        state.failures_since_sweep += 1;
        if state.failures_since_sweep >= SWEEP_EVERY_FAILURES {
            state.failures_since_sweep = 0;
            let window = self.failed_auth_window;
            state.failures.retain(|_, failures| {
                prune(failures, now, window);
                !failures.is_empty()
            });
        }
    }

    #[cfg(test)]
    fn tracked_addresses(&self) -> usize {
        self.state.lock().failures.len()
    }
}

fn prune(failures: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while failures
        .front()
        .is_some_and(|oldest| now.saturating_duration_since(*oldest) >= window)
    {
        failures.pop_front();
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_refill: Instant,
}

impl TokenBucket {
    /// `None` when `rate` is 0 (unlimited).
    pub fn new(rate: u32, burst: u32, now: Instant) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let burst = f64::from(burst.max(1));
        Some(TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last_refill: now,
        })
    }

    /// Take one token; returns how long to wait before the stanza may be
    /// processed (zero when a token was available). Tokens taken while empty
    /// are owed, so a steady sender converges on exactly `rate`.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Take one token if one is there; nothing is owed when none is (the
    /// caller refuses the stanza instead of waiting).
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn connections_per_ip_are_capped_and_released() {
        let limits = IpLimits::new(2, 0, Duration::from_secs(60));
        let first = limits.try_connect(ip(1)).unwrap();
        let _second = limits.try_connect(ip(1)).unwrap();
        assert!(limits.try_connect(ip(1)).is_none());
        assert!(limits.try_connect(ip(2)).is_some());
        drop(first);
        assert!(limits.try_connect(ip(1)).is_some());
    }

    #[test]
    fn zero_means_unlimited() {
        let limits = IpLimits::new(0, 0, Duration::from_secs(60));
        let permits: Vec<_> = (0..100)
            .map(|_| limits.try_connect(ip(1)).unwrap())
            .collect();
        assert_eq!(permits.len(), 100);
        let now = Instant::now();
        for _ in 0..100 {
            limits.record_auth_failure(ip(1), now);
        }
        assert!(!limits.auth_throttled(ip(1), now));
    }

    #[test]
    fn failed_auth_window_slides() {
        let limits = IpLimits::new(0, 3, Duration::from_secs(60));
        let start = Instant::now();
        limits.record_auth_failure(ip(1), start);
        limits.record_auth_failure(ip(1), start + Duration::from_secs(10));
        assert!(!limits.auth_throttled(ip(1), start + Duration::from_secs(11)));
        limits.record_auth_failure(ip(1), start + Duration::from_secs(20));
        assert!(limits.auth_throttled(ip(1), start + Duration::from_secs(21)));
        assert!(!limits.auth_throttled(ip(2), start + Duration::from_secs(21)));
        // The first failure leaves the window at 60 s.
        assert!(!limits.auth_throttled(ip(1), start + Duration::from_secs(61)));
    }

    #[test]
    fn idle_addresses_are_swept() {
        let limits = IpLimits::new(0, 3, Duration::from_secs(1));
        let start = Instant::now();
        for last in 0..=255u8 {
            limits.record_auth_failure(ip(last), start);
        }
        let later = start + Duration::from_secs(5);
        for _ in 0..SWEEP_EVERY_FAILURES {
            limits.record_auth_failure(ip(7), later);
        }
        assert_eq!(limits.tracked_addresses(), 1);
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start).unwrap();
        for _ in 0..3 {
            assert_eq!(bucket.reserve(start), Duration::ZERO);
        }
        let wait = bucket.reserve(start);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After waiting it out, the next one owes another 0.1 s.
        let wait = bucket.reserve(start + Duration::from_millis(100));
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // A long pause refills up to the burst only.
        let later = start + Duration::from_secs(100);
        for _ in 0..3 {
            assert_eq!(bucket.reserve(later), Duration::ZERO);
        }
        assert!(bucket.reserve(later) > Duration::ZERO);
        assert!(TokenBucket::new(0, 10, start).is_none());
    }

    #[test]
    fn try_take_refuses_without_owing() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 2, start).unwrap();
        assert!(bucket.try_take(start));
        assert!(bucket.try_take(start));
        // Empty: refused, as often as asked, and nothing is owed.
        for _ in 0..5 {
            assert!(!bucket.try_take(start));
        }
        assert!(bucket.try_take(start + Duration::from_millis(100)));
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
    }
}
