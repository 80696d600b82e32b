//! The JSON shapes the REST API answers with, built from the store's
//! records: the HTTP view of data lives with the HTTP code, not with Redis.

use flowcast_actors::counter::NodeStatus;
use flowcast_actors::store::runs::RunPage;
use flowcast_actors::store::{NodeRecord, RunRecord};
use serde_json::{json, Map, Value};

/// `GET /api/v1/runs/{id}`: status, counter, inputs, every node's state
/// (nodes not reached yet are `waiting`) and the workflow snapshot the run
/// executes (its graph, for the dashboard).
pub fn run(r: &RunRecord) -> Value {
    let nodes: Map<String, Value> = r
        .workflow
        .nodes
        .iter()
        .map(|n| {
            let rec = r
                .nodes
                .get(&n.id)
                .cloned()
                .unwrap_or_else(|| NodeRecord::with_status(NodeStatus::Waiting));
            (n.id.clone(), serde_json::to_value(rec).unwrap_or_default())
        })
        .collect();
    json!({
        "run_id": r.run_id,
        "tag": r.tag,
        "status": r.status.as_str(),
        "counter": r.counter,
        "created_ms": r.created_ms,
        "inputs": r.inputs,
        "nodes": nodes,
        "workflow": r.workflow,
    })
}

/// `GET /api/v1/runs`: one row per run, and the next page's cursor.
pub fn run_list(page: &RunPage) -> Value {
    json!({ "runs": page.runs, "next_cursor": page.next_cursor })
}
