//! Counters and latency histograms shared by every connection task: atomics
//! for counts, HDR histograms behind a few mutex shards for latencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// The most stages one run may have (`--rates a,b,c,...`).
pub const MAX_STAGES: usize = 32;
/// Latencies are recorded in microseconds up to this value (and clamped to it).
pub const MAX_LATENCY_MICROS: u64 = 120_000_000;
const SHARDS: usize = 8;

/// The process-wide time origin: message timestamps are microseconds since it.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_micros() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// What went wrong, by kind (reported as a map in the JSON result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Tls,
    /// The WebSocket handshake (HTTP upgrade, `xmpp` subprotocol) failed.
    WebSocket,
    StreamError,
    StreamClosed,
    NoMechanism,
    AuthFailed,
    Bind,
    Timeout,
    Io,
    Protocol,
    Register,
    AccountCommand,
    StanzaError,
    SubscriptionSetup,
    /// XEP-0198: not offered, `<failed/>`, or a bad `<a/>`.
    Sm,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::WebSocket,
        ErrorKind::StreamError,
        ErrorKind::StreamClosed,
        ErrorKind::NoMechanism,
        ErrorKind::AuthFailed,
        ErrorKind::Bind,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Protocol,
        ErrorKind::Register,
        ErrorKind::AccountCommand,
        ErrorKind::StanzaError,
        ErrorKind::SubscriptionSetup,
        ErrorKind::Sm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::WebSocket => "websocket",
            ErrorKind::StreamError => "stream_error",
            ErrorKind::StreamClosed => "stream_closed",
            ErrorKind::NoMechanism => "no_mechanism",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::Bind => "bind",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Register => "register",
            ErrorKind::AccountCommand => "account_command",
            ErrorKind::StanzaError => "stanza_error",
            ErrorKind::SubscriptionSetup => "subscription_setup",
            ErrorKind::Sm => "sm",
        }
    }
}

/// A latency histogram split into shards so that tasks rarely contend.
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u32>>>,
}

impl Default for ShardedHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedHistogram {
    pub fn new() -> Self {
        ShardedHistogram {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    pub fn record(&self, shard_hint: usize, micros: u64) {
        let mut histogram = self.shards[shard_hint % SHARDS].lock();
        histogram.saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
    }

    /// Record a batch under one lock.
    pub fn record_many(&self, shard_hint: usize, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        let mut histogram = self.shards[shard_hint % SHARDS].lock();
        for &micros in values {
            histogram.saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u32> {
        let mut merged = new_histogram();
        for shard in &self.shards {
            merged.add(&*shard.lock()).expect("same bounds");
        }
        merged
    }
}

pub fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid bounds")
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u32>) -> Self {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            mean: (histogram.mean() * 10.0).round() / 10.0,
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p95: histogram.value_at_quantile(0.95),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// Per-stage counters (one stage per target rate).
#[derive(Default)]
pub struct StageCounters {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub latency: ShardedHistogram,
}

/// Everything the run counts.
pub struct Stats {
    pub connect_attempts: AtomicU64,
    pub connects_ok: AtomicU64,
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub reconnects: AtomicU64,
    pub registered: AtomicU64,
    pub sessions_online: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub out_of_order: AtomicU64,
    pub presence_received: AtomicU64,
    pub iq_answered: AtomicU64,
    pub subscriptions_done: AtomicU64,
    /// XEP-0198: sessions with `<enabled/>`, server `<r/>` answered, server `<a/>` checked, our `<r/>` sent.
    pub sm_enabled: AtomicU64,
    pub sm_requests_answered: AtomicU64,
    pub sm_acks_received: AtomicU64,
    pub sm_requests_sent: AtomicU64,
    pub errors: [AtomicU64; ErrorKind::ALL.len()],
    pub error_samples: Mutex<Vec<String>>,
    pub login_latency: ShardedHistogram,
    pub stages: Vec<StageCounters>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            connect_attempts: AtomicU64::new(0),
            connects_ok: AtomicU64::new(0),
            logins_ok: AtomicU64::new(0),
            logins_failed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            registered: AtomicU64::new(0),
            sessions_online: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            presence_received: AtomicU64::new(0),
            iq_answered: AtomicU64::new(0),
            subscriptions_done: AtomicU64::new(0),
            sm_enabled: AtomicU64::new(0),
            sm_requests_answered: AtomicU64::new(0),
            sm_acks_received: AtomicU64::new(0),
            sm_requests_sent: AtomicU64::new(0),
            errors: Default::default(),
            error_samples: Mutex::new(Vec::new()),
            login_latency: ShardedHistogram::new(),
            stages: (0..MAX_STAGES).map(|_| StageCounters::default()).collect(),
        }
    }

    /// Count an error; keep the first few messages as samples for the report.
    pub fn error(&self, kind: ErrorKind, message: impl FnOnce() -> String) {
        let index = ErrorKind::ALL
            .iter()
            .position(|candidate| *candidate == kind)
            .expect("listed");
        let previous = self.errors[index].fetch_add(1, Ordering::Relaxed);
        if previous < 3 {
            let mut samples = self.error_samples.lock();
            if samples.len() < 20 {
                samples.push(format!("{}: {}", kind.as_str(), message()));
            }
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    pub fn errors_by_kind(&self) -> std::collections::BTreeMap<&'static str, u64> {
        ErrorKind::ALL
            .iter()
            .zip(&self.errors)
            .filter_map(|(kind, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then_some((kind.as_str(), count))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles() {
        let histogram = ShardedHistogram::new();
        for value in 1..=1000u64 {
            histogram.record(value as usize, value);
        }
        histogram.record_many(3, &[0, MAX_LATENCY_MICROS * 10]);
        let summary = LatencySummary::of(&histogram.merged());
        assert_eq!(summary.count, 1002);
        assert!((499..=501).contains(&summary.p50), "{summary:?}");
        assert!((989..=991).contains(&summary.p99), "{summary:?}");
        // The out-of-range value is clamped, not lost.
        assert!(
            summary.max >= MAX_LATENCY_MICROS
                && summary.max <= MAX_LATENCY_MICROS + MAX_LATENCY_MICROS / 500
        );
        assert_eq!(
            LatencySummary::of(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn errors_by_kind_and_samples() {
        let stats = Stats::new();
        for attempt in 0..5 {
            stats.error(ErrorKind::AuthFailed, || format!("attempt {attempt}"));
        }
        stats.error(ErrorKind::Timeout, || "slow".into());
        assert_eq!(stats.error_total(), 6);
        let by_kind = stats.errors_by_kind();
        assert_eq!(by_kind.get("auth_failed"), Some(&5));
        assert_eq!(by_kind.get("timeout"), Some(&1));
        assert_eq!(stats.error_samples.lock().len(), 4);
    }
}
