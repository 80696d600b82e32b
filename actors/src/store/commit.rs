//! The commit: every state change of a run as one atomic Lua script
//! (`lua/commit.lua`).
//!
//! A [`Commit`] writes node states, counter and status to the run's hash,
//! stores outputs under their content address, appends events to the user's
//! capped history stream and the run's event list, and only then PUBLISHes
//! them, with the history entry id spliced in as `event_id`.
//!
//! Each commit names its writer (the lease holder, `instance#nonce`, see
//! `leases`) and carries the run's last event `seq`. The script applies a
//! commit only if its writer holds the lease and its events follow the
//! stored seq. It answers "duplicate" only for the very same commit applied
//! before: the run hash records the writer of the latest unbroken streak of
//! commits and the seq that streak started from, so a commit is a duplicate
//! when its writer made that streak and its seq lies within it (a retry after
//! a lost reply). Another process's commit with an already stored seq is
//! never taken for a duplicate; it is "behind" (or "not_owner").
//!
//! A commit is [sealed](Commit::seal) (serialised) by whoever made it, off
//! the Publisher's thread; outputs travel as separate script arguments, so
//! neither Rust nor Lua ever escapes or decodes a large output as JSON. The
//! Publisher sends sealed commits in pipelines built by [`pipeline`] and
//! decodes each reply with [`Outcome`].
//!
//! # Retention
//!
//! The commit that ends a run also schedules its disappearance
//! ([`Retention::keep`], `--retention`): the run's hash and event list get
//! that expiry, its index entry is recorded with it in the user's ended set
//! (and pruned from the index by later ends and by listings), and the
//! request that started it was deleted from the request stream when it was
//! acknowledged. Every commit that appends events trims the history stream
//! by count (MAXLEN) and by age (MINID), and renews its expiry.
//!
//! Outputs are content-addressed, so one output may belong to runs of
//! several users, some live, some ended. Reference tracking is a count of
//! *live* holders per output (`keys::result_holders`: user → live runs of
//! that user that stored it; each run counts an output once, through its
//! `keys::run_refs` set), rather than expiries that are only ever
//! extended: an expiry cannot be set while a run that may live for weeks
//! (an approval) still needs the output, and "only extend" cannot express
//! "no expiry until it ends" and then "expire after it ends". With counts,
//! an output is persistent while any count is positive; when the last live
//! holder ends, the output expires `--retention` later, which is the
//! latest end among all its holders plus the retention, so no retained run
//! loses it early. The per-user grant (`keys::user_results`) follows the
//! same rule per user: `inf` while one of the user's live runs holds the
//! output, end + retention after that, pruned once past.
//!
//! Work done outside (`store::waits`) follows its run: the ending commit
//! cancels the run's open waits (taking queued tasks off their queue),
//! gives every wait record and the run's signals the run's expiry, and
//! deletes the set that listed the waits. Waits are only ever created on a
//! live run (`lua/wait_create.lua` checks, atomically), so none is left
//! behind; a task queue holds only tasks of live runs and empties itself.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult};
use serde::Serialize;

use super::keys::{self, field};
use super::runs::NodeRecord;
use super::script::Lua;

static COMMIT: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/commit.lua")));

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
    /// The writer, `instance#nonce`: apply only if no other runner process
    /// holds the run's lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Renew the owner's lease for this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Field/value pairs for the run's hash, flattened.
    pub hset: Vec<String>,
    /// Result ref/canonical JSON pairs, flattened (sent as script
    /// arguments of their own, not in the JSON).
    #[serde(skip)]
    pub results: Vec<String>,
    /// Event JSON texts, in seq order.
    pub events: Vec<String>,
    /// 1: add to the active set, -1: remove from it and from the user's
    /// active runs (run ended), 0: neither.
    pub active: i8,
    /// A run-request stream entry to acknowledge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
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
        }
    }

    /// Adds a field to write on the run's hash.
    fn set(&mut self, field: impl Into<String>, value: impl Into<String>) {
        self.hset.push(field.into());
        self.hset.push(value.into());
    }

    /// Records the run's status.
    pub fn set_status(&mut self, status: crate::counter::RunStatus) {
        self.set(field::STATUS, status.as_str());
    }

    /// Records the run's counter.
    pub fn set_counter(&mut self, counter: u32) {
        self.set(field::COUNTER, counter.to_string());
    }

    /// Records how many of the run's nodes have completed, and, once it has
    /// ended, when (what run lists show without reading every node).
    pub fn set_progress(&mut self, done: usize, ended_ms: Option<u64>) {
        self.set(field::DONE, done.to_string());
        if let Some(ms) = ended_ms {
            self.set(field::ENDED_MS, ms.to_string());
        }
    }

    /// Records a node's state.
    pub fn set_node(&mut self, node_id: &str, state: &NodeRecord) {
        // A NodeRecord is plain data; serialising it cannot fail.
        self.set(
            field::node(node_id),
            serde_json::to_string(state).unwrap_or_default(),
        );
    }

    /// Records a finished item of a `foreach` node.
    pub fn set_item(&mut self, node_id: &str, index: usize, result_ref: &str) {
        self.set(field::item(node_id, index), result_ref);
    }

    /// Stores an output under its content address, readable by the run's owner.
    pub fn store_result(&mut self, result_ref: String, canonical_json: String) {
        self.results.push(result_ref);
        self.results.push(canonical_json);
    }

    /// Serialises the commit for the Publisher: done by the commit's maker,
    /// so that the Publisher's thread only copies bytes.
    pub fn seal(self) -> Sealed {
        Sealed {
            keys: [
                keys::run(&self.run_id),
                keys::run_events(&self.run_id),
                keys::history(&self.user),
                keys::user_results(&self.user),
                keys::ACTIVE.to_owned(),
                keys::REQUESTS.to_owned(),
                keys::owner(&self.run_id),
                keys::run_refs(&self.run_id),
                keys::user_runs(&self.user),
                keys::user_ended(&self.user),
                keys::user_active(&self.user),
                keys::run_waits(&self.run_id),
                keys::run_signals(&self.run_id),
            ],
            queues: keys::task_queue_prefix(&self.user),
            channel: keys::channel(&self.user),
            // Commit is plain data; serialising it cannot fail.
            json: serde_json::to_string(&self).unwrap_or_default(),
            user: self.user,
            results: self.results,
            retry: false,
        }
    }
}

/// A [`Commit`] ready to send: its keys and its script arguments.
#[derive(Debug, Clone)]
pub struct Sealed {
    keys: [String; 13],
    channel: String,
    queues: String,
    json: String,
    user: String,
    results: Vec<String>,
    /// Set by the Publisher when it sends the commit again after a failed
    /// write: an earlier seq of the same writer then means "landed before".
    pub retry: bool,
}

impl Sealed {
    /// Adds this commit's script call to a pipeline.
    fn add_to(&self, pipe: &mut redis::Pipeline, history_max: &str, keep_ms: &str) {
        let mut args: Vec<&str> = Vec::with_capacity(12 + self.results.len());
        args.extend([
            self.channel.as_str(),
            &self.json,
            history_max,
            keys::RESULT_PREFIX,
            keys::GROUP,
            keep_ms,
            keys::HOLDERS_SUFFIX,
            &self.user,
            keys::HISTORY_FIELD,
            if self.retry { "1" } else { "0" },
            keys::WAIT_PREFIX,
            &self.queues,
        ]);
        args.extend(self.results.iter().map(String::as_str));
        COMMIT.add_to(pipe, &self.keys, &args);
    }
}

/// How long what is no longer needed is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long a run is kept after it ends, and the oldest event kept in a
    /// user's history (`--retention`).
    pub keep: Duration,
    /// Most events kept per user in the history (`--history-max`).
    pub history_max: u64,
}

impl Retention {
    /// Default of [`Retention::keep`]: a week.
    pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Default of [`Retention::history_max`].
    pub const DEFAULT_HISTORY_MAX: u64 = 10_000;

    /// [`Retention::keep`] in ms, at least 1 (Redis refuses a zero expiry).
    pub fn keep_ms(&self) -> u64 {
        (self.keep.as_millis() as u64).max(1)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: Self::DEFAULT_KEEP,
            history_max: Self::DEFAULT_HISTORY_MAX,
        }
    }
}

/// What became of a commit (the script's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; this many events were published.
    Applied(u32),
    /// This very commit (same writer, a seq within its streak) was applied
    /// before: nothing changed.
    Duplicate,
    /// The commit's events do not follow the run's stored seq (another
    /// writer's commits are stored there): the sender's view is behind Redis
    /// and must be rebuilt.
    Behind,
    /// The run's status was not the expected one (already initialised).
    StatusMismatch,
    /// Another runner holds the run's lease.
    NotOwner,
    /// The run has already ended and this commit is not one that was
    /// applied (a stale runner's commit).
    Ended,
}

impl FromRedisValue for Outcome {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (code, published): (String, u32) = FromRedisValue::from_redis_value(v)?;
        Ok(match code.as_str() {
            "applied" => Self::Applied(published),
            "duplicate" => Self::Duplicate,
            "behind" => Self::Behind,
            "status_mismatch" => Self::StatusMismatch,
            "not_owner" => Self::NotOwner,
            "ended" => Self::Ended,
            other => return Err(format!("commit script answered an unknown code {other:?}").into()),
        })
    }
}

/// One pipeline applying `commits` in order (one [`Outcome`] each, see [`send`]).
pub fn pipeline<'a>(
    commits: impl IntoIterator<Item = &'a Sealed>,
    retention: &Retention,
) -> redis::Pipeline {
    let history_max = retention.history_max.max(1).to_string();
    let keep_ms = retention.keep_ms().to_string();
    let mut pipe = redis::pipe();
    for c in commits {
        c.add_to(&mut pipe, &history_max, &keep_ms);
    }
    pipe
}

/// Sends a pipeline built by [`pipeline`]; one outcome per commit.
pub async fn send<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    pipe: &redis::Pipeline,
) -> RedisResult<Vec<Outcome>> {
    match pipe.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            // Redis restarted or flushed its scripts: load and send again.
            COMMIT.load(conn).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}
