//! What can go wrong in a client command, each with the exit code scripts
//! branch on and a message a person can act on: a usage error says which
//! flag or value, an unreachable daemon names the URL and what to start, a
//! refusal shows the server's own error code and message.

use std::fmt;

/// Exit codes (documented in docs/CLI.md).
pub mod exit {
    /// The command did what was asked (for `run --follow`: the run completed).
    pub const OK: i32 = 0;
    /// `run --follow`: the run failed or was cancelled.
    pub const RUN_FAILED: i32 = 1;
    /// Bad command line or input (clap uses 2 too).
    pub const USAGE: i32 = 2;
    /// The daemon could not be reached, or the connection was lost for good.
    pub const UNREACHABLE: i32 = 3;
    /// The daemon refused the request (an HTTP error answer).
    pub const REFUSED: i32 = 4;
    /// stdout was closed by its reader (`| head`): the shell's SIGPIPE code.
    pub const BROKEN_PIPE: i32 = 141;
}

/// Which of the daemon's listeners a connection error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The REST API (`--api`).
    Api,
    /// The WebSocket listener (`--ws`).
    Ws,
}

/// A client command's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or an input file is wrong.
    #[error("{0}")]
    Usage(String),
    /// The daemon did not answer at `url`.
    #[error("cannot reach the flowcast daemon at {url}: {detail}\n{}", hint(*.listener))]
    Unreachable {
        listener: Listener,
        url: String,
        detail: String,
    },
    /// The daemon answered with an error.
    #[error("{}", refusal(*.status, code, message))]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The daemon answered something that is not what its API says.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// Writing to stdout failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// The exit code of this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Unreachable { .. } => exit::UNREACHABLE,
            Self::Api { .. } | Self::Protocol(_) => exit::REFUSED,
            Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::BROKEN_PIPE,
            Self::Output(_) => exit::UNREACHABLE,
        }
    }

    /// A usage error.
    pub fn usage(m: impl fmt::Display) -> Self {
        Self::Usage(m.to_string())
    }
}

/// What to do when a listener does not answer.
fn hint(l: Listener) -> &'static str {
    match l {
        Listener::Api => {
            "is the daemon running? Start it with `flowcast serve` (or scripts/start.sh), \
             or point --api / FLOWCAST_API at its API listener"
        }
        Listener::Ws => {
            "is the daemon running with a fan-out listener? Start it with `flowcast serve` \
             (or scripts/start.sh), or point --ws / FLOWCAST_WS at its WebSocket listener"
        }
    }
}

/// The server's code and message, and what to do about the usual ones.
fn refusal(status: u16, code: &str, message: &str) -> String {
    let what = match code {
        "unauthorized" => {
            "\nsay who you are: --user NAME / FLOWCAST_USER (header auth) \
             or --token / FLOWCAST_TOKEN (jwt auth)"
        }
        "unavailable" => "\nthe daemon cannot take it now (Redis down or draining): retry",
        _ => "",
    };
    format!("{code}: {message} (HTTP {status}){what}")
}

/// A client result.
pub type Result<T> = std::result::Result<T, Error>;
