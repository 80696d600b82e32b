//! Shared test helpers: a private redis-server per test, the real daemon
//! binary on free ports, and small HTTP / Redis / WebSocket clients.
//!
//! # Layout
//!
//! - [`redis`]: the private redis-server, PubSub subscriptions and PUBLISH,
//!   and Redis-side inspection of what the daemon stored (keys from
//!   `flowcast_actors::store::keys`, never spelled here);
//! - [`daemon`]: the `flowcast serve` process: start, kill -9, signals, exit,
//!   its log and [`assert_no_panic`];
//! - [`http`]: REST calls, the workflow/run helpers, readiness, and raw
//!   hand-written requests for what a client library would not send;
//! - [`ws`]: a real WebSocket client (tokio-tungstenite);
//! - [`browser`]: headless Chromium through chromedriver (fantoccini);
//! - [`sse`]: a real Server-Sent Events client (awc, parsed as `EventSource` does);
//! - [`metrics`]: `/metrics` scraping and a strict Prometheus text parser;
//! - [`cli`]: the command-line client (`flowcast run`, `tail`, ...) run as
//!   a process, and a TCP proxy that cuts its connections;
//! - [`history`]: what a completed run's events must be, for any workflow;
//! - [`wait`]: polling a condition with a deadline;
//! - [`tasks`]: the worker protocol, decisions, signals, waiting for a
//!   run's events, and the worker libraries run as processes.
//!
//! [`start`] is the usual first line of a test: a private Redis and a ready
//! daemon. Tests that need another order (two daemons, a Redis restart
//! before the daemon, a fanout-only daemon) use the building blocks.
//! Everything is re-exported here, so a test module needs only
//! `use crate::support::*;`.

#![allow(dead_code)]

// Private: re-exported below. A public `redis` would shadow the `redis`
// crate in every `use crate::support::*`.
mod browser;
mod cli;
mod daemon;
mod history;
mod http;
mod metrics;
mod redis;
mod sse;
mod tasks;
mod wait;
mod ws;

use std::path::PathBuf;
use std::time::Duration;

pub use self::browser::*;
pub use self::cli::*;
pub use self::daemon::*;
pub use self::history::*;
pub use self::http::*;
pub use self::metrics::*;
pub use self::redis::*;
pub use self::sse::*;
pub use self::tasks::*;
pub use self::wait::*;
pub use self::ws::*;

/// Seconds-long default timeout for events.
pub const T: Duration = Duration::from_secs(15);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts a private Redis and `flowcast serve` against it with `extra`
/// arguments, and waits until the daemon is ready (`/readyz` answered 200):
/// the usual first line of a test.
///
/// Bind both parts, e.g. `let (_redis, d) = start(&[]).await;`: a `_`
/// would drop the Redis, and stop it, at once. The daemon, bound last, is
/// dropped (killed) before its Redis.
pub async fn start(extra: &[&str]) -> (Redis, Daemon) {
    let redis = Redis::start();
    let daemon = Daemon::start(&redis, extra);
    wait_ready(&daemon).await;
    (redis, daemon)
}

/// An HS256 token for `sub`, signed with `secret`, expiring in `exp_in_s`
/// seconds (negative: already expired).
pub fn jwt(sub: &str, secret: &str, exp_in_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": now + exp_in_s}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A free loopback port below the ephemeral range and the test Redis ports
/// (where no client's outgoing connection takes it while its daemon
/// restarts), for a daemon that must come back on the same address.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 12_000 + (std::process::id() % 50) as u16 * 20;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 1_000;
        // Dropped at once: the daemon binds it with SO_REUSEADDR.
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}
