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

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::{Map, Value};

use crate::counter::{NodeStatus, RunState, RunStatus};
use crate::event::{Event, EventBody};
use crate::http_node::HttpClient;
use crate::metrics::Metrics;
use crate::node::{self, NodeError};
use crate::publisher::{self, Publisher};
use crate::result;
use crate::store::{Commit, NodeRecord, Outcome, RunRecord};
use crate::workflow::Dag;

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
}

/// The run actor.
pub struct RunActor {
    setup: RunSetup,
    publisher: Addr<Publisher>,
    runner: Recipient<RunStopped>,
    http: Rc<HttpClient>,
    metrics: Metrics,
    running: HashMap<usize, SpawnHandle>,
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
    ) -> Self {
        Self {
            setup,
            publisher,
            runner,
            http,
            metrics,
            running: HashMap::new(),
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
        let input = match spec.kind {
            crate::workflow::NodeKind::Delay { .. } => Value::Null,
            _ => self.input_for(i),
        };
        let http = self.http.clone();
        let deadline = match (&spec.kind, spec.timeout_ms) {
            (_, Some(ms)) => Some(Duration::from_millis(ms)),
            (crate::workflow::NodeKind::Transform { .. }, None) => {
                Some(node::DEFAULT_TRANSFORM_TIMEOUT)
            }
            _ => None,
        };
        let fut = async move {
            let run = node::execute(&spec, input, &http);
            match deadline {
                Some(d) => actix_rt::time::timeout(d, run)
                    .await
                    .unwrap_or_else(|_| Err(NodeError::timeout(d))),
                None => run.await,
            }
        };
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            act.running.remove(&i);
            act.finished(i, r, ctx);
        }));
        self.running.insert(i, handle);
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
        let dag = self.setup.dag.clone();
        let Ok(step) = self.setup.state.complete(&dag, i) else {
            return; // cancelled meanwhile, or a duplicate: nothing changes
        };
        let (result_ref, bytes) = result::address(&out);
        self.setup.outputs.insert(i, out);
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
        if self.setup.cancel_requested {
            ctx.notify(Cancel);
            return;
        }
        for i in self.setup.state.active() {
            self.launch(i, ctx);
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
