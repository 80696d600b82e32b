//! The `flowcast` binary: parses the command line and hands over to the
//! daemon (`serve`, wired to signals), the load generator (`bench`) or the
//! command-line client (`run`, `runs`, `tail`, ...).
//! Everything else lives in the `flowcast` library and the
//! `flowcast-actors` and `flowcast-web` crates.

mod bench;
mod cli;
mod client;
mod http;
mod signals;

use clap::{CommandFactory, Parser};

/// mimalloc: measured ~10 % less CPU per WebSocket delivery than the system
/// allocator under fan-out load (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        cli::Command::Serve(cfg) => signals::serve(*cfg),
        cli::Command::Bench(cmd) => bench::run(cmd),
        cli::Command::Client(cmd) => std::process::exit(client::main(cmd, cli::Cli::command)),
    }
}
