//! The drain phase of a node and the token that stops accepting: the state
//! every connection task can look at (the drain itself is `drain`).

use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The window used when a drain request names none, unless configured.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(5);

/// Where a node is in its drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPhase {
    /// Accepting and serving.
    Serving,
    /// Not accepting; closing the streams over `window` since `since`.
    Draining { since: SystemTime, window: Duration },
    /// Every stream was asked to close; nothing is accepted.
    Drained { since: SystemTime },
}

impl DrainPhase {
    /// Draining or drained: the node is not ready.
    pub fn is_draining(&self) -> bool {
        !matches!(self, DrainPhase::Serving)
    }

    /// When the drain started, if it did.
    pub fn draining_since(&self) -> Option<SystemTime> {
        match self {
            DrainPhase::Serving => None,
            DrainPhase::Draining { since, .. } | DrainPhase::Drained { since } => Some(*since),
        }
    }
}

/// The drain state every connection task shares.
pub(crate) struct DrainState {
    phase_tx: watch::Sender<DrainPhase>,
    /// Cancelled when the drain starts or the node shuts down: the listeners
    /// close and new WebSocket and BOSH sessions are refused.
    pub stop_accepting: CancellationToken,
    /// The window of a drain that names none (SIGTERM, DrainNode with 0): `CmConfig::drain_window`.
    default_window: Duration,
}

impl DrainState {
    pub fn new(shutdown: &CancellationToken, default_window: Duration) -> Self {
        DrainState {
            phase_tx: watch::channel(DrainPhase::Serving).0,
            stop_accepting: shutdown.child_token(),
            default_window,
        }
    }

    /// Enter [`DrainPhase::Draining`] over `window` (or the default one); the
    /// window, or `None` when a drain already started (the first one's
    /// window stands).
    pub fn begin(&self, window: Option<Duration>) -> Option<Duration> {
        let window = window.unwrap_or(self.default_window);
        let mut started = false;
        self.phase_tx.send_if_modified(|phase| {
            if phase.is_draining() {
                return false;
            }
            *phase = DrainPhase::Draining {
                since: SystemTime::now(),
                window,
            };
            started = true;
            true
        });
        started.then_some(window)
    }

    /// Every stream was asked to close: [`DrainPhase::Drained`].
    pub fn finish(&self) {
        self.phase_tx.send_modify(|phase| {
            if let DrainPhase::Draining { since, .. } = *phase {
                *phase = DrainPhase::Drained { since };
            }
        });
    }

    pub fn phase(&self) -> DrainPhase {
        *self.phase_tx.borrow()
    }

    /// Changes of the phase, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<DrainPhase> {
        self.phase_tx.subscribe()
    }
}
