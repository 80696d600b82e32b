//! What every handler shares: Redis, the local actors, limits and metrics.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use flowcast_actors::metrics::Metrics;
use flowcast_actors::runner::Runner;
use flowcast_actors::store::runs::RunQuota;
use flowcast_actors::subscriber::Subscriber;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// Limits on what clients may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most nodes per workflow.
    pub max_nodes: usize,
    /// Most runs listed by `GET /api/v1/runs`.
    pub max_list: usize,
    /// How deeply child workflows may nest (`--max-child-depth`).
    pub max_child_depth: u32,
    /// Each user's run quotas (active runs, runs per second).
    pub run_quota: RunQuota,
    /// Largest node output a worker may report, and largest signal payload.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_nodes: flowcast_actors::workflow::DEFAULT_MAX_NODES,
            max_list: 1000,
            max_child_depth: flowcast_actors::workflow::DEFAULT_MAX_CHILD_DEPTH,
            run_quota: RunQuota::default(),
            max_output_bytes: flowcast_actors::runner::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// WebSocket session settings.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// How often the server pings.
    pub heartbeat_interval: Duration,
    /// How long after a missed heartbeat the peer is dropped.
    pub client_timeout: Duration,
    /// Frames a session may have queued before it counts as too slow.
    pub max_queue_msgs: usize,
    /// Largest frame a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Kernel timeout for unacknowledged data (cuts peers that stopped reading).
    pub tcp_user_timeout: Duration,
    /// `--retention`: how old the oldest event a replay can find may be.
    pub retention: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(25),
            client_timeout: Duration::from_secs(10),
            max_queue_msgs: 1024,
            max_frame_bytes: 64 * 1024,
            tcp_user_timeout: Duration::from_secs(60),
            retention: flowcast_actors::store::Retention::DEFAULT_KEEP,
        }
    }
}

/// Shared by the REST and WebSocket handlers.
#[derive(Clone)]
pub struct AppState {
    /// Commands to Redis (auto-reconnecting).
    pub redis: ConnectionManager,
    /// The local runner, when this process runs one.
    pub runner: Option<Addr<Runner>>,
    /// The local Subscriber, when this process serves WebSockets.
    pub subscriber: Option<Addr<Subscriber>>,
    /// The Subscriber's readiness.
    pub subscriber_ready: Option<Arc<AtomicBool>>,
    /// Fired once a drain has begun: no new work is accepted.
    pub shutdown: CancellationToken,
    /// Client limits.
    pub limits: Limits,
    /// WebSocket settings.
    pub ws: WsConfig,
    /// Session ids.
    pub next_session: Arc<AtomicU64>,
    /// Metrics.
    pub metrics: Metrics,
    /// How callers are identified.
    pub auth: crate::auth::Auth,
    /// Task claims long-polling in this process.
    pub waiters: flowcast_actors::outside::Waiters,
    /// Where the dashboard's browsers reach `/events`.
    pub dashboard: crate::dashboard::DashboardConfig,
}
