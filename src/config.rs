//! The daemon's settings: flags with `FLOWCAST_*` environment equivalents,
//! parsed once by the binary and passed down as plain values. The flag and
//! variable names (listed in docs/OPERATIONS.md) are a contract with
//! operators' scripts and unit files.
//!
//! Defaults live with the settings they configure (`RunnerConfig`,
//! `WsConfig`, `Limits`, ...): the flags below take them from there, and the
//! `From` conversions at the end hand each part its values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use flowcast_actors::egress::EgressPolicy;
use flowcast_actors::runner::{RunnerConfig, DEFAULT_MAX_FOREACH_ITEMS, DEFAULT_MAX_OUTPUT_BYTES};
use flowcast_actors::store::leases::Holder;
use flowcast_actors::store::runs::RunQuota;
use flowcast_actors::store::Retention;
use flowcast_actors::subscriber;
use flowcast_actors::workflow::DEFAULT_MAX_CHILD_DEPTH;
use flowcast_web::{Limits, WsConfig};

/// How long a drain waits for running work by default.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
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
    /// Runner instance name, for people (consumer name; leases add a nonce
    /// per process); keep it stable across restarts.
    #[arg(long, env = "FLOWCAST_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How long a drain waits for running work, in ms.
    #[arg(long, env = "FLOWCAST_DRAIN_GRACE_MS", default_value_t = ms(DRAIN_GRACE))]
    pub drain_grace_ms: u64,
    /// Events kept per user in the history stream.
    #[arg(long, env = "FLOWCAST_HISTORY_MAX", default_value_t = Retention::DEFAULT_HISTORY_MAX)]
    pub history_max: u64,
    /// How long a finished run (record, events, outputs no live run holds)
    /// and a history event are kept: a number and a unit, s, m, h or d
    /// (30s, 15m, 12h, 7d).
    #[arg(long, env = "FLOWCAST_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub retention: Duration,
    /// Largest request body, in bytes.
    #[arg(long, env = "FLOWCAST_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Most nodes per workflow.
    #[arg(long, env = "FLOWCAST_MAX_NODES", default_value_t = Limits::default().max_nodes)]
    pub max_nodes: usize,
    /// Most unfinished (queued + running) runs per user; more are refused with 429 `quota_exceeded`.
    #[arg(
        long,
        env = "FLOWCAST_MAX_ACTIVE_RUNS_PER_USER",
        default_value_t = RunQuota::default().max_active,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_active_runs_per_user: u64,
    /// Runs a user may start per second (token bucket, bursts of twice that); faster is 429 `rate_limited`.
    #[arg(
        long,
        env = "FLOWCAST_MAX_RUNS_PER_SEC_PER_USER",
        default_value_t = RunQuota::default().per_sec,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_runs_per_sec_per_user: u64,
    /// Most WebSocket sessions per user per process.
    #[arg(
        long,
        env = "FLOWCAST_MAX_SESSIONS_PER_USER",
        default_value_t = subscriber::DEFAULT_MAX_SESSIONS_PER_USER
    )]
    pub max_sessions_per_user: usize,
    /// Frames queued per session before it is closed as too slow (4008).
    #[arg(long, env = "FLOWCAST_MAX_QUEUE_MSGS", default_value_t = WsConfig::default().max_queue_msgs)]
    pub max_queue_msgs: usize,
    /// Server ping interval, in ms.
    #[arg(
        long,
        env = "FLOWCAST_HEARTBEAT_INTERVAL_MS",
        default_value_t = ms(WsConfig::default().heartbeat_interval)
    )]
    pub heartbeat_interval_ms: u64,
    /// Extra time a peer has to answer pings before it is dropped, in ms.
    #[arg(
        long,
        env = "FLOWCAST_CLIENT_TIMEOUT_MS",
        default_value_t = ms(WsConfig::default().client_timeout)
    )]
    pub client_timeout_ms: u64,
    /// Kernel TCP user timeout on WebSocket connections, in ms: a peer that
    /// stops reading (zero window) is cut after this long, even when its
    /// session actor is stalled.
    #[arg(
        long,
        env = "FLOWCAST_TCP_USER_TIMEOUT_MS",
        default_value_t = ms(WsConfig::default().tcp_user_timeout)
    )]
    pub tcp_user_timeout_ms: u64,
    /// Run lease duration, in ms: how soon another runner resumes a dead runner's runs.
    #[arg(long, env = "FLOWCAST_LEASE_MS", default_value_t = ms(RunnerConfig::default().lease))]
    pub lease_ms: u64,
    /// Open the WebSocket listener with SO_REUSEPORT so several `--role fanout` processes share it.
    #[arg(long, env = "FLOWCAST_REUSE_PORT")]
    pub reuse_port: bool,
    /// HTTP worker threads per listener (default: one per core).
    #[arg(long, env = "FLOWCAST_WORKERS")]
    pub workers: Option<usize>,
    /// Destinations `http` nodes may reach beyond public addresses,
    /// comma-separated: CIDRs (10.0.0.0/8, ::1/128) and host:ports
    /// (127.0.0.1:9000, [::1]:9000, svc.internal:8080).
    #[arg(long, env = "FLOWCAST_HTTP_ALLOW")]
    pub http_allow: Option<EgressPolicy>,
    /// URL of the fan-out's `/events` as browsers reach it, for the
    /// dashboard (default: the dashboard's host at the fan-out listener's
    /// port); set it behind a proxy or on `--role runner` instances.
    #[arg(long, env = "FLOWCAST_EVENTS_URL")]
    pub events_url: Option<String>,
    /// Largest node output (canonical JSON), in bytes: a node whose output
    /// is larger fails; http response bodies are read up to it.
    #[arg(long, env = "FLOWCAST_MAX_OUTPUT_BYTES", default_value_t = DEFAULT_MAX_OUTPUT_BYTES)]
    pub max_output_bytes: usize,
    /// Most items a `foreach` may yield; more fails the node.
    #[arg(long, env = "FLOWCAST_MAX_FOREACH_ITEMS", default_value_t = DEFAULT_MAX_FOREACH_ITEMS)]
    pub max_foreach_items: usize,
    /// How deeply child workflows may nest (a run started by a user is at 0).
    #[arg(long, env = "FLOWCAST_MAX_CHILD_DEPTH", default_value_t = DEFAULT_MAX_CHILD_DEPTH)]
    pub max_child_depth: u32,
}

impl ServeConfig {
    /// The drain's grace period.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }

    /// The runner's name: `--instance-id`, else the host name.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "flowcast".into())
        })
    }
}

/// Longest `--retention` accepted (ten years: beyond it, "forever" is meant,
/// and Redis expiries would overflow Unix ms arithmetic long before).
const MAX_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Parses a `--retention` value: a positive whole number and a unit
/// (`s`, `m`, `h`, `d`).
pub fn parse_retention(s: &str) -> Result<Duration, String> {
    let expected = "expected a number and a unit s, m, h or d, like 30s, 15m, 12h or 7d";
    let unit_at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(unit_at);
    let secs_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: {expected}")),
    };
    let n: u64 = match digits.parse() {
        Ok(n) if n > 0 => n,
        _ => return Err(format!("{s:?}: {expected} (at least 1s)")),
    };
    match n.checked_mul(secs_per).map(Duration::from_secs) {
        Some(d) if d <= MAX_RETENTION => Ok(d),
        _ => Err(format!("{s:?} is longer than the most accepted, 3650d")),
    }
}

impl From<&ServeConfig> for Retention {
    fn from(c: &ServeConfig) -> Self {
        Self {
            keep: c.retention,
            history_max: c.history_max,
        }
    }
}

impl From<&ServeConfig> for Limits {
    fn from(c: &ServeConfig) -> Self {
        Self {
            max_body_bytes: c.max_body_bytes,
            max_nodes: c.max_nodes,
            max_child_depth: c.max_child_depth,
            run_quota: c.into(),
            max_output_bytes: c.max_output_bytes,
            ..Self::default()
        }
    }
}

impl From<&ServeConfig> for RunQuota {
    fn from(c: &ServeConfig) -> Self {
        Self {
            max_active: c.max_active_runs_per_user,
            per_sec: c.max_runs_per_sec_per_user,
        }
    }
}

impl From<&ServeConfig> for WsConfig {
    fn from(c: &ServeConfig) -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(c.heartbeat_interval_ms.max(100)),
            client_timeout: Duration::from_millis(c.client_timeout_ms),
            tcp_user_timeout: Duration::from_millis(c.tcp_user_timeout_ms.max(1000)),
            max_queue_msgs: c.max_queue_msgs.max(1),
            retention: c.retention,
            ..Self::default()
        }
    }
}

impl From<&ServeConfig> for RunnerConfig {
    fn from(c: &ServeConfig) -> Self {
        Self {
            // A fresh nonce: this process, as its leases name it.
            holder: Holder::new(c.instance_id()),
            lease: Duration::from_millis(c.lease_ms.max(1000)),
            max_nodes: c.max_nodes,
            egress: c.http_allow.clone().unwrap_or_default(),
            max_output_bytes: c.max_output_bytes,
            max_foreach_items: c.max_foreach_items,
            max_child_depth: c.max_child_depth,
            run_quota: c.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_takes_a_number_and_a_unit() {
        for (s, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("12h", 43_200),
            ("7d", 604_800),
            ("1s", 1),
            ("3650d", 3650 * 86_400),
        ] {
            assert_eq!(parse_retention(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for bad in [
            "",
            "7",
            "d",
            "0s",
            "-1d",
            "1.5h",
            "7 d",
            " 7d",
            "7D",
            "7days",
            "1w",
            "3651d",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            let e = parse_retention(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
    }
}
