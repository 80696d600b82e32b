//! Every Redis key, channel and hash field flowcast uses: the one place that
//! spells them. The Lua scripts receive keys from here as `KEYS[...]`; the
//! field names they use are listed in [`field`] and checked against the
//! scripts by a unit test.
//!
//! | key | type | holds |
//! |---|---|---|
//! | [`WORKFLOWS`] `flowcast:workflows` | hash | tag → workflow JSON |
//! | [`REQUESTS`] `flowcast:runs:requests` | stream | run requests, consumer group [`GROUP`] |
//! | [`ACTIVE`] `flowcast:runs:active` | set | ids of unfinished runs |
//! | [`run`] `flowcast:run:{id}` | hash | the run's fields ([`field`]) and `n:{node}` node records |
//! | [`run_events`] `flowcast:run:{id}:events` | list | the run's events, in order |
//! | [`owner`] `flowcast:run:{id}:owner` | string | the runner holding the run (lease, with expiry) |
//! | [`user_runs`] `flowcast:user:{u}:runs` | sorted set | the user's run ids by creation time |
//! | [`user_results`] `flowcast:user:{u}:results` | set | result refs the user may read |
//! | [`history`] `flowcast:history:{u}` | stream | the user's events (capped) |
//! | [`result`] `flowcast:result:{ref}` | string | a node output's canonical JSON |
//! | [`channel`] `workflow:events:{u}` | channel | the seed's PubSub channel |
//! | [`CONTROL`] `flowcast:control` | channel | run ids whose owner asked to cancel them |

/// Registered workflows (hash: tag → JSON).
pub const WORKFLOWS: &str = "flowcast:workflows";
/// Run-request stream.
pub const REQUESTS: &str = "flowcast:runs:requests";
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

/// The seed's PubSub channel of a user.
pub fn channel(user: &str) -> String {
    format!("{CHANNEL_PREFIX}{user}")
}

/// A run's hash.
pub fn run(run_id: &str) -> String {
    format!("flowcast:run:{run_id}")
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
    /// Number of nodes of the run's workflow.
    pub const NODES: &str = "nodes";
    /// Nodes completed so far.
    pub const DONE: &str = "done";
    /// Ended at (completed, failed or cancelled), Unix ms.
    pub const ENDED_MS: &str = "ended_ms";
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
