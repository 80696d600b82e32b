//! `flowcast bench replay`: the server's memory while many clients replay a
//! long history at the pace they read.
//!
//! Phases: fill (append `--events` padded events to one bench user's
//! history stream, as the commit script stores them, without publishing
//! them), connect (`--connections` WebSockets resuming from the start,
//! `last_event_id=0`), read (each connection reads slowly: a pause of
//! `--read-pause-ms` every `--read-batch` events, and checks that it gets
//! every event exactly once, in order), report. Meanwhile the server's RSS
//! (`--pid`) is sampled every few milliseconds; the report gives its peak
//! against the size of the history, which a server that read the whole
//! history into memory for each client would need once per connection.
//! The bench user's history is deleted at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flowcast_actors::store::keys;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::conn::{connect, error_kind};
use super::procfs::{self, Sample};
use super::report::{emit, rate, thousands, Table};
use super::template::{check_prefix, loopback_target, Template};
use crate::cli::ReplayArgs;

/// How often the server's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// History entries appended per pipeline.
const FILL_BATCH: u64 = 100;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What one connection saw.
#[derive(Debug, Default)]
struct Seen {
    events: u64,
    out_of_order: u64,
    bytes: u64,
    end: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Server {
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
    /// (peak − before) / connections.
    rss_peak_per_conn_kib: f64,
    cpu_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    label: String,
    url: String,
    events: u64,
    pad_bytes: usize,
    history_bytes: u64,
    connections: usize,
    connected: usize,
    /// Connections that received every event once, in order.
    complete: usize,
    failures: Vec<String>,
    events_received: u64,
    out_of_order: u64,
    replay_s: f64,
    events_per_s: f64,
    server: Option<Server>,
}

fn check(args: &ReplayArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.connections == 0 {
        bail!("--events and --connections must be at least 1");
    }
    if args.read_batch == 0 {
        bail!("--read-batch must be at least 1");
    }
    check_prefix(&args.user_prefix)?;
    loopback_target(&args.url)?;
    loopback_target(&args.redis_url)?;
    Ok(())
}

/// Appends the events to `user`'s history; returns the history's size in bytes.
async fn fill(
    conn: &mut redis::aio::MultiplexedConnection,
    user: &str,
    run_id: &str,
    args: &ReplayArgs,
) -> anyhow::Result<u64> {
    let pad = "x".repeat(args.pad_bytes);
    let mut bytes = 0;
    let mut seq = 0;
    while seq < args.events {
        let mut pipe = redis::pipe();
        for _ in 0..FILL_BATCH.min(args.events - seq) {
            seq += 1;
            let e = serde_json::json!({
                "type": "node_completed", "run_id": run_id, "seq": seq, "pad": pad,
            })
            .to_string();
            bytes += e.len() as u64;
            pipe.cmd("XADD")
                .arg(keys::history(user))
                .arg("*")
                .arg(keys::HISTORY_FIELD)
                .arg(e)
                .ignore();
        }
        pipe.query_async::<()>(conn)
            .await
            .context("appending to the history")?;
    }
    Ok(bytes)
}

/// Reads one connection to the end of the history, slowly.
async fn read(url: String, args: Arc<ReplayArgs>) -> Seen {
    let mut seen = Seen::default();
    let mut ws = match connect(&url, None, CONNECT_TIMEOUT).await {
        Ok(ws) => ws,
        Err(e) => {
            seen.end = Some(format!("connect: {}", error_kind(&e)));
            return seen;
        }
    };
    let pause = Duration::from_millis(args.read_pause_ms);
    while seen.events < args.events {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                seen.end = Some(c.map_or("close".into(), |c| format!("close {}", c.code)));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                seen.end = Some(error_kind(&e.into()));
                break;
            }
            None => {
                seen.end = Some("eof".into());
                break;
            }
        };
        seen.bytes += text.len() as u64;
        let seq = serde_json::from_str::<Value>(text.as_str())
            .ok()
            .and_then(|v| v["seq"].as_u64());
        seen.events += 1;
        if seq != Some(seen.events) {
            seen.out_of_order += 1;
        }
        if seen.events.is_multiple_of(args.read_batch) && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let _ = ws.close(None).await;
    seen
}

/// Runs the replay bench.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    check(&args)?;
    let url = Template::new(&args.url, true)?;
    super::check_fd_budget(args.connections + 16)?;
    let bench = super::bench_id();
    let user = format!("{}{bench}", args.user_prefix);
    let run_id = format!("bench-replay-{bench}");
    let client = redis::Client::open(args.redis_url.as_str())
        .with_context(|| format!("{:?} is not a Redis URL", args.redis_url))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {}", args.redis_url))?;
    log::info!(
        "bench {bench}: filling {user}'s history with {} events",
        args.events
    );
    let history_bytes = fill(&mut conn, &user, &run_id, &args).await?;

    let before = procfs::sample(&args.pid);
    let peak = Arc::new(AtomicU64::new(before.map_or(0, |s| s.rss_kib)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pids) = (peak.clone(), stop.clone(), args.pid.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = procfs::sample(&pids) {
                    peak.fetch_max(s.rss_kib, Ordering::Relaxed);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    log::info!(
        "opening {} connections resuming from the start of the history",
        args.connections
    );
    let args = Arc::new(args);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(read(url.fill(&user), args.clone())))
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.context("a reader task")?);
    }
    let replay_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let after = procfs::sample(&args.pid);
    redis::cmd("DEL")
        .arg(keys::history(&user))
        .query_async::<()>(&mut conn)
        .await?;

    let received: u64 = seen.iter().map(|s| s.events).sum();
    let report = Report {
        bench: "replay",
        label: args.label.clone(),
        url: args.url.clone(),
        events: args.events,
        pad_bytes: args.pad_bytes,
        history_bytes,
        connections: args.connections,
        connected: seen
            .iter()
            .filter(|s| !s.end.as_deref().is_some_and(|e| e.starts_with("connect")))
            .count(),
        complete: seen
            .iter()
            .filter(|s| s.events == args.events && s.out_of_order == 0)
            .count(),
        failures: seen.iter().filter_map(|s| s.end.clone()).collect(),
        events_received: received,
        out_of_order: seen.iter().map(|s| s.out_of_order).sum(),
        replay_s,
        events_per_s: super::stats::per_sec(received, replay_s),
        server: server(before, peak.load(Ordering::Relaxed), after, &args),
    };
    emit(&table(&report), &report)
}

fn server(
    before: Option<Sample>,
    peak_kib: u64,
    after: Option<Sample>,
    args: &ReplayArgs,
) -> Option<Server> {
    let (before, after) = (before?, after?);
    Some(Server {
        rss_before_kib: before.rss_kib,
        rss_peak_kib: peak_kib,
        rss_after_kib: after.rss_kib,
        rss_peak_per_conn_kib: peak_kib.saturating_sub(before.rss_kib) as f64
            / args.connections as f64,
        cpu_s: after.cpu_s - before.cpu_s,
    })
}

fn table(r: &Report) -> Table {
    let mut t = Table::new(format!("flowcast bench replay {}", r.label));
    t.row(
        "history",
        format!(
            "{} events, {} KiB",
            thousands(r.events),
            r.history_bytes / 1024
        ),
    )
    .row(
        "connections",
        format!("{} of {} connected", r.connected, r.connections),
    )
    .row(
        "complete",
        format!(
            "{} received every event once, in order ({} out of order)",
            r.complete, r.out_of_order
        ),
    )
    .row(
        "replay",
        format!("{:.1} s, {}", r.replay_s, rate(r.events_per_s)),
    );
    if !r.failures.is_empty() {
        t.row("ended early", r.failures.join(", "));
    }
    if let Some(s) = &r.server {
        t.row(
            "server RSS",
            format!(
                "{} KiB before, {} KiB peak, {} KiB after",
                thousands(s.rss_before_kib),
                thousands(s.rss_peak_kib),
                thousands(s.rss_after_kib)
            ),
        )
        .row(
            "peak per connection",
            format!(
                "{:.0} KiB (the whole history is {} KiB)",
                s.rss_peak_per_conn_kib,
                r.history_bytes / 1024
            ),
        )
        .row("server CPU", format!("{:.2} s", s.cpu_s));
    }
    t
}
