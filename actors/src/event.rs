//! Lifecycle events: what users see on `workflow:events:{username}`.
//!
//! The seed's three payloads (`workflow_started`, `node_completed`,
//! `workflow_completed`) keep their exact field names; flowcast adds
//! `node_failed`, `workflow_failed` and `workflow_cancelled`, and every event
//! carries `seq` (1, 2, ... within its run), `ts_ms`, and `event_id`. The
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
        /// Nodes that were running and got cancelled.
        cancelled_nodes: Vec<String>,
        /// Always 0: every token is consumed.
        counter: u32,
    },
    /// The owner cancelled the run.
    WorkflowCancelled {
        /// The run.
        run_id: String,
        /// Nodes that were running and got cancelled.
        cancelled_nodes: Vec<String>,
        /// Always 0: every token is consumed.
        counter: u32,
    },
}

impl EventBody {
    /// Every event `type`, in the order of [`EventBody::kind`]'s variants
    /// (what a `types=` filter may name).
    pub const TYPES: [&'static str; 6] = [
        "workflow_started",
        "node_completed",
        "node_failed",
        "workflow_completed",
        "workflow_failed",
        "workflow_cancelled",
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
        };
        Self::TYPES[i]
    }
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
}

impl Event {
    /// Stamps a body with the current time and its run sequence number.
    pub fn new(body: EventBody, seq: u64) -> Self {
        let ts_ms = now_ms();
        Self {
            body,
            timestamp: ts_ms / 1000,
            seq,
            ts_ms,
        }
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
            },
            EventBody::WorkflowCompleted {
                run_id: r.clone(),
                counter: 0,
            },
            EventBody::WorkflowFailed {
                run_id: r.clone(),
                failed_node: n,
                error: "e".into(),
                cancelled_nodes: vec![],
                counter: 0,
            },
            EventBody::WorkflowCancelled {
                run_id: r,
                cancelled_nodes: vec![],
                counter: 0,
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
    fn meta_borrows_routing_fields() {
        let s = r#"{"type":"workflow_completed","run_id":"r1","counter":0,"event_id":"1-0"}"#;
        let m: EventMeta = serde_json::from_str(s).unwrap();
        assert_eq!(m.kind, "workflow_completed");
        assert_eq!(m.run_id.as_deref(), Some("r1"));
        assert_eq!(m.event_id.as_deref(), Some("1-0"));
    }
}
