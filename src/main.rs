//! The `flowcast` binary: parses the command line and hands over to the
//! daemon (`serve`, wired to signals), the load generator (`bench`), the
//! command-line client (`run`, `runs`, `tail`, ...) or, when the daemon
//! starts one, a sandboxed jq evaluator (`jq-worker`, hidden). Everything
//! else lives in the `flowcast` library and the
//! `flowcast-actors` and `flowcast-web` crates.

mod bench;
mod cli;
mod client;
mod http;
mod signals;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

/// mimalloc: measured ~10 % less CPU per WebSocket delivery than the system
/// allocator under fan-out load (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    let init_logger = || {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init()
    };
    match cli.command {
        // No logger: a worker has nothing to say (and its stderr is closed).
        cli::Command::JqWorker => Ok(flowcast_actors::jq::worker::main()),
        cli::Command::Serve(cfg) => {
            init_logger();
            signals::serve(*cfg).map(|()| ExitCode::SUCCESS)
        }
        cli::Command::Bench(cmd) => {
            init_logger();
            bench::run(cmd).map(|()| ExitCode::SUCCESS)
        }
        cli::Command::Client(cmd) => {
            init_logger();
            let code = client::main(cmd, cli::Cli::command);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}
