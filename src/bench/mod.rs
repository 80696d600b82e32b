//! `flowcast bench`: the load generator that measures flowcast (and, with
//! URL templates, other fan-out servers such as nchan) on this machine.
//!
//! - [`fanout`]: N WebSocket (or SSE) connections over U users, messages published to
//!   Redis or over HTTP, latency / loss / duplicates / throughput / server
//!   memory per connection;
//! - [`runs`]: runs submitted over REST and followed on WebSocket, runs/s,
//!   node completions/s, latencies, and the Redis ceiling ([`ceiling`]) of
//!   the writes one node completion needs, measured in the same invocation;
//! - [`replay`]: many clients resuming from the start of a long history and
//!   reading slowly, with the server's peak memory.
//!
//! Building blocks: [`stats`] (latency histogram), [`ledger`] (loss and
//! duplicate accounting), [`stamp`] (the timestamped message), [`template`]
//! (names, `{user}` templates, loopback-only targets), [`conn`] (WebSocket
//! connections and SSE streams ([`sse`]) from several source addresses),
//! [`publish`] (rate and closed-loop publishers), `crate::http` (keep-alive
//! HTTP client), [`procfs`] (server RSS and CPU), [`report`] (JSON line and
//! table).
//!
//! Every load is bounded in count and time, targets loopback addresses only,
//! and stops by itself. The bench runs on its own multi-thread tokio
//! runtime, separate from the daemon's actix system.

mod ceiling;
mod conn;
mod fanout;
mod ledger;
mod procfs;
mod publish;
mod replay;
mod report;
mod runs;
mod sse;
mod stamp;
mod stats;
pub mod template;

use anyhow::{bail, Context};

use crate::cli::BenchCommand;

/// Runs a bench subcommand to completion.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench")
        .build()
        .context("cannot start the bench runtime")?;
    rt.block_on(async move {
        match cmd {
            BenchCommand::Fanout(a) => fanout::run(*a).await,
            BenchCommand::Runs(a) => runs::run(*a).await,
            BenchCommand::Replay(a) => replay::run(*a).await,
        }
    })
}

/// Raises this process's open-file limit as far as the hard limit allows.
fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => log::debug!("open-file limit {n}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Fails early when `needed` descriptors exceed the open-file limit.
pub fn check_fd_budget(needed: usize) -> anyhow::Result<()> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if needed as u64 > soft {
        bail!(
            "this needs about {needed} open files but the limit is {soft} (hard {hard}); \
             split the load with --shard i/n over several processes"
        );
    }
    Ok(())
}

/// A short random id for this bench process.
pub fn bench_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
