//! Redis layout, the commit script, and the reads of stored state.
//!
//! Every state change of a run is one [`Commit`], applied by one Lua script
//! (so it is atomic): node states, counter and status written to the run's
//! hash, outputs stored under their content address, events appended to the
//! user's capped history stream and the run's event list, and only then
//! PUBLISHed, with the history entry id spliced in as `event_id`. A commit
//! carries the run's last event `seq`; the script ignores a commit whose seq
//! is not past the stored one, which makes retries after a lost reply, and
//! duplicate completions, change nothing.
//!
//! # Keys
//!
//! | key | type | holds |
//! |---|---|---|
//! | `flowcast:workflows` | hash | tag → workflow JSON |
//! | `flowcast:runs:requests` | stream | run requests, group `runners` |
//! | `flowcast:runs:active` | set | ids of unfinished runs |
//! | `flowcast:run:{id}` | hash | user, tag, status, counter, seq, workflow, inputs, `n:{node}` |
//! | `flowcast:run:{id}:events` | list | the run's events, in order |
//! | `flowcast:run:{id}:owner` | string | the runner instance holding the run (lease) |
//! | `flowcast:user:{u}:runs` | sorted set | the user's run ids by creation time |
//! | `flowcast:user:{u}:results` | set | result refs the user may read |
//! | `flowcast:history:{u}` | stream | the user's events (capped) |
//! | `flowcast:result:{ref}` | string | a node output's canonical JSON |
//! | `workflow:events:{u}` | channel | the seed's PubSub channel |
//! | `flowcast:control` | channel | run ids whose owner asked to cancel them |

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::counter::{NodeStatus, RunStatus};
use crate::error::{Error, Result};
use crate::workflow::Workflow;

pub mod keys;

use keys::{ACTIVE, CONTROL, GROUP, REQUESTS, RESULT_PREFIX};

/// Applies a [`Commit`]. KEYS: run hash, run events, history, user results,
/// active set, request stream, owner lease. ARGV: channel, commit JSON,
/// history max length, result key prefix, consumer group.
/// Returns the number of events published, 0 for a retry of a commit that
/// already landed, -1 when the expected status did not hold, -2 when another runner
/// owns the run or the run has ended and this is not a retry of its last
/// commit (a stale runner's commit), -3 when the commit's events do not
/// follow the stored seq (the sender is behind the stored state).
pub const COMMIT_LUA: &str = r#"
local c = cjson.decode(ARGV[2])
local function ack()
  if c.ack then redis.call('XACK', KEYS[6], ARGV[5], c.ack) end
end
if c.owner then
  local o = redis.call('GET', KEYS[7])
  if o and o ~= c.owner then return -2 end
end
if c.expect_status then
  if redis.call('HGET', KEYS[1], 'status') ~= c.expect_status then
    ack()
    return -1
  end
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local st = redis.call('HGET', KEYS[1], 'status')
if (st == 'completed' or st == 'failed' or st == 'cancelled') and c.seq ~= cur then
  ack()
  return -2
end
if c.seq == cur or (c.retry and c.seq < cur) then
  ack()
  return 0
end
if c.seq - #c.events ~= cur then
  return -3
end
if c.owner and c.lease_ms then
  redis.call('SET', KEYS[7], c.owner, 'PX', c.lease_ms)
end
local h = c.hset
for i = 1, #h, 512 do
  redis.call('HSET', KEYS[1], unpack(h, i, math.min(i + 511, #h)))
end
redis.call('HSET', KEYS[1], 'seq', c.seq)
local r = c.results
for i = 1, #r, 2 do
  redis.call('SET', ARGV[4] .. r[i], r[i + 1])
  redis.call('SADD', KEYS[4], r[i])
end
if c.active == 1 then redis.call('SADD', KEYS[5], c.run_id) end
if c.active == -1 then
  redis.call('SREM', KEYS[5], c.run_id)
  redis.call('DEL', KEYS[7])
end
ack()
for _, p in ipairs(c.events) do
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], '*', 'e', p)
  local full = string.sub(p, 1, -2) .. ',"event_id":"' .. id .. '"}'
  redis.call('RPUSH', KEYS[2], full)
  redis.call('PUBLISH', ARGV[1], full)
end
return #c.events
"#;

/// One atomic state change of a run, with the events that report it.
#[derive(Debug, Clone, Serialize)]
pub struct Commit {
    /// The run.
    pub run_id: String,
    /// Its owner (the user).
    #[serde(skip)]
    pub user: String,
    /// The last event seq in this commit; the idempotency guard.
    pub seq: u64,
    /// Apply only if the run's status is this one (run initialisation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<&'static str>,
    /// Apply only if no other runner holds the run's lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Renew the owner's lease for this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Field/value pairs for the run's hash, flattened.
    pub hset: Vec<String>,
    /// Result ref/canonical JSON pairs, flattened.
    pub results: Vec<String>,
    /// Event JSON texts, in seq order.
    pub events: Vec<String>,
    /// 1: add to the active set, -1: remove (run ended), 0: neither.
    pub active: i8,
    /// A run-request stream entry to acknowledge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
    /// Set by the Publisher when it sends the commit again after a failed
    /// write: a seq already stored then means "landed before", not "behind".
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

impl Commit {
    /// An empty commit for a run.
    pub fn new(run_id: &str, user: &str, seq: u64) -> Self {
        Self {
            run_id: run_id.into(),
            user: user.into(),
            seq,
            expect_status: None,
            owner: None,
            lease_ms: None,
            hset: Vec::new(),
            results: Vec::new(),
            events: Vec::new(),
            active: 0,
            ack: None,
            retry: false,
        }
    }

    /// Adds a field to write on the run's hash.
    pub fn set(&mut self, field: impl Into<String>, value: impl Into<String>) {
        self.hset.push(field.into());
        self.hset.push(value.into());
    }

    /// Records a node's state.
    pub fn set_node(&mut self, node_id: &str, state: &NodeRecord) {
        // A NodeRecord is plain data; serialising it cannot fail.
        self.set(
            format!("n:{node_id}"),
            serde_json::to_string(state).unwrap_or_default(),
        );
    }

    /// Adds this commit's EVALSHA to a pipeline.
    pub fn add_to(&self, pipe: &mut redis::Pipeline, sha: &str, history_max: u64) {
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(7)
            .arg(keys::run(&self.run_id))
            .arg(keys::run_events(&self.run_id))
            .arg(keys::history(&self.user))
            .arg(keys::user_results(&self.user))
            .arg(ACTIVE)
            .arg(REQUESTS)
            .arg(keys::owner(&self.run_id))
            .arg(keys::channel(&self.user))
            // Commit is plain data; serialising it cannot fail.
            .arg(serde_json::to_string(self).unwrap_or_default())
            .arg(history_max)
            .arg(RESULT_PREFIX)
            .arg(GROUP);
    }
}

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

impl RunRecord {
    /// The JSON view served by `GET /api/v1/runs/{id}`.
    pub fn to_view(&self) -> Value {
        let nodes: serde_json::Map<String, Value> = self
            .workflow
            .nodes
            .iter()
            .map(|n| {
                let rec = self
                    .nodes
                    .get(&n.id)
                    .cloned()
                    .unwrap_or_else(|| NodeRecord::with_status(NodeStatus::Waiting));
                (n.id.clone(), serde_json::to_value(rec).unwrap_or_default())
            })
            .collect();
        serde_json::json!({
            "run_id": self.run_id,
            "tag": self.tag,
            "status": self.status.as_str(),
            "counter": self.counter,
            "created_ms": self.created_ms,
            "inputs": self.inputs,
            "nodes": nodes,
        })
    }
}

/// Reads a run; `None` if it does not exist.
pub async fn load_run<C: ConnectionLike>(conn: &mut C, run_id: &str) -> Result<Option<RunRecord>> {
    let h: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys::run(run_id))
        .query_async(conn)
        .await?;
    if h.is_empty() {
        return Ok(None);
    }
    parse_run(run_id, h).map(Some)
}

fn parse_run(run_id: &str, mut h: HashMap<String, String>) -> Result<RunRecord> {
    let corrupt = |what: &str| Error::Corrupt(format!("run {run_id}: {what}"));
    let mut take = |k: &str| h.remove(k).ok_or_else(|| corrupt(&format!("no {k}")));
    let user = take("user")?;
    let tag = take("tag")?;
    let status = RunStatus::parse(&take("status")?).ok_or_else(|| corrupt("bad status"))?;
    let workflow = serde_json::from_str(&take("workflow")?).map_err(|_| corrupt("bad workflow"))?;
    let inputs = serde_json::from_str(&take("inputs")?).map_err(|_| corrupt("bad inputs"))?;
    let num = |v: Option<String>| v.and_then(|s| s.parse().ok()).unwrap_or(0);
    let counter = num(h.remove("counter")) as u32;
    let seq = num(h.remove("seq"));
    let created_ms = num(h.remove("created_ms"));
    let cancel_requested = h.remove("cancel_requested").is_some();
    let nodes = h
        .into_iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix("n:")?;
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

/// Asks whichever runner holds a run to cancel it: the request is recorded
/// on the run (so a runner that initialises or resumes it later sees it) and
/// announced on [`CONTROL`].
pub async fn request_cancel<C: ConnectionLike>(conn: &mut C, run_id: &str) -> Result<()> {
    redis::pipe()
        .atomic()
        .hset(keys::run(run_id), "cancel_requested", 1)
        .ignore()
        .publish(CONTROL, run_id)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Makes sure the run-request stream and its consumer group exist.
pub async fn ensure_group<C: ConnectionLike>(conn: &mut C) -> Result<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(REQUESTS)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other.map_err(Error::from),
    }
}

/// Durably queues a run: its hash (status `queued`), the user's index and the
/// request stream entry, in one MULTI/EXEC.
pub async fn enqueue_run<C: ConnectionLike>(
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
                ("user", user),
                ("tag", workflow.tag.as_str()),
                ("status", RunStatus::Queued.as_str()),
                ("counter", "0"),
                ("seq", "0"),
                ("created_ms", &created_ms.to_string()),
                ("workflow", &wf),
                ("inputs", &inputs.to_string()),
            ],
        )
        .ignore()
        .zadd(keys::user_runs(user), run_id, created_ms)
        .ignore()
        .cmd("XADD")
        .arg(REQUESTS)
        .arg("*")
        .arg("run_id")
        .arg(run_id)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(created_ms)
}

/// Parses a stream id `ms-seq`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// True when stream id `a` comes after `b` (unparsable ids never do).
pub fn id_after(a: &str, b: &str) -> bool {
    match (parse_id(a), parse_id(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Events of a user's history after `after` (exclusive), as complete JSON
/// texts with `event_id`, oldest first; at most `count`.
pub async fn read_history<C: ConnectionLike>(
    conn: &mut C,
    user: &str,
    after: &str,
    count: usize,
) -> Result<Vec<(String, String)>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys::history(user))
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .filter_map(|e| {
            let p: String = e.get("e")?;
            let full = format!("{},\"event_id\":\"{}\"}}", p.strip_suffix('}')?, e.id);
            Some((e.id, full))
        })
        .collect())
}

/// Whether events after `after` may have been trimmed from a user's
/// history: true when entries were trimmed and the oldest entry still held
/// comes after `after`. Returns that oldest id.
pub async fn history_gap<C: ConnectionLike>(
    conn: &mut C,
    user: &str,
    after: &str,
) -> Result<Option<String>> {
    let info: redis::Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys::history(user))
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        // No history yet: nothing can be missing.
        Err(e) if e.code() == Some("ERR") => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let map: HashMap<String, redis::Value> = redis::from_redis_value(info).unwrap_or_default();
    let num = |k: &str| -> u64 {
        map.get(k)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or(0)
    };
    if num("entries-added") <= num("length") {
        return Ok(None);
    }
    let first: Option<String> = match map.get("first-entry") {
        Some(redis::Value::Array(e)) if !e.is_empty() => redis::from_redis_value(e[0].clone()).ok(),
        _ => None,
    };
    Ok(first.filter(|f| id_after(f, after)))
}
