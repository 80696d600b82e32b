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
    /// Measure a fan-out server or the runner (a load generator for loopback targets).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A sandboxed jq evaluator: the daemon starts these itself (requests
    /// on stdin, replies on stdout).
    #[command(hide = true)]
    JqWorker,
}

/// `flowcast bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// WebSocket fan-out: N connections over U users, events published to
    /// Redis (or over HTTP), latency / loss / throughput / server memory.
    Fanout(Box<FanoutArgs>),
    /// Runner: submit runs, listen on WebSocket, and measure the Redis
    /// ceiling of the writes one node completion needs.
    Runs(Box<RunsArgs>),
}

/// `flowcast bench fanout` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// WebSocket URL template; `{user}` is replaced by the user name
    /// (nchan: ws://127.0.0.1:8090/sub/{user}).
    #[arg(long, default_value = "ws://127.0.0.1:8084/ws?username={user}")]
    pub url: String,
    /// Users (channels); connections are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// WebSocket connections in total (over all shards).
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// User names are this prefix plus an index.
    #[arg(long, default_value = "bench-u")]
    pub user_prefix: String,
    /// Open only connections i, i+n, i+2n, ... (several bench processes share a load).
    #[arg(long, default_value = "0/1")]
    pub shard: crate::bench::template::Shard,
    /// New connections per second.
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Loopback source addresses 127.0.0.1..=127.0.0.N to connect from
    /// (each brings ~28K ephemeral ports); 0: let the kernel choose.
    #[arg(long, default_value_t = 4)]
    pub source_ips: u8,
    /// Redis to PUBLISH to (ignored with --pub-url).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Channel template for Redis PUBLISH.
    #[arg(long, default_value = "workflow:events:{user}")]
    pub channel: String,
    /// Publish with HTTP POST to this URL template instead of Redis
    /// (nchan: http://127.0.0.1:8090/pub/{user}).
    #[arg(long)]
    pub pub_url: Option<String>,
    /// Events per second in total; 0 connects and holds idle connections;
    /// absent: closed loop (see --window).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: most messages in flight (published, not yet received by
    /// every subscribed connection).
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Publish (or hold idle connections) for this many seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Publish at most this many messages.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_messages: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Publisher connections (Redis pipelines or HTTP keep-alive connections).
    #[arg(long, default_value_t = 2)]
    pub pub_conns: usize,
    /// Wait after connecting before publishing (server-side subscriptions), ms.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Wait after the last publish for deliveries still on their way, ms.
    #[arg(long, default_value_t = 3000)]
    pub drain_ms: u64,
    /// Closed loop: retire a window that made no progress for this long, ms.
    #[arg(long, default_value_t = 2000)]
    pub stall_ms: u64,
    /// Server process(es) whose RSS and CPU time to report (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Free text copied into the report (e.g. flowcast, nchan-redis).
    #[arg(long, default_value = "")]
    pub label: String,
}

/// `flowcast bench runs` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RunsArgs {
    /// REST API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub api: String,
    /// WebSocket URL template; `{user}` is replaced by the user name.
    #[arg(long, default_value = "ws://127.0.0.1:8084/ws?username={user}")]
    pub ws_url: String,
    /// Register this workflow file (PUT /api/v1/workflows/{tag}) and run it.
    #[arg(long, conflicts_with_all = ["tag", "wide"])]
    pub workflow: Option<PathBuf>,
    /// Run an already registered workflow.
    #[arg(long, conflicts_with = "wide")]
    pub tag: Option<String>,
    /// Register and run a generated fan-out: start → N × delay 0 → end.
    #[arg(long)]
    pub wide: Option<usize>,
    /// The runs' inputs (JSON object).
    #[arg(long, default_value = r#"{"city":"Paris"}"#)]
    pub inputs: String,
    /// Users the runs are spread over (one WebSocket listener each).
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// User names are this prefix plus an index.
    #[arg(long, default_value = "bench-r")]
    pub user_prefix: String,
    /// Submit at most this many runs.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub runs: u64,
    /// Runs in flight at once (a new one is posted when one completes at the socket).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Instead of --concurrency: post this many runs per second, open loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Submit for at most this many seconds.
    #[arg(long, short = 'd', default_value_t = 30.0)]
    pub duration: f64,
    /// After submitting, wait this long at most for runs to finish, ms.
    #[arg(long, default_value_t = 10_000)]
    pub drain_ms: u64,
    /// Redis the runner uses, for the ceiling measurement.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Seconds of the Redis ceiling measurement (0: skip).
    #[arg(long, default_value_t = 2.0)]
    pub ceiling_secs: f64,
    /// The runner's --history-max (the ceiling writes the same capped stream).
    #[arg(long, default_value_t = 10_000)]
    pub history_max: u64,
    /// Server process(es) whose RSS and CPU time to report (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Free text copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
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
    /// HS256 tokens (`Authorization: Bearer` on REST, `?token=` on WebSocket); the username is the subject.
    Jwt,
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
    /// Shared HS256 secret that signs tokens (`--auth jwt`).
    #[arg(long, env = "FLOWCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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
    /// Largest node output (canonical JSON), in bytes: a node whose output
    /// is larger fails.
    #[arg(long, env = "FLOWCAST_MAX_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    pub max_output_bytes: usize,
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
    /// Kernel TCP user timeout on WebSocket connections, in ms: a peer that
    /// stops reading (zero window) is cut after this long, even when its
    /// session actor is stalled.
    #[arg(long, env = "FLOWCAST_TCP_USER_TIMEOUT_MS", default_value_t = 60_000)]
    pub tcp_user_timeout_ms: u64,
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
