//! Runs as stored: the run hash, the user's index of runs, the run's event
//! list, stored outputs and the active set.
//!
//! A run is accepted by [`enqueue`] (hash, index and request-stream entry in
//! one MULTI/EXEC) and changed afterwards only by commits (see `commit`),
//! except for the cancel request, which any API instance may record.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{self, field};
use crate::counter::{NodeStatus, RunStatus};
use crate::error::{Error, Result};
use crate::workflow::Workflow;

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
}

impl NodeRecord {
    /// A record with just a status.
    pub fn with_status(status: NodeStatus) -> Self {
        Self {
            status,
            attempt: 0,
            result_ref: None,
            error: None,
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
    let nodes = h
        .into_iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix(field::NODE_PREFIX)?;
            Some((id.to_owned(), serde_json::from_str(&v).ok()?))
        })
        .collect();
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
    })
}

/// Durably queues a run: its hash (status `queued`), the user's index and the
/// request stream entry, in one MULTI/EXEC. Returns its creation time (ms).
pub async fn enqueue<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
    user: &str,
    workflow: &Workflow,
    inputs: &Value,
) -> Result<u64> {
    let created_ms = crate::event::now_ms();
    let wf = serde_json::to_string(workflow).map_err(|e| Error::Corrupt(e.to_string()))?;
    redis::pipe()
        .atomic()
        .hset_multiple(
            keys::run(run_id),
            &[
                (field::USER, user),
                (field::TAG, workflow.tag.as_str()),
                (field::STATUS, RunStatus::Queued.as_str()),
                (field::COUNTER, "0"),
                (field::SEQ, "0"),
                (field::CREATED_MS, &created_ms.to_string()),
                (field::NODES, &workflow.nodes.len().to_string()),
                (field::WORKFLOW, &wf),
                (field::INPUTS, &inputs.to_string()),
            ],
        )
        .ignore()
        .zadd(keys::user_runs(user), run_id, created_ms)
        .ignore()
        .xadd(keys::REQUESTS, "*", &[("run_id", run_id)])
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(created_ms)
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

/// Run ids announced on [`keys::CONTROL`] by [`request_cancel`], on a
/// connection of their own; the stream ends when that connection drops.
pub async fn cancel_requests(
    client: &redis::Client,
) -> Result<impl futures_util::Stream<Item = String>> {
    use futures_util::StreamExt;
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(keys::CONTROL).await?;
    Ok(ps
        .into_on_message()
        .filter_map(|m| futures_util::future::ready(m.get_payload::<String>().ok())))
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

/// A stored output, if `user` may read it.
pub async fn result_for<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    result_ref: &str,
) -> Result<Option<String>> {
    let (mine, blob): (bool, Option<String>) = redis::pipe()
        .sismember(keys::user_results(user), result_ref)
        .get(keys::result(result_ref))
        .query_async(conn)
        .await?;
    Ok(blob.filter(|_| mine))
}

/// The user's latest runs, newest first, at most `limit`.
pub async fn list<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    limit: usize,
) -> Result<Vec<RunSummary>> {
    let ids: Vec<String> = conn
        .zrevrange(keys::user_runs(user), 0, limit as isize - 1)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.hmget(
            keys::run(id),
            &[
                field::TAG,
                field::STATUS,
                field::COUNTER,
                field::CREATED_MS,
                field::NODES,
                field::DONE,
                field::ENDED_MS,
            ],
        );
    }
    type Row = (
        Option<String>,
        Option<String>,
        Option<u32>,
        Option<u64>,
        Option<u32>,
        Option<u32>,
        Option<u64>,
    );
    let rows: Vec<Row> = pipe.query_async(conn).await?;
    Ok(ids
        .into_iter()
        .zip(rows)
        .filter_map(
            |(run_id, (tag, status, counter, created_ms, nodes, done, ended_ms))| {
                Some(RunSummary {
                    run_id,
                    tag: tag?,
                    status: status?,
                    counter,
                    created_ms,
                    nodes,
                    done,
                    ended_ms,
                })
            },
        )
        .collect())
}

/// A run's events, in order, as stored JSON texts.
pub async fn events<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<Vec<String>> {
    Ok(conn.lrange(keys::run_events(run_id), 0, -1).await?)
}
