//! `flowcast bench runs`: runs submitted over REST and followed at the
//! WebSocket, as a user sees them.
//!
//! One WebSocket listener per bench user; runs are posted (`POST
//! /api/v1/runs`) at a fixed concurrency (a new run when one finishes at the
//! socket) or at a fixed rate. For each run the bench notes the POST time
//! and the receipt of `workflow_started` and of its terminal event, which
//! gives POST→started and POST→completed latencies, and counts node
//! completions and events, `foreach` items done (`node_progress`) and child
//! runs completed (events that carry `parent_run_id`). Generated workflows:
//! `--wide N` (a static fan-out of N nodes), `--foreach N` (one node over N
//! items), `--foreach-children N` (one child run per item), each with
//! `node_started` events on request. Afterwards, in the same invocation and on the
//! same Redis, the [`ceiling`](super::ceiling) of the commit writes is
//! measured, and the node completion rate is reported as a fraction of it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use super::ceiling::{self, Ceiling};
use super::conn::connect;
use super::procfs;
use super::report::{emit, rate, thousands, Table};
use super::stamp::now_us;
use super::stats::{per_sec, Histogram, Summary};
use super::template::loopback_http;
use super::template::{check_prefix, loopback_target, user_name, Template};
use crate::cli::RunsArgs;
use crate::http::HttpConn;

/// Longest submission phase accepted.
const MAX_DURATION_S: f64 = 600.0;
/// HTTP connections of the open-loop (rate) submitter.
const RATE_WORKERS: usize = 32;

/// The generated fan-out workflow: `start` → `width` × node → `end`, each
/// node a `delay` of 0 or, with `filter`, a `transform` running it (CPU
/// work, or large outputs, for the fair-share benchmark).
pub fn wide_workflow(width: usize, filter: Option<&str>) -> Value {
    let node = |id: &str, deps: &[String]| {
        let mut n = match filter {
            Some(f) => json!({"id": id, "kind": "transform", "filter": f}),
            None => json!({"id": id, "kind": "delay", "ms": 0}),
        };
        if !deps.is_empty() {
            n["depends_on"] = json!(deps);
        }
        n
    };
    let mids: Vec<String> = (0..width).map(|i| format!("w{i}")).collect();
    let mut nodes = vec![node("start", &[])];
    nodes.extend(mids.iter().map(|id| node(id, &["start".to_owned()])));
    nodes.push(node("end", &mids));
    let tag = match filter {
        Some(_) => format!("bench-wide-{width}-transform"),
        None => format!("bench-wide-{width}"),
    };
    json!({"tag": tag, "nodes": nodes})
}

/// The child workflow of [`foreach_workflow`]'s children: one delay 0.
pub fn child_workflow() -> Value {
    json!({"tag": "bench-child", "nodes": [{"id": "leaf", "kind": "delay", "ms": 0}]})
}

/// The generated `foreach` workflow: `start` → one node over `items` items
/// (a delay 0 each, or with `children` a run of [`child_workflow`] each)
/// → `end`: the same shape of work as [`wide_workflow`]`(items)`.
pub fn foreach_workflow(items: usize, concurrency: u32, children: bool) -> Value {
    let (tag, mut each) = if children {
        (
            format!("bench-children-{items}"),
            json!({"kind": "workflow", "tag": "bench-child", "inputs": "{}"}),
        )
    } else {
        (
            format!("bench-foreach-{items}"),
            json!({"kind": "delay", "ms": 0}),
        )
    };
    each["id"] = json!("each");
    each["depends_on"] = json!(["start"]);
    each["foreach"] = json!(format!("[range({items})]"));
    each["concurrency"] = json!(concurrency);
    json!({"tag": tag, "nodes": [
        {"id": "start", "kind": "delay", "ms": 0},
        each,
        {"id": "end", "kind": "delay", "ms": 0, "depends_on": ["each"]}
    ]})
}

/// The fields of an event the bench reads.
#[derive(Debug, Deserialize)]
struct EventHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    run_id: Option<Cow<'a, str>>,
    /// Set on a child run's events.
    #[serde(default, borrow)]
    parent_run_id: Option<Cow<'a, str>>,
    /// Items done, on `node_progress`.
    #[serde(default)]
    done: Option<u64>,
}

#[derive(Default)]
struct Track {
    post_us: Option<u64>,
    started_us: Option<u64>,
    done_us: Option<u64>,
    completed: bool,
    nodes: u64,
    events: u64,
    waiter: Option<oneshot::Sender<()>>,
}

/// What the listeners saw, per run.
#[derive(Default)]
struct Tracker {
    runs: Mutex<HashMap<String, Track>>,
    to_started: Histogram,
    to_completed: Histogram,
    frames: AtomicU64,
    /// `foreach` items done (`node_progress` after the first item).
    items: AtomicU64,
    /// Child runs that completed.
    child_runs: AtomicU64,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Track>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, t: &Track) {
        if let (Some(p), Some(s)) = (t.post_us, t.started_us) {
            self.to_started.record(s.saturating_sub(p));
        }
        if let (Some(p), Some(d), true) = (t.post_us, t.done_us, t.completed) {
            self.to_completed.record(d.saturating_sub(p));
        }
    }

    /// One frame received at `now` (µs).
    fn event(&self, text: &str, now: u64) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        let Ok(e) = serde_json::from_str::<EventHead>(text) else {
            return;
        };
        let Some(run_id) = e.run_id else {
            return;
        };
        if e.parent_run_id.is_some() {
            // A child run: counted, not tracked (the bench did not post it).
            if e.kind == "workflow_completed" {
                self.child_runs.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if e.kind == "node_progress" && e.done.unwrap_or(0) > 0 {
            self.items.fetch_add(1, Ordering::Relaxed);
        }
        let mut runs = self.lock();
        let t = runs.entry(run_id.into_owned()).or_default();
        t.events += 1;
        match &*e.kind {
            "workflow_started" => {
                t.started_us = Some(now);
                if let Some(p) = t.post_us {
                    self.to_started.record(now.saturating_sub(p));
                }
            }
            "node_completed" => t.nodes += 1,
            "workflow_completed" | "workflow_failed" | "workflow_cancelled" => {
                t.done_us = Some(now);
                t.completed = e.kind == "workflow_completed";
                if let (Some(p), true) = (t.post_us, t.completed) {
                    self.to_completed.record(now.saturating_sub(p));
                }
                if let Some(w) = t.waiter.take() {
                    let _ = w.send(());
                }
            }
            _ => {}
        }
    }

    /// A run was accepted; the receiver fires when it ends at the socket.
    fn posted(&self, run_id: &str, post_us: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut runs = self.lock();
        let t = runs.entry(run_id.to_owned()).or_default();
        t.post_us = Some(post_us);
        // Events that beat the POST's answer to the bench.
        self.record(t);
        if t.done_us.is_some() {
            let _ = tx.send(());
        } else {
            t.waiter = Some(tx);
        }
        rx
    }

    /// Totals over the runs this bench posted.
    fn totals(&self) -> Totals {
        let runs = self.lock();
        let mut s = Totals::default();
        for t in runs.values() {
            let Some(p) = t.post_us else { continue };
            s.posted += 1;
            s.first_post_us = Some(s.first_post_us.map_or(p, |f: u64| f.min(p)));
            s.started += u64::from(t.started_us.is_some());
            match (t.done_us, t.completed) {
                (Some(d), c) => {
                    s.completed += u64::from(c);
                    s.failed += u64::from(!c);
                    s.last_done_us = s.last_done_us.max(d);
                }
                (None, _) => s.unfinished += 1,
            }
            s.node_completions += t.nodes;
            s.events += t.events;
        }
        s
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Totals {
    posted: u64,
    started: u64,
    completed: u64,
    failed: u64,
    unfinished: u64,
    node_completions: u64,
    events: u64,
    #[serde(skip)]
    first_post_us: Option<u64>,
    #[serde(skip)]
    last_done_us: u64,
}

#[derive(Default)]
struct Submitter {
    next: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Submitter {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            log::warn!("submit failed: {e}");
            *f = Some(e);
        }
    }
}

/// Posts one run for `user`; returns its id and the POST time.
async fn post_run(http: &mut HttpConn, user: &str, body: &Bytes) -> Result<(String, u64), String> {
    let t0 = now_us();
    let (status, resp) = http
        .request(
            Method::POST,
            "/api/v1/runs",
            &[("x-user-id", user)],
            body.clone(),
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
    if status.as_u16() != 202 {
        return Err(format!(
            "POST /api/v1/runs: {status}: {}",
            String::from_utf8_lossy(&resp)
        ));
    }
    let v: Value = serde_json::from_slice(&resp).map_err(|e| e.to_string())?;
    let id = v["run_id"].as_str().ok_or("202 without run_id")?.to_owned();
    Ok((id, t0))
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    label: String,
    api: String,
    tag: String,
    nodes_per_run: Option<usize>,
    users: usize,
    mode: String,
    #[serde(flatten)]
    totals: Totals,
    submit_errors: u64,
    submit_error: Option<String>,
    elapsed_s: f64,
    runs_per_s: f64,
    node_completions_per_s: f64,
    events_per_s: f64,
    items: u64,
    items_per_s: f64,
    child_runs: u64,
    child_runs_per_s: f64,
    post_to_started_us: Summary,
    post_to_completed_us: Summary,
    ceiling: Option<Ceiling>,
    ratio_to_ceiling: Option<f64>,
    server_cpu_s: Option<f64>,
    bench_cpu_s: f64,
}

fn check(args: &RunsArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.concurrency == 0 || args.runs == 0 {
        bail!("--users, --concurrency and --runs must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        bail!("--duration must be in (0, {MAX_DURATION_S}] seconds");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be positive");
    }
    if !(0.0..=60.0).contains(&args.ceiling_secs) {
        bail!("--ceiling-secs must be in [0, 60]");
    }
    check_prefix(&args.user_prefix)?;
    loopback_target(&args.api)?;
    loopback_target(&args.ws_url)?;
    Ok(())
}

/// Registers the workflow, if one is given, for every bench user (each
/// user runs only their own workflows and the shared catalogue), with the
/// child workflow of `--foreach-children`; returns its tag and node count.
async fn workflow(args: &RunsArgs, users: &[String]) -> anyhow::Result<(String, Option<usize>)> {
    if args.foreach_children.is_some() {
        put_workflow(args, users, &child_workflow()).await?;
    }
    let generated = match (args.wide, args.foreach, args.foreach_children) {
        (Some(w), _, _) => Some(wide_workflow(w, args.wide_filter.as_deref())),
        (_, Some(n), _) => Some(foreach_workflow(n, args.item_concurrency, false)),
        (_, _, Some(n)) => Some(foreach_workflow(n, args.item_concurrency, true)),
        _ => None,
    };
    let body = match (generated, &args.workflow, &args.tag) {
        (Some(mut w), _, _) => {
            if args.node_started {
                w["events"] = json!({"node_started": true});
                w["tag"] = json!(format!("{}-started", w["tag"].as_str().unwrap_or("")));
            }
            w
        }
        (None, Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        (None, None, tag) => {
            return Ok((tag.clone().unwrap_or_else(|| "flight-search".into()), None))
        }
    };
    let nodes = body["nodes"].as_array().map(Vec::len);
    let tag = put_workflow(args, users, &body).await?;
    log::info!(
        "registered workflow {tag} ({} nodes) for {} users",
        nodes.unwrap_or(0),
        users.len()
    );
    Ok((tag, nodes))
}

/// Registers a workflow (PUT /api/v1/workflows/{tag}) for each of `users`;
/// returns its tag.
async fn put_workflow(args: &RunsArgs, users: &[String], body: &Value) -> anyhow::Result<String> {
    let tag = body["tag"]
        .as_str()
        .context("the workflow has no \"tag\"")?
        .to_owned();
    let body = Bytes::from(body.to_string());
    let mut http = loopback_http(&args.api)?;
    for user in users {
        let (status, resp) = http
            .request(
                Method::PUT,
                &format!("/api/v1/workflows/{tag}"),
                &[("x-user-id", user)],
                body.clone(),
            )
            .await?;
        if !status.is_success() {
            bail!(
                "registering {tag} for {user}: {status}: {}",
                String::from_utf8_lossy(&resp)
            );
        }
    }
    Ok(tag)
}

/// Runs the runner bench.
pub async fn run(args: RunsArgs) -> anyhow::Result<()> {
    check(&args)?;
    let users: Vec<String> = (0..args.users)
        .map(|i| user_name(&args.user_prefix, i))
        .collect();
    super::check_fd_budget(args.users + args.concurrency.max(RATE_WORKERS) + 32)?;
    let (tag, nodes_per_run) = workflow(&args, &users).await?;
    let inputs: Value = serde_json::from_str(&args.inputs).context("--inputs is not JSON")?;
    let body = Bytes::from(json!({"tag": tag, "inputs": inputs}).to_string());

    let tracker = Arc::new(Tracker::default());
    let ws_url = Template::new(&args.ws_url, args.users > 1)?;
    let mut listeners = Vec::new();
    for u in &users {
        let mut ws = connect(&ws_url.fill(u), None, Duration::from_secs(10))
            .await
            .with_context(|| format!("WebSocket for {u}"))?;
        let tracker = tracker.clone();
        listeners.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    tracker.event(t.as_str(), now_us());
                }
            }
        }));
    }
    // Let the fan-out subscribe the users' channels.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let server_before = procfs::sample(&args.pid);
    let own_before = procfs::sample(&[std::process::id()]);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let drain = Duration::from_millis(args.drain_ms);
    let sub = Arc::new(Submitter::default());
    let mode = match args.rate {
        Some(r) => format!("rate {r}/s"),
        None => format!("concurrency {}", args.concurrency),
    };
    log::info!(
        "submitting up to {} runs of {tag} ({mode}) for at most {:.0} s",
        args.runs,
        args.duration
    );
    let mut tasks = Vec::new();
    match args.rate {
        None => {
            for _ in 0..args.concurrency {
                let (sub, tracker, body, users) =
                    (sub.clone(), tracker.clone(), body.clone(), users.clone());
                let mut http = loopback_http(&args.api)?;
                let runs = args.runs;
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = sub.next.fetch_add(1, Ordering::Relaxed);
                        if i >= runs || Instant::now() >= deadline {
                            return;
                        }
                        let user = &users[i as usize % users.len()];
                        match post_run(&mut http, user, &body).await {
                            Ok((id, t0)) => {
                                let done = tracker.posted(&id, t0);
                                let _ = tokio::time::timeout(drain, done).await;
                            }
                            Err(e) => {
                                sub.error(e);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }));
            }
        }
        Some(r) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<u64>(RATE_WORKERS * 4);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..RATE_WORKERS {
                let (sub, tracker, body, users, rx) = (
                    sub.clone(),
                    tracker.clone(),
                    body.clone(),
                    users.clone(),
                    rx.clone(),
                );
                let mut http = loopback_http(&args.api)?;
                tasks.push(tokio::spawn(async move {
                    loop {
                        let Some(i) = rx.lock().await.recv().await else {
                            return;
                        };
                        let user = &users[i as usize % users.len()];
                        match post_run(&mut http, user, &body).await {
                            Ok((id, t0)) => drop(tracker.posted(&id, t0)),
                            Err(e) => sub.error(e),
                        }
                    }
                }));
            }
            let start = Instant::now();
            for i in 0..args.runs {
                let due = start + Duration::from_secs_f64(i as f64 / r);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                if tx.send(i).await.is_err() {
                    break;
                }
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let wait_until = Instant::now() + drain;
    while tracker.totals().unfinished > 0 && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_after = procfs::sample(&args.pid);
    let own_after = procfs::sample(&[std::process::id()]);
    for l in &listeners {
        l.abort();
    }

    let totals = tracker.totals();
    let elapsed_s = match totals.first_post_us {
        Some(f) if totals.last_done_us > f => (totals.last_done_us - f) as f64 / 1e6,
        _ => 0.0,
    };
    let node_rate = per_sec(totals.node_completions, elapsed_s);
    let ceiling = if args.ceiling_secs > 0.0 {
        log::info!(
            "measuring the Redis ceiling for {:.1} s on {}",
            args.ceiling_secs,
            args.redis_url
        );
        Some(ceiling::measure(&args.redis_url, args.ceiling_secs, args.history_max).await?)
    } else {
        None
    };
    let report = Report {
        bench: "runs",
        label: args.label.clone(),
        api: args.api.clone(),
        tag,
        nodes_per_run,
        users: args.users,
        mode,
        totals,
        submit_errors: sub.errors.load(Ordering::Relaxed),
        submit_error: sub
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        elapsed_s,
        runs_per_s: per_sec(totals.completed + totals.failed, elapsed_s),
        node_completions_per_s: node_rate,
        events_per_s: per_sec(totals.events, elapsed_s),
        items: tracker.items.load(Ordering::Relaxed),
        items_per_s: per_sec(tracker.items.load(Ordering::Relaxed), elapsed_s),
        child_runs: tracker.child_runs.load(Ordering::Relaxed),
        child_runs_per_s: per_sec(tracker.child_runs.load(Ordering::Relaxed), elapsed_s),
        post_to_started_us: tracker.to_started.summary(),
        post_to_completed_us: tracker.to_completed.summary(),
        ratio_to_ceiling: ceiling
            .as_ref()
            .filter(|c| c.commits_per_s > 0.0)
            .map(|c| node_rate / c.commits_per_s),
        ceiling,
        server_cpu_s: match (server_before, server_after) {
            (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
            _ => None,
        },
        bench_cpu_s: match (own_before, own_after) {
            (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
            _ => 0.0,
        },
    };
    emit(&table(&report), &report)
}

fn table(r: &Report) -> Table {
    let mut t = Table::new(format!(
        "flowcast bench runs {} — {} on {} ({}, {} users)",
        r.label, r.tag, r.api, r.mode, r.users
    ));
    let s = &r.totals;
    t.row(
        "runs",
        format!(
            "{} posted, {} started, {} completed, {} failed, {} unfinished, {} submit errors{}",
            thousands(s.posted),
            thousands(s.started),
            thousands(s.completed),
            thousands(s.failed),
            thousands(s.unfinished),
            r.submit_errors,
            r.submit_error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        ),
    );
    t.row(
        "throughput",
        format!(
            "{} runs, {} node completions, {} events over {:.2} s",
            rate(r.runs_per_s),
            rate(r.node_completions_per_s),
            rate(r.events_per_s),
            r.elapsed_s
        ),
    );
    if r.items > 0 || r.child_runs > 0 {
        t.row(
            "foreach",
            format!(
                "{} items ({}), {} child runs completed ({})",
                thousands(r.items),
                rate(r.items_per_s),
                thousands(r.child_runs),
                rate(r.child_runs_per_s)
            ),
        );
    }
    t.latency("POST → workflow_started", &r.post_to_started_us);
    t.latency("POST → workflow_completed", &r.post_to_completed_us);
    if let Some(c) = &r.ceiling {
        t.row(
            "Redis ceiling",
            format!(
                "{} commits (COMMIT_LUA, pipelines of {}) over {:.1} s, {} rejected",
                rate(c.commits_per_s),
                c.batch,
                c.secs,
                c.rejected
            ),
        );
    }
    if let Some(x) = r.ratio_to_ceiling {
        t.row("node completions / ceiling", format!("{:.1} %", x * 100.0));
    }
    if let Some(c) = r.server_cpu_s {
        t.row("server CPU", format!("{c:.2} s"));
    }
    t.row("bench CPU", format!("{:.2} s", r.bench_cpu_s));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wide_workflow_is_start_fan_end() {
        let w = wide_workflow(3, None);
        assert_eq!(w["tag"], "bench-wide-3");
        let nodes = w["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[0]["kind"], "delay");
        assert!(nodes[0].get("depends_on").is_none());
        assert_eq!(nodes[2]["depends_on"], json!(["start"]));
        assert_eq!(nodes[4]["depends_on"], json!(["w0", "w1", "w2"]));
        let wf: flowcast_actors::workflow::Workflow = serde_json::from_value(w).unwrap();
        assert!(wf.compile(10_000).is_ok());

        let t = wide_workflow(2, Some("[range(10)] | add"));
        assert_eq!(t["tag"], "bench-wide-2-transform");
        let nodes = t["nodes"].as_array().unwrap();
        assert!(nodes.iter().all(|n| n["kind"] == "transform"));
        assert_eq!(nodes[3]["filter"], "[range(10)] | add");
        let wf: flowcast_actors::workflow::Workflow = serde_json::from_value(t).unwrap();
        assert!(wf.compile(10_000).is_ok());
    }

    #[test]
    fn the_foreach_workflows_compile_and_match_the_wide_shape() {
        for children in [false, true] {
            let w = foreach_workflow(1000, 64, children);
            let nodes = w["nodes"].as_array().unwrap();
            assert_eq!(nodes.len(), 3);
            assert_eq!(nodes[1]["foreach"], "[range(1000)]");
            assert_eq!(nodes[1]["concurrency"], 64);
            let wf = flowcast_actors::workflow::Workflow::from_json(w).unwrap();
            assert!(wf.compile(10_000).is_ok());
        }
        let c = flowcast_actors::workflow::Workflow::from_json(child_workflow()).unwrap();
        assert!(c.compile(10).is_ok());
    }

    #[test]
    fn items_and_child_runs_are_counted_apart_from_the_posted_runs() {
        let t = Tracker::default();
        t.posted("p", 1_000);
        for (i, e) in [
            r#"{"type":"node_progress","run_id":"p","done":0,"total":2}"#,
            r#"{"type":"node_progress","run_id":"p","done":1,"total":2}"#,
            r#"{"type":"workflow_started","run_id":"c","parent_run_id":"p"}"#,
            r#"{"type":"workflow_completed","run_id":"c","parent_run_id":"p"}"#,
            r#"{"type":"node_progress","run_id":"p","done":2,"total":2}"#,
            r#"{"type":"workflow_completed","run_id":"p"}"#,
        ]
        .into_iter()
        .enumerate()
        {
            t.event(e, 1_100 + i as u64 * 100);
        }
        assert_eq!(t.items.load(Ordering::Relaxed), 2);
        assert_eq!(t.child_runs.load(Ordering::Relaxed), 1);
        let s = t.totals();
        assert_eq!((s.posted, s.completed, s.events), (1, 1, 4));
    }

    #[test]
    fn latencies_count_from_the_post_even_when_events_come_first() {
        let t = Tracker::default();
        // Run a: events arrive before the POST's answer.
        t.event(r#"{"type":"workflow_started","run_id":"a"}"#, 1_100);
        t.event(r#"{"type":"node_completed","run_id":"a"}"#, 1_200);
        t.event(r#"{"type":"workflow_completed","run_id":"a"}"#, 1_300);
        let mut done = t.posted("a", 1_000);
        assert!(done.try_recv().is_ok());
        // Run b: the usual order.
        let mut done_b = t.posted("b", 2_000);
        t.event(r#"{"type":"workflow_started","run_id":"b"}"#, 2_500);
        assert!(done_b.try_recv().is_err());
        t.event(r#"{"type":"workflow_failed","run_id":"b"}"#, 2_900);
        assert!(done_b.try_recv().is_ok());
        // A run of someone else, and noise.
        t.event(r#"{"type":"node_completed","run_id":"zzz"}"#, 3_000);
        t.event("not json", 3_000);
        let s = t.totals();
        assert_eq!((s.posted, s.started, s.completed, s.failed), (2, 2, 1, 1));
        assert_eq!((s.node_completions, s.events, s.unfinished), (1, 5, 0));
        assert_eq!(s.first_post_us, Some(1_000));
        assert_eq!(s.last_done_us, 2_900);
        let st = t.to_started.summary();
        assert_eq!((st.count, st.p50, st.max), (2, 100, 500));
        let c = t.to_completed.summary();
        assert_eq!((c.count, c.max), (1, 300));
        assert_eq!(t.frames.load(Ordering::Relaxed), 7);
    }
}
