//! The one-request client commands: `runs`, `runs show`, `cancel`,
//! `approve`, `reject`, `signal` and `workflows ls|show|put|rm`. Each asks
//! the REST API, then prints a table or a sentence, or the server's JSON
//! as one line with `--json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::api::Api;
use super::args::WorkflowsCommand;
use super::args::{Decision, RunRef, RunsArgs, RunsCommand, SignalArgs, WorkflowsArgs};
use super::error::{exit, Error, Result};
use super::output::{clean, cut, field, show_value, status_tone, utc, Out, Tone};
use flowcast_actors::counter::RunStatus;

/// Runs asked for per page when filtering by status (the API's maximum).
const FILTER_PAGE: u32 = 1000;
/// Runs asked for per page at most.
const MAX_PAGE: u32 = 1000;
/// Characters of a node's error in the node table.
const TABLE_ERROR_CHARS: usize = 80;

/// `flowcast runs [show ID]`.
pub async fn runs(args: RunsArgs, out: Out) -> Result<i32> {
    let mut api = super::api(&args.conn)?;
    if let Some(RunsCommand::Show { id }) = &args.command {
        return show_run(&mut api, id, out).await;
    }
    let runs = list_runs(&mut api, args.status, args.limit).await?;
    if out.json {
        for r in &runs {
            out.json_line(r)?;
        }
        return Ok(exit::OK);
    }
    if runs.is_empty() {
        out.note("no runs");
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<(Tone, String)>> = runs
        .iter()
        .map(|r| {
            let status = field(r, "status").into_owned();
            vec![
                (Tone::Plain, field(r, "run_id").into_owned()),
                (Tone::Plain, field(r, "tag").into_owned()),
                (status_tone(&status), status),
                (
                    Tone::Dim,
                    r.get("created_ms")
                        .and_then(Value::as_u64)
                        .map(utc)
                        .unwrap_or_default(),
                ),
            ]
        })
        .collect();
    out.table(&["RUN", "TAG", "STATUS", "CREATED"], &rows)?;
    Ok(exit::OK)
}

/// Up to `limit` runs (with `status`, if given), newest first, following
/// `next_cursor` across pages.
async fn list_runs(api: &mut Api, status: Option<RunStatus>, limit: u32) -> Result<Vec<Value>> {
    let page = if status.is_some() {
        FILTER_PAGE
    } else {
        limit.min(MAX_PAGE)
    };
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (runs, next) = api.runs_page(page, cursor.as_deref()).await?;
        for r in runs {
            let wanted =
                status.is_none_or(|s| r.get("status").and_then(Value::as_str) == Some(s.as_str()));
            if wanted {
                found.push(r);
                if found.len() >= limit as usize {
                    return Ok(found);
                }
            }
        }
        match next {
            // A cursor that does not move would loop forever.
            Some(n) if cursor.as_deref() != Some(n.as_str()) => cursor = Some(n),
            _ => return Ok(found),
        }
    }
}

/// `flowcast runs show ID`.
async fn show_run(api: &mut Api, id: &str, out: Out) -> Result<i32> {
    let run = api.run(id).await?;
    if out.json {
        out.json_line(&run)?;
        return Ok(exit::OK);
    }
    let status = field(&run, "status").into_owned();
    out.line(&format!("run      {}", field(&run, "run_id")))?;
    out.line(&format!("tag      {}", field(&run, "tag")))?;
    out.line(&format!(
        "status   {}",
        out.paint(status_tone(&status), &status)
    ))?;
    if let Some(ms) = run.get("created_ms").and_then(Value::as_u64) {
        out.line(&format!("created  {}", utc(ms)))?;
    }
    if let Some(inputs) = run.get("inputs") {
        out.line(&format!("inputs   {}", show_value(inputs, 500)))?;
    }
    let empty = Map::new();
    let nodes = run
        .get("nodes")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    out.line("")?;
    out.table(
        &["NODE", "STATUS", "ATTEMPT", "RESULT", "ERROR"],
        &node_rows(nodes),
    )?;
    Ok(exit::OK)
}

/// The node table's rows, by node id.
fn node_rows(nodes: &Map<String, Value>) -> Vec<Vec<(Tone, String)>> {
    let sorted: BTreeMap<&String, &Value> = nodes.iter().collect();
    sorted
        .into_iter()
        .map(|(id, n)| {
            let status = field(n, "status").into_owned();
            vec![
                (Tone::Plain, clean(id).into_owned()),
                (status_tone(&status), status),
                (Tone::Plain, field(n, "attempt").into_owned()),
                (Tone::Dim, field(n, "result_ref").into_owned()),
                (
                    Tone::Bad,
                    cut(&field(n, "error"), TABLE_ERROR_CHARS).into_owned(),
                ),
            ]
        })
        .collect()
}

/// `flowcast cancel ID`.
pub async fn cancel(args: RunRef, out: Out) -> Result<i32> {
    let answer = super::api(&args.conn)?.cancel(&args.id).await?;
    let status = answer
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("cancelled");
    said(
        out,
        &answer,
        &format!("run {} {}", clean(&args.id), clean(status)),
    )
}

/// `flowcast approve|reject ID NODE`.
pub async fn decide(args: Decision, approve: bool, out: Out) -> Result<i32> {
    let answer = super::api(&args.conn)?
        .decide(&args.id, &args.node, approve, args.comment.as_deref())
        .await?;
    let verb = if approve { "approved" } else { "rejected" };
    said(
        out,
        &answer,
        &format!("{} {verb} in run {}", clean(&args.node), clean(&args.id)),
    )
}

/// `flowcast signal ID NAME [JSON]`.
pub async fn signal(args: SignalArgs, out: Out) -> Result<i32> {
    let payload = match &args.payload {
        Some(p) => super::inputs::json_arg("the signal payload", p)?,
        None => json!({}),
    };
    let answer = super::api(&args.conn)?
        .signal(&args.id, &args.name, &payload)
        .await?;
    said(
        out,
        &answer,
        &format!(
            "signal {} sent to run {}",
            clean(&args.name),
            clean(&args.id)
        ),
    )
}

/// Prints the server's answer (`--json`) or a sentence.
fn said(out: Out, answer: &Value, sentence: &str) -> Result<i32> {
    if out.json {
        out.json_line(answer)?;
    } else {
        out.line(sentence)?;
    }
    Ok(exit::OK)
}

/// `flowcast workflows ls|show|put|rm`.
pub async fn workflows(args: WorkflowsArgs, out: Out) -> Result<i32> {
    let mut api = super::api(&args.conn)?;
    match args.command {
        WorkflowsCommand::Ls => {
            let list = api.workflows().await?;
            if out.json {
                for w in &list {
                    out.json_line(w)?;
                }
                return Ok(exit::OK);
            }
            // A daemon without per-user workflows lists no scopes.
            let scoped = list.iter().any(|w| w.get("scope").is_some());
            let rows: Vec<Vec<(Tone, String)>> = list
                .iter()
                .map(|w| {
                    let mut row = vec![(Tone::Plain, field(w, "tag").into_owned())];
                    if scoped {
                        row.push((Tone::Dim, field(w, "scope").into_owned()));
                    }
                    row
                })
                .collect();
            let header: &[&str] = if scoped { &["TAG", "SCOPE"] } else { &["TAG"] };
            out.table(header, &rows)?;
        }
        WorkflowsCommand::Show { tag } => {
            let wf = api.workflow(&tag).await?;
            if out.json {
                out.json_line(&wf)?;
            } else {
                let pretty = serde_json::to_string_pretty(&wf)
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                out.line(&clean_lines(&pretty))?;
            }
        }
        WorkflowsCommand::Put { file, tag } => {
            let wf = read_workflow(&file)?;
            let tag = match (tag, wf.get("tag").and_then(Value::as_str)) {
                (Some(t), _) => t,
                (None, Some(t)) => t.to_owned(),
                (None, None) => {
                    return Err(Error::usage(format!(
                        "{}: the workflow has no \"tag\"; pass --tag",
                        file.display()
                    )))
                }
            };
            let (created, answer) = api.put_workflow(&tag, &wf).await?;
            let verb = if created { "registered" } else { "replaced" };
            said(
                out,
                &answer,
                &format!(
                    "{verb} {} ({}, {})",
                    clean(&tag),
                    count(&answer, "nodes", "node"),
                    count(&answer, "entry_nodes", "entry node")
                ),
            )?;
        }
        WorkflowsCommand::Rm { tag } => {
            api.delete_workflow(&tag).await?;
            said(
                out,
                &json!({"tag": tag, "deleted": true}),
                &format!("removed {}", clean(&tag)),
            )?;
        }
    }
    Ok(exit::OK)
}

/// A workflow file (`-`: stdin) as JSON.
fn read_workflow(file: &Path) -> Result<Value> {
    let arg = if file == Path::new("-") {
        "@-".to_owned()
    } else {
        format!("@{}", file.display())
    };
    let wf = super::inputs::json_arg("workflows put", &arg)?;
    if !wf.is_object() {
        return Err(Error::usage(format!(
            "{}: a workflow is a JSON object with \"tag\" and \"nodes\"",
            file.display()
        )));
    }
    Ok(wf)
}

/// `N thing(s)` from a number field.
fn count(v: &Value, key: &str, thing: &str) -> String {
    match v.get(key).and_then(Value::as_u64) {
        Some(1) => format!("1 {thing}"),
        Some(n) => format!("{n} {thing}s"),
        None => format!("? {thing}s"),
    }
}

/// Multi-line text with each line cleaned (newlines kept).
fn clean_lines(text: &str) -> String {
    text.lines()
        .map(|l| clean(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
