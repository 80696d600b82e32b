//! The JSON shapes the REST API answers with, built from the store's
//! records: the HTTP view of data lives with the HTTP code, not with Redis.

use flowcast_actors::counter::NodeStatus;
use flowcast_actors::store::runs::RunPage;
use flowcast_actors::store::{NodeRecord, RunRecord};
use serde_json::{json, Map, Value};

/// `GET /api/v1/runs/{id}`: status, counter, inputs, every node's state
/// (nodes not reached yet are `waiting`; a `foreach` node's `items` says
/// how many of how many are done), the workflow snapshot the run executes
/// (its graph, for the dashboard); a child run names its parent.
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
            let mut v = json!({"status": rec.status, "attempt": rec.attempt});
            if let Some(x) = rec.result_ref {
                v["result_ref"] = json!(x);
            }
            if let Some(x) = rec.error {
                v["error"] = json!(x);
            }
            if let Some(total) = rec.items {
                let done = r.items.get(&n.id).map_or(0, |d| d.len());
                v["items"] = json!({"done": done, "total": total});
            }
            (n.id.clone(), v)
        })
        .collect();
    let mut v = json!({
        "run_id": r.run_id,
        "tag": r.tag,
        "status": r.status.as_str(),
        "counter": r.counter,
        "created_ms": r.created_ms,
        "inputs": r.inputs,
        "nodes": nodes,
        "workflow": r.workflow,
    });
    if let Some(p) = &r.parent {
        v["parent_run_id"] = json!(p.parent_run_id);
        v["parent_node_id"] = json!(p.parent_node_id);
        v["depth"] = json!(r.depth);
    }
    v
}

/// `GET /api/v1/runs`: one row per run, and the next page's cursor.
pub fn run_list(page: &RunPage) -> Value {
    json!({ "runs": page.runs, "next_cursor": page.next_cursor })
}
