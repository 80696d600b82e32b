//! What a completed run's events must be, for any workflow: the exactness
//! the recovery and runner tests assert after kills, takeovers and twins.
//!
//! [`assert_dag_history`] replays the events through the counter rule
//! itself (entry nodes active; a completion consumes its node's token and
//! activates the children whose parents have all completed), so it checks
//! that every node completed exactly once, only while active (`z` after
//! both `x` and `y`), with the exact counter, and that the run completed
//! exactly once at counter 0, with seq 1..N and increasing event ids.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A workflow's graph as the test registered it: node → parents.
fn parents_of(workflow: &Value) -> BTreeMap<String, Vec<String>> {
    workflow["nodes"]
        .as_array()
        .expect("a workflow with nodes")
        .iter()
        .map(|n| {
            let id = n["id"].as_str().expect("a node id").to_owned();
            let parents = n["depends_on"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| p.as_str().expect("a parent id").to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (id, parents)
        })
        .collect()
}

/// Asserts seq 1..N and increasing event ids, all of `run_id`.
#[track_caller]
pub fn assert_seq_and_ids(run_id: &str, ev: &[Value]) {
    let ctx = || serde_json::to_string_pretty(ev).unwrap_or_default();
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap_or(0)).collect();
    let want: Vec<u64> = (1..=ev.len() as u64).collect();
    assert_eq!(seqs, want, "run {run_id}: seq not 1..N: {}", ctx());
    assert!(ev.iter().all(|e| e["run_id"] == run_id), "{}", ctx());
    let ids: Vec<(u64, u64)> = ev
        .iter()
        .map(|e| {
            let id = e["event_id"].as_str().expect("an event_id");
            let (a, b) = id.split_once('-').expect("a stream id");
            (a.parse().expect("ms"), b.parse().expect("seq"))
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "run {run_id}: event ids do not increase: {}",
        ctx()
    );
}

/// Asserts that `ev` is exactly the history of a completed run of `workflow`.
#[track_caller]
pub fn assert_dag_history(run_id: &str, ev: &[Value], workflow: &Value) {
    let ctx = || serde_json::to_string_pretty(ev).unwrap_or_default();
    assert_seq_and_ids(run_id, ev);
    let parents = parents_of(workflow);
    let entries = parents.values().filter(|p| p.is_empty()).count();
    assert_eq!(ev.len(), parents.len() + 2, "run {run_id}: {}", ctx());
    let first = &ev[0];
    assert_eq!(first["type"], "workflow_started", "run {run_id}: {}", ctx());
    assert_eq!(first["nodes"], parents.len(), "run {run_id}");
    assert_eq!(first["entry_nodes"], entries, "run {run_id}");

    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut active: BTreeSet<&str> = parents
        .iter()
        .filter(|(_, p)| p.is_empty())
        .map(|(id, _)| id.as_str())
        .collect();
    for e in &ev[1..ev.len() - 1] {
        assert_eq!(e["type"], "node_completed", "run {run_id}: {}", ctx());
        let node = e["node_id"].as_str().expect("a node_id");
        assert!(
            active.remove(node),
            "run {run_id}: {node} completed while not active (twice, or before its parents): {}",
            ctx()
        );
        done.insert(node);
        for (child, ps) in &parents {
            if ps.iter().any(|p| p == node) && ps.iter().all(|p| done.contains(p.as_str())) {
                active.insert(child);
            }
        }
        assert_eq!(
            e["counter"].as_u64(),
            Some(active.len() as u64),
            "run {run_id}: counter after {node}: {}",
            ctx()
        );
        assert!(
            e["result_ref"]
                .as_str()
                .unwrap_or("")
                .starts_with("sha256:"),
            "run {run_id}: {}",
            ctx()
        );
    }
    assert_eq!(done.len(), parents.len(), "run {run_id}: {}", ctx());
    let last = &ev[ev.len() - 1];
    assert_eq!(
        last["type"],
        "workflow_completed",
        "run {run_id}: {}",
        ctx()
    );
    assert_eq!(last["counter"], 0, "run {run_id}");
}
