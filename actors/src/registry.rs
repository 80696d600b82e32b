//! Registered workflows, kept in Redis so that every API and runner
//! instance sharing it sees the same set.
//!
//! A run takes a snapshot of its workflow when it is accepted (stored in the
//! run's hash), so re-registering or deleting a tag never changes runs that
//! are already queued or running.

use std::path::Path;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::error::{Error, Result};
use crate::store::keys::WORKFLOWS;
use crate::workflow::{Dag, Workflow};

/// Validates and stores a workflow under its tag. Returns true if it replaced one.
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

/// Reads every `*.json` file of `dir` as a workflow and validates it.
/// A file that does not parse or validate is an error naming the file.
pub fn read_dir(dir: &Path, max_nodes: usize) -> Result<Vec<Dag>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::InvalidInput(format!("workflows dir {}: {e}", dir.display())))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", p.display())))?;
            let bad = |e: String| Error::InvalidWorkflow(format!("{}: {e}", p.display()));
            let json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let wf = Workflow::from_json(json).map_err(bad)?;
            wf.compile(max_nodes).map_err(bad)
        })
        .collect()
}
