//! Registered workflows, kept in Redis so that every API and runner
//! instance sharing it sees the same set.
//!
//! A run takes a snapshot of its workflow when it is accepted (stored in the
//! run's hash), so re-registering or deleting a tag never changes runs that
//! are already queued or running.

use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use super::keys::WORKFLOWS;
use crate::error::{Error, Result};
use crate::workflow::{Dag, Workflow};

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
