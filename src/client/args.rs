//! The client subcommands' command line (clap derive): `run`, `runs`,
//! `cancel`, `approve`, `reject`, `signal`, `tail`, `workflows`,
//! `completions`. They are flattened into the binary's `Command` enum, so
//! `flowcast run ...` sits beside `flowcast serve`.
//!
//! Every subcommand that talks to a daemon flattens [`Conn`], whose flags
//! are `global`: they may stand before or after a nested subcommand
//! (`flowcast runs --json show ID`, `flowcast runs show ID --json`). They
//! cannot be global on the whole binary: `bench runs` has its own `--api`.

use std::path::PathBuf;

use clap::builder::{NonEmptyStringValueParser, PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use flowcast_actors::counter::RunStatus;

/// Where the daemon is, who is asking, and how to print.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The daemon's REST API (its --api-addr).
    #[arg(
        long,
        env = "FLOWCAST_API",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub api: String,
    /// The daemon's WebSocket listener (its --ws-addr).
    #[arg(
        long,
        env = "FLOWCAST_WS",
        default_value = "ws://127.0.0.1:8084",
        global = true
    )]
    pub ws: String,
    /// Your user name (daemon in --auth header mode: sent as X-User-ID).
    #[arg(long, env = "FLOWCAST_USER", global = true)]
    pub user: Option<String>,
    /// Your token (daemon in --auth jwt mode: sent as a Bearer token).
    #[arg(long, env = "FLOWCAST_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON lines on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a run of a workflow; with --follow, watch it to its end.
    Run(RunArgs),
    /// List your runs, newest first (`runs show ID`: one run's nodes).
    Runs(RunsArgs),
    /// Cancel a run.
    Cancel(RunRef),
    /// Approve an approval node that waits in a run.
    Approve(Decision),
    /// Reject an approval node that waits in a run.
    Reject(Decision),
    /// Send a named signal with a JSON payload to a run.
    Signal(SignalArgs),
    /// Print your events live; resumes across dropped connections.
    Tail(TailArgs),
    /// List, show, register and remove workflows.
    Workflows(WorkflowsArgs),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `flowcast run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow's tag.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub tag: String,
    /// An input: key=value sets a string, key:=json any JSON value (repeatable).
    #[arg(short = 'i', long = "input", value_name = "KEY=VALUE")]
    pub input: Vec<String>,
    /// All inputs as a JSON object, inline or @FILE (@- reads stdin); -i adds to it.
    #[arg(long, value_name = "JSON|@FILE")]
    pub inputs: Option<String>,
    /// Watch the run to its end: exit 0 when it completes, 1 when it fails or is cancelled.
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `flowcast runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    /// Only runs with this status.
    #[arg(long, value_parser = status_parser())]
    pub status: Option<RunStatus>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub conn: Conn,
}

/// `flowcast runs` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One run: status, inputs, and a table of its nodes.
    Show {
        /// The run id.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
}

/// `runs --status`: the statuses `RunStatus` names, offered as the possible
/// values (for `--help` and shell completions).
fn status_parser() -> impl TypedValueParser<Value = RunStatus> {
    use RunStatus::{Cancelled, Completed, Failed, Queued, Running};
    PossibleValuesParser::new(
        [Queued, Running, Completed, Failed, Cancelled].map(RunStatus::as_str),
    )
    .try_map(|s| RunStatus::parse(&s).ok_or("unknown run status"))
}

/// A command on one run.
#[derive(Debug, Args)]
pub struct RunRef {
    /// The run id.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub id: String,
    #[command(flatten)]
    pub conn: Conn,
}

/// `flowcast approve|reject`.
#[derive(Debug, Args)]
pub struct Decision {
    /// The run id.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub id: String,
    /// The approval node.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub node: String,
    /// Why (kept in the node's output).
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `flowcast signal`.
#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The run id.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub id: String,
    /// The signal's name.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub name: String,
    /// The payload: JSON inline or @FILE (@- reads stdin); default {}.
    #[arg(value_name = "JSON|@FILE")]
    pub payload: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `flowcast tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only these event types (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only this run's events.
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// First replay your events after this event id, then go live.
    #[arg(long, value_name = "ID")]
    pub last_event_id: Option<String>,
    /// Exit after this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `flowcast workflows`.
#[derive(Debug, Args)]
pub struct WorkflowsArgs {
    #[command(subcommand)]
    pub command: WorkflowsCommand,
    #[command(flatten)]
    pub conn: Conn,
}

/// `flowcast workflows` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// List the workflows you can run (yours and the shared catalogue).
    Ls,
    /// Print a workflow.
    Show {
        /// The workflow's tag.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        tag: String,
    },
    /// Register a workflow from a JSON file (- reads stdin); replaces one with the same tag.
    Put {
        /// The file.
        file: PathBuf,
        /// The tag to register it under (default: the file's "tag").
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        tag: Option<String>,
    },
    /// Remove one of your workflows.
    Rm {
        /// The workflow's tag.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        tag: String,
    },
}
