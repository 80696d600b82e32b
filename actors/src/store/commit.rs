//! The commit: every state change of a run as one atomic Lua script
//! (`lua/commit.lua`).
//!
//! A [`Commit`] writes node states, counter and status to the run's hash,
//! stores outputs under their content address, appends events to the user's
//! capped history stream and the run's event list, and only then PUBLISHes
//! them, with the history entry id spliced in as `event_id`. A commit carries
//! the run's last event `seq`; the script ignores a commit whose seq is not
//! past the stored one, which makes retries after a lost reply, and duplicate
//! completions, change nothing. The Publisher sends commits in pipelines built
//! by [`pipeline`] and decodes each reply with [`Outcome`].

use std::sync::LazyLock;

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

    /// Stores an output under its content address, readable by the run's owner.
    pub fn store_result(&mut self, result_ref: String, canonical_json: String) {
        self.results.push(result_ref);
        self.results.push(canonical_json);
    }

    /// Adds this commit's script call to a pipeline.
    fn add_to(&self, pipe: &mut redis::Pipeline, history_max: u64) {
        let keys = [
            keys::run(&self.run_id),
            keys::run_events(&self.run_id),
            keys::history(&self.user),
            keys::user_results(&self.user),
            keys::ACTIVE.to_owned(),
            keys::REQUESTS.to_owned(),
            keys::owner(&self.run_id),
        ];
        let args = [
            keys::channel(&self.user),
            // Commit is plain data; serialising it cannot fail.
            serde_json::to_string(self).unwrap_or_default(),
            history_max.to_string(),
            keys::RESULT_PREFIX.to_owned(),
            keys::GROUP.to_owned(),
        ];
        COMMIT.add_to(pipe, &keys, &args);
    }
}

/// What became of a commit (the script's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; this many events were published.
    Applied(u32),
    /// A retry of the run's last commit, already applied: nothing changed.
    Duplicate,
    /// The commit's events do not follow the run's stored seq: the sender's
    /// view is behind Redis and must be rebuilt.
    Behind,
    /// The run's status was not the expected one (already initialised).
    StatusMismatch,
    /// Another runner holds the run's lease.
    NotOwner,
    /// The run has already ended and this is not a retry of its last commit
    /// (a stale runner's commit).
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
    commits: impl IntoIterator<Item = &'a Commit>,
    history_max: u64,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for c in commits {
        c.add_to(&mut pipe, history_max);
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
