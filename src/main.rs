//! The `flowcast` binary: parses the command line and hands over to the
//! daemon (`serve`) or the load generator (`bench`). Everything else lives
//! in the `flowcast-actors` and `flowcast-web` crates.

mod bench;
mod config;
mod serve;

use clap::Parser;

/// mimalloc: measured ~10 % less CPU per WebSocket delivery than the system
/// allocator under fan-out load (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = config::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        config::Command::Serve(cfg) => serve::run(*cfg),
        config::Command::Bench(cmd) => bench::run(cmd),
    }
}
