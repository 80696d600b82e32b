//! Runs as stored: the run hash, the user's index of runs, the run's event
//! list, stored outputs and the active set.
//!
//! A run is accepted by [`enqueue`] (the user's quotas checked, then hash,
//! index, active set and request-stream entry, in one Lua script), or as a
//! child run by [`enqueue_child`] (the same rules, once only:
//! `lua/enqueue_child.lua`), and changed afterwards only by commits (see
//! `commit`), except for the cancel request, which any API instance may
//! record. The commit that ends a run takes it out of its user's active set
//! and gives it its expiry (`--retention`); from then on a run, its events
//! and its outputs may be gone at any read, and a run that is gone is
//! simply absent ([`load`] answers `None`, [`list`] skips it and prunes it
//! from the index).
//!
//! The index is a sorted set whose members are `keys::index_member`
//! (creation time, then run id), all scored 0, so that [`list`] pages with
//! an exclusive lexicographic bound: the cursor is the last member of the
//! previous page, and a page boundary neither skips nor repeats a run,
//! whatever was created or expired meanwhile and however many runs share
//! a millisecond.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{self, field};
use super::script::Lua;
use crate::counter::{NodeStatus, RunStatus};
use crate::error::{Error, Result};
use crate::event::Parent;
use crate::workflow::Workflow;

static ENQUEUE: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/enqueue.lua")));
static ENQUEUE_CHILD: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/enqueue_child.lua")));

/// A node's persisted state (`n:{node}` in the run hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    /// Its status.
    pub status: NodeStatus,
    /// Attempts started so far.
    #[serde(default)]
    pub attempt: u32,
    /// Its output's address, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<String>,
    /// The last error, if an attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A `foreach` node's items (its array's address), once evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_ref: Option<String>,
    /// How many items that array has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<usize>,
    /// An `approval` node's attempt whose `approval_required` was
    /// published: it waits for a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<u32>,
}

impl NodeRecord {
    /// A record with just a status.
    pub fn with_status(status: NodeStatus) -> Self {
        Self {
            status,
            attempt: 0,
            result_ref: None,
            error: None,
            items_ref: None,
            items: None,
            asked: None,
        }
    }
}

/// A run as stored in Redis.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run.
    pub run_id: String,
    /// Its owner.
    pub user: String,
    /// Its workflow's tag.
    pub tag: String,
    /// Its status.
    pub status: RunStatus,
    /// The counter as last committed.
    pub counter: u32,
    /// The last committed event seq.
    pub seq: u64,
    /// When it was accepted, Unix ms.
    pub created_ms: u64,
    /// The workflow snapshot it runs.
    pub workflow: Workflow,
    /// Its inputs.
    pub inputs: Value,
    /// Node states by node id (absent: waiting).
    pub nodes: HashMap<String, NodeRecord>,
    /// The owner asked to cancel it (through an instance that did not hold it).
    pub cancel_requested: bool,
    /// The run and node that started it, for a child run.
    pub parent: Option<Parent>,
    /// How deeply it is nested in child runs (0: started by a user).
    pub depth: u32,
    /// Finished `foreach` items: node id → index → result ref.
    pub items: HashMap<String, BTreeMap<usize, String>>,
}

/// A run as listed by `GET /api/v1/runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run.
    pub run_id: String,
    /// Its workflow's tag.
    pub tag: String,
    /// Its status.
    pub status: String,
    /// The counter as last committed.
    pub counter: Option<u32>,
    /// When it was accepted, Unix ms.
    pub created_ms: Option<u64>,
    /// Its workflow's number of nodes.
    pub nodes: Option<u32>,
    /// Nodes completed so far.
    pub done: Option<u32>,
    /// When it ended, Unix ms (absent while it runs).
    pub ended_ms: Option<u64>,
    /// The parent run, for a child run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
}

/// Reads a run; `None` if it does not exist.
pub async fn load<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<Option<RunRecord>> {
    let h: HashMap<String, String> = conn.hgetall(keys::run(run_id)).await?;
    if h.is_empty() {
        return Ok(None);
    }
    parse(run_id, h).map(Some)
}

fn parse(run_id: &str, mut h: HashMap<String, String>) -> Result<RunRecord> {
    let corrupt = |what: &str| Error::Corrupt(format!("run {run_id}: {what}"));
    let mut take = |k: &str| h.remove(k).ok_or_else(|| corrupt(&format!("no {k}")));
    let user = take(field::USER)?;
    let tag = take(field::TAG)?;
    let status = RunStatus::parse(&take(field::STATUS)?).ok_or_else(|| corrupt("bad status"))?;
    let workflow =
        serde_json::from_str(&take(field::WORKFLOW)?).map_err(|_| corrupt("bad workflow"))?;
    let inputs = serde_json::from_str(&take(field::INPUTS)?).map_err(|_| corrupt("bad inputs"))?;
    let num = |v: Option<String>| v.and_then(|s| s.parse().ok()).unwrap_or(0);
    let counter = num(h.remove(field::COUNTER)) as u32;
    let seq = num(h.remove(field::SEQ));
    let created_ms = num(h.remove(field::CREATED_MS));
    let cancel_requested = h.remove(field::CANCEL_REQUESTED).is_some();
    let depth = num(h.remove(field::DEPTH)) as u32;
    let parent = match (
        h.remove(field::PARENT_RUN_ID),
        h.remove(field::PARENT_NODE_ID),
    ) {
        (Some(parent_run_id), Some(parent_node_id)) => Some(Parent {
            parent_run_id,
            parent_node_id,
        }),
        _ => None,
    };
    let mut nodes = HashMap::new();
    let mut items: HashMap<String, BTreeMap<usize, String>> = HashMap::new();
    for (k, v) in h {
        if let Some(id) = k.strip_prefix(field::NODE_PREFIX) {
            if let Ok(rec) = serde_json::from_str(&v) {
                nodes.insert(id.to_owned(), rec);
            }
        } else if let Some((id, index)) = field::parse_item(&k) {
            items.entry(id.to_owned()).or_default().insert(index, v);
        }
    }
    Ok(RunRecord {
        run_id: run_id.into(),
        user,
        tag,
        status,
        counter,
        seq,
        created_ms,
        workflow,
        inputs,
        nodes,
        cancel_requested,
        parent,
        depth,
        items,
    })
}

/// The fields of a new run's hash (status `queued`).
fn new_run_fields(
    user: &str,
    workflow: &Workflow,
    inputs: &Value,
    created_ms: u64,
) -> Result<Vec<(&'static str, String)>> {
    let wf = serde_json::to_string(workflow).map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(vec![
        (field::USER, user.to_owned()),
        (field::TAG, workflow.tag.clone()),
        (field::STATUS, RunStatus::Queued.as_str().to_owned()),
        (field::COUNTER, "0".into()),
        (field::SEQ, "0".into()),
        (field::CREATED_MS, created_ms.to_string()),
        (field::NODES, workflow.nodes.len().to_string()),
        (field::WORKFLOW, wf),
        (field::INPUTS, inputs.to_string()),
    ])
}

/// A user's run quotas, enforced by [`enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunQuota {
    /// Most unfinished (queued + running) runs per user.
    pub max_active: u64,
    /// Runs a user may start per second, sustained; bursts of twice that.
    pub per_sec: u64,
}

impl Default for RunQuota {
    fn default() -> Self {
        Self {
            max_active: 1000,
            per_sec: 100,
        }
    }
}

impl RunQuota {
    /// The token bucket's size: how many runs a user may start at once.
    pub fn burst(&self) -> u64 {
        self.per_sec.saturating_mul(2)
    }
}

/// What became of a run submitted to [`enqueue`] (the script's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Stored and queued, accepted at this time (Unix ms).
    Accepted {
        /// When it was accepted, Unix ms.
        created_ms: u64,
    },
    /// Refused, nothing written: the user has [`RunQuota::max_active`]
    /// unfinished runs.
    QuotaExceeded {
        /// Seconds after which asking again may succeed.
        retry_after_s: u64,
    },
    /// Refused, nothing written: the user started runs faster than
    /// [`RunQuota::per_sec`] for longer than a burst.
    RateLimited {
        /// Seconds after which a run will be accepted again.
        retry_after_s: u64,
    },
}

/// Durably queues a run if its user is within `quota`: its hash (status
/// `queued`), the user's index and active set, and the request stream entry,
/// in one Lua script (`lua/enqueue.lua`) that checks the quota first, so a
/// refused run writes nothing and every API instance enforces one limit.
/// The user's keys lose any expiry (set when their last run ended): they
/// hold a live run again.
pub async fn enqueue<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
    user: &str,
    workflow: &Workflow,
    inputs: &Value,
    quota: RunQuota,
) -> Result<Admission> {
    let created_ms = crate::event::now_ms();
    let fields = new_run_fields(user, workflow, inputs, created_ms)?;
    let keys = [
        keys::run(run_id),
        keys::user_runs(user),
        keys::REQUESTS.to_owned(),
        keys::user_active(user),
        keys::user_rate(user),
        keys::user_ended(user),
        keys::user_results(user),
    ];
    let mut args = vec![
        quota.max_active.to_string(),
        quota.per_sec.max(1).to_string(),
        quota.burst().max(1).to_string(),
        run_id.to_owned(),
        keys::index_member(created_ms, run_id),
        keys::REQUEST_RUN_ID.to_owned(),
    ];
    for (f, v) in fields {
        args.push(f.to_owned());
        args.push(v);
    }
    let (code, retry_after_s): (String, u64) = ENQUEUE.invoke(conn, &keys, &args).await?;
    match code.as_str() {
        "accepted" => Ok(Admission::Accepted { created_ms }),
        "quota_exceeded" => Ok(Admission::QuotaExceeded { retry_after_s }),
        "rate_limited" => Ok(Admission::RateLimited { retry_after_s }),
        other => Err(Error::Corrupt(format!(
            "enqueue script answered an unknown code {other:?}"
        ))),
    }
}

/// What became of a child run submitted to [`enqueue_child`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildAdmission {
    /// Stored and queued now.
    Accepted,
    /// A run with this id exists (a resumed parent starting the same child
    /// again): nothing written.
    Exists,
    /// Refused, nothing written: the user has [`RunQuota::max_active`]
    /// unfinished runs (child runs count).
    QuotaExceeded,
}

/// Queues a child run of `parent`, at `depth`, unless a run with this id
/// exists already (a resumed parent starting the same child again), under
/// the rules of [`enqueue`]: a child is an active run of its user (and is
/// refused beyond [`RunQuota::max_active`]), listed in the user's index,
/// and the user's keys lose their expiry. The rate limit does not apply: a
/// child belongs to a run admitted already. The check and the writes are
/// one script (`lua/enqueue_child.lua`).
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_child<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
    user: &str,
    workflow: &Workflow,
    inputs: &Value,
    parent: &Parent,
    depth: u32,
    quota: RunQuota,
) -> Result<ChildAdmission> {
    let created_ms = crate::event::now_ms();
    let mut fields = new_run_fields(user, workflow, inputs, created_ms)?;
    fields.push((field::PARENT_RUN_ID, parent.parent_run_id.clone()));
    fields.push((field::PARENT_NODE_ID, parent.parent_node_id.clone()));
    fields.push((field::DEPTH, depth.to_string()));
    let keys = [
        keys::run(run_id),
        keys::user_runs(user),
        keys::REQUESTS.to_owned(),
        keys::user_active(user),
        keys::user_ended(user),
        keys::user_results(user),
    ];
    let mut args = vec![
        quota.max_active.to_string(),
        run_id.to_owned(),
        keys::index_member(created_ms, run_id),
        keys::REQUEST_RUN_ID.to_owned(),
    ];
    for (f, v) in fields {
        args.push(f.to_owned());
        args.push(v);
    }
    let code: String = ENQUEUE_CHILD.invoke(conn, &keys, &args).await?;
    match code.as_str() {
        "accepted" => Ok(ChildAdmission::Accepted),
        "exists" => Ok(ChildAdmission::Exists),
        "quota_exceeded" => Ok(ChildAdmission::QuotaExceeded),
        other => Err(Error::Corrupt(format!(
            "enqueue_child script answered an unknown code {other:?}"
        ))),
    }
}

/// A run's status; `None` if it does not exist.
pub async fn status<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<Option<RunStatus>> {
    let s: Option<String> = conn.hget(keys::run(run_id), field::STATUS).await?;
    Ok(s.and_then(|s| RunStatus::parse(&s)))
}

/// Asks whichever runner holds a run to cancel it: the request is recorded
/// on the run (so a runner that initialises or resumes it later sees it) and
/// announced on [`keys::CONTROL`].
pub async fn request_cancel<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<()> {
    redis::pipe()
        .atomic()
        .hset(keys::run(run_id), field::CANCEL_REQUESTED, 1)
        .ignore()
        .publish(keys::CONTROL, run_id)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Asks a child run to cancel, if it exists: a parent cancelled while it
/// was starting the child may have queued nothing (and must not leave a
/// stub behind).
pub async fn cancel_child<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<()> {
    if status(conn, run_id).await?.is_some() {
        request_cancel(conn, run_id).await?;
    }
    Ok(())
}

/// For each run, whether its owner asked to cancel it.
pub async fn cancel_requested<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_ids: &[String],
) -> Result<Vec<bool>> {
    if run_ids.is_empty() {
        // An empty pipeline is an error in the client, not an empty answer.
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for r in run_ids {
        pipe.hexists(keys::run(r), field::CANCEL_REQUESTED);
    }
    Ok(pipe.query_async(conn).await?)
}

/// Ids of every unfinished run.
pub async fn active<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<String>> {
    Ok(conn.smembers(keys::ACTIVE).await?)
}

/// Stored outputs by result ref (`None` for one that is gone).
pub async fn outputs<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    refs: &[String],
) -> Result<Vec<Option<String>>> {
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = refs.iter().map(|r| keys::result(r)).collect();
    Ok(redis::cmd("MGET").arg(keys).query_async(conn).await?)
}

/// A stored output, if `user` may read it: one of their runs stored it, and
/// that run is live or within its retention.
pub async fn result_for<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    result_ref: &str,
) -> Result<Option<String>> {
    let (expiry, blob): (Option<f64>, Option<String>) = redis::pipe()
        .zscore(keys::user_results(user), result_ref)
        .get(keys::result(result_ref))
        .query_async(conn)
        .await?;
    // Grants expire by Redis's clock and are pruned soon after; this
    // process's clock only has to tell a past grant from a current one.
    let now = crate::event::now_ms() as f64;
    Ok(blob.filter(|_| expiry.is_some_and(|e| e > now)))
}

/// One page of a user's runs.
#[derive(Debug, Clone, Default)]
pub struct RunPage {
    /// Runs, newest first.
    pub runs: Vec<RunSummary>,
    /// Where the next page starts (`None`: this is the last page).
    pub next_cursor: Option<String>,
}

/// True when `cursor` can be a cursor of [`list`] (a `keys::index_member`).
pub fn is_valid_cursor(cursor: &str) -> bool {
    keys::index_run_id(cursor).is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
}

/// The user's runs, newest first: at most `limit` after `cursor` (from the
/// newest when `None`; see [`is_valid_cursor`]). Runs that expired are
/// skipped and pruned from the index.
pub async fn list<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    limit: usize,
    cursor: Option<&str>,
) -> Result<RunPage> {
    type Row = (
        Option<String>,
        Option<String>,
        Option<u32>,
        Option<u64>,
        Option<u32>,
        Option<u32>,
        Option<u64>,
        Option<String>,
    );
    let limit = limit.max(1);
    let index = keys::user_runs(user);
    let mut bound = cursor.map_or_else(|| "+".to_owned(), |c| format!("({c}"));
    // (member, run) for up to limit + 1 runs: one more says there is a next page.
    let mut found: Vec<(String, RunSummary)> = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    loop {
        let want = limit + 1 - found.len();
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(&bound)
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(want)
            .query_async(conn)
            .await?;
        let Some(last) = members.last() else {
            break;
        };
        bound = format!("({last}");
        let mut pipe = redis::pipe();
        for m in &members {
            pipe.hmget(
                keys::run(keys::index_run_id(m).unwrap_or_default()),
                &[
                    field::TAG,
                    field::STATUS,
                    field::COUNTER,
                    field::CREATED_MS,
                    field::NODES,
                    field::DONE,
                    field::ENDED_MS,
                    field::PARENT_RUN_ID,
                ],
            );
        }
        let rows: Vec<Row> = pipe.query_async(conn).await?;
        let fetched = members.len();
        for (m, (tag, status, counter, created_ms, nodes, done, ended_ms, parent)) in
            members.into_iter().zip(rows)
        {
            match (keys::index_run_id(&m), tag, status) {
                (Some(run_id), Some(tag), Some(status)) => {
                    let run = RunSummary {
                        run_id: run_id.to_owned(),
                        tag,
                        status,
                        counter,
                        created_ms,
                        nodes,
                        done,
                        ended_ms,
                        parent_run_id: parent,
                    };
                    found.push((m, run));
                }
                _ => gone.push(m),
            }
        }
        if found.len() > limit || fetched < want {
            break;
        }
    }
    if !gone.is_empty() {
        redis::pipe()
            .zrem(&index, &gone)
            .ignore()
            .zrem(keys::user_ended(user), &gone)
            .ignore()
            .query_async::<()>(conn)
            .await?;
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let next_cursor = more.then(|| found.last().map(|(m, _)| m.clone())).flatten();
    Ok(RunPage {
        runs: found.into_iter().map(|(_, r)| r).collect(),
        next_cursor,
    })
}

/// A run's events, in order, as stored JSON texts.
pub async fn events<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<Vec<String>> {
    Ok(conn.lrange(keys::run_events(run_id), 0, -1).await?)
}
