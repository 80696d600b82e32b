//! `flowcast run TAG [--follow]`: start a run, and with `--follow` watch
//! it to its end, then print its final outputs.
//!
//! Following starts from the daemon's own record of the run: its
//! `created_ms` gives an event id from before the run's first event, so the
//! WebSocket replays everything the run published before the socket was
//! up (the Runner may have finished a small run by then) and goes live
//! with no gap. Events are de-duplicated by their `seq`, so the REST
//! backfill — used when the history was trimmed (`replay_gap`) or when the
//! socket stays quiet and the run may have ended unseen — can overlap the
//! stream freely.
//!
//! On a terminal the run is a progress bar (nodes done / total and the
//! names of the nodes now running); piped, one line per event; with
//! `--json`, the events as JSON lines and a last `{"type": "outputs"}`
//! line.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};

use super::api::Api;
use super::args::RunArgs;
use super::error::{exit, Error, Result};
use super::follow::{Filter, Follower, Step};
use super::output::{clean, event_detail, event_tone, show_value, Out, Tone};

/// How far before the run's `created_ms` the replay starts: room for a
/// daemon clock ahead of Redis's (event ids are Redis times).
const CLOCK_SLACK_MS: u64 = 60_000;
/// Node outputs printed at the end at most (the rest: `runs show`).
const MAX_OUTPUTS: usize = 20;
/// Characters of one output printed as text.
const OUTPUT_CHARS: usize = 2000;
/// Exit code after Ctrl-C (128 + SIGINT).
const INTERRUPTED: i32 = 130;

/// Runs `flowcast run`; returns the exit code.
pub async fn run(args: RunArgs, out: Out) -> Result<i32> {
    let inputs = super::inputs::collect(args.inputs.as_deref(), &args.input)?;
    let id = super::identity(&args.conn)?;
    let mut api = Api::new(&args.conn.api, &id)?;
    // A bad --ws is found before the run is started.
    let follower = args
        .follow
        .then(|| Follower::new(&args.conn.ws, &id, &Filter::default()))
        .transpose()?;
    let accepted = api.start_run(&args.tag, &inputs).await?;
    let Some(run_id) = accepted.get("run_id").and_then(Value::as_str) else {
        return Err(Error::Protocol(
            "the run was accepted without a run_id".into(),
        ));
    };
    let run_id = run_id.to_owned();
    let Some(mut follower) = follower else {
        if out.json {
            out.json_line(&accepted)?;
        } else {
            out.line(&run_id)?;
            out.note(&format!(
                "run {run_id} of {} queued; watch it with: flowcast tail --run {run_id}",
                clean(&args.tag)
            ));
        }
        return Ok(exit::OK);
    };
    follower.only_run(&run_id);
    out.note(&format!("run {run_id} of {} queued", clean(&args.tag)));
    let followed = follow(&mut api, follower, &run_id, &args.tag, out).await;
    if followed.is_err() {
        out.note(&format!(
            "run {run_id} was started and goes on without you: flowcast runs show {run_id}"
        ));
    }
    followed
}

/// Follows a run to its end; returns the exit code.
async fn follow(
    api: &mut Api,
    mut follower: Follower,
    run_id: &str,
    tag: &str,
    out: Out,
) -> Result<i32> {
    let view = api.run(run_id).await?;
    let created_ms = view.get("created_ms").and_then(Value::as_u64).unwrap_or(0);
    follower.resume_after(format!("{}-0", created_ms.saturating_sub(CLOCK_SLACK_MS)));
    let mut watch = Watch::new(run_id, Dag::load(api, tag, &view).await);
    let mut display = Display::new(out, &watch);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while watch.end.is_none() {
        let step = tokio::select! {
            s = follower.next() => s,
            _ = &mut interrupted => {
                display.stop();
                out.note(&format!(
                    "stopped following; run {run_id} goes on: \
                     flowcast runs show {run_id} / flowcast cancel {run_id}"
                ));
                return Ok(INTERRUPTED);
            }
        };
        match step {
            Err(e) => {
                display.stop();
                return Err(e);
            }
            Ok(Step::Event(ev)) if ev.get("type").and_then(Value::as_str) == Some("replay_gap") => {
                backfill(api, &mut watch, &mut display).await?;
            }
            Ok(Step::Event(ev)) => {
                if watch.accept(&ev) {
                    display.event(&ev, &watch)?;
                }
            }
            Ok(Step::Quiet) => {
                // A stream that went quiet may have missed the end (PubSub
                // is at-most-once across a Redis reconnect): ask the record.
                let status = api.run(run_id).await?;
                if status
                    .get("status")
                    .and_then(Value::as_str)
                    .is_some_and(|s| matches!(s, "completed" | "failed" | "cancelled"))
                {
                    backfill(api, &mut watch, &mut display).await?;
                }
            }
            Ok(Step::Connected { resumed: true }) => display.note("reconnected; resuming"),
            Ok(Step::Connected { resumed: false }) => {}
            Ok(Step::Lost { reason, retry_in }) => display.note(&format!(
                "connection lost ({reason}); reconnecting in {retry_in:?}"
            )),
        }
    }
    display.stop();
    finish(api, &watch, out).await
}

/// Feeds the run's stored events (those not seen yet) to the watch.
async fn backfill(api: &mut Api, watch: &mut Watch, display: &mut Display) -> Result<()> {
    for ev in api.run_events(&watch.run_id).await? {
        if watch.accept(&ev) {
            display.event(&ev, watch)?;
        }
    }
    Ok(())
}

/// Prints the end of a run; returns the exit code.
async fn finish(api: &mut Api, watch: &Watch, out: Out) -> Result<i32> {
    let Some(end) = &watch.end else {
        return Ok(exit::RUN_FAILED);
    };
    let kind = end.get("type").and_then(Value::as_str).unwrap_or("");
    let status = kind.strip_prefix("workflow_").unwrap_or(kind);
    let run_id = &watch.run_id;
    let (outputs, omitted) = if status == "completed" {
        outputs(api, watch).await?
    } else {
        (Map::new(), 0)
    };
    if out.json {
        let mut last = json!({
            "type": "outputs", "run_id": run_id, "status": status, "outputs": outputs,
        });
        if omitted > 0 {
            last["omitted"] = json!(omitted);
        }
        for k in ["failed_node", "error"] {
            if let Some(v) = end.get(k) {
                last[k] = v.clone();
            }
        }
        out.json_line(&last)?;
    } else {
        let head = match status {
            "completed" => format!("✓ run {run_id} completed"),
            "failed" => format!("✗ run {run_id} failed: {}", event_detail(end)),
            _ => format!("run {run_id} {status}"),
        };
        out.line(&out.paint(event_tone(kind), &head))?;
        for (node, v) in &outputs {
            out.line(&format!(
                "{}: {}",
                out.paint(Tone::Dim, node),
                show_value(v, OUTPUT_CHARS)
            ))?;
        }
        if omitted > 0 {
            out.line(&format!(
                "… and {omitted} more outputs: flowcast runs show {run_id}"
            ))?;
        }
    }
    Ok(if status == "completed" {
        exit::OK
    } else {
        exit::RUN_FAILED
    })
}

/// The outputs of the run's sink nodes (all nodes when the graph is
/// unknown), and how many were left out.
async fn outputs(api: &mut Api, watch: &Watch) -> Result<(Map<String, Value>, usize)> {
    let view = api.run(&watch.run_id).await?;
    let refs: Vec<(String, String)> = view
        .get("nodes")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(id, _)| watch.dag.is_sink(id))
        .filter_map(|(id, n)| Some((id.clone(), n.get("result_ref")?.as_str()?.to_owned())))
        .collect();
    let mut outputs = Map::new();
    for (id, r) in refs.iter().take(MAX_OUTPUTS) {
        outputs.insert(id.clone(), api.result(r).await?);
    }
    Ok((outputs, refs.len().saturating_sub(MAX_OUTPUTS)))
}

/// The run's graph, as far as the client knows it.
#[derive(Debug, Default)]
struct Dag {
    /// Node ids in the workflow's order.
    order: Vec<String>,
    /// Each node's parents; empty when the workflow could not be read.
    parents: HashMap<String, Vec<String>>,
    /// Nodes that are some node's parent.
    has_children: HashSet<String>,
}

impl Dag {
    /// The workflow's graph (`GET /workflows/{tag}`), or just the run's
    /// node ids when the workflow cannot be read (removed meanwhile).
    async fn load(api: &mut Api, tag: &str, view: &Value) -> Self {
        if let Ok(wf) = api.workflow(tag).await {
            if let Some(nodes) = wf.get("nodes").and_then(Value::as_array) {
                let mut dag = Self::default();
                for n in nodes {
                    let Some(id) = n.get("id").and_then(Value::as_str) else {
                        continue;
                    };
                    let parents: Vec<String> = n
                        .get("depends_on")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect();
                    dag.has_children.extend(parents.iter().cloned());
                    dag.order.push(id.to_owned());
                    dag.parents.insert(id.to_owned(), parents);
                }
                return dag;
            }
        }
        Self {
            order: view
                .get("nodes")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            ..Self::default()
        }
    }

    fn is_sink(&self, id: &str) -> bool {
        !self.has_children.contains(id)
    }
}

/// What the client knows of a followed run, from its events.
struct Watch {
    run_id: String,
    dag: Dag,
    /// The last `seq` taken: older events are duplicates.
    last_seq: u64,
    total: usize,
    finished: HashSet<String>,
    /// Nodes reported started (workflows that ask for `node_started`).
    started: HashSet<String>,
    /// The run's last event, once it came.
    end: Option<Value>,
}

impl Watch {
    fn new(run_id: &str, dag: Dag) -> Self {
        Self {
            run_id: run_id.to_owned(),
            total: dag.order.len(),
            dag,
            last_seq: 0,
            finished: HashSet::new(),
            started: HashSet::new(),
            end: None,
        }
    }

    /// Takes an event of the run; false for another run's or one already seen.
    fn accept(&mut self, ev: &Value) -> bool {
        if ev.get("run_id").and_then(Value::as_str) != Some(self.run_id.as_str()) {
            return false;
        }
        let seq = ev.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if seq <= self.last_seq {
            return false;
        }
        self.last_seq = seq;
        let node = ev.get("node_id").and_then(Value::as_str).map(str::to_owned);
        match ev.get("type").and_then(Value::as_str).unwrap_or("") {
            "workflow_started" => {
                if let Some(n) = ev.get("nodes").and_then(Value::as_u64) {
                    self.total = usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
            "node_started" => self.started.extend(node),
            "node_completed" | "node_skipped" => self.finished.extend(node),
            "node_failed" if ev.get("will_retry").and_then(Value::as_bool) != Some(true) => {
                self.finished.extend(node)
            }
            "workflow_completed" | "workflow_failed" | "workflow_cancelled" => {
                self.end = Some(ev.clone())
            }
            _ => {}
        }
        true
    }

    /// The nodes running now: started and not finished, or (for a known
    /// graph) not finished with every parent finished. Workflow order.
    fn current(&self) -> Vec<&str> {
        if self.end.is_some() || self.last_seq == 0 {
            return Vec::new();
        }
        self.dag
            .order
            .iter()
            .filter(|id| !self.finished.contains(*id))
            .filter(|id| {
                self.started.contains(*id)
                    || self
                        .dag
                        .parents
                        .get(*id)
                        .is_some_and(|ps| ps.iter().all(|p| self.finished.contains(p)))
            })
            .map(String::as_str)
            .collect()
    }
}

/// How a followed run is shown.
enum Display {
    /// A progress bar on stderr (stdout and stderr are terminals).
    Bar { bar: ProgressBar, out: Out },
    /// One text line per event.
    Lines(Out),
    /// `--json`: the events as they came.
    Json(Out),
}

/// Event types worth a line above the progress bar.
const NOTABLE: &[&str] = &[
    "node_failed",
    "node_skipped",
    "approval_required",
    "workflow_failed",
    "workflow_cancelled",
];

impl Display {
    fn new(out: Out, watch: &Watch) -> Self {
        if out.json {
            return Self::Json(out);
        }
        if !out.interactive() {
            return Self::Lines(out);
        }
        let template = if out.color_err() {
            "{spinner:.cyan} {elapsed:>4} {bar:30.cyan/blue} {pos}/{len} nodes  {wide_msg}"
        } else {
            "{spinner} {elapsed:>4} {bar:30} {pos}/{len} nodes  {wide_msg}"
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉▊▋▌▍▎▏ ");
        let len = u64::try_from(watch.total).unwrap_or(u64::MAX);
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
            .with_style(style);
        bar.set_message("waiting for a runner");
        bar.enable_steady_tick(Duration::from_millis(120));
        Self::Bar { bar, out }
    }

    fn event(&mut self, ev: &Value, watch: &Watch) -> Result<()> {
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or("");
        let line = |out: &Out| {
            format!(
                "{} {}",
                out.paint(event_tone(kind), &format!("{:<18}", clean(kind))),
                event_detail(ev)
            )
        };
        match self {
            Self::Json(out) => out.json_line(ev),
            Self::Lines(out) => out.line(line(out).trim_end()),
            Self::Bar { bar, out } => {
                if NOTABLE.contains(&kind) {
                    bar.println(line(out).trim_end());
                }
                bar.set_length(u64::try_from(watch.total).unwrap_or(u64::MAX));
                bar.set_position(u64::try_from(watch.finished.len()).unwrap_or(u64::MAX));
                bar.set_message(watch.current().join(", "));
                Ok(())
            }
        }
    }

    /// A message on stderr that does not break the bar.
    fn note(&self, text: &str) {
        match self {
            Self::Bar { bar, out } => bar.suspend(|| out.note(text)),
            Self::Lines(out) | Self::Json(out) => out.note(text),
        }
    }

    /// Leaves the bar drawn as it last was, the cursor on the next line.
    fn stop(&self) {
        if let Self::Bar { bar, out } = self {
            bar.abandon();
            if !bar.is_hidden() {
                out.note("");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag() -> Dag {
        let mut d = Dag::default();
        for (id, ps) in [
            ("a", vec![]),
            ("b", vec!["a"]),
            ("c", vec!["a"]),
            ("d", vec!["b", "c"]),
        ] {
            d.order.push(id.into());
            d.parents
                .insert(id.into(), ps.iter().map(|p| p.to_string()).collect());
            d.has_children.extend(ps.iter().map(|p| p.to_string()));
        }
        d
    }

    fn ev(seq: u64, kind: &str, node: &str) -> Value {
        json!({"run_id": "r", "seq": seq, "type": kind, "node_id": node})
    }

    #[test]
    fn watch_counts_finished_nodes_once_and_names_the_running_ones() {
        let mut w = Watch::new("r", dag());
        assert!(w.current().is_empty());
        assert!(w.accept(&json!({"run_id": "r", "seq": 1, "type": "workflow_started", "nodes": 4})));
        assert_eq!(w.current(), ["a"]);
        assert!(w.accept(&ev(2, "node_completed", "a")));
        assert!(!w.accept(&ev(2, "node_completed", "a")), "a duplicate seq");
        assert!(!w.accept(&json!({"run_id": "other", "seq": 9, "type": "node_completed"})));
        assert_eq!(w.current(), ["b", "c"]);
        assert!(
            w.accept(&json!({"run_id": "r", "seq": 3, "type": "node_failed",
                                 "node_id": "b", "will_retry": true}))
        );
        assert_eq!(w.finished.len(), 1, "a retried attempt is not the end of b");
        assert!(w.accept(&ev(4, "node_completed", "b")));
        assert!(w.accept(&ev(5, "node_skipped", "c")));
        assert_eq!(w.current(), ["d"]);
        assert!(w.accept(&ev(6, "node_completed", "d")));
        assert!(w.accept(&json!({"run_id": "r", "seq": 7, "type": "workflow_completed"})));
        assert_eq!((w.finished.len(), w.total), (4, 4));
        assert!(w.end.is_some() && w.current().is_empty());
        assert!(w.dag.is_sink("d") && !w.dag.is_sink("a"));
    }
}
