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
//! Control flow (see `counter`): a completion that makes nodes ready first
//! has their `when` conditions evaluated (a node's inputs are final once
//! its parents have finished), then applies the step with their outcomes,
//! so a skip is in the same commit as the completion that caused it. A
//! `foreach` node evaluates its array once (stored with its first
//! `node_progress`), runs its items `concurrency` at a time and commits each
//! finished item on its own (`foreach::Items`), so a resumed run redoes
//! none of them. A `workflow` node runs a child run (`child`); cancelling
//! or failing the run asks its running children to cancel. Workflows that
//! ask for it get a `node_started` commit when each attempt begins.

use std::collections::HashMap;
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
use crate::foreach::Items;
use crate::http_node::HttpClient;
use crate::metrics::Metrics;
use crate::node::{self, NodeError};
use crate::publisher::{self, Publisher};
use crate::result;
use crate::store::{runs, Commit, NodeRecord, Outcome, RunRecord};
use crate::workflow::{json_kind, Dag, NodeKind};

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
    pub outputs: HashMap<usize, Value>,
    /// The last committed event seq.
    pub seq: u64,
    /// This runner's instance id (the lease holder).
    pub owner: String,
    /// How long each commit extends the lease.
    pub lease: Duration,
    /// The owner asked to cancel it before this actor existed.
    pub cancel_requested: bool,
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

/// What run actors share beyond the Publisher: Redis for child runs and
/// cancel requests, the waiters on child runs, the control-flow limits.
#[derive(Clone)]
pub struct FlowEnv {
    /// Commands to Redis (child runs; cancelling them).
    pub conn: ConnectionManager,
    /// Wakes parents whose child ends in this process.
    pub children: ChildWatch,
    /// `--max-foreach-items`.
    pub max_foreach_items: usize,
    /// `--max-child-depth`.
    pub max_child_depth: u32,
}

/// A `foreach` node whose items are running.
struct ForeachRun {
    items: Rc<Vec<Value>>,
    /// The node's `{inputs, nodes}`, built once for all its items.
    input: Value,
    state: Items,
    handles: HashMap<usize, SpawnHandle>,
    attempts: HashMap<usize, u32>,
}

/// A condition's outcome: whether the node runs, or the error that fails it.
type Condition = Result<bool, NodeError>;

/// The run actor.
pub struct RunActor {
    setup: RunSetup,
    publisher: Addr<Publisher>,
    runner: Recipient<RunStopped>,
    http: Rc<HttpClient>,
    metrics: Metrics,
    flow: FlowEnv,
    running: HashMap<usize, SpawnHandle>,
    /// `foreach` nodes with items running.
    foreach: HashMap<usize, ForeachRun>,
    /// Child runs being waited for, by node and item.
    child_runs: HashMap<(usize, Option<usize>), String>,
    /// `when` outcomes evaluated and not yet used by a step.
    conditions: HashMap<usize, Condition>,
    /// Commits handed to the Publisher and not yet answered.
    in_flight: usize,
}

impl RunActor {
    /// A run actor for `setup`.
    pub fn new(
        setup: RunSetup,
        publisher: Addr<Publisher>,
        runner: Recipient<RunStopped>,
        http: Rc<HttpClient>,
        metrics: Metrics,
        flow: FlowEnv,
    ) -> Self {
        Self {
            setup,
            publisher,
            runner,
            http,
            metrics,
            flow,
            running: HashMap::new(),
            foreach: HashMap::new(),
            child_runs: HashMap::new(),
            conditions: HashMap::new(),
            in_flight: 0,
        }
    }

    fn node_id(&self, i: usize) -> &str {
        &self.setup.dag.node(i).id
    }

    /// `{inputs, nodes: {<id>: <output>}}` for node `i`'s filters, with the
    /// outputs of its ancestors: all completed before `i` was activated, so
    /// the input never depends on timing.
    fn input_for(&self, i: usize) -> Value {
        let dag = &self.setup.dag;
        let mut seen = vec![false; dag.len()];
        let mut stack = dag.parents[i].clone();
        let mut nodes = Map::new();
        while let Some(p) = stack.pop() {
            if std::mem::replace(&mut seen[p], true) {
                continue;
            }
            if let Some(v) = self.setup.outputs.get(&p) {
                nodes.insert(dag.node(p).id.clone(), v.clone());
            }
            stack.extend(&dag.parents[p]);
        }
        serde_json::json!({"inputs": self.setup.inputs, "nodes": nodes})
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
        if st.status().is_terminal() {
            c.active = -1;
        }
    }

    /// Starts an attempt of node `i` (for a `foreach` node: its items).
    fn launch(&mut self, i: usize, ctx: &mut Context<Self>) {
        if self.setup.state.nodes()[i] != NodeStatus::Active
            || self.running.contains_key(&i)
            || self.foreach.contains_key(&i)
        {
            return;
        }
        self.setup.records[i].attempt += 1;
        self.announce_start(i, ctx);
        if self.setup.dag.node(i).foreach.is_some() {
            return self.launch_foreach(i, ctx);
        }
        let attempt = self.setup.records[i].attempt;
        let fut = self.attempt(i, None, attempt);
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.running.remove(&i);
            act.child_runs.remove(&(i, None));
            act.finished(i, r, ctx);
        }));
        self.running.insert(i, handle);
    }

    /// One attempt of node `i`, or of its item `item` (index, value, and
    /// the node's input, which the item's is built on).
    fn attempt(
        &mut self,
        i: usize,
        item: Option<(usize, Value, Value)>,
        attempt: u32,
    ) -> LocalBoxFuture<'static, Result<Value, NodeError>> {
        let spec = self.setup.dag.node(i).clone();
        let index = item.as_ref().map(|(idx, _, _)| *idx);
        let input = match (item, &spec.kind) {
            (Some((idx, v, mut input)), _) => {
                if let Value::Object(m) = &mut input {
                    m.insert("item".into(), v);
                    m.insert("index".into(), idx.into());
                }
                input
            }
            (None, NodeKind::Delay { .. }) => Value::Null,
            (None, _) => self.input_for(i),
        };
        if let NodeKind::Workflow(child) = &spec.kind {
            let run_id = child::child_run_id(&self.setup.run_id, &spec.id, index, attempt);
            self.child_runs.insert((i, index), run_id.clone());
            let req = ChildRequest {
                run_id,
                user: self.setup.user.clone(),
                parent: Parent {
                    parent_run_id: self.setup.run_id.clone(),
                    parent_node_id: spec.id.clone(),
                },
                depth: self.setup.depth + 1,
                max_depth: self.flow.max_child_depth,
                spec: child.clone(),
                input,
                timeout: spec.timeout_ms.map(Duration::from_millis),
            };
            return Box::pin(child::run(
                self.flow.conn.clone(),
                self.flow.children.clone(),
                req,
            ));
        }
        let http = self.http.clone();
        let deadline = match (&spec.kind, spec.timeout_ms) {
            (_, Some(ms)) => Some(Duration::from_millis(ms)),
            (NodeKind::Transform { .. }, None) => Some(node::DEFAULT_TRANSFORM_TIMEOUT),
            _ => None,
        };
        Box::pin(async move {
            let run = node::execute(&spec, input, &http);
            match deadline {
                Some(d) => actix_rt::time::timeout(d, run)
                    .await
                    .unwrap_or_else(|_| Err(NodeError::timeout(d))),
                None => run.await,
            }
        })
    }

    /// Publishes `node_started` for the attempt just begun, in workflows
    /// that ask for it. The record then holds the attempt in flight (no
    /// error), which a resumed run runs again under the same number.
    fn announce_start(&mut self, i: usize, ctx: &mut Context<Self>) {
        if !self.setup.dag.workflow.events.node_started {
            return;
        }
        let mut c = self.commit();
        self.setup.records[i].error = None;
        self.set_node(&mut c, i);
        let body = EventBody::NodeStarted {
            run_id: self.setup.run_id.clone(),
            node_id: self.node_id(i).to_owned(),
            attempt: self.setup.records[i].attempt,
        };
        self.push_event(&mut c, body);
        self.send(c, ctx, |_, _| {});
    }

    fn finished(&mut self, i: usize, r: Result<Value, NodeError>, ctx: &mut Context<Self>) {
        let kind = self.setup.dag.node(i).kind_name();
        match r {
            Ok(out) => {
                self.metrics
                    .nodes
                    .with_label_values(&[kind, "completed"])
                    .inc();
                self.completed(i, out, ctx)
            }
            Err(e) => {
                self.metrics
                    .nodes
                    .with_label_values(&[kind, "failed"])
                    .inc();
                self.failed(i, e, ctx)
            }
        }
    }

    fn completed(&mut self, i: usize, out: Value, ctx: &mut Context<Self>) {
        // Known before the step: the conditions it reaches may read it.
        self.setup.outputs.insert(i, out);
        self.advance(i, ctx);
    }

    /// Applies node `i`'s completion once every condition the step reaches
    /// is known; evaluates the missing ones first.
    fn advance(&mut self, i: usize, ctx: &mut Context<Self>) {
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
            return self.evaluate_conditions(unknown, ctx, move |act, ctx| act.advance(i, ctx));
        }
        let Some(out) = self.setup.outputs.get(&i) else {
            return;
        };
        let (result_ref, bytes) = result::address(out);
        let conditions = &self.conditions;
        let Ok(step) = self.setup.state.complete(&dag, i, &mut |c| {
            conditions
                .get(&c)
                .is_none_or(|r| *r.as_ref().unwrap_or(&true))
        }) else {
            return;
        };
        let mut c = self.commit();
        c.store_result(
            result_ref.clone(),
            String::from_utf8(bytes).unwrap_or_default(),
        );
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
            for &a in &step.activated {
                act.launch_or_fail(a, &failing, ctx);
            }
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
            self.setup.outputs.insert(k, Value::Null);
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
        let checks = nodes
            .into_iter()
            .filter_map(|c| {
                let spec = self.setup.dag.node(c);
                let filter = spec.when.clone()?;
                Some((
                    c,
                    filter,
                    self.input_for(c),
                    condition_deadline(spec.timeout_ms),
                ))
            })
            .collect();
        ctx.spawn(
            node::conditions(checks)
                .into_actor(self)
                .map(move |outcomes, act, ctx| {
                    act.conditions.extend(outcomes);
                    then(act, ctx);
                }),
        );
    }

    /// Evaluates a `foreach` node's array (or takes the resumed one) and
    /// starts its items.
    fn launch_foreach(&mut self, i: usize, ctx: &mut Context<Self>) {
        let resumed = self.setup.foreach.remove(&i).unwrap_or_default();
        if let Some(items) = resumed.items {
            return self.items_ready(i, items, resumed.finished, ctx);
        }
        // Items committed before a crash stay done even if the array has to
        // be evaluated again.
        let finished = resumed.finished;
        let spec = self.setup.dag.node(i);
        let filter = spec.foreach.clone().unwrap_or_default();
        let deadline = condition_deadline(spec.timeout_ms);
        let max = self.flow.max_foreach_items;
        let input = self.input_for(i);
        let fut = async move {
            let v = actix_rt::time::timeout(deadline, node::evaluate("foreach", &filter, input))
                .await
                .unwrap_or_else(|_| {
                    Err(NodeError::fatal(format!(
                        "foreach: timed out after {} ms",
                        deadline.as_millis()
                    )))
                })?;
            foreach_items(v, max)
        };
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.running.remove(&i);
            match r {
                Ok(items) => act.items_ready(i, items, finished, ctx),
                Err(e) => act.failed(i, e, ctx),
            }
        }));
        self.running.insert(i, handle);
    }

    /// A `foreach` node's array is known: store it (the first time, with a
    /// `node_progress` of 0 items done) and start the items.
    fn items_ready(
        &mut self,
        i: usize,
        items: Vec<Value>,
        finished: Vec<(usize, Value)>,
        ctx: &mut Context<Self>,
    ) {
        if self.setup.state.nodes()[i] != NodeStatus::Active {
            return;
        }
        let state = Items::new(items.len(), finished);
        if self.setup.records[i].items_ref.is_none() && !items.is_empty() {
            let array = Value::Array(items);
            let (items_ref, bytes) = result::address(&array);
            let Value::Array(back) = array else {
                return;
            };
            let mut c = self.commit();
            c.store_result(
                items_ref.clone(),
                String::from_utf8(bytes).unwrap_or_default(),
            );
            self.setup.records[i].items_ref = Some(items_ref);
            self.setup.records[i].items = Some(back.len());
            self.set_node(&mut c, i);
            self.push_progress(&mut c, i, state.done(), state.total());
            self.send(c, ctx, |_, _| {});
            return self.run_items(i, back, state, ctx);
        }
        self.run_items(i, items, state, ctx);
    }

    fn run_items(&mut self, i: usize, items: Vec<Value>, state: Items, ctx: &mut Context<Self>) {
        let input = match self.setup.dag.node(i).kind {
            NodeKind::Delay { .. } => Value::Null,
            _ => self.input_for(i),
        };
        self.foreach.insert(
            i,
            ForeachRun {
                items: Rc::new(items),
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
            message: format!("{done}/{total} items"),
            done,
            total,
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
            let out = f.state.output();
            self.foreach.remove(&i);
            let kind = self.setup.dag.node(i).kind_name();
            self.metrics
                .nodes
                .with_label_values(&[kind, "completed"])
                .inc();
            return self.completed(i, out, ctx);
        }
        for idx in f.state.start(concurrency) {
            self.launch_item(i, idx, ctx);
        }
    }

    fn launch_item(&mut self, i: usize, idx: usize, ctx: &mut Context<Self>) {
        let Some(f) = self.foreach.get_mut(&i) else {
            return; // the node ended while this item waited for a retry
        };
        let attempt = f.attempts.entry(idx).or_insert(0);
        *attempt += 1;
        let attempt = *attempt;
        let item = f.items.get(idx).cloned().unwrap_or(Value::Null);
        let input = f.input.clone();
        let fut = self.attempt(i, Some((idx, item, input)), attempt);
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.child_runs.remove(&(i, Some(idx)));
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
        r: Result<Value, NodeError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(f) = self.foreach.get_mut(&i) else {
            return;
        };
        f.handles.remove(&idx);
        let attempt = f.attempts.get(&idx).copied().unwrap_or(1);
        let kind = self.setup.dag.node(i).kind_name();
        match r {
            Ok(out) => {
                let (item_ref, bytes) = result::address(&out);
                if f.state.finish(idx, out).is_err() {
                    return;
                }
                let (done, total) = (f.state.done(), f.state.total());
                self.metrics
                    .nodes
                    .with_label_values(&[kind, "item_completed"])
                    .inc();
                let mut c = self.commit();
                c.store_result(
                    item_ref.clone(),
                    String::from_utf8(bytes).unwrap_or_default(),
                );
                c.set_item(&self.setup.dag.node(i).id, idx, &item_ref);
                self.push_progress(&mut c, i, done, total);
                self.send(c, ctx, |_, _| {});
                self.pump(i, ctx);
            }
            Err(e) => {
                self.metrics
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
        if children.is_empty() {
            return;
        }
        let mut conn = self.flow.conn.clone();
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
        let durable = publisher::publish(&self.publisher, c);
        ctx.spawn(durable.into_actor(self).map(move |outcome, act, ctx| {
            act.in_flight -= 1;
            match outcome {
                Some(Outcome::Applied(_)) => {
                    if let Some(outcome) = ended {
                        act.metrics.runs.with_label_values(&[outcome]).inc();
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
        self.metrics.live_runs.inc();
        if self.setup.state.status().is_terminal() {
            // Ended in its initialising commit (every node skipped).
            ctx.stop();
            return;
        }
        if self.setup.cancel_requested {
            ctx.notify(Cancel);
            return;
        }
        let failing = std::mem::take(&mut self.setup.failing);
        for i in self.setup.state.active() {
            self.launch_or_fail(i, &failing, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.metrics.live_runs.dec();
        let _ = self.runner.try_send(RunStopped {
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

/// How long a `when` or `foreach` filter may run: the node's `timeout_ms`,
/// else the transforms' default.
fn condition_deadline(timeout_ms: Option<u64>) -> Duration {
    timeout_ms.map_or(node::DEFAULT_TRANSFORM_TIMEOUT, Duration::from_millis)
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

/// Decides a run's entry nodes (see [`Start`]).
pub async fn start(dag: &Dag, inputs: &Value) -> Start {
    let mut known: HashMap<usize, Condition> = HashMap::new();
    let truth = |known: &HashMap<usize, Condition>, c: usize| {
        known.get(&c).map(|r| *r.as_ref().unwrap_or(&true))
    };
    loop {
        let unknown = RunState::unknown_start_conditions(dag, |c| truth(&known, c));
        if unknown.is_empty() {
            break;
        }
        // Before the start, nothing has an output: skipped nodes are null.
        let input = serde_json::json!({"inputs": inputs, "nodes": {}});
        let checks = unknown
            .into_iter()
            .filter_map(|c| {
                let spec = dag.node(c);
                Some((
                    c,
                    spec.when.clone()?,
                    input.clone(),
                    condition_deadline(spec.timeout_ms),
                ))
            })
            .collect();
        known.extend(node::conditions(checks).await);
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
