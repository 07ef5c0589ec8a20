//! Bounded polling: wait for a condition instead of sleeping and hoping.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// How often conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds; panics with `what` after `timeout`.
///
/// ```no_run
/// # async fn example(api: &mesaya_testkit::api::StandInApi, id: &str) {
/// use std::time::Duration;
/// use mesaya_testkit::wait;
///
/// wait::until(Duration::from_secs(5), "one snapshot call", || api.call_count(id) == 1).await;
/// # }
/// ```
pub async fn until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    until_some(timeout, what, || {
        let ready = condition();
        async move { ready.then_some(()) }
    })
    .await
}

/// Polls the async `probe` until it yields `Some`, and returns that value; panics with `what`
/// after `timeout`. A probe that is itself slow is not interrupted: keep its own timeouts short.
pub async fn until_some<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let calls = AtomicU32::new(0);
        until(Duration::from_secs(2), "third call", || calls.fetch_add(1, Ordering::SeqCst) == 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for never")]
    async fn panics_with_the_description_on_timeout() {
        until(Duration::from_millis(50), "never", || false).await;
    }
}
