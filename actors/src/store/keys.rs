//! Every Redis key, channel and hash field flowcast uses: the one place that
//! spells them. The Lua scripts receive keys from here as `KEYS[...]`; the
//! field names they use are listed in [`field`] and checked against the
//! scripts by a unit test.
//!
//! | key | type | holds |
//! |---|---|---|
//! | [`WORKFLOWS`] `flowcast:workflows` | hash | the shared catalogue: tag → workflow JSON |
//! | [`user_workflows`] `flowcast:user:{u}:workflows` | hash | the user's own workflows: tag → workflow JSON |
//! | [`REQUESTS`] `flowcast:runs:requests` | stream | run requests, consumer group [`GROUP`] |
//! | [`ACTIVE`] `flowcast:runs:active` | set | ids of unfinished runs |
//! | [`run`] `flowcast:run:{id}` | hash | the run's fields ([`field`]) and `n:{node}` node records |
//! | [`run_events`] `flowcast:run:{id}:events` | list | the run's events, in order |
//! | [`owner`] `flowcast:run:{id}:owner` | string | the runner holding the run (lease, with expiry) |
//! | [`user_runs`] `flowcast:user:{u}:runs` | sorted set | the user's run ids by creation time |
//! | [`user_results`] `flowcast:user:{u}:results` | set | result refs the user may read |
//! | [`user_active`] `flowcast:user:{u}:active` | set | the user's queued and running runs (the active-run quota) |
//! | [`user_rate`] `flowcast:user:{u}:rate` | hash | the user's run-rate token bucket (`tokens`, `ms`; private to `lua/enqueue.lua`, expires when full) |
//! | [`history`] `flowcast:history:{u}` | stream | the user's events (capped) |
//! | [`result`] `flowcast:result:{ref}` | string | a node output's canonical JSON |
//! | [`channel`] `workflow:events:{u}` | channel | the seed's PubSub channel |
//! | [`CONTROL`] `flowcast:control` | channel | run ids whose owner asked to cancel them |
//! | [`wait`] `flowcast:wait:{id}` | hash | one attempt of a `task`, `approval` or `signal` node (fields: [`wait_field`]); expires once final |
//! | [`task_queue`] `flowcast:user:{u}:queue:{q}` | sorted set | the user's claimable tasks on queue `q`, by enqueue time |
//! | [`run_signals`] `flowcast:run:{id}:signals` | hash | signals posted to the run: name → JSON payload |
//! | [`TASKS_READY`] `flowcast:tasks:ready` | channel | `[user, queue]` of a task that became claimable (wakes long-polls) |
//! | [`WAITS_SETTLED`] `flowcast:waits:settled` | channel | a wait id (or run id) whose run has something to apply (wakes its run actor) |

/// The shared catalogue of workflows (hash: tag → JSON): the operator's
/// `--workflows-dir`, visible to every user, read-only through the API.
pub const WORKFLOWS: &str = "flowcast:workflows";
/// Run-request stream.
pub const REQUESTS: &str = "flowcast:runs:requests";
/// The field of a run-request entry that holds the run id.
pub const REQUEST_RUN_ID: &str = "run_id";
/// Consumer group of runner instances on [`REQUESTS`].
pub const GROUP: &str = "runners";
/// Unfinished runs.
pub const ACTIVE: &str = "flowcast:runs:active";
/// Channel on which cancel requests reach every runner.
pub const CONTROL: &str = "flowcast:control";
/// Prefix of result keys (the commit script appends the ref).
pub const RESULT_PREFIX: &str = "flowcast:result:";
/// Prefix of the seed's per-user channels; the rest is the username.
pub const CHANNEL_PREFIX: &str = "workflow:events:";
/// Prefix of run hashes (scripts that find a run by id append it).
pub const RUN_PREFIX: &str = "flowcast:run:";
/// Prefix of wait records (scripts that pop ids from a queue append them).
pub const WAIT_PREFIX: &str = "flowcast:wait:";
/// Channel announcing `[user, queue]` of a task that became claimable.
pub const TASKS_READY: &str = "flowcast:tasks:ready";
/// Channel announcing a wait id (or a run id) whose run actor has
/// something to apply: an outcome, a progress report, a signal.
pub const WAITS_SETTLED: &str = "flowcast:waits:settled";

/// One attempt of a waiting node (`task`, `approval`, `signal`).
pub fn wait(wait_id: &str) -> String {
    format!("{WAIT_PREFIX}{wait_id}")
}

/// A user's claimable tasks on one queue.
pub fn task_queue(user: &str, queue: &str) -> String {
    format!("flowcast:user:{user}:queue:{queue}")
}

/// Signals posted to a run (hash: name → JSON).
pub fn run_signals(run_id: &str) -> String {
    format!("flowcast:run:{run_id}:signals")
}

/// The seed's PubSub channel of a user.
pub fn channel(user: &str) -> String {
    format!("{CHANNEL_PREFIX}{user}")
}

/// A run's hash.
pub fn run(run_id: &str) -> String {
    format!("{RUN_PREFIX}{run_id}")
}

/// A run's event list.
pub fn run_events(run_id: &str) -> String {
    format!("flowcast:run:{run_id}:events")
}

/// A run's owner lease.
pub fn owner(run_id: &str) -> String {
    format!("flowcast:run:{run_id}:owner")
}

/// A user's runs, scored by creation time (ms).
pub fn user_runs(user: &str) -> String {
    format!("flowcast:user:{user}:runs")
}

/// Result refs a user may read.
pub fn user_results(user: &str) -> String {
    format!("flowcast:user:{user}:results")
}

/// A user's own workflows (hash: tag → JSON).
pub fn user_workflows(user: &str) -> String {
    format!("flowcast:user:{user}:workflows")
}

/// A user's unfinished (queued or running) runs.
pub fn user_active(user: &str) -> String {
    format!("flowcast:user:{user}:active")
}

/// A user's run-rate token bucket.
pub fn user_rate(user: &str) -> String {
    format!("flowcast:user:{user}:rate")
}

/// A user's event history.
pub fn history(user: &str) -> String {
    format!("flowcast:history:{user}")
}

/// A stored output.
pub fn result(result_ref: &str) -> String {
    format!("{RESULT_PREFIX}{result_ref}")
}

/// Fields of a run's hash ([`run`]).
pub mod field {
    /// Owner (username).
    pub const USER: &str = "user";
    /// Workflow tag.
    pub const TAG: &str = "tag";
    /// Run status (`queued`, `running`, `completed`, `failed`, `cancelled`).
    pub const STATUS: &str = "status";
    /// Pending-node counter as last committed.
    pub const COUNTER: &str = "counter";
    /// Last committed event seq.
    pub const SEQ: &str = "seq";
    /// Accepted at, Unix ms.
    pub const CREATED_MS: &str = "created_ms";
    /// The workflow snapshot (JSON).
    pub const WORKFLOW: &str = "workflow";
    /// The run's inputs (JSON).
    pub const INPUTS: &str = "inputs";
    /// Present once the owner asked to cancel the run.
    pub const CANCEL_REQUESTED: &str = "cancel_requested";
    /// Prefix of node records: `n:{node_id}` → JSON.
    pub const NODE_PREFIX: &str = "n:";

    /// The field holding a node's record.
    pub fn node(node_id: &str) -> String {
        format!("{NODE_PREFIX}{node_id}")
    }
}

/// Fields of a wait record ([`wait`]), as the `lua/wait_*.lua` and
/// `lua/task_*.lua` scripts spell them (checked by a unit test in
/// `store::waits`).
pub mod wait_field {
    /// Every field a wait record may have.
    pub const ALL: &[&str] = &[
        "kind",
        "user",
        "run_id",
        "node_id",
        "attempt",
        "queue",
        "signal",
        "input",
        "state",
        "created_ms",
        "deadline_ms",
        "lease_ms",
        "lease_until",
        "token",
        "worker_id",
        "claimed_ms",
        "output",
        "error",
        "retryable",
        "progress",
        "message",
        "progress_n",
    ];
}
