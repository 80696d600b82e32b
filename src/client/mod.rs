//! The command-line client: subcommands of the `flowcast` binary that talk
//! to a running daemon over REST and WebSocket, for people at a terminal
//! and for scripts (docs/CLI.md).
//!
//! # Layout
//!
//! - [`args`]: the subcommands and their flags (clap derive);
//! - [`api`]: the REST client (identity, path encoding, the server's
//!   errors), over the shared keep-alive connection in `crate::http`;
//! - [`follow`]: live events over WebSocket, resumed with `last_event_id`
//!   across drops;
//! - [`run`]: `run` and `run --follow` (progress bar or event lines, final
//!   outputs, exit code by the run's end);
//! - [`tail`]: following your events (`tail`);
//! - [`commands`]: the one-request commands (`runs`, `cancel`, `approve`,
//!   `reject`, `signal`, `workflows`);
//! - [`inputs`]: JSON from arguments and files;
//! - [`output`]: text and JSON lines, colours, escaping of what users wrote;
//! - [`error`]: failures and their exit codes.
//!
//! Each command runs on its own current-thread tokio runtime and returns
//! an exit code; an error is one `error: ...` message on stderr, never a
//! panic or a backtrace.

pub mod args;

mod api;
mod commands;
mod error;
mod follow;
mod inputs;
mod output;
mod run;
mod tail;

use std::io::Write;

use args::{Command, Conn};
use error::{exit, Error, Result};
use output::{Out, Tone};

/// Runs a client command; returns the process's exit code. `cli` builds
/// the whole command line (for shell completions).
pub fn main(cmd: Command, cli: impl FnOnce() -> clap::Command) -> i32 {
    let conn = match &cmd {
        Command::Completions { shell } => return completions(*shell, cli()),
        Command::Run(a) => &a.conn,
        Command::Runs(a) => &a.conn,
        Command::Cancel(a) => &a.conn,
        Command::Approve(a) | Command::Reject(a) => &a.conn,
        Command::Signal(a) => &a.conn,
        Command::Tail(a) => &a.conn,
        Command::Workflows(a) => &a.conn,
    };
    let out = Out::new(conn.json);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.note(&format!("error: cannot start the client runtime: {e}"));
            return exit::UNREACHABLE;
        }
    };
    match rt.block_on(dispatch(cmd, out)) {
        Ok(code) => code,
        Err(e) => {
            if e.exit_code() != exit::BROKEN_PIPE {
                out.note(&format!("{}: {e}", out.paint_err(Tone::Bad, "error")));
            }
            e.exit_code()
        }
    }
}

async fn dispatch(cmd: Command, out: Out) -> Result<i32> {
    match cmd {
        Command::Run(a) => run::run(a, out).await,
        Command::Runs(a) => commands::runs(a, out).await,
        Command::Cancel(a) => commands::cancel(a, out).await,
        Command::Approve(a) => commands::decide(a, true, out).await,
        Command::Reject(a) => commands::decide(a, false, out).await,
        Command::Signal(a) => commands::signal(a, out).await,
        Command::Tail(a) => tail::tail(a, out).await,
        Command::Workflows(a) => commands::workflows(a, out).await,
        Command::Completions { .. } => Ok(exit::OK),
    }
}

/// The caller's identity from `--user` / `--token`.
fn identity(conn: &Conn) -> Result<api::Identity> {
    api::Identity::from_flags(conn.user.as_deref(), conn.token.as_deref())
}

/// A REST client for `conn`.
fn api(conn: &Conn) -> Result<api::Api> {
    api::Api::new(&conn.api, &identity(conn)?)
}

/// Writes a completion script for `shell` on stdout.
fn completions(shell: clap_complete::Shell, mut cli: clap::Command) -> i32 {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli, "flowcast", &mut script);
    let mut o = std::io::stdout().lock();
    match o.write_all(&script).and_then(|()| o.flush()) {
        Ok(()) => exit::OK,
        Err(e) => Error::from(e).exit_code(),
    }
}
