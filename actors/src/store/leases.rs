//! Run leases: which runner drives a run.
//!
//! A live run is held under `flowcast:run:{id}:owner` with an expiry,
//! renewed by every commit (see `commit`) and by the runner's periodic sweep;
//! a run whose lease lapsed (its runner died) is claimed by another runner
//! and resumed. Claiming checks the run's status in the same script, so a
//! lease is never taken on a run that has ended.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use super::keys;
use super::script::Lua;
use crate::error::Result;

static CLAIM: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/claim.lua")));
static RENEW: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/renew.lua")));
static RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/release.lua")));

/// Leases changed per script call.
const CHUNK: usize = 1000;

/// The runner holding a run's lease, if any.
pub async fn holder<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<Option<String>> {
    Ok(conn.get(keys::owner(run_id)).await?)
}

/// Takes a run's lease for `runner` if it is free or already `runner`'s and
/// the run has not ended. True when the lease is `runner`'s.
pub async fn claim<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
    runner: &str,
    lease: Duration,
) -> Result<bool> {
    let keys = [keys::owner(run_id), keys::run(run_id)];
    let args = [runner.to_owned(), lease.as_millis().to_string()];
    let claimed: i64 = CLAIM.invoke(conn, &keys, &args).await?;
    Ok(claimed == 1)
}

/// Extends the leases `runner` holds on `runs`.
pub async fn renew<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    runs: &[String],
    runner: &str,
    lease: Duration,
) -> Result<()> {
    for_each_chunk(conn, &RENEW, runs, runner, lease).await
}

/// Deletes the leases `runner` holds on `runs` (they resume elsewhere at once).
pub async fn release<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    runs: &[String],
    runner: &str,
) -> Result<()> {
    for_each_chunk(conn, &RELEASE, runs, runner, Duration::ZERO).await
}

async fn for_each_chunk<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    script: &Lua,
    runs: &[String],
    runner: &str,
    lease: Duration,
) -> Result<()> {
    let args = [runner.to_owned(), lease.as_millis().to_string()];
    for chunk in runs.chunks(CHUNK) {
        let keys: Vec<String> = chunk.iter().map(|r| keys::owner(r)).collect();
        let _: i64 = script.invoke(conn, &keys, &args).await?;
    }
    Ok(())
}
