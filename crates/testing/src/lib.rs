//! Test support shared by every crate's tests: wait, with a bound, for the
//! condition a test depends on, never for a fixed time.
//!
//! A fixed sleep is either too short (the test is flaky on a busy machine) or
//! too long (the suite is slow), and when it stands for "nothing happens" it
//! proves nothing. [`wait_until`] polls a condition and fails naming what it
//! waited for. It keeps time with tokio's clock, so it also works under paused
//! time (`#[tokio::test(start_paused = true)]`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let done = Arc::new(AtomicBool::new(false));
//! tokio::spawn({
//!     let done = done.clone();
//!     async move { done.store(true, Ordering::SeqCst) }
//! });
//! starling_testing::wait_until("the task to finish", Duration::from_secs(5), async || {
//!     done.load(Ordering::SeqCst)
//! })
//! .await;
//! # }
//! ```

#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is evaluated again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Evaluate `condition` until it holds; panic, naming `what`, once `timeout`
/// has passed without it holding.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    wait_for(what, timeout, async || condition().await.then_some(())).await
}

/// Evaluate `probe` until it yields a value, and return that value; panic,
/// naming `what`, once `timeout` has passed without one.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yields_the_value_the_probe_found() {
        let mut polls = 0;
        let found = wait_for("the third poll", Duration::from_secs(10), async || {
            polls += 1;
            (polls == 3).then_some("third")
        })
        .await;
        assert_eq!((found, polls), ("third", 3));
    }

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move { done_tx.send(()) });
        let mut done_rx = done_rx;
        wait_until("the task to report", Duration::from_secs(10), async || {
            done_rx.try_recv().is_ok()
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for a condition that never holds")]
    async fn fails_naming_what_it_waited_for() {
        wait_until(
            "a condition that never holds",
            Duration::from_millis(50),
            async || false,
        )
        .await;
    }
}
