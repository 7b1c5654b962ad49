//! Graceful drain of a connection-manager (DESIGN.md "Operating it": drain in
//! order, not-ready first, stop accepting, close sessions, wait with a deadline).
//!
//! A drain starts from the admin API (a `Delivery::Drain` on the node's bus
//! channel) or from SIGTERM (`starling serve` calls [`DrainHandle::start`]):
//!
//! 1. the phase becomes [`DrainPhase::Draining`]: whoever watches it (the
//!    process's `/readyz`, the node's `nodedrain:{id}` marker in Redis) sees
//!    the node as not ready before anything else happens;
//! 2. the listeners close (new TCP connections are refused by the kernel) and
//!    new WebSocket and BOSH sessions are turned away;
//! 3. the streams open at the start are closed one by one with
//!    `<system-shutdown/>` (RFC 6120 section 4.9.3.20), evenly spread over
//!    the window, so their clients reconnect to other nodes without a storm;
//! 4. at the end of the window, or as soon as no session is left, whatever
//!    remains (streams still negotiating at the start) is closed the same
//!    way, and the phase becomes [`DrainPhase::Drained`].
//!
//! XEP-0198 resumption is not implemented: a drained client logs in again.

use std::sync::Arc;
use std::time::Duration;

use starling_xmpp::{StreamError, StreamErrorCondition};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::drain_state::DrainPhase;
use crate::shared::Shared;

/// Start draining the node; false when a drain already started (the first
/// one's window stands).
pub(crate) fn start(shared: &Arc<Shared>, window: Option<Duration>) -> bool {
    let Some(window) = shared.drain.begin(window) else {
        tracing::info!(node = %shared.node_id, "drain requested while already draining");
        return false;
    };
    tracing::info!(node = %shared.node_id, window_secs = window.as_secs_f64(), "draining: not accepting, closing streams over the window");
    shared.drain.stop_accepting.cancel();
    tokio::spawn(close_streams(Arc::clone(shared), window));
    true
}

/// Close the streams open now evenly over `window`, then everything left.
async fn close_streams(shared: Arc<Shared>, window: Duration) {
    let mut open: Vec<_> = shared
        .connections
        .read()
        .iter()
        .map(|(conn, handle)| (*conn, Arc::clone(handle)))
        .collect();
    // Oldest connection first: a stable, predictable order.
    open.sort_by_key(|(conn, _)| *conn);
    let started = Instant::now();
    let count = open.len().max(1) as u32;
    for (index, (conn, handle)) in open.into_iter().enumerate() {
        let due = started + window.mul_f64(f64::from(index as u32) / f64::from(count));
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shared.shutdown.cancelled() => break,
        }
        tracing::debug!(conn, "drain: closing stream");
        // RFC 6120 section 4.9.3.20: the server is being shut down.
        handle.close(Some(StreamError::new(StreamErrorCondition::SystemShutdown)));
    }
    // The closed sessions end (unbind, unavailable presence) within moments;
    // once none is left there is nothing to wait for.
    let end = started + window;
    while Instant::now() < end && !shared.connections.read().is_empty() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100).min(end - Instant::now())) => {}
            _ = shared.shutdown.cancelled() => break,
        }
    }
    // Streams that were negotiating when the drain started, and any bound
    // since, end like at shutdown (every connection task watches this token).
    shared.shutdown.cancel();
    shared.drain.finish();
    tracing::info!(node = %shared.node_id, "drained: every stream was closed");
}

/// Start and watch the node's drain from outside the connection-manager.
#[derive(Clone)]
pub struct DrainHandle {
    pub(crate) shared: Arc<Shared>,
}

impl DrainHandle {
    /// Start draining (see the module documentation); false when a drain
    /// already started.
    pub fn start(&self, window: Option<Duration>) -> bool {
        start(&self.shared, window)
    }

    pub fn phase(&self) -> DrainPhase {
        self.shared.drain.phase()
    }

    /// Changes of the phase, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<DrainPhase> {
        self.shared.drain.subscribe()
    }

    /// Resolves once the drain finished (every stream was asked to close).
    pub async fn drained(&self) {
        let mut phase_rx = self.subscribe();
        let _ = phase_rx
            .wait_for(|phase| matches!(phase, DrainPhase::Drained { .. }))
            .await;
    }
}
