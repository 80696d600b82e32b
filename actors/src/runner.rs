//! The runner: turns queued run requests into run actors, and resumes runs
//! that lost their runner.
//!
//! Run requests sit in the `flowcast:runs:requests` stream, read by the
//! `runners` consumer group, so several runner instances share the work and
//! a request is acknowledged only by the commit that initialises its run (IR
//! stored, counter set, entry tokens emitted, `workflow_started` published).
//! On start (and after a failed read, whose lost reply may have delivered
//! entries) a runner first re-reads its own unacknowledged requests; it also
//! claims requests left pending by dead consumers (XAUTOCLAIM) once they have
//! been idle for a lease, the time after which a dead runner's runs are
//! resumed too.
//!
//! Each live run is held under a lease (`flowcast:run:{id}:owner`), renewed
//! by every commit and by a periodic sweep. Runs in `flowcast:runs:active`
//! whose lease has lapsed (their runner died) are claimed and resumed: the run
//! actor is rebuilt from Redis and its active nodes run again. A run's status
//! guard makes initialising one run twice impossible.
//!
//! A lease names this process, not just its instance (`store::leases`
//! explains why and how): runs leased by an earlier process of the same
//! instance are taken over at once when the sweep sees that process gone
//! (its presence connection closed), and never while it lives. A claim may
//! answer that the run has been resumed too often without progress; its run
//! actor then fails it instead of running it again (a crash loop broken).
//!
//! The Runner and every run actor live on one arbiter (thread) of their own,
//! apart from the Publisher's and the fan-out's: node execution is shared
//! among users by [`Shares`] (round-robin permits per user), and whatever a
//! run does never delays the delivery of events.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::child::ChildWatch;
use crate::counter::{NodeStatus, RunStatus};
use crate::egress::EgressPolicy;
use crate::error::Result;
use crate::event::{Event, EventBody};
use crate::fair::Shares;
use crate::http_node::HttpClient;
use crate::jq;
use crate::metrics::Metrics;
use crate::publisher::{self, Publisher};
use crate::run::{self, Cancel, ResumedItems, RunActor, RunEnv, RunSetup, RunStopped};
use crate::store::leases::{self, Claim, Held, Holder, Presence};
use crate::store::requests::{self, Request};
use crate::store::runs::RunQuota;
use crate::store::{runs, Commit, NodeRecord, Outcome, RunRecord};
use crate::workflow::Dag;

mod outside;
pub use outside::WaitsChanged;

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This process: its instance's name (`--instance-id`, the consumer
    /// name; stable across restarts of the same instance, distinct between
    /// instances) and its own nonce (leases name both).
    pub holder: Holder,
    /// How long a run's lease lasts without renewal.
    pub lease: Duration,
    /// Largest workflow accepted.
    pub max_nodes: usize,
    /// Requests read per XREADGROUP.
    pub read_batch: usize,
    /// Where `http` nodes may connect (`--http-allow`).
    pub egress: EgressPolicy,
    /// Largest node output (canonical JSON bytes); also the largest a
    /// filter may return and the most of an http body that is read.
    pub max_output_bytes: usize,
    /// How to start a sandboxed jq evaluator (`flowcast jq-worker`).
    pub jq_worker: jq::WorkerCommand,
    /// jq evaluations at once.
    pub jq_slots: usize,
    /// Permits for CPU work of nodes (transforms), shared fairly among users.
    pub compute_permits: usize,
    /// Permits for http requests, shared fairly among users.
    pub io_permits: usize,
    /// Most items a `foreach` may yield (`--max-foreach-items`).
    pub max_foreach_items: usize,
    /// How deeply child runs may nest (`--max-child-depth`).
    pub max_child_depth: u32,
    /// The users' run quotas, which child runs count against
    /// (`--max-active-runs-per-user`).
    pub run_quota: RunQuota,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            holder: Holder::new("runner"),
            lease: Duration::from_secs(15),
            max_nodes: crate::workflow::DEFAULT_MAX_NODES,
            read_batch: 256,
            egress: EgressPolicy::default(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            jq_worker: jq::WorkerCommand::default(),
            jq_slots: jq::pool::DEFAULT_SLOTS,
            compute_permits: default_compute_permits(),
            io_permits: DEFAULT_IO_PERMITS,
            max_foreach_items: DEFAULT_MAX_FOREACH_ITEMS,
            max_child_depth: crate::workflow::DEFAULT_MAX_CHILD_DEPTH,
            run_quota: RunQuota::default(),
        }
    }
}

/// Default of [`RunnerConfig::compute_permits`]: one per core (at least 2).
/// Transforms are CPU work: more at once would only time-share the cores,
/// and a small run's node would get a thin slice of them behind a flood's;
/// the jq threads outnumber it, so requests queue fairly here rather than
/// first come first served there.
pub fn default_compute_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}
/// Default of [`RunnerConfig::io_permits`]: http requests in flight at once.
pub const DEFAULT_IO_PERMITS: usize = 256;

/// Default of [`RunnerConfig::max_foreach_items`] (`--max-foreach-items`).
pub const DEFAULT_MAX_FOREACH_ITEMS: usize = 10_000;

/// Default of [`RunnerConfig::max_output_bytes`] (`--max-output-bytes`).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// How long a read blocks waiting for requests.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// Retry delays after a failed read.
const READ_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
/// Requests claimed from dead consumers per sweep.
const CLAIM_BATCH: usize = 256;
/// The longest time between sweeps, whatever the lease: a dead predecessor's
/// runs are taken over at the next sweep, not when its leases lapse.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Cancel a run held by this runner; answers `None` if it holds no such run.
/// Requests made through other instances arrive on the process's one
/// control subscription (`outside::listen`); missed ones are found by the
/// sweep (the run's `cancel_requested` field).
#[derive(Message)]
#[rtype(result = "Option<bool>")]
pub struct CancelRun {
    /// The run.
    pub run_id: String,
}

/// Stop taking work, wait for live runs to end, let go of the rest (they
/// resume on the next start) and flush the Publisher, all within `grace`:
/// the answer comes by then even if Redis is unreachable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long the whole drain may take.
    pub grace: Duration,
}

/// Is the runner reading requests? (for `/readyz`)
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsReady;

/// The runner actor.
pub struct Runner {
    cfg: RunnerConfig,
    /// Commands (commits go through the Publisher).
    conn: ConnectionManager,
    /// A connection for blocking reads only.
    reader: ConnectionManager,
    publisher: Addr<Publisher>,
    metrics: Metrics,
    runs: HashMap<String, Addr<RunActor>>,
    http: Rc<HttpClient>,
    /// The sandboxed jq evaluators every run of this runner shares.
    jq: jq::Pool,
    /// Node execution, shared fairly among users.
    shares: Shares,
    /// This process's presence connection, kept open from `started`.
    presence: Option<Presence>,
    /// Parents waiting for child runs that end here.
    children: ChildWatch,
    /// Read our own pending entries (from `backlog_from`) before new ones (>).
    backlog_done: bool,
    /// Where the next read of our own pending entries starts.
    backlog_from: String,
    /// Runs whose request is being initialised (one attempt at a time).
    initialising: HashSet<String>,
    /// The drain has stopped the run actors: start no more.
    let_go: bool,
    read_backoff: Backoff,
    reading_ok: bool,
    /// Fired when the process starts to shut down: take no new work.
    shutdown: CancellationToken,
}

impl Runner {
    /// A runner using `conn` for reads and `reader` for blocking reads.
    pub fn new(
        cfg: RunnerConfig,
        conn: ConnectionManager,
        reader: ConnectionManager,
        publisher: Addr<Publisher>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let http = Rc::new(HttpClient::new(cfg.egress.clone(), cfg.max_output_bytes));
        let jq = jq::Pool::new(jq::PoolConfig {
            command: cfg.jq_worker.clone(),
            slots: cfg.jq_slots,
            max_output_bytes: cfg.max_output_bytes,
        });
        let shares = Shares::new(cfg.compute_permits, cfg.io_permits);
        Self {
            jq,
            cfg,
            shares,
            presence: None,
            children: ChildWatch::default(),
            conn,
            reader,
            publisher,
            metrics,
            runs: HashMap::new(),
            http,
            backlog_done: false,
            backlog_from: "0".into(),
            initialising: HashSet::new(),
            let_go: false,
            read_backoff: READ_BACKOFF,
            reading_ok: false,
            shutdown,
        }
    }

    /// Keeps this process's presence connection (announced before the
    /// runner starts, so before any lease is taken) open while it lives.
    pub fn with_presence(mut self, presence: Presence) -> Self {
        self.presence = Some(presence);
        self
    }

    fn read(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut conn = self.reader.clone();
        let consumer = self.cfg.holder.instance.clone();
        let backlog = !self.backlog_done;
        let from = if backlog {
            requests::From::Pending(self.backlog_from.clone())
        } else {
            requests::From::New(READ_BLOCK)
        };
        let count = self.cfg.read_batch;
        async move { requests::read(&mut conn, &consumer, &from, count).await }
            .into_actor(self)
            .map(move |r, act, ctx| match r {
                Ok(entries) => {
                    act.reading_ok = true;
                    act.read_backoff.reset();
                    if backlog {
                        // Pending entries come back until acknowledged: page
                        // through them instead of re-reading the same ones.
                        match entries.last() {
                            Some(e) => act.backlog_from = e.entry_id.clone(),
                            None => act.backlog_done = true,
                        }
                    }
                    if act.shutdown.is_cancelled() {
                        // Left pending: the next start, or another runner, takes them.
                        return;
                    }
                    for e in entries {
                        act.metrics
                            .run_queue_lag
                            .observe(requests::entry_age(&e.entry_id).as_secs_f64());
                        act.take(e, ctx);
                    }
                    act.read(ctx);
                }
                Err(e) => {
                    act.reading_ok = false;
                    // The lost reply may have delivered entries to us: re-read
                    // our own pending list first once reads work again.
                    act.backlog_done = false;
                    act.backlog_from = "0".into();
                    act.metrics
                        .redis_errors
                        .with_label_values(&["runner"])
                        .inc();
                    if requests::is_missing_group(&e) {
                        let mut conn = act.conn.clone();
                        actix::spawn(async move {
                            let _ = requests::ensure_group(&mut conn).await;
                        });
                    }
                    let wait = act.read_backoff.next_delay();
                    log::warn!("runner: reading run requests failed ({e}); retrying in {wait:?}");
                    ctx.run_later(wait, |act, ctx| act.read(ctx));
                }
            })
            .spawn(ctx);
    }

    /// Initialises a request's run, or drops a malformed request.
    fn take(&mut self, req: Request, ctx: &mut Context<Self>) {
        match req.run_id {
            Some(run_id) => self.init(req.entry_id, run_id, ctx),
            None => {
                let mut conn = self.conn.clone();
                actix::spawn(async move {
                    let _ = requests::ack(&mut conn, &req.entry_id).await;
                });
            }
        }
    }

    /// Initialises a queued run (or resumes one initialised before a crash).
    fn init(&mut self, entry_id: String, run_id: String, ctx: &mut Context<Self>) {
        if self.shutdown.is_cancelled() || !self.initialising.insert(run_id.clone()) {
            return;
        }
        let mut conn = self.conn.clone();
        let publisher = self.publisher.clone();
        let cfg = self.cfg.clone();
        let (jq, shares) = (self.jq.clone(), self.shares.clone());
        let retry = (entry_id.clone(), run_id.clone());
        async move {
            let exec = Exec {
                jq: &jq,
                shares: &shares,
            };
            initialise(&mut conn, &publisher, &cfg, exec, entry_id, run_id).await
        }
        .into_actor(self)
        .map(move |r, act, ctx| {
            act.initialising.remove(&retry.1);
            match r {
                Ok(Init::Started(setup)) => {
                    act.metrics.runs.with_label_values(&["started"]).inc();
                    act.spawn_run(*setup, ctx)
                }
                Ok(Init::Resume(rec)) => act.resume(*rec, None, ctx),
                Ok(Init::Nothing) => {}
                Err(e) => {
                    log::warn!("run {}: initialisation failed ({e}); retrying", retry.1);
                    ctx.run_later(Duration::from_millis(500), move |act, ctx| {
                        act.init(retry.0, retry.1, ctx)
                    });
                }
            }
        })
        .spawn(ctx);
    }

    fn spawn_run(&mut self, setup: RunSetup, ctx: &mut Context<Self>) {
        let run_id = setup.run_id.clone();
        if self.runs.contains_key(&run_id) || self.let_go {
            // Already live here; or the drain is over: the run is durable
            // and the next start resumes it.
            return;
        }
        if setup.state.status().is_terminal() {
            // Every node was skipped: the initialising commit ended it.
            self.metrics.runs.with_label_values(&["completed"]).inc();
            self.children.ended(&run_id);
            return;
        }
        let env = RunEnv {
            publisher: self.publisher.clone(),
            runner: ctx.address().recipient(),
            http: self.http.clone(),
            shares: self.shares.clone(),
            jq: self.jq.clone(),
            max_output_bytes: self.cfg.max_output_bytes,
            metrics: self.metrics.clone(),
            conn: self.conn.clone(),
            children: self.children.clone(),
            max_foreach_items: self.cfg.max_foreach_items,
            max_child_depth: self.cfg.max_child_depth,
            run_quota: self.cfg.run_quota,
        };
        let actor = RunActor::new(setup, env);
        self.runs.insert(run_id, actor.start());
    }

    /// Claims a run's lease (taking it from `gone`, a dead process's lease
    /// value, if given) and rebuilds its actor from Redis.
    fn resume(&mut self, rec: RunRecord, gone: Option<String>, ctx: &mut Context<Self>) {
        if rec.status.is_terminal()
            || self.runs.contains_key(&rec.run_id)
            || self.shutdown.is_cancelled()
        {
            return;
        }
        let mut conn = self.conn.clone();
        let cfg = self.cfg.clone();
        if let Some(g) = &gone {
            log::info!("run {}: taking it over from {g}, which is gone", rec.run_id);
        }
        async move { claim_and_load(&mut conn, &cfg, rec, gone.as_deref()).await }
            .into_actor(self)
            .map(|r, act, ctx| match r {
                Ok(Some(setup)) => {
                    if setup.break_crash_loop {
                        log::warn!(
                            "run {}: resumed {} times at seq {} without progress; failing it",
                            setup.run_id,
                            leases::MAX_RESUMES_WITHOUT_PROGRESS,
                            setup.seq
                        );
                    } else {
                        log::info!("run {}: resumed at seq {}", setup.run_id, setup.seq);
                    }
                    act.spawn_run(setup, ctx);
                }
                Ok(None) => {}
                Err(e) => log::warn!("runner: resuming a run failed ({e})"),
            })
            .spawn(ctx);
    }

    /// Resumes unfinished runs whose lease has lapsed, and claims requests
    /// left pending by dead consumers.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut conn = self.conn.clone();
        let live: Vec<String> = self.runs.keys().cloned().collect();
        let cfg = self.cfg.clone();
        async move {
            let me = &cfg.holder;
            leases::renew(&mut conn, &live, me, cfg.lease).await?;
            let flags = runs::cancel_requested(&mut conn, &live).await?;
            let to_cancel: Vec<String> = live
                .iter()
                .zip(flags)
                .filter(|(_, f)| *f)
                .map(|(r, _)| r.clone())
                .collect();
            // Runs to resume, each with the dead process's lease value to
            // take over, if it is held by one.
            let mut orphans = Vec::new();
            let mut present = None;
            for run_id in runs::active(&mut conn).await? {
                if live.contains(&run_id) {
                    continue;
                }
                let value = leases::holder(&mut conn, &run_id).await?;
                let gone = match Held::of(value.as_deref(), me) {
                    Held::Free | Held::Mine => None,
                    Held::Other => continue,
                    Held::SameInstance(h) => {
                        if present.is_none() {
                            let listed = leases::present(&mut conn).await;
                            if let Err(e) = &listed {
                                log::warn!("runner: cannot list runner processes ({e}); runs of earlier processes of this instance resume when their leases lapse");
                            }
                            present = Some(listed.ok());
                        }
                        // Not listed: gone. A live twin's run, or no list
                        // (CLIENT LIST refused): leave it.
                        if !matches!(&present, Some(Some(p)) if !p.contains(&h.nonce)) {
                            continue;
                        }
                        value
                    }
                };
                if let Some(rec) = runs::load(&mut conn, &run_id).await? {
                    orphans.push((rec, gone));
                }
            }
            let claimed =
                requests::claim_stale(&mut conn, &me.instance, cfg.lease, CLAIM_BATCH).await?;
            Ok::<_, crate::error::Error>((orphans, claimed, to_cancel))
        }
        .into_actor(self)
        .map(|r, act, ctx| match r {
            Ok((orphans, claimed, to_cancel)) => {
                for r in to_cancel {
                    if let Some(a) = act.runs.get(&r) {
                        a.do_send(Cancel);
                    }
                }
                for (rec, gone) in orphans {
                    if rec.status == RunStatus::Queued {
                        continue; // still in the request stream
                    }
                    act.resume(rec, gone, ctx);
                }
                for req in claimed {
                    act.take(req, ctx);
                }
            }
            Err(e) => {
                act.metrics
                    .redis_errors
                    .with_label_values(&["runner"])
                    .inc();
                log::warn!("runner: sweep failed ({e})");
            }
        })
        .spawn(ctx);
    }
}

/// What a run's start evaluates its entry conditions with.
struct Exec<'a> {
    jq: &'a jq::Pool,
    shares: &'a Shares,
}

/// What initialising a request came to.
enum Init {
    Started(Box<RunSetup>),
    Resume(Box<RunRecord>),
    Nothing,
}

async fn initialise(
    conn: &mut ConnectionManager,
    publisher: &Addr<Publisher>,
    cfg: &RunnerConfig,
    exec: Exec<'_>,
    entry_id: String,
    run_id: String,
) -> Result<Init> {
    let Some(rec) = runs::load(conn, &run_id).await? else {
        log::warn!("run {run_id}: request without a run record; dropping it");
        requests::ack(conn, &entry_id).await?;
        return Ok(Init::Nothing);
    };
    if rec.status != RunStatus::Queued {
        // Initialised before (a crash before the ack): ack, then resume.
        requests::ack(conn, &entry_id).await?;
        return Ok(Init::Resume(Box::new(rec)));
    }
    let dag = match rec.workflow.clone().compile(cfg.max_nodes) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            log::error!("run {run_id}: stored workflow is invalid ({e}); dropping it");
            requests::ack(conn, &entry_id).await?;
            return Ok(Init::Nothing);
        }
    };
    let run::Start {
        state,
        step,
        failing,
    } = run::start(&dag, &rec.inputs, &rec.user, exec.jq, &exec.shares.compute).await;
    let mut c = Commit::new(&run_id, &rec.user, 1);
    c.expect_status = Some(RunStatus::Queued.as_str());
    c.ack = Some(entry_id);
    c.owner = Some(cfg.holder.to_string());
    c.lease_ms = Some(cfg.lease.as_millis() as u64);
    c.active = if step.finished { -1 } else { 1 };
    c.set_status(state.status());
    c.set_counter(state.counter());
    // Nothing has completed yet; a run whose every node was skipped ends here.
    c.set_progress(0, step.finished.then(crate::event::now_ms));
    for &e in &step.activated {
        c.set_node(
            &dag.node(e).id,
            &NodeRecord::with_status(NodeStatus::Active),
        );
    }
    let started = EventBody::WorkflowStarted {
        run_id: run_id.clone(),
        tag: rec.tag.clone(),
        nodes: dag.len(),
        entry_nodes: dag.entries.len(),
    };
    let mut events = vec![started];
    for &(k, reason) in &step.skipped {
        c.set_node(
            &dag.node(k).id,
            &NodeRecord::with_status(NodeStatus::Skipped),
        );
        events.push(run::skipped_event(&run_id, &dag, k, reason, step.counter));
    }
    if step.finished {
        events.push(EventBody::WorkflowCompleted {
            run_id: run_id.clone(),
            counter: 0,
        });
    }
    for (seq, body) in (1..).zip(events) {
        c.seq = seq;
        let e = Event::new(body, seq).child_of(rec.parent.as_ref());
        c.events.push(e.to_json());
    }
    let seq = c.seq;
    match publisher::publish(publisher, c).await {
        Some(Outcome::Applied(_)) => {}
        Some(Outcome::StatusMismatch) => {
            // Someone initialised it meanwhile; it is theirs or resumable.
            return Ok(match runs::load(conn, &run_id).await? {
                Some(rec) => Init::Resume(Box::new(rec)),
                None => Init::Nothing,
            });
        }
        _ => return Ok(Init::Nothing),
    }
    let records = state
        .nodes()
        .iter()
        .map(|&s| NodeRecord::with_status(s))
        .collect();
    let outputs = step
        .skipped
        .iter()
        .map(|&(k, _)| (k, Arc::new(Value::Null)))
        .collect();
    Ok(Init::Started(Box::new(RunSetup {
        run_id,
        user: rec.user,
        dag,
        inputs: rec.inputs,
        state,
        records,
        outputs,
        seq,
        owner: cfg.holder.to_string(),
        lease: cfg.lease,
        cancel_requested: rec.cancel_requested,
        break_crash_loop: false,
        resumed: false,
        parent: rec.parent,
        depth: rec.depth,
        foreach: HashMap::new(),
        failing,
    })))
}

/// Takes a run's lease (free, already ours, or `gone`'s) and loads what
/// resuming needs.
async fn claim_and_load(
    conn: &mut ConnectionManager,
    cfg: &RunnerConfig,
    rec: RunRecord,
    gone: Option<&str>,
) -> Result<Option<RunSetup>> {
    let claim = leases::claim(conn, &rec.run_id, &cfg.holder, gone, cfg.lease).await?;
    if claim == Claim::NotOurs {
        return Ok(None);
    }
    // Re-read under the lease: the record may have moved since it was listed.
    let Some(rec) = runs::load(conn, &rec.run_id).await? else {
        return Ok(None);
    };
    if rec.status.is_terminal() {
        return Ok(None);
    }
    let dag = Arc::new(
        rec.workflow
            .clone()
            .compile(usize::MAX)
            .map_err(crate::error::Error::Corrupt)?,
    );
    let (state, records) = run::restore(&rec, &dag);
    let mut outputs = HashMap::new();
    let done: Vec<(usize, String)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.result_ref.clone()?)))
        .collect();
    let refs: Vec<String> = done.iter().map(|(_, r)| r.clone()).collect();
    let blobs = runs::outputs(conn, &refs).await?;
    for ((i, _), blob) in done.into_iter().zip(blobs) {
        let v = blob
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        outputs.insert(i, Arc::new(v));
    }
    for (i, r) in records.iter().enumerate() {
        if r.status == NodeStatus::Skipped {
            outputs.insert(i, Arc::new(Value::Null));
        }
    }
    let foreach = load_items(conn, &rec, &dag, &records).await?;
    Ok(Some(RunSetup {
        run_id: rec.run_id,
        user: rec.user,
        dag,
        inputs: rec.inputs,
        state,
        records,
        outputs,
        seq: rec.seq,
        owner: cfg.holder.to_string(),
        lease: cfg.lease,
        cancel_requested: rec.cancel_requested,
        break_crash_loop: claim == Claim::Exhausted,
        resumed: true,
        parent: rec.parent,
        depth: rec.depth,
        foreach,
        failing: Vec::new(),
    }))
}

/// What the active `foreach` nodes of a resumed run made durable: their
/// arrays and their finished items' outputs.
async fn load_items(
    conn: &mut ConnectionManager,
    rec: &RunRecord,
    dag: &Dag,
    records: &[NodeRecord],
) -> Result<HashMap<usize, ResumedItems>> {
    let mut out = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if r.status != NodeStatus::Active || dag.node(i).foreach.is_none() {
            continue;
        }
        let mut resumed = ResumedItems::default();
        if let Some(items_ref) = &r.items_ref {
            let blob = runs::outputs(conn, std::slice::from_ref(items_ref)).await?;
            resumed.items = blob
                .into_iter()
                .next()
                .flatten()
                .and_then(|b| serde_json::from_str(&b).ok());
        }
        if let Some(done) = rec.items.get(&dag.node(i).id) {
            let refs: Vec<String> = done.values().cloned().collect();
            let blobs = runs::outputs(conn, &refs).await?;
            resumed.finished = done
                .keys()
                .zip(blobs)
                .filter_map(|(&idx, b)| Some((idx, serde_json::from_str(&b?).ok()?)))
                .collect();
        }
        out.insert(i, resumed);
    }
    Ok(out)
}

impl Actor for Runner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(presence) = self.presence.take() {
            let me = ctx.address();
            actix::spawn(presence.keep(move || me.connected()));
        }
        self.read(ctx);
        self.sweep(ctx);
        let every = (self.cfg.lease / 3).min(MAX_SWEEP_INTERVAL);
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
    }
}

/// Restarted by its `Supervisor` if it ever stops: its live runs stay, it
/// re-reads its own pending requests and sweeps again.
impl Supervised for Runner {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        log::warn!("runner restarting with {} live runs", self.runs.len());
        self.reading_ok = false;
        self.backlog_done = false;
        self.backlog_from = "0".into();
    }
}

impl Handler<RunStopped> for Runner {
    type Result = ();

    fn handle(&mut self, msg: RunStopped, _ctx: &mut Self::Context) {
        self.runs.remove(&msg.run_id);
        self.children.ended(&msg.run_id);
    }
}

impl Handler<CancelRun> for Runner {
    type Result = ResponseFuture<Option<bool>>;

    fn handle(&mut self, msg: CancelRun, _ctx: &mut Self::Context) -> Self::Result {
        let addr = self.runs.get(&msg.run_id).cloned();
        Box::pin(async move {
            match addr {
                Some(a) => a.send(Cancel).await.ok(),
                None => None,
            }
        })
    }
}

impl Handler<IsReady> for Runner {
    type Result = bool;

    fn handle(&mut self, _: IsReady, _ctx: &mut Self::Context) -> bool {
        self.reading_ok && !self.shutdown.is_cancelled()
    }
}

impl Handler<Drain> for Runner {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        // Draining is shutting down, whoever asked first.
        self.shutdown.cancel();
        log::info!(
            "runner: draining {} live runs (grace {:?})",
            self.runs.len(),
            msg.grace
        );
        let me = ctx.address();
        let deadline = Instant::now() + msg.grace;
        // Runs may use the grace but for the time letting go of the rest takes.
        let runs_until = deadline - (msg.grace / 10).min(Duration::from_millis(500));
        Box::pin(async move {
            while Instant::now() < runs_until {
                match me.send(LiveRuns).await {
                    Ok(n) if n > 0 => actix_rt::time::sleep(Duration::from_millis(20)).await,
                    _ => break,
                }
            }
            let _ = me.send(LetGo { deadline }).await;
        })
    }
}

/// How many runs are busy here: being initialised, or with work in the
/// daemon ([`run::IsBusy`]); runs that only wait on the outside need no
/// grace.
#[derive(Message)]
#[rtype(result = "usize")]
struct LiveRuns;

impl Handler<LiveRuns> for Runner {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: LiveRuns, _ctx: &mut Self::Context) -> Self::Result {
        let actors: Vec<Addr<RunActor>> = self.runs.values().cloned().collect();
        let initialising = self.initialising.len();
        Box::pin(async move {
            let busy = futures_util::future::join_all(actors.iter().map(|a| a.send(run::IsBusy)))
                .await
                .into_iter()
                .filter(|b| matches!(b, Ok(true)))
                .count();
            busy + initialising
        })
    }
}

/// Stops the remaining run actors, flushes the Publisher and releases leases,
/// giving up on what is not done by `deadline`.
#[derive(Message)]
#[rtype(result = "()")]
struct LetGo {
    deadline: Instant,
}

impl Handler<LetGo> for Runner {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: LetGo, _ctx: &mut Self::Context) -> Self::Result {
        self.let_go = true;
        let left: Vec<(String, Addr<RunActor>)> = self
            .runs
            .iter()
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect();
        let mut conn = self.conn.clone();
        let cfg = self.cfg.clone();
        let publisher = self.publisher.clone();
        let deadline = tokio::time::Instant::from_std(msg.deadline);
        Box::pin(async move {
            // Their state is durable; the next runner resumes them. Once a
            // run actor has handled Stop it has stopped, so whatever commit
            // it made is already queued at the Publisher, ahead of the flush,
            // and none can follow the lease release below.
            for (_, a) in &left {
                let _ = a.send(run::Stop).await;
            }
            let (done, rx) = tokio::sync::oneshot::channel();
            publisher.do_send(crate::publisher::Flush { done });
            if tokio::time::timeout_at(deadline, rx).await.is_err() {
                log::warn!(
                    "runner: the Publisher did not flush within the grace (Redis unreachable?); unwritten changes are redone on the next start"
                );
                return;
            }
            if !left.is_empty() {
                log::info!(
                    "runner: {} unfinished runs left for the next start",
                    left.len()
                );
                let ids: Vec<String> = left.into_iter().map(|(id, _)| id).collect();
                let release = leases::release(&mut conn, &ids, &cfg.holder);
                if !matches!(tokio::time::timeout_at(deadline, release).await, Ok(Ok(()))) {
                    log::warn!(
                        "runner: could not release the leases of unfinished runs; they expire"
                    );
                }
            }
        })
    }
}
