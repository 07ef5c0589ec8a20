//! The one shutdown signal of the process.
//!
//! `main` triggers it on SIGTERM/SIGINT; everything that must react holds a
//! clone: the HTTP front refuses upgrades and `/readyz` answers 503, shard
//! loops stop taking work and sessions close with 1001, the ingest thread
//! stops polling. Async code awaits [`Shutdown::triggered`]; the ingest
//! thread, which is not async, asks [`Shutdown::is_triggered`] between polls.
//!
//! The other half of the pattern is [`Threads`]: every long-lived thread
//! holds a [`Running`], so `main` learns when each ends: all of them after
//! the trigger, or one of them too early (the watchdog).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

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

/// Held by a long-lived thread for its whole life. Dropping it, when the
/// thread ends however it ends (a panic unwinds and drops it too), tells
/// [`Threads`] which one ended.
pub struct Running {
    name: String,
    ended: mpsc::UnboundedSender<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.ended.send(std::mem::take(&mut self.name));
    }
}

/// Watches the threads it handed a [`Running`] to: the watchdog that keeps
/// the process from staying up half-dead, and the join at shutdown.
pub struct Threads {
    ended_tx: mpsc::UnboundedSender<String>,
    ended_rx: mpsc::UnboundedReceiver<String>,
    running: usize,
}

impl Default for Threads {
    fn default() -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self { ended_tx, ended_rx, running: 0 }
    }
}

impl Threads {
    pub fn register(&mut self, name: impl Into<String>) -> Running {
        self.running += 1;
        Running { name: name.into(), ended: self.ended_tx.clone() }
    }

    /// The name of the next thread to end.
    pub async fn next_ended(&mut self) -> String {
        // `self` holds a sender, so the channel never closes.
        let name = self.ended_rx.recv().await.unwrap_or_default();
        self.running -= 1;
        name
    }

    /// Resolves once every registered thread has ended.
    pub async fn all_ended(&mut self) {
        while self.running > 0 {
            self.next_ended().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn threads_report_when_they_end_even_by_panicking() {
        let mut threads = Threads::default();
        let calm = threads.register("calm");
        let doomed = threads.register("doomed");
        let thread = std::thread::spawn(move || {
            let _running = doomed;
            panic!("a bug on a shard thread");
        });
        assert_eq!(threads.next_ended().await, "doomed");
        assert!(thread.join().is_err());
        let all = tokio::spawn(async move { threads.all_ended().await });
        tokio::task::yield_now().await; // it runs until it waits for "calm"
        assert!(!all.is_finished(), "one thread still runs");
        drop(calm);
        all.await.unwrap();
    }
}
