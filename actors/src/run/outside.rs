//! The run actor's side of work done outside the daemon: `task`,
//! `approval` and `signal` nodes.
//!
//! Launching such a node starts (or finds) the wait record of its current
//! attempt in Redis (`store::waits`): a task is queued for the user's
//! workers, an approval publishes `approval_required` in a commit of its
//! own. The node then holds its token while the actor watches the wait:
//! when told that it changed (a notice through the runner, [`CheckWaits`]),
//! when a lease or deadline it reported runs out (a timer), and on every
//! (re)start. Each look is [`waits::settle`], which applies deadlines and
//! leases in Redis and says where the wait is; progress reports become
//! `node_progress` events, at most one per node every
//! [`PROGRESS_INTERVAL`]; a final outcome goes through `finished` like any
//! node's (held to `--max-output-bytes`, then the counter step with its
//! `when` conditions): completion, a failure the retry policy judges, or a
//! decision.
//!
//! **Fair share.** Waiting costs nothing: a waiting node holds no
//! execution permit. Only rendering a task's input or an approval's prompt
//! is work, done like a control-flow filter: under a compute permit of the
//! run's user, in the sandboxed jq pool, within the transforms' default
//! deadline (a waiting node's `timeout_ms` is how long it waits).
//!
//! **Why accounting is exact.** The wait decides its outcome once (see
//! `store::waits`). The actor keeps one wait per node, identified by its
//! attempt, and takes it out of its map before applying its outcome, so a
//! second look or a late notice finds nothing to apply; the counter refuses
//! a node that is no longer active. Attempts are numbered as for every node
//! (`run::restore`): a restarted actor relaunches the attempt whose outcome
//! is still to apply under the same number, and so finds its wait; an
//! attempt whose failure was committed is followed by the next. An
//! approval's record names the attempt whose `approval_required` was
//! committed (`asked`), so it is announced once whatever restarts.
//!
//! **Crash loops.** A look that finds a wait waiting may let a resumed run
//! clear its crash-loop count: when its active nodes all wait (see the run
//! actor's `clear_crash_loop_if_only_waiting`), it did all its in-daemon
//! work, and a run waiting for days must not be failed by unrelated
//! crashes. A wait already final at the first look counts as work: its
//! outcome is still to apply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};

use super::{output_of, Output, RunActor};
use crate::counter::NodeStatus;
use crate::event::EventBody;
use crate::node::{self, NodeError, DEFAULT_TRANSFORM_TIMEOUT};
use crate::outside::spec::OnTimeout;
use crate::store::waits::{self, Created, Progress, Settled, WaitId, WaitKind, WaitRef};
use crate::workflow::{NodeKind, NodeSpec};

/// At most one `node_progress` per node this often (10 a second).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Retry delay after Redis failed a look or a creation.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// Added to a reported deadline so that the look comes after it.
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Look at this run's waits again: one node's, or all.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckWaits {
    /// The node's index; `None`: every wait of the run.
    pub node: Option<usize>,
}

/// Does the run have work in the daemon (a node running or retrying in
/// the daemon, a commit on its way)? Runs that only wait on the outside
/// are let go at once by a drain: their waits are durable.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsBusy;

/// The run actor's waits.
#[derive(Default)]
pub(super) struct Waits {
    nodes: HashMap<usize, Wait>,
}

/// One node's current attempt.
struct Wait {
    id: WaitId,
    /// The launch (rendering the input, creating the record), until done.
    launch: Option<SpawnHandle>,
    /// The timer of the next look.
    timer: Option<SpawnHandle>,
    /// A look is on its way; `again`: another was asked for meanwhile.
    checking: bool,
    again: bool,
    /// A look has found the wait waiting: it is established.
    looked: bool,
    /// Progress reports already published, and when the last was.
    progress_sent: u64,
    progress_at: Option<Instant>,
    progress_later: bool,
}

/// The wait of node `spec` (an outside kind).
fn kind_of(spec: &NodeSpec) -> WaitKind<'_> {
    match &spec.kind {
        NodeKind::Task(t) => WaitKind::Task {
            queue: &t.queue,
            lease_ms: t.lease_ms(),
        },
        NodeKind::Signal(s) => WaitKind::Signal { name: &s.name },
        _ => WaitKind::Approval,
    }
}

/// An approval's output: the decision (`by` is `None` when the timeout
/// decided).
pub fn decision(approved: bool, by: Option<&str>, comment: Option<&str>, at_ms: u64) -> Value {
    json!({
        "approved": approved,
        "by": by,
        "comment": comment,
        "at": at_ms,
        "timed_out": by.is_none(),
    })
}

impl RunActor {
    /// Whether node `i` waits outside now (its wait is being started or watched).
    pub(super) fn is_waiting(&self, i: usize) -> bool {
        self.outside.nodes.contains_key(&i)
    }

    /// Starts (or, after a restart, finds) the wait of node `i`'s current
    /// attempt, which `launch` has just numbered.
    pub(super) fn launch_wait(&mut self, i: usize, ctx: &mut Context<Self>) {
        let rec = &mut self.setup.records[i];
        rec.error = None;
        let attempt = rec.attempt;
        let asked = rec.asked == Some(attempt);
        let id = WaitId {
            run_id: self.setup.run_id.clone(),
            node: i,
            attempt,
        };
        let dag = self.setup.dag.clone();
        let spec = dag.node(i);
        let render = self.render(i, spec, asked);
        let mut conn = self.env.conn.clone();
        let user = self.setup.user.clone();
        let max_bytes = self.env.max_output_bytes;
        let wid = id.clone();
        let fut = async move {
            let spec = dag.node(i);
            let rendered = render.await?;
            let text = rendered.to_string();
            if text.len() > max_bytes {
                let what = match spec.kind {
                    NodeKind::Task(_) => "input",
                    _ => "prompt",
                };
                return Err(NodeError::fatal(format!(
                    "the {} node's {what} is {} bytes, over the limit of {max_bytes} bytes (--max-output-bytes)",
                    spec.kind_name(),
                    text.len()
                )));
            }
            let w = WaitRef {
                id: &wid,
                user: &user,
                kind: kind_of(spec),
            };
            loop {
                match waits::create(&mut conn, w, &spec.id, &text, spec.timeout_ms).await {
                    Ok(c) => return Ok(c.map(|c| (rendered, c))),
                    Err(e) => {
                        log::warn!(
                            "run {}: cannot start wait {wid} ({e}); retrying",
                            wid.run_id
                        );
                        actix_rt::time::sleep(REDIS_RETRY).await;
                    }
                }
            }
        };
        let handle = ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            if !act.is_current(i, attempt) {
                return;
            }
            match r {
                Err(e) => {
                    act.outside.nodes.remove(&i);
                    act.finished(i, Err(e), ctx);
                }
                // The run ended meanwhile: its ending commit is on its way.
                Ok(None) => {
                    act.outside.nodes.remove(&i);
                }
                Ok(Some((prompt, created))) => {
                    if let Some(w) = act.outside.nodes.get_mut(&i) {
                        w.launch = None;
                    }
                    let approval = matches!(act.setup.dag.node(i).kind, NodeKind::Approval(_));
                    if approval && !asked {
                        act.announce(i, prompt, created, ctx);
                    } else {
                        act.check_wait(i, ctx);
                    }
                }
            }
        }));
        self.outside.nodes.insert(
            i,
            Wait {
                id,
                launch: Some(handle),
                timer: None,
                checking: false,
                again: false,
                looked: false,
                progress_sent: 0,
                progress_at: None,
                progress_later: false,
            },
        );
    }

    /// What node `i`'s wait carries: a task's input (its `input` filter's
    /// result, else `{inputs, nodes}`), an approval's prompt (unless it was
    /// announced already), nothing for a signal. Rendered under a compute
    /// permit of the run's user, in the sandboxed pool, within the
    /// transforms' default deadline.
    fn render(
        &self,
        i: usize,
        spec: &NodeSpec,
        asked: bool,
    ) -> impl std::future::Future<Output = Result<Value, NodeError>> + 'static {
        let (what, filter) = match &spec.kind {
            NodeKind::Task(t) => ("input", t.input.clone()),
            NodeKind::Approval(a) if !asked => ("prompt", a.prompt.clone()),
            _ => ("", None),
        };
        let needs_input = matches!(spec.kind, NodeKind::Task(_)) || filter.is_some();
        let default_prompt = match &spec.kind {
            NodeKind::Approval(_) if !asked => Value::String(format!("approve {}?", spec.id)),
            _ => Value::Null,
        };
        let input = needs_input.then(|| self.input_of(i));
        let (compute, user) = (self.env.shares.compute.clone(), self.setup.user.clone());
        let jq = self.env.jq.clone();
        async move {
            let Some(input) = input else {
                return Ok(default_prompt);
            };
            let _permit = compute.acquire(&user).await;
            let input = input.build().await?;
            match filter {
                Some(f) => node::evaluate(&jq, what, &f, &input, DEFAULT_TRANSFORM_TIMEOUT).await,
                None => Ok(input),
            }
        }
    }

    /// Whether node `i` still waits on `attempt`, in a running run.
    fn is_current(&self, i: usize, attempt: u32) -> bool {
        self.setup.state.nodes()[i] == NodeStatus::Active
            && !self.setup.state.status().is_terminal()
            && self
                .outside
                .nodes
                .get(&i)
                .is_some_and(|w| w.id.attempt == attempt)
    }

    /// Publishes `approval_required`, with the attempt recorded as asked,
    /// then watches the wait.
    fn announce(&mut self, i: usize, prompt: Value, created: Created, ctx: &mut Context<Self>) {
        let mut c = self.commit();
        let rec = &mut self.setup.records[i];
        rec.asked = Some(rec.attempt);
        self.set_node(&mut c, i);
        let body = EventBody::ApprovalRequired {
            run_id: self.setup.run_id.clone(),
            node_id: self.node_id(i).to_owned(),
            prompt,
            expires_at: created.deadline_ms,
        };
        self.push_event(&mut c, body);
        self.send(c, ctx, move |act, ctx| act.check_wait(i, ctx));
    }

    /// Looks at node `i`'s wait (one look at a time).
    pub(super) fn check_wait(&mut self, i: usize, ctx: &mut Context<Self>) {
        let Some(w) = self.outside.nodes.get_mut(&i) else {
            return;
        };
        if w.launch.is_some() {
            // The launch looks once the record exists.
            return;
        }
        if w.checking {
            w.again = true;
            return;
        }
        w.checking = true;
        let id = w.id.clone();
        let attempt = id.attempt;
        let dag = self.setup.dag.clone();
        let user = self.setup.user.clone();
        let mut conn = self.env.conn.clone();
        let fut = async move {
            let w = WaitRef {
                id: &id,
                user: &user,
                kind: kind_of(dag.node(i)),
            };
            waits::settle(&mut conn, w).await
        };
        ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            if !act.is_current(i, attempt) {
                return;
            }
            if let Some(w) = act.outside.nodes.get_mut(&i) {
                w.checking = false;
            }
            match r {
                Err(e) => {
                    log::warn!(
                        "run {}: cannot read a wait ({e}); retrying",
                        act.setup.run_id
                    );
                    act.look_later(i, REDIS_RETRY, ctx);
                }
                Ok(Settled::Waiting {
                    next_check,
                    progress,
                }) => {
                    if let Some(w) = act.outside.nodes.get_mut(&i) {
                        w.looked = true;
                    }
                    act.progress(i, progress, ctx);
                    let again = act
                        .outside
                        .nodes
                        .get_mut(&i)
                        .is_some_and(|w| std::mem::take(&mut w.again));
                    if again {
                        act.check_wait(i, ctx);
                    } else if let Some(d) = next_check {
                        act.look_later(i, d + TIMER_SLACK, ctx);
                    }
                    act.clear_crash_loop_if_only_waiting();
                }
                Ok(done) => {
                    if let Some(w) = act.outside.nodes.remove(&i) {
                        if let Some(h) = w.timer {
                            ctx.cancel_future(h);
                        }
                    }
                    act.setup.records[i].asked = None;
                    let outcome = act.outcome(i, done);
                    act.apply_outcome(i, outcome, ctx);
                }
            }
        }));
    }

    /// Hands a wait's outcome to `finished`, its output hashed first (off
    /// this thread when large); the hashing counts as running.
    fn apply_outcome(
        &mut self,
        i: usize,
        outcome: Result<Value, NodeError>,
        ctx: &mut Context<Self>,
    ) {
        let fut = async move {
            match outcome {
                Ok(v) => output_of(v).await,
                Err(e) => Err(e),
            }
        };
        let handle = ctx.spawn(fut.into_actor(self).map(
            move |r: Result<Output, NodeError>, act, ctx| {
                act.running.remove(&i);
                act.finished(i, r, ctx);
            },
        ));
        self.running.insert(i, handle);
    }

    /// Whether node `i` waits outside with its wait established (a look
    /// found it waiting).
    pub(super) fn wait_established(&self, i: usize) -> bool {
        self.outside
            .nodes
            .get(&i)
            .is_some_and(|w| w.looked && w.launch.is_none())
    }

    /// Schedules the next look at node `i` (replacing the one scheduled).
    fn look_later(&mut self, i: usize, after: Duration, ctx: &mut Context<Self>) {
        let handle = ctx.run_later(after, move |act, ctx| {
            if let Some(w) = act.outside.nodes.get_mut(&i) {
                w.timer = None;
            }
            act.check_wait(i, ctx);
        });
        if let Some(w) = self.outside.nodes.get_mut(&i) {
            if let Some(old) = w.timer.replace(handle) {
                ctx.cancel_future(old);
            }
        }
    }

    /// Publishes the latest progress report, at most once per
    /// [`PROGRESS_INTERVAL`]; a report within it is published at its end
    /// (the latest one then).
    fn progress(&mut self, i: usize, p: Progress, ctx: &mut Context<Self>) {
        let Some(w) = self.outside.nodes.get_mut(&i) else {
            return;
        };
        if p.reports <= w.progress_sent {
            return;
        }
        let now = Instant::now();
        if let Some(next) = w.progress_at.map(|at| at + PROGRESS_INTERVAL) {
            if now < next {
                if !std::mem::replace(&mut w.progress_later, true) {
                    ctx.run_later(next - now, move |act, ctx| {
                        if let Some(w) = act.outside.nodes.get_mut(&i) {
                            w.progress_later = false;
                        }
                        act.check_wait(i, ctx);
                    });
                }
                return;
            }
        }
        w.progress_sent = p.reports;
        w.progress_at = Some(now);
        let mut c = self.commit();
        let body = EventBody::NodeProgress {
            run_id: self.setup.run_id.clone(),
            node_id: self.node_id(i).to_owned(),
            progress: p.progress.unwrap_or(0.0).clamp(0.0, 1.0),
            message: p.message,
            done: None,
            total: None,
        };
        self.push_event(&mut c, body);
        self.send(c, ctx, |_, _| {});
    }

    /// A wait's final state as the attempt's result.
    fn outcome(&self, i: usize, s: Settled) -> Result<Value, NodeError> {
        let spec = self.setup.dag.node(i);
        match s {
            Settled::Completed { output } => serde_json::from_str(&output)
                .map_err(|e| NodeError::fatal(format!("the output is not JSON: {e}"))),
            Settled::Failed { error, retryable } => Err(NodeError {
                message: format!("worker: {error}"),
                retryable,
            }),
            Settled::Expired {
                worker_id,
                lease_ms,
            } => Err(NodeError::retryable(format!(
                "lease expired: worker {worker_id:?} did not report within {lease_ms} ms"
            ))),
            Settled::TimedOut { deadline_ms } => match &spec.kind {
                NodeKind::Approval(a) => Ok(decision(
                    a.on_timeout == OnTimeout::Approve,
                    None,
                    None,
                    deadline_ms,
                )),
                _ => Err(NodeError::timeout(Duration::from_millis(
                    spec.timeout_ms.unwrap_or_default(),
                ))),
            },
            Settled::Cancelled | Settled::Missing | Settled::Waiting { .. } => Err(
                NodeError::retryable("the wait's record was cancelled or is gone"),
            ),
        }
    }

    /// Once the commit that ended the run is durable: stops watching its
    /// waits. That commit cancelled the open ones in Redis (queued tasks
    /// left their queue; workers' reports are refused).
    pub(super) fn release_waits(&mut self, ctx: &mut Context<Self>) {
        for (_, w) in self.outside.nodes.drain() {
            for h in [w.launch, w.timer].into_iter().flatten() {
                ctx.cancel_future(h);
            }
        }
    }
}

impl Handler<CheckWaits> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: CheckWaits, ctx: &mut Self::Context) {
        let nodes: Vec<usize> = match msg.node {
            Some(i) => vec![i],
            None => self.outside.nodes.keys().copied().collect(),
        };
        for i in nodes {
            self.check_wait(i, ctx);
        }
    }
}

impl Handler<IsBusy> for RunActor {
    type Result = bool;

    fn handle(&mut self, _: IsBusy, _ctx: &mut Self::Context) -> bool {
        self.in_flight > 0
            || !self.running.is_empty()
            || self
                .setup
                .state
                .active()
                .iter()
                .any(|&i| !self.setup.dag.node(i).waits_outside())
    }
}
