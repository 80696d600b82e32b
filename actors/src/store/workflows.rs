//! Registered workflows, kept in Redis so that every API and runner
//! instance sharing it sees the same set.
//!
//! A run takes a snapshot of its workflow when it is accepted (stored in the
//! run's hash), so re-registering or deleting a tag never changes runs that
//! are already queued or running.

use std::collections::VecDeque;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use super::keys::WORKFLOWS;
use crate::error::{Error, Result};
use crate::workflow::{check_child_graph, ChildGraph, Dag, Workflow};

/// Most workflows read to check one workflow's children.
const MAX_CHILD_LOOKUPS: usize = 1000;

/// Stores a validated workflow under its tag. Returns true if it replaced one.
pub async fn put<C: ConnectionLike + Send + Sync>(conn: &mut C, dag: &Dag) -> Result<bool> {
    let json = serde_json::to_string(&dag.workflow).map_err(|e| Error::Corrupt(e.to_string()))?;
    let added: i64 = conn.hset(WORKFLOWS, &dag.workflow.tag, json).await?;
    Ok(added == 0)
}

/// The workflow registered under `tag`.
pub async fn get<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    tag: &str,
) -> Result<Option<Workflow>> {
    let json: Option<String> = conn.hget(WORKFLOWS, tag).await?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| Error::Corrupt(format!("workflow {tag}: {e}")))
    })
    .transpose()
}

/// Removes a workflow. Returns false if there was none.
pub async fn delete<C: ConnectionLike + Send + Sync>(conn: &mut C, tag: &str) -> Result<bool> {
    let n: i64 = conn.hdel(WORKFLOWS, tag).await?;
    Ok(n > 0)
}

/// Every registered tag, sorted.
pub async fn list<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<String>> {
    let mut tags: Vec<String> = conn.hkeys(WORKFLOWS).await?;
    tags.sort();
    Ok(tags)
}

/// Checks the child workflows `wf` runs, at every level, against what is
/// registered: each exists, none runs a workflow of its own chain again,
/// none nests deeper than `max_depth`. `Ok(Err(message))` names the
/// problem (a 422 at registration).
pub async fn check_children<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    wf: &Workflow,
    max_depth: u32,
) -> Result<Result<(), String>> {
    let edges = |w: &Workflow| -> Vec<(String, String)> {
        w.child_tags()
            .map(|(n, t)| (n.to_owned(), t.to_owned()))
            .collect()
    };
    let mut graph = ChildGraph::new();
    let mut todo: VecDeque<String> = edges(wf).into_iter().map(|(_, t)| t).collect();
    graph.insert(wf.tag.clone(), edges(wf));
    let mut lookups = 0;
    while let Some(tag) = todo.pop_front() {
        if graph.contains_key(&tag) {
            continue;
        }
        lookups += 1;
        if lookups > MAX_CHILD_LOOKUPS {
            return Ok(Err(format!(
                "workflow {:?} reaches more than {MAX_CHILD_LOOKUPS} child workflows",
                wf.tag
            )));
        }
        if let Some(child) = get(conn, &tag).await? {
            let e = edges(&child);
            todo.extend(e.iter().map(|(_, t)| t.clone()));
            graph.insert(tag, e);
        }
    }
    Ok(check_child_graph(&wf.tag, &graph, max_depth))
}
