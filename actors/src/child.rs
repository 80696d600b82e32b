//! Child runs: what a `workflow` node does.
//!
//! An attempt of a `workflow` node queues a run of the child workflow for
//! the same user (through the request stream, like any run, so any runner
//! may take it), with `parent_run_id`, `parent_node_id` and its depth
//! stored on it, and waits for it to end. The child's tag resolves as a
//! run's does: the user's own workflow first, then the shared one. The
//! child's id is derived from the parent run, the node, the item (with
//! `foreach`) and the attempt, and queueing it is a no-op when it exists: a
//! parent resumed after a crash finds the child it had started instead of
//! starting another.
//!
//! A child run is an active run of its user, so it counts against
//! `--max-active-runs-per-user` (not against the rate limit: it belongs to
//! a run admitted already). A child refused by that quota writes nothing;
//! its node fails with a message saying so (retryable: its retry policy
//! may wait for a slot), and nothing accepted is lost.
//!
//! The wait ends when the child's status is terminal. A child that ends in
//! this process wakes its parent at once through [`ChildWatch`] (the runner
//! calls [`ChildWatch::ended`] when a run actor stops); a child held by
//! another instance is noticed by polling, at most [`MAX_POLL`] apart.
//! Completed: the node's output maps each of the child's sink nodes to its
//! output. Failed or cancelled: the node fails. A node's `timeout_ms`
//! bounds the wait and cancels the child when it runs out; cancelling the
//! parent cancels its children (the run actor asks, with
//! `store::runs::request_cancel`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::counter::{NodeStatus, RunStatus};
use crate::error::{Error, Result};
use crate::event::Parent;
use crate::node::NodeError;
use crate::store::runs::{ChildAdmission, RunQuota};
use crate::store::{runs, workflows, RunRecord};
use crate::workflow::{json_kind, ChildSpec};

/// Longest pause between two looks at a child held by another instance.
pub const MAX_POLL: Duration = Duration::from_secs(1);
/// First pause between two looks.
const FIRST_POLL: Duration = Duration::from_millis(50);
/// Retry delays of Redis calls that failed (the wait outlives an outage).
const REDIS_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Wakes the parents waiting for child runs that end in this process. One
/// per runner, shared by its run actors (one thread).
#[derive(Clone, Default)]
pub struct ChildWatch(Rc<RefCell<HashMap<String, Rc<Notify>>>>);

impl ChildWatch {
    /// A run actor of this process stopped: wake whoever waits for its run.
    pub fn ended(&self, run_id: &str) {
        if let Some(n) = self.0.borrow().get(run_id) {
            n.notify_one();
        }
    }

    fn watch(&self, run_id: &str) -> Watching {
        let notify = self
            .0
            .borrow_mut()
            .entry(run_id.to_owned())
            .or_default()
            .clone();
        Watching {
            watch: self.clone(),
            run_id: run_id.to_owned(),
            notify,
        }
    }
}

/// A registered waiter; unregisters when dropped (the wait ended or was
/// cancelled).
struct Watching {
    watch: ChildWatch,
    run_id: String,
    notify: Rc<Notify>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.watch.0.borrow_mut().remove(&self.run_id);
    }
}

/// The id of the child run an attempt of a `workflow` node starts: the same
/// for the same parent run, node, item and attempt, so that starting it
/// again finds it.
pub fn child_run_id(
    parent_run_id: &str,
    node_id: &str,
    item: Option<usize>,
    attempt: u32,
) -> String {
    let mut h = Sha256::new();
    for part in [
        "flowcast child run",
        parent_run_id,
        node_id,
        &item.map_or("-".into(), |i| i.to_string()),
        &attempt.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// One attempt of a `workflow` node (or of one of its items).
pub struct ChildRequest {
    /// The child run's id ([`child_run_id`]).
    pub run_id: String,
    /// The user both runs belong to.
    pub user: String,
    /// The parent run and node.
    pub parent: Parent,
    /// The child's depth (the parent's plus one).
    pub depth: u32,
    /// `--max-child-depth`.
    pub max_depth: u32,
    /// The node's child spec.
    pub spec: ChildSpec,
    /// The node's `timeout_ms`: how long the child may take.
    pub timeout: Option<Duration>,
    /// The user's quotas: a new child is one more active run.
    pub quota: RunQuota,
}

/// Starts the child run (unless it exists) with the inputs `inputs`
/// yields (awaited only if the child has to be started: the node's
/// `inputs` filter, evaluated by the run actor's sandboxed pool), and
/// waits for its end. `waiting` is called once the child is found still
/// running: from then on the node only waits, until the child ends.
pub async fn run(
    conn: ConnectionManager,
    watch: ChildWatch,
    req: ChildRequest,
    inputs: impl Future<Output = Result<Value, NodeError>>,
    waiting: impl FnOnce(),
) -> Result<Value, NodeError> {
    if req.depth > req.max_depth {
        return Err(NodeError::fatal(format!(
            "child workflow {:?} would be nested {} deep; the limit is {} (--max-child-depth)",
            req.spec.tag, req.depth, req.max_depth
        )));
    }
    let watching = watch.watch(&req.run_id);
    let id = req.run_id.as_str();
    if redis_retry(&conn, |mut c| async move { runs::status(&mut c, id).await })
        .await?
        .is_none()
    {
        start(&conn, &req, inputs.await?).await?;
    } else {
        drop(inputs);
    }
    let ended = wait_end(&conn, &watching, waiting);
    let status = match req.timeout {
        None => ended.await?,
        Some(t) => match actix_rt::time::timeout(t, ended).await {
            Ok(s) => s?,
            Err(_) => {
                let _ = runs::request_cancel(&mut conn.clone(), id).await;
                return Err(NodeError::timeout(t));
            }
        },
    };
    let Some(rec) = redis_retry(&conn, |mut c| async move { runs::load(&mut c, id).await }).await?
    else {
        return Err(NodeError::fatal(format!("child run {id} is gone")));
    };
    match status {
        RunStatus::Completed => sink_outputs(&conn, &rec).await,
        RunStatus::Cancelled => Err(NodeError::fatal(format!(
            "child run {id} ({:?}) was cancelled",
            rec.tag
        ))),
        _ => {
            let why = rec
                .nodes
                .iter()
                .find(|(_, n)| n.status == NodeStatus::Failed)
                .map(|(node, n)| {
                    format!(
                        ": node {node:?}: {}",
                        n.error.as_deref().unwrap_or("failed")
                    )
                })
                .unwrap_or_default();
            Err(NodeError::retryable(format!(
                "child run {id} ({:?}) failed{why}",
                rec.tag
            )))
        }
    }
}

/// Resolves the child's workflow for its user and queues it with `inputs`.
async fn start(
    conn: &ConnectionManager,
    req: &ChildRequest,
    inputs: Value,
) -> Result<(), NodeError> {
    if !inputs.is_object() {
        return Err(NodeError::fatal(format!(
            "inputs gave {}, not an object: a child run's inputs are an object",
            json_kind(&inputs)
        )));
    }
    let (tag, user) = (&req.spec.tag, &req.user);
    let Some((_, wf)) = redis_retry(conn, |mut c| async move {
        workflows::get(&mut c, user, tag).await
    })
    .await?
    else {
        return Err(NodeError::fatal(format!(
            "child workflow {tag:?} does not exist"
        )));
    };
    let (wf, inputs) = (&wf, &inputs);
    let admission = redis_retry(conn, |mut c| async move {
        runs::enqueue_child(
            &mut c,
            &req.run_id,
            user,
            wf,
            inputs,
            &req.parent,
            req.depth,
            req.quota,
        )
        .await
    })
    .await?;
    match admission {
        ChildAdmission::Accepted | ChildAdmission::Exists => Ok(()),
        ChildAdmission::QuotaExceeded => Err(NodeError::retryable(format!(
            "child workflow {tag:?} was not started: user {user:?} has {} active (queued or running) runs, the limit per user (--max-active-runs-per-user); child runs count as active runs",
            req.quota.max_active
        ))),
    }
}

/// Waits until the child's status is terminal.
async fn wait_end(
    conn: &ConnectionManager,
    w: &Watching,
    waiting: impl FnOnce(),
) -> Result<RunStatus, NodeError> {
    let mut poll = FIRST_POLL;
    let mut waiting = Some(waiting);
    loop {
        // Registered before the look: a wake-up between the two is kept.
        let woken = w.notify.notified();
        let id = w.run_id.as_str();
        match redis_retry(conn, |mut c| async move { runs::status(&mut c, id).await }).await? {
            Some(s) if s.is_terminal() => return Ok(s),
            Some(_) => {}
            None => return Err(NodeError::fatal(format!("child run {} is gone", w.run_id))),
        }
        if let Some(f) = waiting.take() {
            f();
        }
        let _ = actix_rt::time::timeout(poll, woken).await;
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// `{<sink node id>: <output>}` of a completed child (`null` for a
/// skipped sink).
async fn sink_outputs(conn: &ConnectionManager, rec: &RunRecord) -> Result<Value, NodeError> {
    let parents: HashSet<&str> = rec
        .workflow
        .nodes
        .iter()
        .flat_map(|n| n.depends_on.iter().map(String::as_str))
        .collect();
    let sinks: Vec<(&str, Option<String>)> = rec
        .workflow
        .nodes
        .iter()
        .filter(|n| !parents.contains(n.id.as_str()))
        .map(|n| {
            let r = rec.nodes.get(&n.id).and_then(|r| r.result_ref.clone());
            (n.id.as_str(), r)
        })
        .collect();
    let refs: Vec<String> = sinks.iter().filter_map(|(_, r)| r.clone()).collect();
    let r = &refs;
    let blobs = redis_retry(conn, |mut c| async move { runs::outputs(&mut c, r).await }).await?;
    let mut blobs = refs.into_iter().zip(blobs).collect::<HashMap<_, _>>();
    let out: Map<String, Value> = sinks
        .into_iter()
        .map(|(id, r)| {
            let v = r
                .and_then(|r| blobs.remove(&r).flatten())
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or(Value::Null);
            (id.to_owned(), v)
        })
        .collect();
    Ok(Value::Object(out))
}

/// Runs a Redis call until it gets an answer: a child's wait outlives a
/// Redis outage, as the run does. Stored data that does not decode fails
/// the node.
async fn redis_retry<T, F, Fut>(conn: &ConnectionManager, call: F) -> Result<T, NodeError>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = REDIS_BACKOFF;
    loop {
        match call(conn.clone()).await {
            Ok(v) => return Ok(v),
            Err(Error::Redis(e)) => {
                let wait = backoff.next_delay();
                log::debug!("child run: Redis call failed ({e}); retrying in {wait:?}");
                actix_rt::time::sleep(wait).await;
            }
            Err(e) => return Err(NodeError::fatal(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_are_stable_uuids_per_attempt_and_item() {
        let a = child_run_id("p", "call", None, 1);
        assert_eq!(a, child_run_id("p", "call", None, 1));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        let others = [
            child_run_id("p", "call", None, 2),
            child_run_id("p", "call", Some(0), 1),
            child_run_id("p", "call2", None, 1),
            child_run_id("q", "call", None, 1),
        ];
        assert!(others.iter().all(|o| *o != a));
    }
}
