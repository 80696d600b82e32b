//! `flowcast bench fanout`: N WebSocket connections (or SSE streams, with
//! an `http://` URL such as `http://127.0.0.1:8084/events?username={user}`)
//! over U users, messages published to the server's source, every receipt
//! accounted for.
//!
//! Phases: connect (at the connect rate, from rotating loopback source
//! addresses), settle (let the server subscribe), publish (rate or closed
//! loop, see [`publish`](super::publish)), drain (until every expected
//! delivery arrived or the drain time is up), report. With `--rate 0` the
//! connections are held idle for the duration instead, to measure memory
//! per connection. The same run works against any server with a per-user
//! WebSocket URL and a Redis channel or HTTP publish URL (nchan).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::conn::{error_kind, subscribe, Received};
use super::ledger::{Counts, Ledger, Seen};
use super::procfs::{self, Sample};
use super::publish::{self, Mode, Plan, Target};
use super::report::{emit, rate, thousands, Table};
use super::stamp::{now_us, Stamp};
use super::stats::{per_sec, Histogram, Summary};
use super::template::{check_prefix, source_addrs, user_name, user_of, Template};
use crate::cli::FanoutArgs;

/// Longest run accepted (a bound, so that a typo cannot load the machine for hours).
const MAX_DURATION_S: f64 = 600.0;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// State shared by the connection tasks.
struct Shared {
    bench_id: String,
    ledger: Arc<Ledger>,
    latency: Histogram,
    connect_latency: Histogram,
    live: Arc<Vec<AtomicU64>>,
    established: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    dropped: AtomicU64,
    drops: Mutex<BTreeMap<String, u64>>,
    last_delivery_us: AtomicU64,
    stopping: AtomicBool,
}

impl Shared {
    fn count(map: &Mutex<BTreeMap<String, u64>>, kind: String) {
        *map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    /// Accounts one received text frame on a connection of user `user`.
    fn receive(&self, text: &str, user: usize, seen: &mut Seen) {
        let now = now_us();
        let Some(s) = Stamp::parse(text) else {
            self.ledger.garbled();
            return;
        };
        if s.bench != self.bench_id {
            self.ledger.foreign();
            return;
        }
        if s.u != user {
            self.ledger.misrouted();
            return;
        }
        let Some(new) = seen.insert(s.seq) else {
            self.ledger.garbled();
            return;
        };
        if new {
            self.latency.record(now.saturating_sub(s.ts_us));
            self.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        }
        self.ledger.received(s.g, new);
    }
}

/// Server-side resources, when `--pid` was given.
#[derive(Debug, Serialize)]
struct Server {
    rss_before_kib: u64,
    rss_connected_kib: u64,
    rss_after_kib: u64,
    /// (connected − before) / established.
    rss_per_conn_bytes: f64,
    pss_before_kib: u64,
    pss_connected_kib: u64,
    /// (connected − before) / established, PSS (shared pages counted once).
    pss_per_conn_bytes: f64,
    /// CPU seconds the server used while publishing and draining.
    cpu_s: f64,
    /// Server CPU per delivery, µs.
    cpu_us_per_delivery: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    label: String,
    url: String,
    source: String,
    mode: Option<Mode>,
    users: usize,
    connections: usize,
    shard: String,
    established: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    dropped: u64,
    drops: BTreeMap<String, u64>,
    connect_s: f64,
    connect_latency_us: Summary,
    payload_bytes: usize,
    published: u64,
    publish_errors: u64,
    publish_error: Option<String>,
    retired: u64,
    publish_s: f64,
    published_per_s: f64,
    #[serde(flatten)]
    counts: Counts,
    deliveries_per_s: f64,
    latency_us: Summary,
    server: Option<Server>,
    bench_cpu_s: f64,
}

fn check(args: &FanoutArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.connections == 0 {
        bail!("--users and --connections must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        bail!("--duration must be in (0, {MAX_DURATION_S}] seconds");
    }
    if args.connect_rate <= 0.0 || args.connect_concurrency == 0 {
        bail!("--connect-rate and --connect-concurrency must be positive");
    }
    if let Some(r) = args.rate {
        if !(r >= 0.0 && r.is_finite()) {
            bail!("--rate must be 0 (idle) or positive");
        }
    }
    if args.rate.is_none() && args.window == 0 {
        bail!("--window must be at least 1");
    }
    if args.pub_conns == 0 {
        bail!("--pub-conns must be at least 1");
    }
    check_prefix(&args.user_prefix)?;
    super::template::loopback_target(&args.url)?;
    Ok(())
}

/// Opens this shard's connections; returns their tasks once every attempt
/// finished (connected or failed).
async fn open_all(
    args: &FanoutArgs,
    url: &Template,
    users: &[String],
    shared: &Arc<Shared>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let sources = source_addrs(args.source_ips);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for (k, conn) in args.shard.connections(args.connections).enumerate() {
        let due = started + Duration::from_secs_f64(k as f64 / args.connect_rate);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let user = user_of(conn, args.users);
        let target = url.fill(&users[user]);
        let source = (!sources.is_empty()).then(|| sources[conn % sources.len()]);
        let (shared, done) = (shared.clone(), done_tx.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let feed = subscribe(&target, source, CONNECT_TIMEOUT).await;
            drop(permit);
            let mut feed = match feed {
                Ok(f) => f,
                Err(e) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    Shared::count(&shared.failures, error_kind(&e));
                    let _ = done.send(());
                    return;
                }
            };
            shared
                .connect_latency
                .record(t0.elapsed().as_micros() as u64);
            shared.live[user].fetch_add(1, Ordering::Relaxed);
            shared.established.fetch_add(1, Ordering::Relaxed);
            let _ = done.send(());
            drop(done);
            let mut seen = Seen::default();
            let why = loop {
                match feed.recv().await {
                    Received::Text(t) => match std::str::from_utf8(&t) {
                        Ok(t) => shared.receive(t, user, &mut seen),
                        Err(_) => shared.ledger.garbled(),
                    },
                    Received::Garbled => shared.ledger.garbled(),
                    Received::End(why) => break why,
                }
            };
            shared.live[user].fetch_sub(1, Ordering::Relaxed);
            if !shared.stopping.load(Ordering::Relaxed) {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                Shared::count(&shared.drops, why);
            }
        }));
    }
    drop(done_tx);
    for _ in 0..tasks.len() {
        if done_rx.recv().await.is_none() {
            break;
        }
    }
    tasks
}

/// Runs the fan-out bench.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    check(&args)?;
    let url = Template::new(&args.url, args.users > 1)?;
    let users: Vec<String> = (0..args.users)
        .map(|i| user_name(&args.user_prefix, i))
        .collect();
    let mine = args.shard.connections(args.connections).count();
    super::check_fd_budget(mine + args.pub_conns + 16)?;
    let mode = match args.rate {
        Some(r) if r <= 0.0 => None,
        Some(r) => Some(Mode::Rate(r)),
        None => Some(Mode::ClosedLoop(args.window)),
    };
    let window = match mode {
        Some(Mode::ClosedLoop(w)) => w,
        _ => 0,
    };
    let bench_id = super::bench_id();
    let shared = Arc::new(Shared {
        bench_id: bench_id.clone(),
        ledger: Arc::new(Ledger::new(window)),
        latency: Histogram::new(),
        connect_latency: Histogram::new(),
        live: Arc::new((0..args.users).map(|_| AtomicU64::new(0)).collect()),
        established: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        failures: Mutex::default(),
        dropped: AtomicU64::new(0),
        drops: Mutex::default(),
        last_delivery_us: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    });
    let target = match &args.pub_url {
        Some(u) => {
            super::template::loopback_target(u)?;
            Target::Http(Template::new(u, true)?)
        }
        None => Target::Redis {
            url: args.redis_url.clone(),
            channel: Template::new(&args.channel, true)?,
        },
    };
    let source = match &args.pub_url {
        Some(u) => format!("POST {u}"),
        None => format!("PUBLISH {} on {}", args.channel, args.redis_url),
    };

    let before = procfs::sample(&args.pid);
    let own_before = procfs::sample(&[std::process::id()]);
    log::info!(
        "bench {bench_id}: opening {mine} connections to {} over {} users",
        args.url,
        args.users
    );
    let t_connect = Instant::now();
    let tasks = open_all(&args, &url, &users, &shared).await;
    let connect_s = t_connect.elapsed().as_secs_f64();
    let established = shared.established.load(Ordering::Relaxed);
    log::info!(
        "{established} connected, {} failed in {connect_s:.1} s",
        shared.failed.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let connected = procfs::sample(&args.pid);

    let duration = Duration::from_secs_f64(args.duration);
    let outcome = match mode {
        None => {
            log::info!("holding idle connections for {duration:?}");
            tokio::time::sleep(duration).await;
            publish::Outcome::default()
        }
        Some(mode) => {
            let plan = Plan {
                mode,
                duration,
                max_messages: args.max_messages,
                payload_bytes: args.payload_bytes,
                users: users.clone(),
                workers: args.pub_conns,
                stall: Duration::from_millis(args.stall_ms),
                bench_id: bench_id.clone(),
            };
            log::info!("publishing ({mode:?}) for {duration:?} via {source}");
            let out =
                publish::run(&target, &plan, shared.live.clone(), shared.ledger.clone()).await?;
            let deadline = Instant::now() + Duration::from_millis(args.drain_ms);
            while !shared.ledger.settled() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out
        }
    };
    let after = procfs::sample(&args.pid);
    let own_after = procfs::sample(&[std::process::id()]);
    shared.stopping.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }

    let counts = shared.ledger.counts();
    let last = shared.last_delivery_us.load(Ordering::Relaxed);
    let delivery_s = if last > outcome.started_us && outcome.started_us > 0 {
        (last - outcome.started_us) as f64 / 1e6
    } else {
        0.0
    };
    let server = match (before, connected, after) {
        (Some(b), Some(c), Some(a)) => Some(server_figures(b, c, a, established, &counts)),
        _ => None,
    };
    let report = Report {
        bench: "fanout",
        label: args.label.clone(),
        url: args.url.clone(),
        source,
        mode,
        users: args.users,
        connections: mine,
        shard: format!("{}/{}", args.shard.index, args.shard.count),
        established,
        failed: shared.failed.load(Ordering::Relaxed),
        failures: shared
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        dropped: shared.dropped.load(Ordering::Relaxed),
        drops: shared
            .drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        connect_s,
        connect_latency_us: shared.connect_latency.summary(),
        payload_bytes: args.payload_bytes,
        published: outcome.published,
        publish_errors: outcome.errors,
        publish_error: outcome.first_error.clone(),
        retired: outcome.retired,
        publish_s: outcome.elapsed_s,
        published_per_s: per_sec(outcome.published, outcome.elapsed_s),
        counts,
        deliveries_per_s: per_sec(counts.delivered, delivery_s),
        latency_us: shared.latency.summary(),
        server,
        bench_cpu_s: match (own_before, own_after) {
            (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
            _ => 0.0,
        },
    };
    emit(&table(&report), &report)
}

fn server_figures(b: Sample, c: Sample, a: Sample, established: u64, counts: &Counts) -> Server {
    let cpu_s = a.cpu_s - c.cpu_s;
    let per_conn = |before: u64, connected: u64| {
        if established == 0 {
            0.0
        } else {
            (connected as f64 - before as f64) * 1024.0 / established as f64
        }
    };
    Server {
        rss_before_kib: b.rss_kib,
        rss_connected_kib: c.rss_kib,
        rss_after_kib: a.rss_kib,
        rss_per_conn_bytes: per_conn(b.rss_kib, c.rss_kib),
        pss_before_kib: b.pss_kib,
        pss_connected_kib: c.pss_kib,
        pss_per_conn_bytes: per_conn(b.pss_kib, c.pss_kib),
        cpu_s,
        cpu_us_per_delivery: if counts.delivered == 0 {
            0.0
        } else {
            cpu_s * 1e6 / counts.delivered as f64
        },
    }
}

fn table(r: &Report) -> Table {
    let mut t = Table::new(format!(
        "flowcast bench fanout {} — {} ({} users, shard {})",
        r.label, r.url, r.users, r.shard
    ));
    t.row(
        "connections",
        format!(
            "{} established, {} failed of {} in {:.1} s{}",
            thousands(r.established),
            thousands(r.failed),
            thousands(r.connections as u64),
            r.connect_s,
            if r.failures.is_empty() {
                String::new()
            } else {
                format!(" {:?}", r.failures)
            }
        ),
    );
    t.latency("connect latency", &r.connect_latency_us);
    if r.dropped > 0 {
        t.row(
            "dropped by server",
            format!("{} {:?}", thousands(r.dropped), r.drops),
        );
    }
    if let Some(mode) = r.mode {
        let m = match mode {
            Mode::Rate(x) => format!("rate {}", rate(x)),
            Mode::ClosedLoop(w) => format!("closed loop, window {w}"),
        };
        t.row("publisher", format!("{m} — {}", r.source));
        t.row(
            "published",
            format!(
                "{} in {:.1} s ({}), {} errors{}",
                thousands(r.published),
                r.publish_s,
                rate(r.published_per_s),
                r.publish_errors,
                r.publish_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" ({e})"))
            ),
        );
        let c = &r.counts;
        t.row(
            "deliveries",
            format!(
                "{} of {} expected, lost {}, duplicates {}, misrouted {}, foreign {}, garbled {}",
                thousands(c.delivered),
                thousands(c.expected),
                c.lost,
                c.duplicates,
                c.misrouted,
                c.foreign,
                c.garbled
            ),
        );
        t.row("deliveries/s", rate(r.deliveries_per_s));
        t.latency("latency", &r.latency_us);
    }
    if let Some(s) = &r.server {
        t.row(
            "server RSS",
            format!(
                "{} KiB before, {} KiB connected, {} KiB after: {:.0} B per connection",
                thousands(s.rss_before_kib),
                thousands(s.rss_connected_kib),
                thousands(s.rss_after_kib),
                s.rss_per_conn_bytes
            ),
        );
        t.row(
            "server PSS",
            format!(
                "{} KiB before, {} KiB connected: {:.0} B per connection",
                thousands(s.pss_before_kib),
                thousands(s.pss_connected_kib),
                s.pss_per_conn_bytes
            ),
        );
        if r.mode.is_some() {
            t.row(
                "server CPU",
                format!(
                    "{:.2} s while publishing ({:.2} µs per delivery)",
                    s.cpu_s, s.cpu_us_per_delivery
                ),
            );
        }
    }
    t.row("bench CPU", format!("{:.2} s", r.bench_cpu_s));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(window: usize) -> Shared {
        Shared {
            bench_id: "me".into(),
            ledger: Arc::new(Ledger::new(window)),
            latency: Histogram::new(),
            connect_latency: Histogram::new(),
            live: Arc::new(vec![AtomicU64::new(1), AtomicU64::new(1)]),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failures: Mutex::default(),
            dropped: AtomicU64::new(0),
            drops: Mutex::default(),
            last_delivery_us: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    fn msg(bench: &str, u: usize, seq: u64, g: u64) -> String {
        let mut s = String::new();
        Stamp {
            bench,
            u,
            seq,
            g,
            ts_us: now_us(),
        }
        .write(0, &mut s);
        s
    }

    #[test]
    fn receipts_are_classified() {
        let sh = shared(4);
        sh.ledger.published(0, 1);
        sh.ledger.published(1, 1);
        let mut seen = Seen::default();
        sh.receive(&msg("me", 0, 0, 0), 0, &mut seen);
        sh.receive(&msg("me", 0, 0, 0), 0, &mut seen); // duplicate
        sh.receive(&msg("me", 1, 0, 1), 0, &mut seen); // another user's
        sh.receive(&msg("other", 0, 1, 5), 0, &mut seen);
        sh.receive("{\"type\":\"ping\"}", 0, &mut seen);
        let c = sh.ledger.counts();
        assert_eq!(
            (c.expected, c.delivered, c.lost, c.duplicates),
            (2, 1, 1, 1)
        );
        assert_eq!((c.misrouted, c.foreign, c.garbled), (1, 1, 1));
        assert_eq!(sh.latency.count(), 1);
        assert_eq!(sh.ledger.in_flight(2), 1);
        assert!(sh.last_delivery_us.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn server_memory_per_connection() {
        let s = |rss_kib, cpu_s| Sample {
            rss_kib,
            pss_kib: rss_kib / 2,
            cpu_s,
        };
        let counts = Counts {
            delivered: 1_000_000,
            ..Counts::default()
        };
        let f = server_figures(
            s(10_000, 1.0),
            s(20_000, 2.0),
            s(21_000, 4.0),
            1000,
            &counts,
        );
        assert_eq!(f.rss_per_conn_bytes, 10_240.0);
        assert_eq!(f.pss_per_conn_bytes, 5_120.0);
        assert_eq!(f.cpu_s, 2.0);
        assert_eq!(f.cpu_us_per_delivery, 2.0);
    }
}
