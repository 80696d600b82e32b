//! Workflows, kept in Redis so that every API and runner instance sharing it
//! sees the same ones: each user's own namespace, and the operator's shared
//! catalogue.
//!
//! A user's workflows ([`keys::user_workflows`]) are theirs alone: another
//! user can neither read, replace nor delete them, nor learn that they
//! exist. The catalogue ([`keys::WORKFLOWS`], filled from `--workflows-dir`
//! at start-up by [`put_shared`]) is visible to every user and read-only
//! through the API: a user who registers a catalogue tag gets their own copy,
//! which shadows the shared one for them only. A tag resolves to the
//! caller's own workflow first, then the shared one ([`get`]); so does the
//! tag of a child run (a `workflow` node), for the user of its parent run,
//! and [`check_children`] checks a workflow's child tags the same way.
//!
//! A run takes a snapshot of its workflow when it is accepted (stored in the
//! run's hash), so re-registering or deleting a tag never changes runs that
//! are already queued or running.

use std::collections::{BTreeMap, VecDeque};

use redis::aio::ConnectionLike;
use redis::AsyncCommands;
use serde::Serialize;

use super::keys;
use crate::error::{Error, Result};
use crate::workflow::{check_child_graph, ChildGraph, Dag, Workflow};

/// Most workflows read to check one workflow's children.
const MAX_CHILD_LOOKUPS: usize = 1000;

/// Where a workflow visible to a user lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The user's own namespace.
    Own,
    /// The operator's shared catalogue.
    Shared,
}

/// A workflow as a user sees it in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// Its tag.
    pub tag: String,
    /// Whose it is.
    pub scope: Scope,
}

fn to_json(dag: &Dag) -> Result<String> {
    serde_json::to_string(&dag.workflow).map_err(|e| Error::Corrupt(e.to_string()))
}

fn parse(tag: &str, json: &str) -> Result<Workflow> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("workflow {tag}: {e}")))
}

/// Stores a validated workflow in the shared catalogue (the operator's
/// `--workflows-dir`, at start-up).
pub async fn put_shared<C: ConnectionLike + Send + Sync>(conn: &mut C, dag: &Dag) -> Result<()> {
    let _: i64 = conn
        .hset(keys::WORKFLOWS, &dag.workflow.tag, to_json(dag)?)
        .await?;
    Ok(())
}

/// Stores a validated workflow in `user`'s own namespace. Returns true if it
/// replaced one of theirs.
pub async fn put<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    dag: &Dag,
) -> Result<bool> {
    let added: i64 = conn
        .hset(keys::user_workflows(user), &dag.workflow.tag, to_json(dag)?)
        .await?;
    Ok(added == 0)
}

/// The workflow `tag` names for `user`: their own, else the shared one.
pub async fn get<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    tag: &str,
) -> Result<Option<(Scope, Workflow)>> {
    let (own, shared): (Option<String>, Option<String>) = redis::pipe()
        .hget(keys::user_workflows(user), tag)
        .hget(keys::WORKFLOWS, tag)
        .query_async(conn)
        .await?;
    match (own, shared) {
        (Some(j), _) => Ok(Some((Scope::Own, parse(tag, &j)?))),
        (None, Some(j)) => Ok(Some((Scope::Shared, parse(tag, &j)?))),
        (None, None) => Ok(None),
    }
}

/// Removes `user`'s own workflow `tag` (never the shared one). Returns false
/// if they had none.
pub async fn delete<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    tag: &str,
) -> Result<bool> {
    let n: i64 = conn.hdel(keys::user_workflows(user), tag).await?;
    Ok(n > 0)
}

/// Whether the shared catalogue has `tag`.
pub async fn is_shared<C: ConnectionLike + Send + Sync>(conn: &mut C, tag: &str) -> Result<bool> {
    Ok(conn.hexists(keys::WORKFLOWS, tag).await?)
}

/// Every tag `user` can run, sorted, each once: their own, and the shared
/// ones they have not shadowed.
pub async fn list<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
) -> Result<Vec<Listed>> {
    let (own, shared): (Vec<String>, Vec<String>) = redis::pipe()
        .hkeys(keys::user_workflows(user))
        .hkeys(keys::WORKFLOWS)
        .query_async(conn)
        .await?;
    let mut all = BTreeMap::new();
    for tag in shared {
        all.insert(tag, Scope::Shared);
    }
    for tag in own {
        all.insert(tag, Scope::Own);
    }
    Ok(all
        .into_iter()
        .map(|(tag, scope)| Listed { tag, scope })
        .collect())
}

/// Whose workflows the child tags of a workflow resolve among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve<'a> {
    /// As a run of this user resolves them ([`get`]): their own workflow
    /// first, then the shared one.
    User(&'a str),
    /// The shared catalogue alone (the operator's `--workflows-dir`, checked
    /// at start-up; each run resolves its children again for its user).
    Shared,
}

/// Checks the child workflows `wf` runs, at every level, against what is
/// registered, resolved as `resolve` says: each exists, none runs a
/// workflow of its own chain again, none nests deeper than `max_depth`.
/// `Ok(Err(message))` names the problem (a 422 at registration).
pub async fn check_children<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    resolve: Resolve<'_>,
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
        let child = match resolve {
            Resolve::User(user) => get(conn, user, &tag).await?.map(|(_, w)| w),
            Resolve::Shared => {
                let j: Option<String> = conn.hget(keys::WORKFLOWS, &tag).await?;
                j.map(|j| parse(&tag, &j)).transpose()?
            }
        };
        if let Some(child) = child {
            let e = edges(&child);
            todo.extend(e.iter().map(|(_, t)| t.clone()));
            graph.insert(tag, e);
        }
    }
    Ok(check_child_graph(&wf.tag, &graph, max_depth))
}
