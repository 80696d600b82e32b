//! Waiting on a condition: poll it every 20 ms until it holds, and fail
//! with what was awaited once the deadline passes. Deadlines are generous
//! and only bound a wait; no test asserts how long something took.
//!
//! Both flavours sleep on the test's runtime, so tasks a test spawned (a
//! client, a subscription) keep running while it waits.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// Polls a synchronous condition until it holds; panics at the deadline.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(POLL).await;
    }
}

/// Polls an asynchronous condition until it holds; panics at the deadline.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(POLL).await;
    }
}
