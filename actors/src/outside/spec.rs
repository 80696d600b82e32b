//! The node kinds whose work is done outside the daemon, as users write
//! them: `task` (handed to workers over a durable queue), `approval` (a
//! person's decision) and `signal` (a named JSON payload posted to the run).
//!
//! They live here rather than in `workflow` so that the workflow model only
//! names them; what each field means and how it is checked is in one place.

use serde::{Deserialize, Serialize};

/// The lease of a claimed task when its node sets no `heartbeat_ms`.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Shortest lease a task node may ask for.
pub const MIN_LEASE_MS: u64 = 100;
/// Longest lease a task node may ask for (an hour).
pub const MAX_LEASE_MS: u64 = 3_600_000;
/// Longest `timeout_ms` of a waiting node (a year).
pub const MAX_WAIT_TIMEOUT_MS: u64 = 365 * 86_400_000;

/// A `task` node: its input is queued on `queue` for the user's workers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskSpec {
    /// The queue workers claim it from (per user).
    pub queue: String,
    /// A jq filter over `{inputs, nodes}` whose result is the task's input
    /// (default: `{inputs, nodes}` itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The lease: a claimed task whose worker neither heartbeats nor
    /// finishes it within this many ms is given up (that attempt fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

impl TaskSpec {
    /// The lease of a claim, in ms.
    pub fn lease_ms(&self) -> u64 {
        self.heartbeat_ms.unwrap_or(DEFAULT_LEASE_MS)
    }
}

/// What an approval decides when nobody decided before its timeout.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Rejected (the default).
    #[default]
    Reject,
    /// Approved.
    Approve,
}

/// An `approval` node: waits for the run's owner to approve or reject.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalSpec {
    /// A jq filter over `{inputs, nodes}` rendering what is asked (default:
    /// "approve <node>?").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The decision taken at `timeout_ms` if nobody decided.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_timeout: OnTimeout,
}

fn is_default(t: &OnTimeout) -> bool {
    *t == OnTimeout::default()
}

/// A `signal` node: completes with the JSON body posted to
/// `/api/v1/runs/{id}/signals/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SignalSpec {
    /// The signal's name.
    pub name: String,
}

/// Checks a signal name: 1–128 bytes of letters, digits and `-_.:@` (it
/// appears in URLs).
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    crate::workflow::validate_name(what, name)
}

/// Checks a queue name: 1–128 bytes of letters, digits and `-_.@`. Not `:`:
/// a queue's key ends in `:queue:{name}` after the username, so a name
/// without `:` keeps every user's queues apart whatever the usernames.
pub fn validate_queue(name: &str) -> Result<(), String> {
    validate_name("queue", name)?;
    if name.contains(':') {
        return Err(format!(
            "queue {name:?} contains ':'; use letters, digits and - _ . @"
        ));
    }
    Ok(())
}

/// Checks what the three kinds add to a node; the error is about the node
/// (the caller prefixes its id). Their jq filters (`input`, `prompt`) are
/// checked with every node's (`workflow`).
pub fn check_task(t: &TaskSpec, timeout_ms: Option<u64>) -> Result<(), String> {
    validate_queue(&t.queue)?;
    if let Some(ms) = t.heartbeat_ms {
        if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms) {
            return Err(format!(
                "heartbeat_ms must be between {MIN_LEASE_MS} and {MAX_LEASE_MS}, not {ms}"
            ));
        }
    }
    check_timeout(timeout_ms)
}

/// See [`check_task`].
pub fn check_approval(_: &ApprovalSpec, timeout_ms: Option<u64>) -> Result<(), String> {
    check_timeout(timeout_ms)
}

/// See [`check_task`].
pub fn check_signal(s: &SignalSpec, timeout_ms: Option<u64>) -> Result<(), String> {
    validate_name("signal name", &s.name)?;
    check_timeout(timeout_ms)
}

fn check_timeout(timeout_ms: Option<u64>) -> Result<(), String> {
    match timeout_ms {
        Some(ms) if ms > MAX_WAIT_TIMEOUT_MS => Err(format!(
            "timeout_ms of {ms} is longer than a year ({MAX_WAIT_TIMEOUT_MS})"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::workflow::{NodeKind, Workflow, DEFAULT_MAX_NODES};
    use serde_json::json;

    #[test]
    fn outside_kinds_parse_store_and_parse_back_unchanged() {
        let v = json!({"tag": "outside", "nodes": [
            {"id": "t", "kind": "task", "queue": "gpu.big", "input": "{x: .inputs.x}",
             "heartbeat_ms": 500, "timeout_ms": 60000, "retry": {"max_attempts": 3}},
            {"id": "a", "kind": "approval", "prompt": "\"ok?\"", "on_timeout": "approve",
             "timeout_ms": 1000, "depends_on": ["t"]},
            {"id": "s", "kind": "signal", "name": "paid", "depends_on": ["a"]},
            {"id": "bare", "kind": "task", "queue": "q"}
        ]});
        let w = Workflow::from_json(v).unwrap();
        let stored = serde_json::to_value(&w).unwrap();
        assert_eq!(Workflow::from_json(stored.clone()).unwrap(), w);
        assert_eq!(serde_json::from_value::<Workflow>(stored).unwrap(), w);
        let dag = w.compile(DEFAULT_MAX_NODES).unwrap();
        assert!(dag.node(0).waits_outside() && dag.node(2).waits_outside());
        match &dag.node(3).kind {
            NodeKind::Task(t) => assert_eq!(t.lease_ms(), super::DEFAULT_LEASE_MS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_outside_nodes_are_refused_naming_node_and_field() {
        for (node, says) in [
            (
                json!({"id": "t", "kind": "task", "queue": ""}),
                "queue is empty",
            ),
            (
                json!({"id": "t", "kind": "task", "queue": "a/b"}),
                "queue \"a/b\" contains '/'",
            ),
            (
                json!({"id": "t", "kind": "task", "queue": "q", "heartbeat_ms": 5_000_000}),
                "heartbeat_ms",
            ),
            (
                json!({"id": "t", "kind": "task", "queue": "q", "input": "input"}),
                "input: invalid jq filter",
            ),
            (
                json!({"id": "t", "kind": "approval", "prompt": "$ENV"}),
                "prompt: invalid jq filter",
            ),
            (
                json!({"id": "t", "kind": "approval", "timeout_ms": u64::MAX}),
                "longer than a year",
            ),
            (
                json!({"id": "t", "kind": "signal", "name": "a b"}),
                "signal name",
            ),
            (
                json!({"id": "t", "kind": "approval", "on_timeout": "maybe"}),
                "on_timeout",
            ),
            (
                json!({"id": "t", "kind": "task", "queue": "q", "foreach": ".inputs.xs"}),
                "foreach is not available on a task node",
            ),
            (
                json!({"id": "t", "kind": "signal", "name": "go", "foreach": "[1]"}),
                "foreach is not available on a signal node",
            ),
        ] {
            let e = Workflow::from_json(json!({"tag": "w", "nodes": [node.clone()]}))
                .and_then(|w| w.compile(DEFAULT_MAX_NODES).map(|_| ()))
                .unwrap_err();
            assert!(e.starts_with("node \"t\""), "{node}: {e}");
            assert!(e.contains(says), "{node}: {e}");
        }
    }
}
