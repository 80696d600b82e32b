//! Every Redis key, channel and hash field flowcast uses: the one place that
//! spells them. The Lua scripts receive keys from here as `KEYS[...]`; the
//! field names they use are listed in [`field`] and checked against the
//! scripts by a unit test.
//!
//! | key | type | holds |
//! |---|---|---|
//! | [`WORKFLOWS`] `flowcast:workflows` | hash | the shared catalogue: tag → workflow JSON |
//! | [`user_workflows`] `flowcast:user:{u}:workflows` | hash | the user's own workflows: tag → workflow JSON |
//! | [`REQUESTS`] `flowcast:runs:requests` | stream | run requests, consumer group [`GROUP`]; an entry is deleted when acknowledged |
//! | [`ACTIVE`] `flowcast:runs:active` | set | ids of unfinished runs |
//! | [`run`] `flowcast:run:{id}` | hash | the run's fields ([`field`]), `n:{node}` node records and `i:{node}:{index}` finished `foreach` items; expires `--retention` after the run ends |
//! | [`run_events`] `flowcast:run:{id}:events` | list | the run's events, in order; expires with the run |
//! | [`run_refs`] `flowcast:run:{id}:refs` | set | result refs the run stored, while it is live (deleted when it ends) |
//! | [`owner`] `flowcast:run:{id}:owner` | string | the runner process holding the run, `instance#nonce` (lease, with expiry) |
//! | [`user_runs`] `flowcast:user:{u}:run_index` | sorted set | the user's runs (child runs included), all scored 0, members [`index_member`] (creation time, run id): ordered by both |
//! | [`user_ended`] `flowcast:user:{u}:ended` | sorted set | [`index_member`]s of the user's ended runs by expiry (Unix ms) |
//! | [`user_results`] `flowcast:user:{u}:readable` | sorted set | result refs the user may read, by expiry (Unix ms; `inf` while a live run of theirs holds it) |
//! | [`user_active`] `flowcast:user:{u}:active` | set | the user's queued and running runs, child runs included (the active-run quota) |
//! | [`user_rate`] `flowcast:user:{u}:rate` | hash | the user's run-rate token bucket (`tokens`, `ms`; private to `lua/enqueue.lua`, expires when full) |
//! | [`history`] `flowcast:history:{u}` | stream | the user's events in field [`HISTORY_FIELD`] (capped by count and age) |
//! | [`result`] `flowcast:result:{ref}` | string | a node output's canonical JSON; expires once no live run holds it |
//! | [`result_holders`] `flowcast:result:{ref}:live` | hash | user → number of that user's live runs holding the output |
//! | [`channel`] `workflow:events:{u}` | channel | the seed's PubSub channel |
//! | [`CONTROL`] `flowcast:control` | channel | run ids whose owner asked to cancel them |
//! | [`wait`] `flowcast:wait:{id}` | hash | one attempt of a `task`, `approval` or `signal` node (fields: [`wait_field`]); expires with its run |
//! | [`run_waits`] `flowcast:run:{id}:waits` | set | the ids of the run's waits, while it is live (deleted when it ends) |
//! | [`task_queue`] `flowcast:user:{u}:queue:{q}` | sorted set | the user's claimable tasks on queue `q`, by enqueue time |
//! | [`run_signals`] `flowcast:run:{id}:signals` | hash | signals posted to the run: name → JSON payload; expires with the run |
//! | [`TASKS_READY`] `flowcast:tasks:ready` | channel | `[user, queue]` of a task that became claimable (wakes long-polls) |
//! | [`WAITS_SETTLED`] `flowcast:waits:settled` | channel | a wait id (or run id) whose run has something to apply (wakes its run actor) |
//!
//! The user keys ([`user_runs`], [`user_ended`], [`user_results`]) expire as a
//! whole `--retention` after the user's last run ended, when none is live;
//! while one is, ended runs are pruned from them as they expire. The commit
//! that ends a run also ends its waits: open ones are cancelled (a queued
//! task leaves its queue, so queues hold only tasks of live runs) and every
//! wait record and the run's signals expire with the run.
//!
//! Each runner process also names one connection [`PRESENCE_PREFIX`]`{nonce}`
//! (`CLIENT SETNAME`): while it is open, that process is alive (see `leases`).

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
/// Suffix of [`result_holders`] after the result key (the commit script
/// appends it to [`result`]).
pub const HOLDERS_SUFFIX: &str = ":live";
/// The field of a history entry that holds the event (without `event_id`).
pub const HISTORY_FIELD: &str = "e";
/// Digits of the creation time in [`index_member`] (zero-padded, so that
/// members sort by time; the commit script pads the same way).
pub const INDEX_MS_DIGITS: usize = 16;
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
    format!("{}{queue}", task_queue_prefix(user))
}

/// What a user's queue keys start with (the commit script appends a
/// wait's queue to reach it).
pub fn task_queue_prefix(user: &str) -> String {
    format!("flowcast:user:{user}:queue:")
}

/// The ids of a live run's waits.
pub fn run_waits(run_id: &str) -> String {
    format!("flowcast:run:{run_id}:waits")
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

/// Result refs a live run stored.
pub fn run_refs(run_id: &str) -> String {
    format!("flowcast:run:{run_id}:refs")
}

/// A user's runs index (members [`index_member`], all scored 0).
pub fn user_runs(user: &str) -> String {
    format!("flowcast:user:{user}:run_index")
}

/// A user's ended runs ([`index_member`]s) by expiry.
pub fn user_ended(user: &str) -> String {
    format!("flowcast:user:{user}:ended")
}

/// Result refs a user may read, by expiry.
pub fn user_results(user: &str) -> String {
    format!("flowcast:user:{user}:readable")
}

/// A run's member in [`user_runs`]: `{created_ms:016}:{run_id}`, so that
/// the lexicographic order is creation time, then run id.
pub fn index_member(created_ms: u64, run_id: &str) -> String {
    format!("{created_ms:0width$}:{run_id}", width = INDEX_MS_DIGITS)
}

/// The run id of an [`index_member`] (`None` if it is not one).
pub fn index_run_id(member: &str) -> Option<&str> {
    let (ms, run_id) = member.split_once(':')?;
    (ms.len() == INDEX_MS_DIGITS && ms.bytes().all(|b| b.is_ascii_digit()) && !run_id.is_empty())
        .then_some(run_id)
}

/// Who holds an output: user → live runs.
pub fn result_holders(result_ref: &str) -> String {
    format!("{RESULT_PREFIX}{result_ref}{HOLDERS_SUFFIX}")
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

/// Prefix of the name a runner process gives its presence connection
/// (`CLIENT SETNAME`); the rest is the process's nonce.
pub const PRESENCE_PREFIX: &str = "flowcast-runner:";

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
    /// A child run's parent run.
    pub const PARENT_RUN_ID: &str = "parent_run_id";
    /// The parent's `workflow` node that started a child run.
    pub const PARENT_NODE_ID: &str = "parent_node_id";
    /// How deep a child run is nested (absent: 0, a run started by a user).
    pub const DEPTH: &str = "depth";
    /// The lease holder (instance and process) whose commits made the run's
    /// latest unbroken streak of commits.
    pub const WRITER: &str = "writer";
    /// The seq stored before [`WRITER`]'s streak began: its commits are the
    /// seqs after it.
    pub const WRITER_FROM: &str = "writer_from";
    /// The seq at which the run was last resumed by a runner that took its lease over.
    pub const RESUMED_AT_SEQ: &str = "resumed_at_seq";
    /// Resumptions in a row at [`RESUMED_AT_SEQ`], i.e. without progress
    /// (cleared when a draining runner releases the run).
    pub const RESUMES: &str = "resumes";
    /// Prefix of node records: `n:{node_id}` → JSON.
    pub const NODE_PREFIX: &str = "n:";
    /// Prefix of finished `foreach` items: `i:{node_id}:{index}` → result ref.
    pub const ITEM_PREFIX: &str = "i:";

    /// The field holding a node's record.
    pub fn node(node_id: &str) -> String {
        format!("{NODE_PREFIX}{node_id}")
    }

    /// The field holding the result ref of item `index` of a `foreach` node.
    pub fn item(node_id: &str, index: usize) -> String {
        format!("{ITEM_PREFIX}{node_id}:{index}")
    }

    /// The node id and index of an [`item`] field.
    pub fn parse_item(field: &str) -> Option<(&str, usize)> {
        let (node, index) = field.strip_prefix(ITEM_PREFIX)?.rsplit_once(':')?;
        Some((node, index.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_members_sort_by_time_then_id_and_give_back_the_run() {
        let a = index_member(999, "b");
        let b = index_member(1000, "a");
        assert!(a < b, "{a} < {b}");
        assert!(index_member(1000, "a") < index_member(1000, "b"));
        assert_eq!(a, "0000000000000999:b");
        assert_eq!(index_run_id(&b), Some("a"));
        for bad in ["", "x", "999:b", "000000000000099x:b", "0000000000000999:"] {
            assert_eq!(index_run_id(bad), None, "{bad:?}");
        }
        // The commit script builds the same member from the run's created_ms.
        let lua = include_str!("lua/commit.lua");
        assert!(lua.contains(&format!("'%0{INDEX_MS_DIGITS}d:%s'")));
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
