//! The one shutdown signal of the process.
//!
//! `main` triggers it on SIGTERM/SIGINT; everything that must react holds a
//! clone: the HTTP front refuses upgrades and `/readyz` answers 503, shard
//! loops stop taking work and sessions close with 1001, the ingest thread
//! stops polling. Async code awaits [`Shutdown::triggered`]; the ingest
//! thread, which is not async, asks [`Shutdown::is_triggered`] between polls.
//!
//! The other half of the pattern is [`Finished`]: every thread holds one, and
//! when all are dropped every thread has ended.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Shutdown {
    /// Idempotent.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once [`Shutdown::trigger`] was called (at once if it was
    /// already). Cancel-safe.
    pub async fn triggered(&self) {
        let mut receiver = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }
}

/// Held by a thread for its whole life; dropped when it ends, however it
/// ends (a panic unwinds and drops it too).
#[derive(Clone)]
pub struct Finished {
    _alive: crossbeam_channel::Sender<()>,
}

/// Waits for every [`Finished`] handed out by [`Finished::tracker`] to drop.
pub struct AllFinished(crossbeam_channel::Receiver<()>);

impl Finished {
    pub fn tracker() -> (Finished, AllFinished) {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        (Finished { _alive: sender }, AllFinished(receiver))
    }
}

impl AllFinished {
    /// True when every holder is gone by `deadline`.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        // Nobody ever sends: the only way out before the deadline is every
        // sender being dropped.
        matches!(self.0.recv_deadline(deadline), Err(crossbeam_channel::RecvTimeoutError::Disconnected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_clone_sees_the_trigger_even_one_made_after_it() {
        let shutdown = Shutdown::default();
        let early = shutdown.clone();
        let waiting = tokio::spawn(async move { early.triggered().await });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        waiting.await.unwrap();
        let late = shutdown.clone();
        assert!(late.is_triggered());
        late.triggered().await;
    }

    #[test]
    fn all_finished_waits_for_every_holder_and_no_longer() {
        let (finished, all) = Finished::tracker();
        let worker = finished.clone();
        drop(finished);
        assert!(!all.wait_until(Instant::now() + Duration::from_millis(20)), "one holder still alive");
        let thread = std::thread::spawn(move || drop(worker));
        assert!(all.wait_until(Instant::now() + Duration::from_secs(10)));
        thread.join().unwrap();
    }
}
