//! When a stanza entered the cluster: the wall-clock time the sending
//! connection-manager took it from its client, carried with the stanza through
//! routing so that the delivering connection-manager can observe the
//! end-to-end latency (`starling_stanza_delivery_latency_seconds`,
//! docs/operations.md).
//!
//! Inside one process the time is a parameter of the routing calls
//! (`RouterApi::route`, the `PresenceApi` calls, the bus's delivery
//! grouping); across processes the gRPC adapters and the bus envelope carry
//! it as Unix microseconds (`routed_at_unix_micros`, this module's wire form).
//! Stanzas no client sent just now (a reroute of an undeliverable stanza, the
//! janitor's presence) carry no time and are not observed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
