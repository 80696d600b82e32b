//! Command line and environment: the one place configuration is read.
//!
//! Every `serve` flag has a `FLOWCAST_*` environment equivalent; the names in
//! DESIGN.md's table are a contract with operators' scripts and unit files.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// flowcast: a workflow runtime that broadcasts every lifecycle event.
#[derive(Debug, Parser)]
#[command(name = "flowcast", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(Box<ServeConfig>),
}

/// Which halves of flowcast this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// REST API + runner and WebSocket fan-out.
    All,
    /// REST API + runner only.
    Runner,
    /// WebSocket fan-out only.
    Fanout,
}

impl Role {
    /// Runs the REST API, the runner and the Publisher.
    pub fn runs_runner(self) -> bool {
        matches!(self, Self::All | Self::Runner)
    }

    /// Runs the Subscriber and the WebSocket listener.
    pub fn runs_fanout(self) -> bool {
        matches!(self, Self::All | Self::Fanout)
    }
}

/// How callers are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// The `X-User-ID` header (REST) / `username` parameter (WebSocket), set by a trusted gateway.
    Header,
}

/// `flowcast serve` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Redis to use for state, queues, history and PubSub.
    #[arg(
        long,
        env = "FLOWCAST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// REST API listener (port 0: any free port, logged).
    #[arg(long, env = "FLOWCAST_API_ADDR", default_value = "127.0.0.1:8081")]
    pub api_addr: SocketAddr,
    /// WebSocket listener (port 0: any free port, logged).
    #[arg(long, env = "FLOWCAST_WS_ADDR", default_value = "127.0.0.1:8084")]
    pub ws_addr: SocketAddr,
    /// Directory of workflow files registered at start-up (default: examples/workflows if present).
    #[arg(long, env = "FLOWCAST_WORKFLOWS_DIR")]
    pub workflows_dir: Option<PathBuf>,
    /// Which halves to run.
    #[arg(long, env = "FLOWCAST_ROLE", value_enum, default_value = "all")]
    pub role: Role,
    /// How callers are identified.
    #[arg(long, env = "FLOWCAST_AUTH", value_enum, default_value = "header")]
    pub auth: AuthMode,
    /// Runner instance name (consumer name and lease holder); keep it stable across restarts.
    #[arg(long, env = "FLOWCAST_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How long a drain waits for running work, in ms.
    #[arg(long, env = "FLOWCAST_DRAIN_GRACE_MS", default_value_t = 30_000)]
    pub drain_grace_ms: u64,
    /// Events kept per user in the history stream.
    #[arg(long, env = "FLOWCAST_HISTORY_MAX", default_value_t = 10_000)]
    pub history_max: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "FLOWCAST_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most nodes per workflow.
    #[arg(long, env = "FLOWCAST_MAX_NODES", default_value_t = 10_000)]
    pub max_nodes: usize,
    /// Most WebSocket sessions per user per process.
    #[arg(long, env = "FLOWCAST_MAX_SESSIONS_PER_USER", default_value_t = 10_000)]
    pub max_sessions_per_user: usize,
    /// Frames queued per session before it is closed as too slow (4008).
    #[arg(long, env = "FLOWCAST_MAX_QUEUE_MSGS", default_value_t = 1024)]
    pub max_queue_msgs: usize,
    /// Server ping interval, in ms.
    #[arg(long, env = "FLOWCAST_HEARTBEAT_INTERVAL_MS", default_value_t = 25_000)]
    pub heartbeat_interval_ms: u64,
    /// Extra time a peer has to answer pings before it is dropped, in ms.
    #[arg(long, env = "FLOWCAST_CLIENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub client_timeout_ms: u64,
    /// Run lease duration, in ms: how soon another runner resumes a dead runner's runs.
    #[arg(long, env = "FLOWCAST_LEASE_MS", default_value_t = 15_000)]
    pub lease_ms: u64,
    /// Open the WebSocket listener with SO_REUSEPORT so several `--role fanout` processes share it.
    #[arg(long, env = "FLOWCAST_REUSE_PORT")]
    pub reuse_port: bool,
    /// HTTP worker threads per listener (default: one per core).
    #[arg(long, env = "FLOWCAST_WORKERS")]
    pub workers: Option<usize>,
}
