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
//! its user's fair share (`fair`; nodes that only wait cost nothing and
//! take none: `delay`, `workflow`, and `task`, `approval` and `signal`,
//! which wait outside the daemon, see `outside`) and holds it until the
//! attempt ends, whatever ends it: the permit lives in the attempt's
//! future. Under the permit, the node's input is built and its output
//! hashed and serialised on a blocking thread, so a large output stalls
//! neither this thread (shared by every run actor) nor the Publisher's. The node's deadline
//! covers the execution itself, not the wait for a permit.
//!
//! Control flow (see `counter`): a completion that makes nodes ready first
//! has their `when` conditions evaluated (a node's inputs are final once
//! its parents have finished), then applies the step with their outcomes,
//! so a skip is in the same commit as the completion that caused it. A
//! `foreach` node evaluates its array once (stored with its first
//! `node_progress`), runs its items `concurrency` at a time and commits each
//! finished item on its own (`foreach::Items`), so a resumed run redoes
//! none of them. A `workflow` node runs a child run (`child`); cancelling
//! or failing the run asks its running children to cancel. Workflows that
//! ask for it get a `node_started` event when each attempt begins (the
//! nodes started together share one commit, `start_all`). Every
//! control-flow filter (`when`, `foreach`, a child's `inputs`) runs in the
//! sandboxed jq pool under a compute permit and a deadline, as a
//! transform does; every output (a `foreach` node's array and a child's
//! sink outputs included) is held to `--max-output-bytes`.
//!
//! A run resumed too many times without progress (see `store::leases`)
//! starts with [`RunSetup::break_crash_loop`]: instead of running its nodes
//! again, it fails its first active node (not retried) and so the run, with
//! running siblings cancelled, through the same counter step and commit as
//! any failure. A resumed run that comes to only wait — its active nodes
//! all waiting outside (`outside`) or for child runs found running — has
//! done all its work in the daemon and clears its count instead, so a run
//! that waits for days is not failed by unrelated crashes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use redis::aio::ConnectionManager;
use serde_json::{Map, Value};

use crate::child::{self, ChildRequest, ChildWatch};
use crate::counter::{Ended, NodeStatus, RunState, RunStatus, SkipReason, Step};
use crate::event::{Event, EventBody, Parent};
use crate::fair::{FairShare, Shares};
use crate::foreach::Items;
use crate::http_node::HttpClient;
use crate::jq;
use crate::metrics::Metrics;
use crate::node::{self, NodeError};
use crate::publisher::{self, Publisher};
use crate::result;
use crate::store::runs::RunQuota;
use crate::store::{leases, runs, Commit, NodeRecord, Outcome, RunRecord};
use crate::workflow::{json_kind, Dag, NodeKind, NodeSpec};

/// The error of the node a crash loop is broken on (and so of the run).
pub fn crash_loop_error() -> String {
    format!(
        "the run was resumed {} times without progress and was stopped to break a crash loop",
        leases::MAX_RESUMES_WITHOUT_PROGRESS
    )
}

mod outside;
pub use outside::{decision, CheckWaits, IsBusy, PROGRESS_INTERVAL};

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
    /// Outputs of completed (and, as `null`, skipped) nodes, by index.
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
    /// A runner took it over (it is not the run's first actor): once it
    /// only waits, its crash-loop count is cleared.
    pub resumed: bool,
    /// The run and node that started it, for a child run.
    pub parent: Option<Parent>,
    /// How deeply it is nested in child runs (0: started by a user).
    pub depth: u32,
    /// Durable state of `foreach` nodes that were running, by node.
    pub foreach: HashMap<usize, ResumedItems>,
    /// Active nodes whose `when` failed to evaluate at the start: they fail
    /// as soon as the actor starts.
    pub failing: Vec<(usize, NodeError)>,
}

/// What a resumed `foreach` node had made durable.
#[derive(Debug, Clone, Default)]
pub struct ResumedItems {
    /// Its array, if it was evaluated and stored.
    pub items: Option<Vec<Value>>,
    /// Finished items and their outputs.
    pub finished: Vec<(usize, Value)>,
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

/// Values with at most this many parts (scalars, array items, object
/// entries, all levels together) are copied and hashed in place: a hop to a
/// blocking thread costs more than the work. Larger ones go off the run
/// actors' thread, so that one run's big outputs never stall the others.
const INLINE_PARTS: usize = 512;

/// True when `values` have at most `budget` parts in all (stops counting
/// past it, so a huge value costs no more than a small one to judge).
fn small<'a>(values: impl IntoIterator<Item = &'a Value>, mut budget: usize) -> bool {
    let mut stack: Vec<&Value> = values.into_iter().collect();
    while let Some(v) = stack.pop() {
        if budget == 0 {
            return false;
        }
        budget -= 1;
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Object(m) => stack.extend(m.values()),
            Value::String(s) if s.len() > 4096 => return false,
            _ => {}
        }
    }
    true
}

/// Runs `f` on a blocking thread, or in place when `inline`.
async fn off_thread<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    if inline {
        return Ok(f());
    }
    actix_rt::task::spawn_blocking(f)
        .await
        .map_err(|_| NodeError::fatal("a worker thread failed"))
}

/// Hashes and serialises an output (off the actors' thread when large).
async fn output_of(v: Value) -> Result<Output, NodeError> {
    let inline = small([&v], INLINE_PARTS);
    off_thread(inline, move || Output::of(v)).await
}

/// What a node's filters see: `{inputs, nodes: {<id>: <output>}}`, and
/// for an item of a `foreach` node also `item` and `index`. Built on a
/// blocking thread ([`Input::build`]), from parts shared, not copied.
enum Input {
    /// No input (`delay`).
    None,
    /// The run's inputs and the node's ancestors' outputs.
    Node(Arc<Value>, Vec<(String, Arc<Value>)>),
    /// A `foreach` item: the node's input, built once for all its items,
    /// with the item and its index added.
    Item {
        base: Arc<Value>,
        index: usize,
        item: Value,
    },
}

impl Input {
    async fn build(self) -> Result<Value, NodeError> {
        match self {
            Self::None => Ok(Value::Null),
            Self::Node(inputs, outputs) => {
                let inline = small(
                    std::iter::once(&*inputs).chain(outputs.iter().map(|(_, v)| &**v)),
                    INLINE_PARTS,
                );
                off_thread(inline, move || {
                    let nodes: Map<String, Value> = outputs
                        .into_iter()
                        .map(|(id, v)| (id, Value::clone(&v)))
                        .collect();
                    let mut input = Map::new();
                    input.insert("inputs".into(), Value::clone(&inputs));
                    input.insert("nodes".into(), Value::Object(nodes));
                    Value::Object(input)
                })
                .await
            }
            Self::Item { base, index, item } => {
                let inline = small([&*base, &item], INLINE_PARTS);
                off_thread(inline, move || {
                    let mut input = Value::clone(&base);
                    if let Value::Object(m) = &mut input {
                        m.insert("item".into(), item);
                        m.insert("index".into(), index.into());
                    }
                    input
                })
                .await
            }
        }
    }
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
    /// Commands to Redis outside commits: starting and cancelling child runs.
    pub conn: ConnectionManager,
    /// Wakes parents whose child ends in this process.
    pub children: ChildWatch,
    /// Most items a `foreach` may yield (`--max-foreach-items`).
    pub max_foreach_items: usize,
    /// How deeply child runs may nest (`--max-child-depth`).
    pub max_child_depth: u32,
    /// The users' run quotas; a child run is one more active run.
    pub run_quota: RunQuota,
}

/// A `foreach` node whose items are running.
struct ForeachRun {
    /// The items (an array).
    items: Arc<Value>,
    /// The node's `{inputs, nodes}`, built once for all its items (`None`
    /// for a `delay` node, which has no input).
    input: Option<Arc<Value>>,
    state: Items,
    handles: HashMap<usize, SpawnHandle>,
    attempts: HashMap<usize, u32>,
}

/// A condition's outcome: whether the node runs, or the error that fails it.
type Condition = Result<bool, NodeError>;

/// The run actor.
pub struct RunActor {
    setup: RunSetup,
    /// The run's inputs, shared with the attempts that build node inputs.
    inputs: Arc<Value>,
    env: RunEnv,
    running: HashMap<usize, SpawnHandle>,
    /// `foreach` nodes with items running.
    foreach: HashMap<usize, ForeachRun>,
    /// Child runs being waited for, by node and item.
    child_runs: HashMap<(usize, Option<usize>), String>,
    /// Of those, the ones found running: the node only waits for them.
    children_waited: HashSet<(usize, Option<usize>)>,
    /// This actor, for the futures of its attempts to report to.
    myself: Option<Addr<RunActor>>,
    /// The crash-loop count was cleared (or need not be): once per actor.
    loop_cleared: bool,
    /// `when` outcomes evaluated and not yet used by a step.
    conditions: HashMap<usize, Condition>,
    /// Commits handed to the Publisher and not yet answered.
    in_flight: usize,
    /// While nodes are started together: the `node_started` events of
    /// those begun so far, sent as one commit (see [`RunActor::start_all`]).
    starts: Option<Commit>,
    /// True while [`RunActor::start_all`] runs.
    batching: bool,
    /// Nodes waiting on workers, people or signals (`task`, `approval`, `signal`).
    outside: outside::Waits,
}

impl RunActor {
    /// A run actor for `setup` in its runner's `env`.
    pub fn new(mut setup: RunSetup, env: RunEnv) -> Self {
        Self {
            inputs: Arc::new(std::mem::take(&mut setup.inputs)),
            setup,
            env,
            running: HashMap::new(),
            foreach: HashMap::new(),
            child_runs: HashMap::new(),
            children_waited: HashSet::new(),
            myself: None,
            loop_cleared: false,
            conditions: HashMap::new(),
            in_flight: 0,
            starts: None,
            batching: false,
            outside: outside::Waits::default(),
        }
    }

    fn node_id(&self, i: usize) -> &str {
        &self.setup.dag.node(i).id
    }

    /// The outputs of node `i`'s ancestors (all finished before `i` was
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

    /// Node `i`'s `{inputs, nodes}`, to build.
    fn input_of(&self, i: usize) -> Input {
        Input::Node(self.inputs.clone(), self.ancestor_outputs(i))
    }

    /// The fair-share pool an attempt of `kind` takes a permit from, if any.
    /// Nodes that only wait (`delay`, a child run, the kinds waiting
    /// outside, `run::outside`) take none.
    fn share_for(&self, kind: &NodeKind) -> Option<&FairShare> {
        match kind {
            NodeKind::Transform { .. } => Some(&self.env.shares.compute),
            NodeKind::Http(_) => Some(&self.env.shares.io),
            NodeKind::Delay { .. }
            | NodeKind::Workflow(_)
            | NodeKind::Task(_)
            | NodeKind::Approval(_)
            | NodeKind::Signal(_) => None,
        }
    }

    /// Evaluates a control-flow filter of node `i` on `input`, under a
    /// compute permit of the run's user and within the node's deadline.
    fn control_filter(
        &self,
        i: usize,
        what: &'static str,
        filter: String,
        input: Input,
    ) -> impl Future<Output = Result<Value, NodeError>> + 'static {
        // Asked for when first polled: a child's inputs may never be.
        let (compute, user) = (self.env.shares.compute.clone(), self.setup.user.clone());
        let jq = self.env.jq.clone();
        let deadline = filter_deadline(self.setup.dag.node(i));
        async move {
            let _permit = compute.acquire(&user).await;
            let input = input.build().await?;
            node::evaluate(&jq, what, &filter, &input, deadline).await
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
        let e = Event::new(body, self.setup.seq).child_of(self.setup.parent.as_ref());
        c.events.push(e.to_json());
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

    /// Starts an attempt of node `i` (for a `foreach` node: its items).
    fn launch(&mut self, i: usize, ctx: &mut Context<Self>) {
        if self.setup.state.nodes()[i] != NodeStatus::Active
            || self.running.contains_key(&i)
            || self.foreach.contains_key(&i)
            || self.is_waiting(i)
        {
            return;
        }
        self.setup.records[i].attempt += 1;
        self.announce_start(i, ctx);
        if self.setup.dag.node(i).waits_outside() {
            return self.launch_wait(i, ctx);
        }
        if self.setup.dag.node(i).foreach.is_some() {
            return self.launch_foreach(i, ctx);
        }
        let attempt = self.setup.records[i].attempt;
        let input = match self.setup.dag.node(i).kind {
            NodeKind::Delay { .. } => Input::None,
            _ => self.input_of(i),
        };
        let fut = self.attempt(i, None, input, attempt);
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.running.remove(&i);
            act.child_runs.remove(&(i, None));
            act.children_waited.remove(&(i, None));
            act.finished(i, r, ctx);
        }));
        self.running.insert(i, handle);
    }

    /// One attempt of node `i` (or of its item `item`) on `input`.
    fn attempt(
        &mut self,
        i: usize,
        item: Option<usize>,
        input: Input,
        attempt: u32,
    ) -> LocalBoxFuture<'static, Result<Output, NodeError>> {
        let spec = self.setup.dag.node(i).clone();
        if let NodeKind::Workflow(child) = &spec.kind {
            let run_id = child::child_run_id(&self.setup.run_id, &spec.id, item, attempt);
            self.child_runs.insert((i, item), run_id.clone());
            // The child's inputs, evaluated only if it has to be started.
            let inputs: LocalBoxFuture<'static, Result<Value, NodeError>> = match &child.inputs {
                Some(f) => Box::pin(self.control_filter(i, "inputs", f.clone(), input)),
                None => {
                    let inputs = self.inputs.clone();
                    Box::pin(async move { Ok(Value::clone(&inputs)) })
                }
            };
            let req = ChildRequest {
                run_id,
                user: self.setup.user.clone(),
                parent: Parent {
                    parent_run_id: self.setup.run_id.clone(),
                    parent_node_id: spec.id.clone(),
                },
                depth: self.setup.depth + 1,
                max_depth: self.env.max_child_depth,
                spec: child.clone(),
                timeout: spec.timeout_ms.map(Duration::from_millis),
                quota: self.env.run_quota,
            };
            let (conn, watch) = (self.env.conn.clone(), self.env.children.clone());
            let me = self.myself.clone();
            let waiting = move || {
                if let Some(me) = me {
                    me.do_send(ChildWaiting { node: i, item });
                }
            };
            return Box::pin(async move {
                let out = child::run(conn, watch, req, inputs, waiting).await?;
                output_of(out).await
            });
        }
        let permit = self
            .share_for(&spec.kind)
            .map(|share| share.acquire(&self.setup.user));
        let http = self.env.http.clone();
        let jq = self.env.jq.clone();
        let deadline = match (&spec.kind, spec.timeout_ms) {
            (_, Some(ms)) => Some(Duration::from_millis(ms)),
            (NodeKind::Transform { .. }, None) => Some(node::DEFAULT_TRANSFORM_TIMEOUT),
            _ => None,
        };
        Box::pin(async move {
            // Held until this future ends or is dropped (timeout, cancel).
            let _permit = match permit {
                Some(p) => Some(p.await),
                None => None,
            };
            let input = input.build().await?;
            let run = node::execute(&spec, input, &http, &jq);
            let out = match deadline {
                Some(d) => actix_rt::time::timeout(d, run)
                    .await
                    .unwrap_or_else(|_| Err(NodeError::timeout(d)))?,
                None => run.await?,
            };
            output_of(out).await
        })
    }

    /// Publishes `node_started` for the attempt just begun, in workflows
    /// that ask for it. The record then holds the attempt in flight (no
    /// error), which a resumed run runs again under the same number.
    /// Nodes started together ([`RunActor::start_all`]) share one commit.
    fn announce_start(&mut self, i: usize, ctx: &mut Context<Self>) {
        if !self.setup.dag.workflow.events.node_started {
            return;
        }
        let mut c = match self.starts.take() {
            Some(c) => c,
            None => self.commit(),
        };
        self.setup.records[i].error = None;
        self.set_node(&mut c, i);
        let body = EventBody::NodeStarted {
            run_id: self.setup.run_id.clone(),
            node_id: self.node_id(i).to_owned(),
            attempt: self.setup.records[i].attempt,
        };
        self.push_event(&mut c, body);
        if self.batching {
            self.starts = Some(c);
        } else {
            self.send(c, ctx, |_, _| {});
        }
    }

    /// Starts (or fails) the nodes `nodes` together: their `node_started`
    /// events go out as one commit instead of one each (a wide fan-out
    /// costs one commit, not a hundred). Any other commit made meanwhile
    /// sends the gathered one first ([`RunActor::send`]), so seqs stay in
    /// order.
    fn start_all(
        &mut self,
        nodes: impl IntoIterator<Item = usize>,
        failing: &[(usize, NodeError)],
        ctx: &mut Context<Self>,
    ) {
        self.batching = true;
        for a in nodes {
            self.launch_or_fail(a, failing, ctx);
        }
        self.batching = false;
        if let Some(c) = self.starts.take() {
            self.send(c, ctx, |_, _| {});
        }
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

    /// The error of an output over `--max-output-bytes`, if it is.
    fn too_large(&self, out: &Output) -> Option<NodeError> {
        (out.canonical.len() > self.env.max_output_bytes).then(|| {
            NodeError::fatal(format!(
                "output is {} bytes, over the limit of {} bytes (--max-output-bytes)",
                out.canonical.len(),
                self.env.max_output_bytes
            ))
        })
    }

    fn completed(&mut self, i: usize, out: Output, ctx: &mut Context<Self>) {
        if let Some(e) = self.too_large(&out) {
            return self.failed(i, e, ctx);
        }
        if self.setup.state.nodes()[i] != NodeStatus::Active {
            return; // cancelled meanwhile, or a duplicate: nothing changes
        }
        // Known before the step: the conditions it reaches may read it.
        self.setup.outputs.insert(i, out.value.clone());
        self.advance(i, out, ctx);
    }

    /// Applies node `i`'s completion once every condition the step reaches
    /// is known; evaluates the missing ones first.
    fn advance(&mut self, i: usize, out: Output, ctx: &mut Context<Self>) {
        if self.setup.state.nodes()[i] != NodeStatus::Active
            || self.setup.state.status().is_terminal()
        {
            return; // cancelled meanwhile, or a duplicate: nothing changes
        }
        let dag = self.setup.dag.clone();
        let unknown = self.setup.state.unknown_conditions(
            |c| {
                self.conditions
                    .get(&c)
                    .map(|r| *r.as_ref().unwrap_or(&true))
            },
            |s, gate| {
                let _ = s.complete(&dag, i, gate);
            },
        );
        if !unknown.is_empty() {
            return self
                .evaluate_conditions(unknown, ctx, move |act, ctx| act.advance(i, out, ctx));
        }
        let conditions = &self.conditions;
        let Ok(step) = self.setup.state.complete(&dag, i, &mut |c| {
            conditions
                .get(&c)
                .is_none_or(|r| *r.as_ref().unwrap_or(&true))
        }) else {
            return;
        };
        let Output {
            result_ref,
            canonical,
            ..
        } = out;
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
        self.push_skips(&mut c, &step);
        if step.finished {
            self.push_event(&mut c, EventBody::WorkflowCompleted { run_id, counter: 0 });
        }
        let failing: Vec<(usize, NodeError)> = step
            .activated
            .iter()
            .filter_map(|a| match self.conditions.remove(a) {
                Some(Err(e)) => Some((*a, e)),
                _ => None,
            })
            .collect();
        for (k, _) in &step.skipped {
            self.conditions.remove(k);
        }
        self.send(c, ctx, move |act, ctx| {
            act.start_all(step.activated.iter().copied(), &failing, ctx);
        });
    }

    /// Starts an activated node, or fails it if its condition did not evaluate.
    fn launch_or_fail(
        &mut self,
        a: usize,
        failing: &[(usize, NodeError)],
        ctx: &mut Context<Self>,
    ) {
        match failing.iter().find(|(n, _)| *n == a) {
            Some((_, e)) => {
                self.setup.records[a].attempt += 1;
                self.failed(a, e.clone(), ctx);
            }
            None => self.launch(a, ctx),
        }
    }

    /// Records the nodes a step skipped (output `null`) and their events.
    fn push_skips(&mut self, c: &mut Commit, step: &Step) {
        for &(k, reason) in &step.skipped {
            self.setup.records[k].status = NodeStatus::Skipped;
            self.setup.outputs.insert(k, Arc::new(Value::Null));
            self.set_node(c, k);
            let body = skipped_event(&self.setup.run_id, &self.setup.dag, k, reason, step.counter);
            self.push_event(c, body);
        }
    }

    /// Evaluates the `when` conditions of `nodes`, then calls `then`.
    fn evaluate_conditions(
        &mut self,
        nodes: Vec<usize>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let checks: Vec<_> = nodes
            .into_iter()
            .filter_map(|c| {
                let filter = self.setup.dag.node(c).when.clone()?;
                let eval = self.control_filter(c, "when", filter, self.input_of(c));
                Some(async move {
                    // A condition that cannot decide fails its node, without
                    // retry: a retry would run the node without it.
                    let r = eval
                        .await
                        .map(|v| node::truth(&v))
                        .map_err(|e| NodeError::fatal(e.message));
                    (c, r)
                })
            })
            .collect();
        ctx.spawn(futures_util::future::join_all(checks).into_actor(self).map(
            move |outcomes, act, ctx| {
                act.conditions.extend(outcomes);
                then(act, ctx);
            },
        ));
    }

    /// Evaluates a `foreach` node's array (or takes the resumed one) and
    /// starts its items.
    fn launch_foreach(&mut self, i: usize, ctx: &mut Context<Self>) {
        let resumed = self.setup.foreach.remove(&i).unwrap_or_default();
        if let Some(items) = resumed.items {
            return self.items_ready(
                i,
                Arc::new(Value::Array(items)),
                None,
                resumed.finished,
                ctx,
            );
        }
        // Items committed before a crash stay done even if the array has to
        // be evaluated again.
        let finished = resumed.finished;
        let filter = self.setup.dag.node(i).foreach.clone().unwrap_or_default();
        let eval = self.control_filter(i, "foreach", filter, self.input_of(i));
        let max = self.env.max_foreach_items;
        let fut = async move {
            let items = foreach_items(eval.await?, max)?;
            output_of(Value::Array(items)).await
        };
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.running.remove(&i);
            match r {
                Ok(out) => act.items_ready(i, out.value.clone(), Some(out), finished, ctx),
                Err(e) => act.failed(i, e, ctx),
            }
        }));
        self.running.insert(i, handle);
    }

    /// A `foreach` node's array is known: store it (the first time, with a
    /// `node_progress` of 0 items done; `stored` is its address and bytes)
    /// and start the items.
    fn items_ready(
        &mut self,
        i: usize,
        items: Arc<Value>,
        stored: Option<Output>,
        finished: Vec<(usize, Value)>,
        ctx: &mut Context<Self>,
    ) {
        if self.setup.state.nodes()[i] != NodeStatus::Active {
            return;
        }
        let total = items.as_array().map_or(0, Vec::len);
        let state = Items::new(total, finished);
        if let Some(out) = stored.filter(|_| total > 0) {
            if self.setup.records[i].items_ref.is_none() {
                let mut c = self.commit();
                c.store_result(out.result_ref.clone(), out.canonical);
                self.setup.records[i].items_ref = Some(out.result_ref);
                self.setup.records[i].items = Some(total);
                self.set_node(&mut c, i);
                self.push_progress(&mut c, i, state.done(), state.total());
                self.send(c, ctx, |_, _| {});
            }
        }
        let input = match self.setup.dag.node(i).kind {
            NodeKind::Delay { .. } => None,
            _ => Some(self.input_of(i)),
        };
        if let Some(input) = input {
            // The items' shared input, built once before they start.
            let handle = ctx.spawn(input.build().into_actor(self).map(move |r, act, ctx| {
                act.running.remove(&i);
                match r {
                    Ok(v) => act.run_items(i, items, Some(Arc::new(v)), state, ctx),
                    Err(e) => act.failed(i, e, ctx),
                }
            }));
            self.running.insert(i, handle);
            return;
        }
        self.run_items(i, items, None, state, ctx);
    }

    fn run_items(
        &mut self,
        i: usize,
        items: Arc<Value>,
        input: Option<Arc<Value>>,
        state: Items,
        ctx: &mut Context<Self>,
    ) {
        if self.setup.state.nodes()[i] != NodeStatus::Active {
            return;
        }
        self.foreach.insert(
            i,
            ForeachRun {
                items,
                input,
                state,
                handles: HashMap::new(),
                attempts: HashMap::new(),
            },
        );
        self.pump(i, ctx);
    }

    fn push_progress(&mut self, c: &mut Commit, i: usize, done: usize, total: usize) {
        let body = EventBody::NodeProgress {
            run_id: self.setup.run_id.clone(),
            node_id: self.node_id(i).to_owned(),
            progress: if total == 0 {
                1.0
            } else {
                done as f64 / total as f64
            },
            message: Some(format!("{done}/{total} items")),
            done: Some(done),
            total: Some(total),
        };
        self.push_event(c, body);
    }

    /// Starts the next items of `foreach` node `i`, or completes it once
    /// every item has finished.
    fn pump(&mut self, i: usize, ctx: &mut Context<Self>) {
        let concurrency = self.setup.dag.node(i).concurrency();
        let Some(f) = self.foreach.get_mut(&i) else {
            return;
        };
        if f.state.is_complete() {
            let Some(f) = self.foreach.remove(&i) else {
                return;
            };
            let kind = self.setup.dag.node(i).kind_name();
            self.env
                .metrics
                .nodes
                .with_label_values(&[kind, "completed"])
                .inc();
            // The array of item outputs, assembled and hashed off this thread.
            let state = f.state;
            let handle = ctx.spawn(
                async move { output_of(state.output()).await }
                    .into_actor(self)
                    .map(move |r, act, ctx| {
                        act.running.remove(&i);
                        act.finished_items(i, r, ctx);
                    }),
            );
            self.running.insert(i, handle);
            return;
        }
        for idx in f.state.start(concurrency) {
            self.launch_item(i, idx, ctx);
        }
    }

    /// A `foreach` node's output is assembled: it completes.
    fn finished_items(&mut self, i: usize, r: Result<Output, NodeError>, ctx: &mut Context<Self>) {
        match r {
            Ok(out) => self.completed(i, out, ctx),
            Err(e) => self.failed(i, e, ctx),
        }
    }

    fn launch_item(&mut self, i: usize, idx: usize, ctx: &mut Context<Self>) {
        let Some(f) = self.foreach.get_mut(&i) else {
            return; // the node ended while this item waited for a retry
        };
        let attempt = f.attempts.entry(idx).or_insert(0);
        *attempt += 1;
        let attempt = *attempt;
        let item = f
            .items
            .as_array()
            .and_then(|a| a.get(idx))
            .cloned()
            .unwrap_or(Value::Null);
        let input = match &f.input {
            Some(base) => Input::Item {
                base: base.clone(),
                index: idx,
                item,
            },
            None => Input::None,
        };
        let fut = self.attempt(i, Some(idx), input, attempt);
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.child_runs.remove(&(i, Some(idx)));
            act.children_waited.remove(&(i, Some(idx)));
            act.item_finished(i, idx, r, ctx);
        }));
        if let Some(f) = self.foreach.get_mut(&i) {
            f.handles.insert(idx, handle);
        }
    }

    /// An item's attempt ended: commit it (durable, with `node_progress`),
    /// retry it, or fail the node.
    fn item_finished(
        &mut self,
        i: usize,
        idx: usize,
        r: Result<Output, NodeError>,
        ctx: &mut Context<Self>,
    ) {
        // An item's output is held to the same limit as a node's.
        let r = r.and_then(|out| match self.too_large(&out) {
            Some(e) => Err(e),
            None => Ok(out),
        });
        let Some(f) = self.foreach.get_mut(&i) else {
            return;
        };
        f.handles.remove(&idx);
        let attempt = f.attempts.get(&idx).copied().unwrap_or(1);
        let kind = self.setup.dag.node(i).kind_name();
        match r {
            Ok(out) => {
                let Output {
                    value,
                    result_ref,
                    canonical,
                } = out;
                let value = Arc::try_unwrap(value).unwrap_or_else(|v| Value::clone(&v));
                if f.state.finish(idx, value).is_err() {
                    return;
                }
                let (done, total) = (f.state.done(), f.state.total());
                self.env
                    .metrics
                    .nodes
                    .with_label_values(&[kind, "item_completed"])
                    .inc();
                let mut c = self.commit();
                c.store_result(result_ref.clone(), canonical);
                c.set_item(&self.setup.dag.node(i).id, idx, &result_ref);
                self.push_progress(&mut c, i, done, total);
                self.send(c, ctx, |_, _| {});
                self.pump(i, ctx);
            }
            Err(e) => {
                self.env
                    .metrics
                    .nodes
                    .with_label_values(&[kind, "item_failed"])
                    .inc();
                let dag = self.setup.dag.clone();
                let spec = dag.node(i);
                if e.retryable && attempt < spec.max_attempts() {
                    let wait = spec
                        .retry
                        .map_or(Duration::ZERO, |r| r.backoff_before(attempt + 1));
                    let mut c = self.commit();
                    let body = EventBody::NodeFailed {
                        run_id: self.setup.run_id.clone(),
                        node_id: spec.id.clone(),
                        error: e.message,
                        attempt,
                        will_retry: true,
                        counter: self.setup.state.counter(),
                        item: Some(idx),
                    };
                    self.push_event(&mut c, body);
                    self.send(c, ctx, move |_, ctx| {
                        ctx.run_later(wait, move |act, ctx| act.launch_item(i, idx, ctx));
                    });
                    return;
                }
                let e = NodeError::fatal(format!("item {idx}: {}", e.message));
                self.failed(i, e, ctx);
            }
        }
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
                    item: None,
                },
            );
            self.send(c, ctx, move |_, ctx| {
                ctx.run_later(wait, move |act, ctx| act.launch(i, ctx));
            });
            return;
        }
        let Ok(ended) = self.setup.state.fail(i) else {
            return;
        };
        self.setup.records[i].status = NodeStatus::Failed;
        self.set_node(&mut c, i);
        self.stop_children_of(&[i], ctx);
        let cancelled_nodes = self.cancel_nodes(&ended, &mut c, ctx);
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
                item: None,
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

    /// Stops the attempts of the nodes the run's end cancelled, records
    /// them (and the nodes never reached) as cancelled, and returns the ids
    /// of those that were running.
    fn cancel_nodes(
        &mut self,
        ended: &Ended,
        c: &mut Commit,
        ctx: &mut Context<Self>,
    ) -> Vec<String> {
        self.stop_children_of(&ended.cancelled, ctx);
        for &n in &ended.unreached {
            self.setup.records[n].status = NodeStatus::Cancelled;
            self.set_node(c, n);
        }
        ended
            .cancelled
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

    /// Stops the items of these nodes and asks their child runs to cancel.
    fn stop_children_of(&mut self, nodes: &[usize], ctx: &mut Context<Self>) {
        for n in nodes {
            if let Some(f) = self.foreach.remove(n) {
                for (_, h) in f.handles {
                    ctx.cancel_future(h);
                }
            }
        }
        let children: Vec<String> = self
            .child_runs
            .iter()
            .filter(|((n, _), _)| nodes.contains(n))
            .map(|(_, id)| id.clone())
            .collect();
        self.child_runs.retain(|(n, _), _| !nodes.contains(n));
        self.children_waited.retain(|(n, _)| !nodes.contains(n));
        if children.is_empty() {
            return;
        }
        let mut conn = self.env.conn.clone();
        let run_id = self.setup.run_id.clone();
        actix::spawn(async move {
            for child in children {
                if let Err(e) = runs::cancel_child(&mut conn, &child).await {
                    log::warn!("run {run_id}: could not cancel child run {child} ({e})");
                }
            }
        });
    }

    /// Hands a commit to the Publisher; `then` runs once it is durable.
    /// Gathered `node_started` events, older than `c`'s, go first.
    fn send(
        &mut self,
        c: Commit,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        if let Some(starts) = self.starts.take() {
            self.send_now(starts, ctx, |_, _| {});
        }
        self.send_now(c, ctx, then);
    }

    fn send_now(
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
                        act.release_waits(ctx);
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
        self.myself = Some(ctx.address());
        self.env.metrics.live_runs.inc();
        if self.setup.state.status().is_terminal() {
            // Ended in its initialising commit (every node skipped).
            ctx.stop();
            return;
        }
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
        let failing = std::mem::take(&mut self.setup.failing);
        let active = self.setup.state.active();
        self.start_all(active, &failing, ctx);
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
        let Ok(ended) = self.setup.state.cancel() else {
            return false;
        };
        let mut c = self.commit();
        let cancelled_nodes = self.cancel_nodes(&ended, &mut c, ctx);
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

/// A `workflow` node's attempt found its child run still running: from
/// now on it only waits.
#[derive(Message)]
#[rtype(result = "()")]
struct ChildWaiting {
    node: usize,
    item: Option<usize>,
}

impl Handler<ChildWaiting> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: ChildWaiting, _ctx: &mut Self::Context) {
        let key = (msg.node, msg.item);
        if self.child_runs.contains_key(&key) {
            self.children_waited.insert(key);
            self.clear_crash_loop_if_only_waiting();
        }
    }
}

impl RunActor {
    /// Whether everything the run has in hand only waits: every active
    /// node is an outside wait that a look found in place, or a `workflow`
    /// node whose child run was found running (a `foreach` node counts as
    /// work).
    fn only_waiting(&self) -> bool {
        let child_waited = |i: &usize| self.children_waited.contains(&(*i, None));
        self.foreach.is_empty()
            && self.running.keys().all(child_waited)
            && self
                .setup
                .state
                .active()
                .iter()
                .all(|i| self.wait_established(*i) || child_waited(i))
    }

    /// Once per actor: a resumed run that only waits has done all the work
    /// a resumption does in the daemon, so its crash-loop count is cleared
    /// (`store::leases::only_waiting`). A run whose own work brings its
    /// runners down never gets here, and is still failed after 3 resumptions.
    fn clear_crash_loop_if_only_waiting(&mut self) {
        if self.loop_cleared || !self.setup.resumed || !self.only_waiting() {
            return;
        }
        self.loop_cleared = true;
        let (mut conn, run_id) = (self.env.conn.clone(), self.setup.run_id.clone());
        let owner = self.setup.owner.clone();
        // Detached: nothing waits for it, and a failure only leaves the
        // count as it was.
        actix::spawn(async move {
            if let Err(e) = leases::only_waiting(&mut conn, &run_id, &owner).await {
                log::warn!("run {run_id}: cannot clear its crash-loop count ({e})");
            }
        });
    }
}

impl Handler<Stop> for RunActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Rebuilds a run's in-memory state from its stored record. An active
/// node whose record holds an attempt in flight (`node_started` recorded
/// it, no error since) runs that attempt again under the same number: a
/// `workflow` node then finds the child run that attempt started.
pub fn restore(record: &RunRecord, dag: &Dag) -> (RunState, Vec<NodeRecord>) {
    let records: Vec<NodeRecord> = dag
        .workflow
        .nodes
        .iter()
        .map(|n| {
            let mut r = record
                .nodes
                .get(&n.id)
                .cloned()
                .unwrap_or_else(|| NodeRecord::with_status(NodeStatus::Waiting));
            if r.status == NodeStatus::Active && r.error.is_none() {
                r.attempt = r.attempt.saturating_sub(1);
            }
            r
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

/// How long a control-flow filter (`when`, `foreach`, a child's `inputs`)
/// may run: the node's `timeout_ms`, else the transforms' default.
/// A node waiting outside has a `timeout_ms` that says how long it waits
/// (up to a year), not how long its filters may compute: theirs is the
/// default.
fn filter_deadline(spec: &NodeSpec) -> Duration {
    match spec.timeout_ms {
        Some(ms) if !spec.waits_outside() => Duration::from_millis(ms),
        _ => node::DEFAULT_TRANSFORM_TIMEOUT,
    }
}

/// A `foreach` filter's value as items: an array of at most `max`.
fn foreach_items(v: Value, max: usize) -> Result<Vec<Value>, NodeError> {
    match v {
        Value::Array(a) if a.len() > max => Err(NodeError::fatal(format!(
            "foreach gave {} items; the limit is {max} (--max-foreach-items)",
            a.len()
        ))),
        Value::Array(a) => Ok(a),
        other => Err(NodeError::fatal(format!(
            "foreach gave {}, not a list",
            json_kind(&other)
        ))),
    }
}

/// The `node_skipped` event of node `k`.
pub fn skipped_event(
    run_id: &str,
    dag: &Dag,
    k: usize,
    reason: SkipReason,
    counter: u32,
) -> EventBody {
    EventBody::NodeSkipped {
        run_id: run_id.to_owned(),
        node_id: dag.node(k).id.clone(),
        status: "skipped".into(),
        counter,
        reason: reason.describe(dag),
    }
}

/// A run's first step: the entry nodes decided, with their `when`
/// conditions evaluated over the run's inputs.
pub struct Start {
    /// The state after the step.
    pub state: RunState,
    /// What the step did.
    pub step: Step,
    /// Entry nodes activated although their condition did not evaluate:
    /// they fail once the run actor starts.
    pub failing: Vec<(usize, NodeError)>,
}

/// Decides a run's entry nodes (see [`Start`]): their conditions run in
/// `jq` under a permit of `user`'s share of `compute`, within each node's
/// deadline.
pub async fn start(
    dag: &Dag,
    inputs: &Value,
    user: &str,
    jq: &jq::Pool,
    compute: &FairShare,
) -> Start {
    let mut known: HashMap<usize, Condition> = HashMap::new();
    let truth = |known: &HashMap<usize, Condition>, c: usize| {
        known.get(&c).map(|r| *r.as_ref().unwrap_or(&true))
    };
    // Before the start, nothing has an output: skipped nodes are null.
    let input = Arc::new(serde_json::json!({"inputs": inputs, "nodes": {}}));
    loop {
        let unknown = RunState::unknown_start_conditions(dag, |c| truth(&known, c));
        if unknown.is_empty() {
            break;
        }
        let checks = unknown.into_iter().filter_map(|c| {
            let spec = dag.node(c);
            let filter = spec.when.clone()?;
            let deadline = filter_deadline(spec);
            let permit = compute.acquire(user);
            let input = input.clone();
            Some(async move {
                let _permit = permit.await;
                (c, node::condition(jq, &filter, &input, deadline).await)
            })
        });
        known.extend(futures_util::future::join_all(checks).await);
    }
    let (state, step) = RunState::start(dag, &mut |c| truth(&known, c).unwrap_or(true));
    let failing = step
        .activated
        .iter()
        .filter_map(|a| match known.remove(a) {
            Some(Err(e)) => Some((*a, e)),
            _ => None,
        })
        .collect();
    Start {
        state,
        step,
        failing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_counts_every_part_and_stops_at_the_budget() {
        assert!(small([&json!({"a": [1, 2], "b": "x"})], 5));
        assert!(!small([&json!({"a": [1, 2], "b": "x"})], 4));
        assert!(!small([&json!("y".repeat(5000))], 100));
        let huge = json!((0..100_000).collect::<Vec<_>>());
        assert!(!small([&huge], INLINE_PARTS));
    }

    #[test]
    fn a_waiting_nodes_timeout_is_how_long_it_waits_not_how_long_its_filters_run() {
        let wf = crate::workflow::Workflow::from_json(json!({"tag": "t", "nodes": [
            {"id": "a", "kind": "approval", "timeout_ms": 86_400_000, "when": "true"},
            {"id": "t", "kind": "task", "queue": "q", "when": "true"},
            {"id": "b", "kind": "transform", "filter": ".", "timeout_ms": 100, "when": "true"}
        ]}))
        .unwrap();
        let deadlines: Vec<Duration> = wf.nodes.iter().map(filter_deadline).collect();
        assert_eq!(
            deadlines,
            [
                node::DEFAULT_TRANSFORM_TIMEOUT,
                node::DEFAULT_TRANSFORM_TIMEOUT,
                Duration::from_millis(100)
            ]
        );
    }
}
