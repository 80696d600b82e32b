//! Prometheus metrics, shared by every actor of the process.
//!
//! One [`Metrics`] value is built at start-up and cloned into each actor and
//! handler (the prometheus types are reference-counted), so tests can build
//! their own and nothing is global. `/metrics` renders [`Metrics::render`].

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Runs accepted over REST.
    pub runs_accepted: IntCounter,
    /// Runs by terminal or start outcome (`started`, `completed`, `failed`, `cancelled`).
    pub runs: IntCounterVec,
    /// Node attempts by kind and outcome (`completed`, `failed`; a
    /// `foreach` node's items: `item_completed`, `item_failed`).
    pub nodes: IntCounterVec,
    /// Events written to history and published.
    pub events_published: IntCounter,
    /// Seconds from a pipeline's send to Redis's answer.
    pub publish_latency: Histogram,
    /// Seconds from a run request's acceptance to its initialisation.
    pub run_queue_lag: Histogram,
    /// Live WebSocket sessions.
    pub sessions: IntGauge,
    /// Live SSE sessions (`GET /events`).
    pub sse_sessions: IntGauge,
    /// Users with at least one live session.
    pub users: IntGauge,
    /// Frames handed to sessions.
    pub deliveries: IntCounter,
    /// Sessions closed because they read too slowly.
    pub slow_consumer_closes: IntCounter,
    /// Redis connection errors by component.
    pub redis_errors: IntCounterVec,
    /// Redis reconnects by component.
    pub redis_reconnects: IntCounterVec,
    /// Runs currently held by this process's run actors.
    pub live_runs: IntGauge,
    /// Tasks handed to workers by claims.
    pub tasks_claimed: IntCounter,
    /// Workers' reports by kind (`heartbeat`, `complete`, `fail`) and
    /// outcome (`taken`, `stale`, `missing`).
    pub task_reports: IntCounterVec,
    /// Claims long-polling in this process now.
    pub task_claims_waiting: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("flowcast".into()), None)
            // unwrap: a constant, valid prefix
            .unwrap();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap(); // unwrap: constant, valid name
            registry.register(Box::new(c.clone())).unwrap(); // unwrap: registered once
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap(); // unwrap: constant
            registry.register(Box::new(c.clone())).unwrap(); // unwrap: registered once
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap(); // unwrap: constant, valid name
            registry.register(Box::new(g.clone())).unwrap(); // unwrap: registered once
            g
        };
        let histogram = |name: &str, help: &str| {
            let buckets = vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).unwrap(); // unwrap: constant
            registry.register(Box::new(h.clone())).unwrap(); // unwrap: registered once
            h
        };
        Self {
            runs_accepted: counter("runs_accepted_total", "Runs accepted over REST"),
            runs: counter_vec("runs_total", "Runs by outcome", &["outcome"]),
            nodes: counter_vec(
                "node_attempts_total",
                "Node attempts by kind and outcome",
                &["kind", "outcome"],
            ),
            events_published: counter(
                "events_published_total",
                "Events written to history and published",
            ),
            publish_latency: histogram(
                "publish_latency_seconds",
                "Time for a Publisher pipeline to be answered",
            ),
            run_queue_lag: histogram(
                "run_queue_lag_seconds",
                "Time from run acceptance to initialisation",
            ),
            sessions: gauge("ws_sessions", "Live WebSocket sessions"),
            sse_sessions: gauge("sse_sessions", "Live SSE sessions"),
            users: gauge("ws_users", "Users with at least one live session"),
            deliveries: counter("ws_deliveries_total", "Event frames handed to sessions"),
            slow_consumer_closes: counter(
                "ws_slow_consumer_closes_total",
                "Sessions (WebSocket or SSE) cut for reading too slowly",
            ),
            redis_errors: counter_vec(
                "redis_errors_total",
                "Failed Redis operations by component",
                &["component"],
            ),
            redis_reconnects: counter_vec(
                "redis_reconnects_total",
                "Redis reconnects by component",
                &["component"],
            ),
            live_runs: gauge("live_runs", "Runs held by this process's run actors"),
            tasks_claimed: counter("tasks_claimed_total", "Tasks handed to workers by claims"),
            task_reports: counter_vec(
                "task_reports_total",
                "Workers' task reports by report and outcome",
                &["report", "outcome"],
            ),
            task_claims_waiting: gauge(
                "task_claims_waiting",
                "Task claims long-polling in this process",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
