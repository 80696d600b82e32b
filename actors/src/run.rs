//! The run actor: one per run, owner of that run's state and counter.
//!
//! It starts the active nodes, turns each attempt's result into a step of the
//! counter state machine (`counter`), and hands the step to the Publisher as
//! one [`Commit`]: node states, counter, status, output and events together.
//! Children start only once the commit that activated them is durable, so a
//! crash can lose work in flight but never accounting: a restarted runner
//! rebuilds this actor from Redis and runs the active nodes again.
//!
//! Failed attempts are retried per the node's policy (a `node_failed` event
//! with `will_retry: true` makes each retry visible); a node out of attempts
//! fails the run and cancels its running siblings. [`Cancel`] ends the run
//! on its owner's request.
//!
//! Every attempt of a `transform` or `http` node first takes a permit of
//! its user's fair share (`fair`; `delay` nodes cost nothing and take none)
//! and holds it until the attempt ends, whatever ends it: the permit lives
//! in the attempt's future. Under the permit, the node's input is built and
//! its output hashed and serialised on a blocking thread, so a large output
//! stalls neither this thread (shared by every run actor) nor the
//! Publisher's. The node's deadline covers the execution itself, not the
//! wait for a permit.
//!
//! A run resumed too many times without progress (see `store::leases`)
//! starts with [`RunSetup::break_crash_loop`]: instead of running its nodes
//! again, it fails its first active node (not retried) and so the run, with
//! running siblings cancelled, through the same counter step and commit as
//! any failure.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::{Map, Value};

use crate::counter::{NodeStatus, RunState, RunStatus};
use crate::event::{Event, EventBody};
use crate::fair::{FairShare, Shares};
use crate::http_node::HttpClient;
use crate::jq;
use crate::metrics::Metrics;
use crate::node::{self, NodeError};
use crate::publisher::{self, Publisher};
use crate::result;
use crate::store::{leases, Commit, NodeRecord, Outcome, RunRecord};
use crate::workflow::{Dag, NodeKind};

/// The error of the node a crash loop is broken on (and so of the run).
pub fn crash_loop_error() -> String {
    format!(
        "the run was resumed {} times without progress and was stopped to break a crash loop",
        leases::MAX_RESUMES_WITHOUT_PROGRESS
    )
}

/// Cancel the run. Answers `false` if it had already ended.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Cancel;

/// Stop without changing the run (drain): its state is durable and the next
/// runner resumes it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Sent to the runner when a run actor stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunStopped {
    /// The run.
    pub run_id: String,
}

/// Everything a run actor starts from, fresh or resumed.
pub struct RunSetup {
    /// The run.
    pub run_id: String,
    /// Its owner.
    pub user: String,
    /// The validated workflow.
    pub dag: Arc<Dag>,
    /// Its inputs.
    pub inputs: Value,
    /// Node states and counter.
    pub state: RunState,
    /// Per-node persisted records (attempts, refs).
    pub records: Vec<NodeRecord>,
    /// Outputs of completed nodes, by index.
    pub outputs: HashMap<usize, Arc<Value>>,
    /// The last committed event seq.
    pub seq: u64,
    /// This runner process, as its leases name it (`instance#nonce`).
    pub owner: String,
    /// How long each commit extends the lease.
    pub lease: Duration,
    /// The owner asked to cancel it before this actor existed.
    pub cancel_requested: bool,
    /// It was resumed too often without progress: fail it instead of
    /// running its nodes again.
    pub break_crash_loop: bool,
}

/// A finished attempt's output, hashed and serialised.
struct Output {
    value: Arc<Value>,
    result_ref: String,
    canonical: String,
}

impl Output {
    fn of(value: Value) -> Self {
        let (result_ref, bytes) = result::address(&value);
        Self {
            value: Arc::new(value),
            result_ref,
            // Serialised JSON is UTF-8.
            canonical: String::from_utf8(bytes).unwrap_or_default(),
        }
    }
}

/// Runs `f` on a blocking thread.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    actix_rt::task::spawn_blocking(f)
        .await
        .map_err(|_| NodeError::fatal("a worker thread failed"))
}

/// What every run actor of a runner shares: where its events go, how its
/// nodes execute, and the limits they run under.
#[derive(Clone)]
pub struct RunEnv {
    /// The single writer of state and events.
    pub publisher: Addr<Publisher>,
    /// Told when the run actor stops.
    pub runner: Recipient<RunStopped>,
    /// The egress-checked client of `http` nodes.
    pub http: Rc<HttpClient>,
    /// Node execution, shared fairly among users.
    pub shares: Shares,
    /// The sandboxed jq evaluators.
    pub jq: jq::Pool,
    /// Largest node output (canonical JSON) accepted.
    pub max_output_bytes: usize,
    /// Metrics.
    pub metrics: Metrics,
}

/// The run actor.
pub struct RunActor {
    setup: RunSetup,
    /// The run's inputs, shared with the attempts that build node inputs.
    inputs: Arc<Value>,
    env: RunEnv,
    running: HashMap<usize, SpawnHandle>,
    /// Commits handed to the Publisher and not yet answered.
    in_flight: usize,
}

impl RunActor {
    /// A run actor for `setup` in its runner's `env`.
    pub fn new(mut setup: RunSetup, env: RunEnv) -> Self {
        Self {
            inputs: Arc::new(std::mem::take(&mut setup.inputs)),
            setup,
            env,
            running: HashMap::new(),
            in_flight: 0,
        }
    }

    fn node_id(&self, i: usize) -> &str {
        &self.setup.dag.node(i).id
    }

    /// The outputs of node `i`'s ancestors (all completed before `i` was
    /// activated, so `i`'s input never depends on timing), shared, not copied.
    fn ancestor_outputs(&self, i: usize) -> Vec<(String, Arc<Value>)> {
        let dag = &self.setup.dag;
        let mut seen = vec![false; dag.len()];
        let mut stack = dag.parents[i].clone();
        let mut found = Vec::new();
        while let Some(p) = stack.pop() {
            if std::mem::replace(&mut seen[p], true) {
                continue;
            }
            if let Some(v) = self.setup.outputs.get(&p) {
                found.push((dag.node(p).id.clone(), v.clone()));
            }
            stack.extend(&dag.parents[p]);
        }
        found
    }

    /// The fair-share pool an attempt of `kind` takes a permit from, if any.
    fn share_for(&self, kind: &NodeKind) -> Option<&FairShare> {
        match kind {
            NodeKind::Transform { .. } => Some(&self.env.shares.compute),
            NodeKind::Http(_) => Some(&self.env.shares.io),
            NodeKind::Delay { .. } => None,
        }
    }

    fn commit(&mut self) -> Commit {
        let s = &self.setup;
        let mut c = Commit::new(&s.run_id, &s.user, s.seq);
        c.owner = Some(s.owner.clone());
        c.lease_ms = Some(s.lease.as_millis() as u64);
        c
    }

    fn push_event(&mut self, c: &mut Commit, body: EventBody) {
        self.setup.seq += 1;
        c.seq = self.setup.seq;
        c.events.push(Event::new(body, self.setup.seq).to_json());
    }

    fn set_node(&self, c: &mut Commit, i: usize) {
        c.set_node(self.node_id(i), &self.setup.records[i]);
    }

    fn set_run(&self, c: &mut Commit) {
        let st = &self.setup.state;
        c.set_counter(st.counter());
        c.set_status(st.status());
        let done = st
            .nodes()
            .iter()
            .filter(|&&n| n == NodeStatus::Completed)
            .count();
        let ended = st.status().is_terminal().then(crate::event::now_ms);
        c.set_progress(done, ended);
        if st.status().is_terminal() {
            c.active = -1;
        }
    }

    /// Starts an attempt of node `i`.
    fn launch(&mut self, i: usize, ctx: &mut Context<Self>) {
        if self.setup.state.nodes()[i] != NodeStatus::Active || self.running.contains_key(&i) {
            return;
        }
        self.setup.records[i].attempt += 1;
        let spec = self.setup.dag.node(i).clone();
        let permit = self
            .share_for(&spec.kind)
            .map(|share| share.acquire(&self.setup.user));
        // `{inputs, nodes: {<id>: <output>}}` for the node's filters.
        let input = match spec.kind {
            NodeKind::Delay { .. } => None,
            _ => Some((self.inputs.clone(), self.ancestor_outputs(i))),
        };
        let http = self.env.http.clone();
        let jq = self.env.jq.clone();
        let deadline = match (&spec.kind, spec.timeout_ms) {
            (_, Some(ms)) => Some(Duration::from_millis(ms)),
            (NodeKind::Transform { .. }, None) => Some(node::DEFAULT_TRANSFORM_TIMEOUT),
            _ => None,
        };
        let fut = async move {
            // Held until this future ends or is dropped (timeout, cancel).
            let _permit = match permit {
                Some(p) => Some(p.await),
                None => None,
            };
            let input = match input {
                Some((inputs, outputs)) => {
                    off_thread(move || {
                        let nodes: Map<String, Value> = outputs
                            .into_iter()
                            .map(|(id, v)| (id, Value::clone(&v)))
                            .collect();
                        let mut input = Map::new();
                        input.insert("inputs".into(), Value::clone(&inputs));
                        input.insert("nodes".into(), Value::Object(nodes));
                        Value::Object(input)
                    })
                    .await?
                }
                None => Value::Null,
            };
            let run = node::execute(&spec, input, &http, &jq);
            let out = match deadline {
                Some(d) => actix_rt::time::timeout(d, run)
                    .await
                    .unwrap_or_else(|_| Err(NodeError::timeout(d)))?,
                None => run.await?,
            };
            match out {
                Value::Null => Ok(Output::of(Value::Null)),
                out => off_thread(move || Output::of(out)).await,
            }
        };
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.running.remove(&i);
            act.finished(i, r, ctx);
        }));
        self.running.insert(i, handle);
    }

    fn finished(&mut self, i: usize, r: Result<Output, NodeError>, ctx: &mut Context<Self>) {
        let kind = self.setup.dag.node(i).kind_name();
        match r {
            Ok(out) => {
                self.env
                    .metrics
                    .nodes
                    .with_label_values(&[kind, "completed"])
                    .inc();
                self.completed(i, out, ctx)
            }
            Err(e) => {
                self.env
                    .metrics
                    .nodes
                    .with_label_values(&[kind, "failed"])
                    .inc();
                self.failed(i, e, ctx)
            }
        }
    }

    fn completed(&mut self, i: usize, out: Output, ctx: &mut Context<Self>) {
        if out.canonical.len() > self.env.max_output_bytes {
            let e = NodeError::fatal(format!(
                "output is {} bytes, over the limit of {} bytes (--max-output-bytes)",
                out.canonical.len(),
                self.env.max_output_bytes
            ));
            return self.failed(i, e, ctx);
        }
        let dag = self.setup.dag.clone();
        let Ok(step) = self.setup.state.complete(&dag, i) else {
            return; // cancelled meanwhile, or a duplicate: nothing changes
        };
        let Output {
            value,
            result_ref,
            canonical,
        } = out;
        self.setup.outputs.insert(i, value);
        let mut c = self.commit();
        c.store_result(result_ref.clone(), canonical);
        let rec = &mut self.setup.records[i];
        rec.status = NodeStatus::Completed;
        rec.result_ref = Some(result_ref.clone());
        rec.error = None;
        self.set_node(&mut c, i);
        for &a in &step.activated {
            self.setup.records[a].status = NodeStatus::Active;
            self.set_node(&mut c, a);
        }
        self.set_run(&mut c);
        let run_id = self.setup.run_id.clone();
        let node_id = self.node_id(i).to_owned();
        self.push_event(
            &mut c,
            EventBody::NodeCompleted {
                run_id: run_id.clone(),
                node_id,
                status: "completed".into(),
                counter: step.counter,
                result_ref,
            },
        );
        if step.finished {
            self.push_event(&mut c, EventBody::WorkflowCompleted { run_id, counter: 0 });
        }
        self.send(c, ctx, move |act, ctx| {
            for &a in &step.activated {
                act.launch(a, ctx);
            }
        });
    }

    fn failed(&mut self, i: usize, e: NodeError, ctx: &mut Context<Self>) {
        if self.setup.state.nodes()[i] != NodeStatus::Active
            || self.setup.state.status().is_terminal()
        {
            return;
        }
        let attempt = self.setup.records[i].attempt;
        let dag = self.setup.dag.clone();
        let spec = dag.node(i);
        let will_retry = e.retryable && attempt < spec.max_attempts();
        let node_id = spec.id.clone();
        let run_id = self.setup.run_id.clone();
        let mut c = self.commit();
        self.setup.records[i].error = Some(crate::event::cut_error(&e.message));
        if will_retry {
            let wait = spec
                .retry
                .map_or(Duration::ZERO, |r| r.backoff_before(attempt + 1));
            self.set_node(&mut c, i);
            let counter = self.setup.state.counter();
            self.push_event(
                &mut c,
                EventBody::NodeFailed {
                    run_id,
                    node_id,
                    error: e.message,
                    attempt,
                    will_retry,
                    counter,
                },
            );
            self.send(c, ctx, move |_, ctx| {
                ctx.run_later(wait, move |act, ctx| act.launch(i, ctx));
            });
            return;
        }
        let Ok(cancelled) = self.setup.state.fail(i) else {
            return;
        };
        self.setup.records[i].status = NodeStatus::Failed;
        self.set_node(&mut c, i);
        let cancelled_nodes = self.cancel_nodes(&cancelled, &mut c, ctx);
        self.set_run(&mut c);
        self.push_event(
            &mut c,
            EventBody::NodeFailed {
                run_id: run_id.clone(),
                node_id: node_id.clone(),
                error: e.message.clone(),
                attempt,
                will_retry: false,
                counter: 0,
            },
        );
        self.push_event(
            &mut c,
            EventBody::WorkflowFailed {
                run_id,
                failed_node: node_id,
                error: e.message,
                cancelled_nodes,
                cancelled_not_listed: 0,
                counter: 0,
            },
        );
        self.send(c, ctx, |_, _| {});
    }

    /// Stops the attempts of `nodes` and records them as cancelled.
    fn cancel_nodes(
        &mut self,
        nodes: &[usize],
        c: &mut Commit,
        ctx: &mut Context<Self>,
    ) -> Vec<String> {
        nodes
            .iter()
            .map(|&n| {
                if let Some(h) = self.running.remove(&n) {
                    ctx.cancel_future(h);
                }
                self.setup.records[n].status = NodeStatus::Cancelled;
                self.set_node(c, n);
                self.node_id(n).to_owned()
            })
            .collect()
    }

    /// Hands a commit to the Publisher; `then` runs once it is durable.
    fn send(
        &mut self,
        c: Commit,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        self.in_flight += 1;
        // The run's outcome, counted once the commit that ends it lands.
        let ended = (c.active == -1).then(|| self.setup.state.status().as_str());
        // Enqueued now, not when the spawned future is first polled: the
        // context does not poll its futures in spawn order.
        let durable = publisher::publish(&self.env.publisher, c);
        ctx.spawn(durable.into_actor(self).map(move |outcome, act, ctx| {
            act.in_flight -= 1;
            match outcome {
                Some(Outcome::Applied(_)) => {
                    if let Some(outcome) = ended {
                        act.env.metrics.runs.with_label_values(&[outcome]).inc();
                    }
                    then(act, ctx)
                }
                // A retry of a commit that had landed (its answer was lost).
                Some(Outcome::Duplicate) => then(act, ctx),
                Some(Outcome::NotOwner | Outcome::Ended | Outcome::StatusMismatch) => {
                    log::warn!(
                        "run {}: another runner holds it; letting go",
                        act.setup.run_id
                    );
                    ctx.stop();
                    return;
                }
                Some(Outcome::Behind) => {
                    // Redis moved past this actor's view: stop, and the
                    // runner's sweep rebuilds the run from what is stored.
                    log::warn!(
                        "run {}: stored state is ahead of this actor; reloading",
                        act.setup.run_id
                    );
                    ctx.stop();
                    return;
                }
                None => {
                    ctx.stop();
                    return;
                }
            }
            if act.setup.state.status().is_terminal() && act.in_flight == 0 {
                ctx.stop();
            }
        }));
    }
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.env.metrics.live_runs.inc();
        if self.setup.cancel_requested {
            ctx.notify(Cancel);
            return;
        }
        if self.setup.break_crash_loop {
            // Which active node brought the runners down is unknown; the
            // first one (in workflow order) is named, the others cancelled.
            if let Some(&i) = self.setup.state.active().first() {
                // This resumption's attempt, refused.
                self.setup.records[i].attempt += 1;
                log::warn!(
                    "run {}: {}; failing it at node {}",
                    self.setup.run_id,
                    crash_loop_error(),
                    self.node_id(i)
                );
                self.failed(i, NodeError::fatal(crash_loop_error()), ctx);
                return;
            }
        }
        for i in self.setup.state.active() {
            self.launch(i, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.env.metrics.live_runs.dec();
        let _ = self.env.runner.try_send(RunStopped {
            run_id: self.setup.run_id.clone(),
        });
    }
}

impl Handler<Cancel> for RunActor {
    type Result = bool;

    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) -> bool {
        let Ok(cancelled) = self.setup.state.cancel() else {
            return false;
        };
        let mut c = self.commit();
        let cancelled_nodes = self.cancel_nodes(&cancelled, &mut c, ctx);
        self.set_run(&mut c);
        let run_id = self.setup.run_id.clone();
        self.push_event(
            &mut c,
            EventBody::WorkflowCancelled {
                run_id,
                cancelled_nodes,
                cancelled_not_listed: 0,
                counter: 0,
            },
        );
        self.send(c, ctx, |_, _| {});
        true
    }
}

impl Handler<Stop> for RunActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Rebuilds a run's in-memory state from its stored record.
pub fn restore(record: &RunRecord, dag: &Dag) -> (RunState, Vec<NodeRecord>) {
    let records: Vec<NodeRecord> = dag
        .workflow
        .nodes
        .iter()
        .map(|n| {
            record
                .nodes
                .get(&n.id)
                .cloned()
                .unwrap_or_else(|| NodeRecord::with_status(NodeStatus::Waiting))
        })
        .collect();
    let status = if record.status == RunStatus::Queued {
        RunStatus::Running
    } else {
        record.status
    };
    let state = RunState::restore(dag, status, records.iter().map(|r| r.status).collect());
    (state, records)
}
