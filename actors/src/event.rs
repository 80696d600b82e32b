//! Lifecycle events: what users see on `workflow:events:{username}`.
//!
//! The seed's three payloads (`workflow_started`, `node_completed`,
//! `workflow_completed`) keep their exact field names; flowcast adds
//! `node_failed`, `workflow_failed`, `workflow_cancelled`, `node_skipped`,
//! `node_progress` (one variant for a task's heartbeat and a `foreach`
//! node's items), `approval_required` and (for workflows that ask)
//! `node_started`, and every
//! event carries `seq` (1, 2, ... within its run), `ts_ms`, and `event_id`;
//! a child run's events also carry `parent_run_id` and `parent_node_id`. The
//! event id is the event's entry id in the user's history stream, so it is
//! assigned by Redis inside the commit script and spliced into the JSON there
//! (see `store`); everything else is serialised here, once.

use serde::{Deserialize, Serialize};

/// The body of an event, tagged by `type`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// The run is initialised: IR stored, counter set, entry tokens emitted.
    WorkflowStarted {
        /// The run.
        run_id: String,
        /// Its workflow's tag.
        tag: String,
        /// Nodes in the workflow.
        nodes: usize,
        /// Nodes without parents.
        entry_nodes: usize,
    },
    /// A node finished and its token was consumed.
    NodeCompleted {
        /// The run.
        run_id: String,
        /// The node.
        node_id: String,
        /// Always `"completed"` (the seed's field).
        status: String,
        /// The counter after this step.
        counter: u32,
        /// `sha256:<hex>` of the output's canonical JSON.
        result_ref: String,
    },
    /// An attempt of a node failed; `will_retry` says whether another follows.
    NodeFailed {
        /// The run.
        run_id: String,
        /// The node.
        node_id: String,
        /// What went wrong.
        error: String,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// True when the node will be tried again.
        will_retry: bool,
        /// The counter after this step.
        counter: u32,
        /// The `foreach` item whose attempt failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
    },
    /// Every node completed; published exactly once.
    WorkflowCompleted {
        /// The run.
        run_id: String,
        /// Always 0.
        counter: u32,
    },
    /// A node failed after its retries; the run is over.
    WorkflowFailed {
        /// The run.
        run_id: String,
        /// The node that failed.
        failed_node: String,
        /// Its error.
        error: String,
        /// Nodes that were running and got cancelled (the first of them,
        /// when listing all would make the event too large).
        cancelled_nodes: Vec<String>,
        /// How many cancelled nodes `cancelled_nodes` leaves out.
        #[serde(default, skip_serializing_if = "is_zero")]
        cancelled_not_listed: usize,
        /// Always 0: every token is consumed.
        counter: u32,
    },
    /// The owner cancelled the run.
    WorkflowCancelled {
        /// The run.
        run_id: String,
        /// Nodes that were running and got cancelled (the first of them,
        /// when listing all would make the event too large).
        cancelled_nodes: Vec<String>,
        /// How many cancelled nodes `cancelled_nodes` leaves out.
        #[serde(default, skip_serializing_if = "is_zero")]
        cancelled_not_listed: usize,
        /// Always 0: every token is consumed.
        counter: u32,
    },
    /// An attempt of a node begins (only for workflows that ask for it).
    NodeStarted {
        /// The run.
        run_id: String,
        /// The node.
        node_id: String,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// A node was skipped: activated and finished in one step, without a token.
    NodeSkipped {
        /// The run.
        run_id: String,
        /// The node.
        node_id: String,
        /// Always `"skipped"`.
        status: String,
        /// The counter after this step.
        counter: u32,
        /// Why: its condition, or its parents.
        reason: String,
    },
    /// A long-running node reported how far it is: a task's worker in a
    /// heartbeat, or a `foreach` node as its items finish (`done` of
    /// `total`).
    NodeProgress {
        /// The run.
        run_id: String,
        /// The node.
        node_id: String,
        /// From 0 to 1 (`done / total` for a `foreach` node).
        progress: f64,
        /// What the worker said (cut to 4 KiB), or `"done/total items"`;
        /// null when a worker said nothing.
        message: Option<String>,
        /// A `foreach` node's items finished.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        done: Option<usize>,
        /// A `foreach` node's items in all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<usize>,
    },
    /// An approval node waits for its run's owner to decide.
    ApprovalRequired {
        /// The run.
        run_id: String,
        /// The node.
        node_id: String,
        /// The rendered prompt (a string cut to 4 KiB, or small JSON).
        prompt: serde_json::Value,
        /// When `on_timeout` decides, Unix ms; null without a timeout.
        expires_at: Option<u64>,
    },
}

impl EventBody {
    /// Every event `type`, in the order of [`EventBody::kind`]'s variants
    /// (what a `types=` filter may name).
    pub const TYPES: [&'static str; 10] = [
        "workflow_started",
        "node_completed",
        "node_failed",
        "workflow_completed",
        "workflow_failed",
        "workflow_cancelled",
        "node_started",
        "node_skipped",
        "node_progress",
        "approval_required",
    ];

    /// The event's `type` (as serialised by serde's tag).
    pub fn kind(&self) -> &'static str {
        let i = match self {
            Self::WorkflowStarted { .. } => 0,
            Self::NodeCompleted { .. } => 1,
            Self::NodeFailed { .. } => 2,
            Self::WorkflowCompleted { .. } => 3,
            Self::WorkflowFailed { .. } => 4,
            Self::WorkflowCancelled { .. } => 5,
            Self::NodeStarted { .. } => 6,
            Self::NodeSkipped { .. } => 7,
            Self::NodeProgress { .. } => 8,
            Self::ApprovalRequired { .. } => 9,
        };
        Self::TYPES[i]
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Longest error text in an event, as JSON (escapes included).
pub const MAX_ERROR_BYTES: usize = 4096;
/// Longest list of node ids in an event, as JSON.
const MAX_NODE_LIST_BYTES: usize = 8192;
/// No event is longer than this, as JSON: the limits above, a tag and the
/// ids (at most 128 bytes each) leave room to spare.
pub const MAX_EVENT_BYTES: usize = 16384;

/// Bytes `c` takes inside a JSON string.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// `text` cut, at a character boundary, so that it takes at most
/// [`MAX_ERROR_BYTES`] as a JSON string; a cut text says so at its end.
pub fn cut_error(text: &str) -> String {
    const MARK: &str = "... (cut)";
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += json_len(c);
        if used > MAX_ERROR_BYTES - MARK.len() {
            let rest: usize = text[i..].chars().map(json_len).sum();
            if used - json_len(c) + rest <= MAX_ERROR_BYTES {
                return text.to_owned();
            }
            return format!("{}{MARK}", &text[..i]);
        }
    }
    text.to_owned()
}

/// Keeps the first ids of `ids` that fit in [`MAX_NODE_LIST_BYTES`];
/// returns how many were left out.
fn cap_list(ids: &mut Vec<String>) -> usize {
    let mut used = 2;
    let keep = ids
        .iter()
        .take_while(|id| {
            used += id.chars().map(json_len).sum::<usize>() + 3;
            used <= MAX_NODE_LIST_BYTES
        })
        .count();
    let dropped = ids.len() - keep;
    ids.truncate(keep);
    dropped
}

impl EventBody {
    /// Applies the size limits: errors cut to [`MAX_ERROR_BYTES`], node
    /// lists capped (with the count of those left out).
    fn bounded(mut self) -> Self {
        match &mut self {
            Self::NodeFailed { error, .. } => *error = cut_error(error),
            Self::WorkflowFailed {
                error,
                cancelled_nodes,
                cancelled_not_listed,
                ..
            } => {
                *error = cut_error(error);
                *cancelled_not_listed += cap_list(cancelled_nodes);
            }
            Self::WorkflowCancelled {
                cancelled_nodes,
                cancelled_not_listed,
                ..
            } => *cancelled_not_listed += cap_list(cancelled_nodes),
            Self::NodeProgress {
                message: Some(m), ..
            } => *m = cut_error(m),
            Self::ApprovalRequired { prompt, .. } => *prompt = bounded_prompt(prompt.take()),
            _ => {}
        }
        self
    }
}

/// A prompt as an event carries it: a string cut like an error; other JSON
/// kept if it is as small, else its text, cut.
fn bounded_prompt(prompt: serde_json::Value) -> serde_json::Value {
    match prompt {
        serde_json::Value::String(s) => serde_json::Value::String(cut_error(&s)),
        other => {
            let text = other.to_string();
            if text.len() <= MAX_ERROR_BYTES {
                other
            } else {
                serde_json::Value::String(cut_error(&text))
            }
        }
    }
}

/// Where a child run comes from: the run and the `workflow` node that
/// started it. Every event of the child carries both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Parent {
    /// The parent run.
    pub parent_run_id: String,
    /// The parent's `workflow` node.
    pub parent_node_id: String,
}

/// An event with its envelope, as serialised before Redis adds `event_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// The typed body (flattened: `type`, `run_id`, ...).
    #[serde(flatten)]
    pub body: EventBody,
    /// Unix seconds, as in the seed.
    pub timestamp: u64,
    /// Position within the run, from 1.
    pub seq: u64,
    /// Unix milliseconds.
    pub ts_ms: u64,
    /// Set on a child run's events.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
}

impl Event {
    /// Stamps a body with the current time and its run sequence number,
    /// within the size limits ([`MAX_EVENT_BYTES`]).
    pub fn new(body: EventBody, seq: u64) -> Self {
        let ts_ms = now_ms();
        Self {
            body: body.bounded(),
            timestamp: ts_ms / 1000,
            seq,
            ts_ms,
            parent: None,
        }
    }

    /// Marks the event as a child run's (no change for `None`).
    pub fn child_of(mut self, parent: Option<&Parent>) -> Self {
        self.parent = parent.cloned();
        self
    }

    /// The JSON text published (without `event_id`, which Redis assigns).
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The routing fields of a published event, borrowed from its JSON text:
/// what the Fanout needs to filter, parsed once per message.
#[derive(Debug, Deserialize)]
pub struct EventMeta<'a> {
    /// The event's `type`.
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// The run it belongs to.
    #[serde(default, borrow)]
    pub run_id: Option<std::borrow::Cow<'a, str>>,
    /// The history id Redis assigned.
    #[serde(default, borrow)]
    pub event_id: Option<std::borrow::Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn seed_fields_are_exact() {
        let e = Event::new(
            EventBody::NodeCompleted {
                run_id: "r".into(),
                node_id: "search".into(),
                status: "completed".into(),
                counter: 1,
                result_ref: "sha256:ab".into(),
            },
            2,
        );
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in [
            "type",
            "run_id",
            "node_id",
            "status",
            "counter",
            "result_ref",
            "timestamp",
            "seq",
        ] {
            assert!(keys.contains(&k), "{k} missing in {v}");
        }
        assert_eq!(v["type"], "node_completed");
        assert!(e
            .to_json()
            .starts_with(r#"{"type":"node_completed","run_id":"r""#));
    }

    #[test]
    fn every_kind_is_the_serialised_type_and_listed_once() {
        let (r, n) = (String::from("r"), String::from("n"));
        let all = [
            EventBody::WorkflowStarted {
                run_id: r.clone(),
                tag: "t".into(),
                nodes: 1,
                entry_nodes: 1,
            },
            EventBody::NodeCompleted {
                run_id: r.clone(),
                node_id: n.clone(),
                status: "completed".into(),
                counter: 0,
                result_ref: "sha256:ab".into(),
            },
            EventBody::NodeFailed {
                run_id: r.clone(),
                node_id: n.clone(),
                error: "e".into(),
                attempt: 1,
                will_retry: false,
                counter: 0,
                item: None,
            },
            EventBody::WorkflowCompleted {
                run_id: r.clone(),
                counter: 0,
            },
            EventBody::WorkflowFailed {
                run_id: r.clone(),
                failed_node: n.clone(),
                error: "e".into(),
                cancelled_nodes: vec![],
                cancelled_not_listed: 0,
                counter: 0,
            },
            EventBody::WorkflowCancelled {
                run_id: r.clone(),
                cancelled_nodes: vec![],
                cancelled_not_listed: 0,
                counter: 0,
            },
            EventBody::NodeStarted {
                run_id: r.clone(),
                node_id: n.clone(),
                attempt: 1,
            },
            EventBody::NodeSkipped {
                run_id: r.clone(),
                node_id: n.clone(),
                status: "skipped".into(),
                counter: 0,
                reason: "when was false".into(),
            },
            EventBody::NodeProgress {
                run_id: r.clone(),
                node_id: n.clone(),
                progress: 0.5,
                message: Some("1/2 items".into()),
                done: Some(1),
                total: Some(2),
            },
            EventBody::ApprovalRequired {
                run_id: r,
                node_id: n,
                prompt: "ok?".into(),
                expires_at: None,
            },
        ];
        let kinds: Vec<&str> = all.iter().map(EventBody::kind).collect();
        assert_eq!(kinds, EventBody::TYPES);
        for b in all {
            let v: Value = serde_json::from_str(&Event::new(b.clone(), 1).to_json()).unwrap();
            assert_eq!(v["type"], b.kind());
        }
    }

    #[test]
    fn no_event_is_over_the_limit_whatever_the_error_and_the_nodes() {
        let long_id = "n".repeat(128);
        for error in [
            "x".repeat(2_000_000),
            "\u{1}".repeat(100_000),
            "\"é😀".repeat(100_000),
        ] {
            let body = EventBody::WorkflowFailed {
                run_id: "r".repeat(36),
                failed_node: long_id.clone(),
                error: error.clone(),
                cancelled_nodes: vec![long_id.clone(); 10_000],
                cancelled_not_listed: 0,
                counter: 0,
            };
            let json = Event::new(body, u64::MAX).to_json();
            assert!(json.len() <= MAX_EVENT_BYTES - 100, "{}", json.len());
            let v: Value = serde_json::from_str(&json).unwrap();
            let listed = v["cancelled_nodes"].as_array().unwrap().len() as u64;
            assert_eq!(listed + v["cancelled_not_listed"].as_u64().unwrap(), 10_000);
            let cut = v["error"].as_str().unwrap();
            assert!(cut.ends_with("... (cut)"), "{}", &cut[cut.len() - 20..]);
            assert!(serde_json::to_string(cut).unwrap().len() <= MAX_ERROR_BYTES + 2);
            assert!(error.starts_with(cut.trim_end_matches("... (cut)")));
        }
        assert_eq!(cut_error("short"), "short");
        let exact = "y".repeat(MAX_ERROR_BYTES - 2);
        assert_eq!(cut_error(&exact), exact);
    }

    #[test]
    fn a_child_runs_events_stay_under_the_limit_too() {
        let long_id = "n".repeat(128);
        let parent = Parent {
            parent_run_id: "p".repeat(36),
            parent_node_id: long_id.clone(),
        };
        let huge = "\u{1}".repeat(100_000);
        let bodies = [
            EventBody::WorkflowFailed {
                run_id: "r".repeat(36),
                failed_node: long_id.clone(),
                error: huge.clone(),
                cancelled_nodes: vec![long_id.clone(); 10_000],
                cancelled_not_listed: 0,
                counter: 0,
            },
            EventBody::NodeFailed {
                run_id: "r".repeat(36),
                node_id: long_id.clone(),
                error: huge,
                attempt: u32::MAX,
                will_retry: true,
                counter: u32::MAX,
                item: Some(usize::MAX),
            },
            EventBody::NodeSkipped {
                run_id: "r".repeat(36),
                node_id: long_id.clone(),
                status: "skipped".into(),
                counter: u32::MAX,
                reason: format!("parent {long_id:?} was skipped"),
            },
            EventBody::NodeProgress {
                run_id: "r".repeat(36),
                node_id: long_id.clone(),
                progress: 1.0,
                message: Some(format!("{0}/{0} items", usize::MAX)),
                done: Some(usize::MAX),
                total: Some(usize::MAX),
            },
            // A worker's heartbeat says what it likes.
            EventBody::NodeProgress {
                run_id: "r".repeat(36),
                node_id: long_id.clone(),
                progress: 0.123456789,
                message: Some("\"é\u{1}".repeat(100_000)),
                done: None,
                total: None,
            },
            // A prompt as long text, and as large JSON.
            EventBody::ApprovalRequired {
                run_id: "r".repeat(36),
                node_id: long_id.clone(),
                prompt: "\u{1}".repeat(100_000).into(),
                expires_at: Some(u64::MAX),
            },
            EventBody::ApprovalRequired {
                run_id: "r".repeat(36),
                node_id: long_id.clone(),
                prompt: serde_json::json!({"rows": vec!["\"x\""; 10_000]}),
                expires_at: Some(u64::MAX),
            },
        ];
        for body in bodies {
            let json = Event::new(body, u64::MAX).child_of(Some(&parent)).to_json();
            // Room left for the event_id Redis splices in.
            assert!(json.len() <= MAX_EVENT_BYTES - 100, "{}", json.len());
        }
    }

    #[test]
    fn only_child_runs_carry_parent_fields() {
        let body = EventBody::WorkflowCompleted {
            run_id: "r".into(),
            counter: 0,
        };
        let plain = Event::new(body.clone(), 3).to_json();
        assert!(!plain.contains("parent"), "{plain}");
        let parent = Parent {
            parent_run_id: "p".into(),
            parent_node_id: "call".into(),
        };
        let child: Value =
            serde_json::from_str(&Event::new(body, 3).child_of(Some(&parent)).to_json()).unwrap();
        assert_eq!(child["parent_run_id"], "p");
        assert_eq!(child["parent_node_id"], "call");
        assert_eq!(child["type"], "workflow_completed");
    }

    #[test]
    fn meta_borrows_routing_fields() {
        let s = r#"{"type":"workflow_completed","run_id":"r1","counter":0,"event_id":"1-0"}"#;
        let m: EventMeta = serde_json::from_str(s).unwrap();
        assert_eq!(m.kind, "workflow_completed");
        assert_eq!(m.run_id.as_deref(), Some("r1"));
        assert_eq!(m.event_id.as_deref(), Some("1-0"));
    }
}
