//! The command line: subcommands and the benchmark tool's arguments. The
//! daemon's settings are `flowcast::config::ServeConfig`, parsed here as
//! the `serve` subcommand; the client commands (`run`, `runs`, `tail`,
//! ...) are `crate::client::args::Command`, flattened in.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    Serve(Box<flowcast::config::ServeConfig>),
    /// Measure a fan-out server or the runner (a load generator for loopback targets).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A sandboxed jq evaluator: the daemon starts these itself (requests
    /// on stdin, replies on stdout).
    #[command(hide = true)]
    JqWorker,
    // The client commands (run, runs, tail, ...), listed beside these.
    #[command(flatten)]
    Client(crate::client::args::Command),
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
    /// Replay: many WebSocket clients resuming from the start of a long
    /// history and reading slowly, with the server's peak memory.
    Replay(Box<ReplayArgs>),
}

/// `flowcast bench fanout` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// WebSocket URL template, or with http:// an SSE one
    /// (http://127.0.0.1:8084/events?username={user}); `{user}` is replaced
    /// by the user name (nchan: ws://127.0.0.1:8090/sub/{user}).
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
    #[arg(long, conflicts_with_all = ["tag", "wide", "foreach", "foreach_children"])]
    pub workflow: Option<PathBuf>,
    /// Run an already registered workflow.
    #[arg(long, conflicts_with_all = ["wide", "foreach", "foreach_children"])]
    pub tag: Option<String>,
    /// Register and run a generated fan-out: start → N × delay 0 → end.
    #[arg(long, conflicts_with_all = ["foreach", "foreach_children"])]
    pub wide: Option<usize>,
    /// Register and run one delay-0 node with `foreach` over N items.
    #[arg(long, conflicts_with = "foreach_children")]
    pub foreach: Option<usize>,
    /// Register and run a `workflow` node with `foreach` over N items: one
    /// child run (of a one-node workflow) per item.
    #[arg(long)]
    pub foreach_children: Option<usize>,
    /// `concurrency` of the generated `foreach` node.
    #[arg(long, default_value_t = 16)]
    pub item_concurrency: u32,
    /// The generated workflow asks for `node_started` events.
    #[arg(long)]
    pub node_started: bool,
    /// With --wide: make every node a transform running this jq filter
    /// (CPU work or large outputs, e.g. for a fair-share flood).
    #[arg(long, requires = "wide")]
    pub wide_filter: Option<String>,
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

/// `flowcast bench replay` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// WebSocket URL template resuming from the start; `{user}` is replaced
    /// by the bench user.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:8084/ws?username={user}&last_event_id=0"
    )]
    pub url: String,
    /// Redis the server uses (its history stream is filled directly).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Events in the history.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub events: u64,
    /// Padding per event, in bytes.
    #[arg(long, default_value_t = 4000)]
    pub pad_bytes: usize,
    /// Connections replaying at once.
    #[arg(long, short = 'c', default_value_t = 20)]
    pub connections: usize,
    /// Each connection pauses after this many events...
    #[arg(long, default_value_t = 100)]
    pub read_batch: u64,
    /// ...for this long, ms (0: read as fast as possible).
    #[arg(long, default_value_t = 20)]
    pub read_pause_ms: u64,
    /// The bench user's name is this prefix plus a random id.
    #[arg(long, default_value = "bench-replay-")]
    pub user_prefix: String,
    /// Server process(es) whose RSS to sample (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Free text copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
}
