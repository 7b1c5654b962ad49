//! When a stanza entered the cluster: the wall-clock time the sending
//! connection-manager took it from its client, carried with the stanza through
//! routing so that the delivering connection-manager can observe the
//! end-to-end latency (`starling_stanza_delivery_latency_seconds`,
//! docs/operations.md).
//!
//! Inside one process the time travels as a task-local value around the
//! routing call ([`scope`]), so no routing signature carries it; across
//! processes the gRPC adapters and the bus envelope carry it as Unix
//! microseconds (`routed_at_unix_micros`) and set the scope again on the
//! other side. Stanzas routed outside any scope (a reroute of an
//! undeliverable stanza, the janitor's presence) carry no time and are not
//! observed.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

tokio::task_local! {
    static ORIGIN_TIME: Option<SystemTime>;
}

/// Run `future` with `time` as the origin time of what it routes; `None`
/// hides an outer scope's time.
pub async fn scope<F: Future>(time: Option<SystemTime>, future: F) -> F::Output {
    ORIGIN_TIME.scope(time, future).await
}

/// The origin time of the stanza being routed by this task, if any.
pub fn current() -> Option<SystemTime> {
    ORIGIN_TIME.try_with(|time| *time).ok().flatten()
}

/// The wire form: microseconds since the Unix epoch, 0 for "unknown".
pub fn to_unix_micros(time: Option<SystemTime>) -> i64 {
    time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}

/// The inverse of [`to_unix_micros`]: 0 and negative values are "unknown".
pub fn from_unix_micros(micros: i64) -> Option<SystemTime> {
    let micros = u64::try_from(micros).ok().filter(|micros| *micros > 0)?;
    UNIX_EPOCH.checked_add(Duration::from_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_scope_carries_the_time_and_none_hides_it() {
        assert_eq!(current(), None);
        let time = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let seen = scope(Some(time), async {
            let inner = scope(None, async { current() }).await;
            (current(), inner)
        })
        .await;
        assert_eq!(seen, (Some(time), None));
        assert_eq!(current(), None);
    }

    #[test]
    fn wire_form_round_trips_and_zero_is_unknown() {
        let time = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(to_unix_micros(Some(time)), 1_700_000_000_123_456);
        assert_eq!(from_unix_micros(1_700_000_000_123_456), Some(time));
        assert_eq!(to_unix_micros(None), 0);
        assert_eq!(from_unix_micros(0), None);
        assert_eq!(from_unix_micros(-5), None);
    }
}
