//! The workflow model and its validation.
//!
//! A workflow is a DAG of nodes registered under a tag. [`Workflow::compile`]
//! checks everything that can be checked before a run starts (unique ids,
//! parents exist, no cycle, at least one entry node, size limits, jq filters
//! that parse, control-flow fields that make sense) and yields a [`Dag`]: the
//! index-based graph that the counter state machine and the run actor work
//! on. Every error message names the node it is about, and a cycle error
//! names the nodes of the cycle.
//!
//! Control flow lives on the nodes: `when` (a condition that may skip the
//! node), `trigger` (how parents that were skipped count), `foreach` (run
//! the node once per item of an array, `concurrency` at a time) and the
//! `workflow` kind (a child run). What needs other workflows to check (the
//! child's tag exists, no recursion) is `store::workflows::check_children`'s.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jq;
use crate::outside::spec::{self as outside, ApprovalSpec, SignalSpec, TaskSpec};

/// Upper bound on nodes per workflow unless configured otherwise.
pub const DEFAULT_MAX_NODES: usize = 10_000;
/// Items of a `foreach` node running at once unless it says otherwise.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// Largest `concurrency` a `foreach` node may ask for.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Longest accepted node id or tag, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// A workflow as users write it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workflow {
    /// The name runs refer to.
    pub tag: String,
    /// The nodes, in any order.
    pub nodes: Vec<NodeSpec>,
    /// Optional events the workflow asks for.
    #[serde(default, skip_serializing_if = "EventOptions::is_default")]
    pub events: EventOptions,
}

/// Events beyond the seed's that a workflow opts into, so that one that
/// does not ask (the seed's `flight-search`) keeps exactly the seed's
/// documented sequence.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventOptions {
    /// Publish `node_started` when each attempt of a node begins.
    #[serde(default)]
    pub node_started: bool,
}

impl EventOptions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// When a node with parents may run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Every parent completed; a skipped parent skips the node.
    #[default]
    AllCompleted,
    /// Every parent finished and at least one completed (the join after an
    /// if/else); if none completed, the node is skipped.
    AnyCompleted,
}

impl Trigger {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One node of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSpec {
    /// Unique within the workflow.
    pub id: String,
    /// What the node does.
    #[serde(flatten)]
    pub kind: NodeKind,
    /// Parents: the node runs once all of them have completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Retry policy for failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Deadline of one attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A jq condition over `{inputs, nodes}`, evaluated once the parents
    /// have finished: false or null skips the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// How skipped parents count.
    #[serde(default, skip_serializing_if = "Trigger::is_default")]
    pub trigger: Trigger,
    /// A jq filter yielding an array: the node runs once per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach: Option<String>,
    /// Items of a `foreach` running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// The node kinds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeKind {
    /// A jq filter over `{inputs, nodes: {<id>: <output>}}`.
    Transform {
        /// The jq program.
        filter: String,
    },
    /// Waits `ms` milliseconds; its output is `null`.
    Delay {
        /// How long to wait.
        ms: u64,
    },
    /// An HTTP request whose JSON (or text) response is the output.
    Http(HttpSpec),
    /// A child run of another workflow; its output maps the child's sink
    /// nodes to their outputs.
    Workflow(ChildSpec),
    /// Work handed to the user's workers over a durable queue.
    Task(TaskSpec),
    /// Waits for the run's owner to approve or reject.
    Approval(ApprovalSpec),
    /// Waits for a named signal posted to the run.
    Signal(SignalSpec),
}

/// A `workflow` node's child run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChildSpec {
    /// The child workflow's tag.
    pub tag: String,
    /// A jq filter over `{inputs, nodes}` (plus `item` and `index` with
    /// `foreach`) yielding the child's inputs; the parent's inputs if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
}

/// An `http` node's request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HttpSpec {
    /// HTTP method, `GET` by default.
    #[serde(default = "default_method")]
    pub method: String,
    /// A fixed URL; use `url_filter` to build one from the run's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A jq filter over `{inputs, nodes}` that yields the URL string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_filter: Option<String>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub headers: HashMap<String, String>,
    /// A jq filter over `{inputs, nodes}` whose output is sent as the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

/// How a node's failed attempts are retried.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt, in milliseconds.
    #[serde(default)]
    pub backoff_ms: u64,
    /// Factor applied to the wait after each further attempt.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

fn default_multiplier() -> f64 {
    2.0
}

impl RetryPolicy {
    /// Delay before attempt `next_attempt` (2 for the first retry).
    pub fn backoff_before(&self, next_attempt: u32) -> std::time::Duration {
        let exp = next_attempt.saturating_sub(2) as i32;
        let ms = self.backoff_ms as f64 * self.multiplier.max(1.0).powi(exp);
        std::time::Duration::from_millis(ms.min(3_600_000.0) as u64)
    }
}

impl NodeSpec {
    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.retry.map_or(1, |r| r.max_attempts.max(1))
    }

    /// The node kind's name, as written in the workflow.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Transform { .. } => "transform",
            NodeKind::Delay { .. } => "delay",
            NodeKind::Http(_) => "http",
            NodeKind::Workflow(_) => "workflow",
            NodeKind::Task(_) => "task",
            NodeKind::Approval(_) => "approval",
            NodeKind::Signal(_) => "signal",
        }
    }

    /// True for the kinds that wait for something outside the daemon
    /// (`task`, `approval`, `signal`).
    pub fn waits_outside(&self) -> bool {
        matches!(
            self.kind,
            NodeKind::Task(_) | NodeKind::Approval(_) | NodeKind::Signal(_)
        )
    }

    /// Items of a `foreach` running at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY) as usize
    }
}

/// A validated workflow as an index-based graph.
#[derive(Debug, Clone)]
pub struct Dag {
    /// The workflow it was built from.
    pub workflow: Workflow,
    /// Parents of each node, by index.
    pub parents: Vec<Vec<usize>>,
    /// Children of each node, by index.
    pub children: Vec<Vec<usize>>,
    /// Nodes without parents, in declaration order.
    pub entries: Vec<usize>,
    index: HashMap<String, usize>,
}

impl Dag {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// True for a workflow without nodes (never produced by validation).
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// Index of the node with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The node at this index.
    pub fn node(&self, i: usize) -> &NodeSpec {
        &self.workflow.nodes[i]
    }

    /// Nodes without children, in declaration order: their outputs are a
    /// child run's output.
    pub fn sinks(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.children[i].is_empty())
    }
}

impl Workflow {
    /// `(node id, child tag)` of every `workflow` node.
    pub fn child_tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.nodes.iter().filter_map(|n| match &n.kind {
            NodeKind::Workflow(c) => Some((n.id.as_str(), c.tag.as_str())),
            _ => None,
        })
    }
}

/// Checks a tag: non-empty, at most [`MAX_ID_BYTES`], URL-path safe.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    validate_name("tag", tag)
}

pub(crate) fn validate_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(format!(
            "{what} {:?}... is longer than {MAX_ID_BYTES} bytes",
            &s[..s.char_indices().nth(16).map_or(s.len(), |(i, _)| i)]
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_alphanumeric() || "-_.:@".contains(*c)))
    {
        return Err(format!(
            "{what} {s:?} contains {c:?}; use letters, digits and - _ . : @"
        ));
    }
    Ok(())
}

/// Fields every node may have.
const NODE_FIELDS: &[&str] = &[
    "id",
    "kind",
    "depends_on",
    "retry",
    "timeout_ms",
    "when",
    "trigger",
    "foreach",
    "concurrency",
];
/// The node kinds and the fields each adds.
const KINDS: &[(&str, &[&str])] = &[
    ("transform", &["filter"]),
    ("delay", &["ms"]),
    ("http", &["method", "url", "url_filter", "headers", "body"]),
    ("workflow", &["tag", "inputs"]),
    ("task", &["queue", "input", "heartbeat_ms"]),
    ("approval", &["prompt", "on_timeout"]),
    ("signal", &["name"]),
];

/// "a string", "an object", ... for messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Takes an optional field of a node, naming the node and field on error.
fn field<T: DeserializeOwned>(
    m: &mut Map<String, Value>,
    who: &str,
    name: &str,
) -> Result<Option<T>, String> {
    match m.remove(name) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| format!("{who}: field {name:?}: {e}")),
    }
}

/// Takes a required field of a node.
fn required<T: DeserializeOwned>(
    m: &mut Map<String, Value>,
    who: &str,
    name: &str,
) -> Result<T, String> {
    field(m, who, name)?.ok_or_else(|| format!("{who}: missing field {name:?}"))
}

impl NodeSpec {
    /// Parses the node at position `pos` of a workflow's `nodes`, with
    /// messages that name the node and the field at fault. Unknown fields
    /// are refused: a misspelt `depends_on` must not make an entry node.
    fn from_json(pos: usize, v: Value) -> Result<Self, String> {
        let Value::Object(mut m) = v else {
            return Err(format!(
                "nodes[{pos}] must be an object, not {}",
                json_kind(&v)
            ));
        };
        let id = match m.remove("id") {
            Some(Value::String(id)) => id,
            None => return Err(format!("nodes[{pos}] has no \"id\"")),
            Some(other) => {
                return Err(format!(
                    "nodes[{pos}]: field \"id\" must be a string, not {}",
                    json_kind(&other)
                ))
            }
        };
        let who = format!("node {id:?}");
        let kind_names = || KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
        let kind = match m.remove("kind") {
            Some(Value::String(k)) => k,
            None => {
                return Err(format!(
                    "{who} has no \"kind\"; use one of {}",
                    kind_names()
                ))
            }
            Some(other) => {
                return Err(format!(
                    "{who}: field \"kind\" must be a string, not {}",
                    json_kind(&other)
                ))
            }
        };
        let Some(&(_, kind_fields)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(format!(
                "{who}: unknown kind {kind:?}; use one of {}",
                kind_names()
            ));
        };
        if let Some(k) = m
            .keys()
            .find(|k| !NODE_FIELDS.contains(&k.as_str()) && !kind_fields.contains(&k.as_str()))
        {
            let mut allowed: Vec<&str> = NODE_FIELDS.to_vec();
            allowed.extend_from_slice(kind_fields);
            return Err(format!(
                "{who}: unknown field {k:?} for a {kind} node; expected one of {}",
                allowed.join(", ")
            ));
        }
        let kind = match kind.as_str() {
            "transform" => NodeKind::Transform {
                filter: required(&mut m, &who, "filter")?,
            },
            "delay" => NodeKind::Delay {
                ms: required(&mut m, &who, "ms")?,
            },
            "workflow" => NodeKind::Workflow(ChildSpec {
                tag: required(&mut m, &who, "tag")?,
                inputs: field(&mut m, &who, "inputs")?,
            }),
            "task" => NodeKind::Task(TaskSpec {
                queue: required(&mut m, &who, "queue")?,
                input: field(&mut m, &who, "input")?,
                heartbeat_ms: field(&mut m, &who, "heartbeat_ms")?,
            }),
            "approval" => NodeKind::Approval(ApprovalSpec {
                prompt: field(&mut m, &who, "prompt")?,
                on_timeout: field(&mut m, &who, "on_timeout")?.unwrap_or_default(),
            }),
            "signal" => NodeKind::Signal(SignalSpec {
                name: required(&mut m, &who, "name")?,
            }),
            _ => NodeKind::Http(HttpSpec {
                method: field(&mut m, &who, "method")?.unwrap_or_else(default_method),
                url: field(&mut m, &who, "url")?,
                url_filter: field(&mut m, &who, "url_filter")?,
                headers: field(&mut m, &who, "headers")?.unwrap_or_default(),
                body: field(&mut m, &who, "body")?,
            }),
        };
        Ok(Self {
            kind,
            depends_on: field(&mut m, &who, "depends_on")?.unwrap_or_default(),
            retry: field(&mut m, &who, "retry")?,
            timeout_ms: field(&mut m, &who, "timeout_ms")?,
            when: field(&mut m, &who, "when")?,
            trigger: field(&mut m, &who, "trigger")?.unwrap_or_default(),
            foreach: field(&mut m, &who, "foreach")?,
            concurrency: field(&mut m, &who, "concurrency")?,
            id,
        })
    }
}

impl Workflow {
    /// Parses a workflow as users write it. Unlike plain deserialisation,
    /// every message names the node (and field) at fault, and unknown
    /// fields are refused. Validation proper is [`Workflow::compile`]'s.
    pub fn from_json(v: Value) -> Result<Self, String> {
        let Value::Object(mut m) = v else {
            return Err(format!(
                "a workflow must be an object with fields \"tag\" and \"nodes\", not {}",
                json_kind(&v)
            ));
        };
        let tag = match m.remove("tag") {
            Some(Value::String(t)) => t,
            None => return Err("the workflow has no \"tag\"".into()),
            Some(other) => {
                return Err(format!(
                    "field \"tag\" must be a string, not {}",
                    json_kind(&other)
                ))
            }
        };
        let nodes = match m.remove("nodes") {
            Some(Value::Array(n)) => n,
            None => return Err(format!("workflow {tag:?} has no \"nodes\"")),
            Some(other) => {
                return Err(format!(
                    "field \"nodes\" of workflow {tag:?} must be a list of nodes, not {}",
                    json_kind(&other)
                ))
            }
        };
        let events = match m.remove("events") {
            None => EventOptions::default(),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| format!("workflow {tag:?}: field \"events\": {e}"))?,
        };
        if let Some(k) = m.keys().next() {
            return Err(format!(
                "workflow {tag:?}: unknown field {k:?}; expected \"tag\", \"nodes\" and \"events\""
            ));
        }
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(pos, n)| NodeSpec::from_json(pos, n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { tag, nodes, events })
    }

    /// Validates the workflow and builds its graph.
    pub fn compile(self, max_nodes: usize) -> Result<Dag, String> {
        validate_tag(&self.tag)?;
        if self.nodes.is_empty() {
            return Err(format!("workflow {:?} has no nodes", self.tag));
        }
        if self.nodes.len() > max_nodes {
            return Err(format!(
                "workflow {:?} has {} nodes; the limit is {max_nodes}",
                self.tag,
                self.nodes.len()
            ));
        }
        let mut index = HashMap::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            validate_name("node id", &n.id)?;
            if index.insert(n.id.clone(), i).is_some() {
                return Err(format!("node {:?} is defined twice", n.id));
            }
        }
        let mut parents = vec![Vec::new(); self.nodes.len()];
        let mut children = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            check_node(n)?;
            if let NodeKind::Workflow(c) = &n.kind {
                if c.tag == self.tag {
                    return Err(format!(
                        "node {:?} runs workflow {:?}, the workflow it belongs to: a child workflow may not run itself",
                        n.id, c.tag
                    ));
                }
            }
            if n.trigger != Trigger::AllCompleted && n.depends_on.is_empty() {
                return Err(format!(
                    "node {:?}: trigger \"any_completed\" needs parents (depends_on)",
                    n.id
                ));
            }
            for p in &n.depends_on {
                let Some(&pi) = index.get(p) else {
                    return Err(format!(
                        "node {:?} depends on {p:?}, which does not exist",
                        n.id
                    ));
                };
                if parents[i].contains(&pi) {
                    return Err(format!("node {:?} lists parent {p:?} twice", n.id));
                }
                parents[i].push(pi);
                children[pi].push(i);
            }
        }
        if let Some(cycle) = find_cycle(&children) {
            let names: Vec<&str> = cycle.iter().map(|&i| self.nodes[i].id.as_str()).collect();
            return Err(format!(
                "workflow {:?} has a cycle: {} -> {}",
                self.tag,
                names.join(" -> "),
                names[0]
            ));
        }
        let entries: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| parents[i].is_empty())
            .collect();
        Ok(Dag {
            workflow: self,
            parents,
            children,
            entries,
            index,
        })
    }
}

/// The jq filters of a node, with the field each comes from.
fn filters(n: &NodeSpec) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    match &n.kind {
        NodeKind::Transform { filter } => out.push(("filter", filter.as_str())),
        NodeKind::Http(h) => {
            out.extend(h.url_filter.as_deref().map(|f| ("url_filter", f)));
            out.extend(h.body.as_deref().map(|f| ("body", f)));
        }
        NodeKind::Workflow(c) => out.extend(c.inputs.as_deref().map(|f| ("inputs", f))),
        NodeKind::Task(t) => out.extend(t.input.as_deref().map(|f| ("input", f))),
        NodeKind::Approval(a) => out.extend(a.prompt.as_deref().map(|f| ("prompt", f))),
        NodeKind::Delay { .. } | NodeKind::Signal(_) => {}
    }
    out.extend(n.when.as_deref().map(|f| ("when", f)));
    out.extend(n.foreach.as_deref().map(|f| ("foreach", f)));
    out
}

fn check_node(n: &NodeSpec) -> Result<(), String> {
    let bad = |m: String| Err(format!("node {:?}: {m}", n.id));
    for (field, code) in filters(n) {
        if let Err(e) = jq::check(code) {
            return bad(if field == "filter" {
                format!("invalid jq filter: {e}")
            } else {
                format!("{field}: invalid jq filter: {e}")
            });
        }
    }
    match &n.kind {
        NodeKind::Transform { .. } => {}
        NodeKind::Workflow(c) => {
            if let Err(e) = validate_name("child workflow tag", &c.tag) {
                return bad(e);
            }
        }
        NodeKind::Delay { ms } => {
            if *ms > 86_400_000 {
                return bad(format!("delay of {ms} ms is longer than a day"));
            }
        }
        NodeKind::Http(h) => {
            if h.url.is_none() == h.url_filter.is_none() {
                return bad("an http node needs exactly one of url and url_filter".into());
            }
            if let Some(u) = &h.url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return bad(format!("url {u:?} is not an http(s) URL"));
                }
            }
            if h.method.parse::<http_method::Method>().is_err() {
                return bad(format!("unknown HTTP method {:?}", h.method));
            }
        }
        NodeKind::Task(t) => outside::check_task(t, n.timeout_ms).or_else(bad)?,
        NodeKind::Approval(a) => outside::check_approval(a, n.timeout_ms).or_else(bad)?,
        NodeKind::Signal(sg) => outside::check_signal(sg, n.timeout_ms).or_else(bad)?,
    }
    if n.foreach.is_some() && n.waits_outside() {
        // One wait per node attempt (`run::outside`); items would need
        // one each.
        return bad(format!(
            "foreach is not available on a {} node; put the {} node in a child workflow run per item",
            n.kind_name(),
            n.kind_name()
        ));
    }
    match (n.concurrency, &n.foreach) {
        (Some(_), None) => return bad("concurrency needs foreach".into()),
        (Some(c), Some(_)) if c == 0 || c > MAX_CONCURRENCY => {
            return bad(format!(
                "concurrency must be between 1 and {MAX_CONCURRENCY}, not {c}"
            ))
        }
        _ => {}
    }
    if let Some(r) = n.retry {
        if r.max_attempts == 0 || r.max_attempts > 100 {
            return bad("retry.max_attempts must be between 1 and 100".into());
        }
        if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
            return bad("retry.multiplier must be a number >= 1".into());
        }
    }
    if n.timeout_ms == Some(0) {
        return bad("timeout_ms must be positive".into());
    }
    Ok(())
}

mod http_method {
    /// The methods an `http` node may use.
    pub struct Method;
    impl std::str::FromStr for Method {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            match s {
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" => Ok(Method),
                _ => Err(()),
            }
        }
    }
}

/// Default of `--max-child-depth`: how deeply child runs may nest.
pub const DEFAULT_MAX_CHILD_DEPTH: u32 = 8;

/// The `workflow` nodes of registered workflows, by tag: `(node id, child
/// tag)` of each. A tag that is not registered is absent.
pub type ChildGraph = HashMap<String, Vec<(String, String)>>;

/// Checks the child workflows `root` runs, through every level: each child
/// tag exists, no workflow runs itself again below (recursion), and nothing
/// nests deeper than `max_depth` (a child of `root` is at depth 1). The
/// message names the node and the chain of tags.
pub fn check_child_graph(root: &str, graph: &ChildGraph, max_depth: u32) -> Result<(), String> {
    /// `"a" -> "b" -> ` for messages.
    fn chain(path: &[String], sep: &str) -> String {
        path.iter().map(|t| format!("{t:?}{sep}")).collect()
    }
    // Depth-first over paths; `below` memoises the deepest chain under a tag
    // already explored without finding a problem.
    fn walk(
        tag: &str,
        path: &mut Vec<String>,
        graph: &ChildGraph,
        below: &mut HashMap<String, u32>,
        max_depth: u32,
    ) -> Result<u32, String> {
        if let Some(&d) = below.get(tag) {
            return Ok(d);
        }
        let mut deepest = 0;
        for (node, child) in graph.get(tag).map(Vec::as_slice).unwrap_or_default() {
            let at = if path.len() == 1 {
                format!("node {node:?}")
            } else {
                format!("node {node:?} of workflow {tag:?}")
            };
            if path.iter().any(|t| t == child) {
                return Err(format!(
                    "{at}: workflow {}{child:?} again: recursion is not allowed",
                    chain(path, " runs ")
                ));
            }
            if !graph.contains_key(child) {
                return Err(format!("{at}: child workflow {child:?} does not exist"));
            }
            let child_depth = path.len() as u32;
            let too_deep = |path: &[String], below: u32| {
                format!(
                    "{at}: child workflows nest {} deep ({}{child:?}{}); the limit is {max_depth} (--max-child-depth)",
                    child_depth + below,
                    chain(path, " -> "),
                    if below > 0 { " -> ..." } else { "" }
                )
            };
            if child_depth > max_depth {
                return Err(too_deep(path, 0));
            }
            path.push(child.clone());
            let d = walk(child, path, graph, below, max_depth)?;
            path.pop();
            if child_depth + d > max_depth {
                return Err(too_deep(path, d));
            }
            deepest = deepest.max(d + 1);
        }
        below.insert(tag.to_owned(), deepest);
        Ok(deepest)
    }
    let mut path = vec![root.to_owned()];
    walk(root, &mut path, graph, &mut HashMap::new(), max_depth).map(|_| ())
}

/// Returns the nodes of one cycle, in order, if the graph has any.
fn find_cycle(children: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; children.len()];
    for root in 0..children.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next child position); `path` mirrors the stack.
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut pos)) = stack.last_mut() {
            if let Some(&child) = children[node].get(*pos) {
                *pos += 1;
                match mark[child] {
                    Mark::New => {
                        mark[child] = Mark::OnPath;
                        stack.push((child, 0));
                    }
                    Mark::OnPath => {
                        let start = stack.iter().position(|&(n, _)| n == child)?;
                        return Some(stack[start..].iter().map(|&(n, _)| n).collect());
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wf(v: serde_json::Value) -> Result<Dag, String> {
        Workflow::from_json(v)?.compile(DEFAULT_MAX_NODES)
    }

    #[test]
    fn parse_errors_name_the_node_and_field() {
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "a", "kind": "delay", "ms": 0},
            {"id": "beam", "kind": "teleport", "depends_on": ["a"]}
        ]}))
        .unwrap_err();
        assert!(
            e.contains("node \"beam\": unknown kind \"teleport\""),
            "{e}"
        );
        let e = wf(json!({"tag": "t", "nodes": [{"id": "late", "kind": "delay", "ms": "soon"}]}))
            .unwrap_err();
        assert!(e.contains("node \"late\": field \"ms\""), "{e}");
        let e = wf(json!({"tag": "t", "nodes": [{"id": "f", "kind": "transform"}]})).unwrap_err();
        assert!(e.contains("node \"f\": missing field \"filter\""), "{e}");
        let e = wf(json!({"tag": "t", "nodes": [{"kind": "delay", "ms": 0}]})).unwrap_err();
        assert!(e.contains("nodes[0] has no \"id\""), "{e}");
        let e = wf(json!({"tag": "t", "nodes": [{"id": "v", "filter": "."}]})).unwrap_err();
        assert!(e.contains("node \"v\" has no \"kind\""), "{e}");
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "b", "kind": "delay", "ms": 0, "dependson": ["a"]}
        ]}))
        .unwrap_err();
        assert!(e.contains("node \"b\": unknown field \"dependson\""), "{e}");
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "r", "kind": "delay", "ms": 0, "retry": {"max_attempt": 3}}
        ]}))
        .unwrap_err();
        assert!(e.contains("node \"r\": field \"retry\""), "{e}");
        assert!(wf(json!({"tag": "t", "nodes": {}}))
            .unwrap_err()
            .contains("\"nodes\""));
        assert!(wf(json!({"tag": 1, "nodes": []}))
            .unwrap_err()
            .contains("\"tag\""));
        assert!(wf(json!({"tag": "t", "nodes": [], "x": 1}))
            .unwrap_err()
            .contains("unknown field \"x\""));
    }

    #[test]
    fn a_stored_workflow_parses_back_unchanged() {
        let v = json!({"tag": "all", "nodes": [
            {"id": "t", "kind": "transform", "filter": "."},
            {"id": "d", "kind": "delay", "ms": 5, "depends_on": ["t"], "timeout_ms": 100,
             "retry": {"max_attempts": 3, "backoff_ms": 10, "multiplier": 1.5}},
            {"id": "h", "kind": "http", "method": "POST", "url": "http://x/y",
             "headers": {"a": "b"}, "body": ".inputs", "depends_on": ["t", "d"]},
            {"id": "g", "kind": "http", "url_filter": "\"http://x/\\(.inputs.p)\""}
        ]});
        let w = Workflow::from_json(v.clone()).unwrap();
        assert_eq!(serde_json::from_value::<Workflow>(v).unwrap(), w);
        let stored = serde_json::to_value(&w).unwrap();
        assert_eq!(Workflow::from_json(stored).unwrap(), w);
    }

    #[test]
    fn seed_workflow_compiles() {
        let d = wf(json!({"tag": "flight-search", "nodes": [
            {"id": "search", "kind": "transform", "filter": "{flights: [{to: .inputs.city, price: 120}]}"},
            {"id": "format", "kind": "transform", "depends_on": ["search"],
             "filter": "\"\\(.nodes.search.flights | length) flights to \\(.inputs.city)\""}
        ]}))
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.entries, vec![0]);
        assert_eq!(d.children[0], vec![1]);
    }

    #[test]
    fn duplicate_ids_are_named() {
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "a", "kind": "delay", "ms": 0},
            {"id": "a", "kind": "delay", "ms": 0}
        ]}))
        .unwrap_err();
        assert!(e.contains("\"a\" is defined twice"), "{e}");
    }

    #[test]
    fn missing_parent_is_named() {
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "a", "kind": "delay", "ms": 0, "depends_on": ["ghost"]}
        ]}))
        .unwrap_err();
        assert!(e.contains("\"a\" depends on \"ghost\""), "{e}");
    }

    #[test]
    fn cycle_names_its_nodes() {
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "entry", "kind": "delay", "ms": 0},
            {"id": "x", "kind": "delay", "ms": 0, "depends_on": ["entry", "z"]},
            {"id": "y", "kind": "delay", "ms": 0, "depends_on": ["x"]},
            {"id": "z", "kind": "delay", "ms": 0, "depends_on": ["y"]}
        ]}))
        .unwrap_err();
        assert!(e.contains("cycle"), "{e}");
        for n in ["x", "y", "z"] {
            assert!(e.contains(n), "{e}");
        }
        assert!(!e.contains("entry ->"), "{e}");
    }

    #[test]
    fn self_loop_and_no_entry_are_cycles() {
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "a", "kind": "delay", "ms": 0, "depends_on": ["a"]}
        ]}))
        .unwrap_err();
        assert!(e.contains("a -> a"), "{e}");
    }

    #[test]
    fn empty_and_oversized_workflows_are_rejected() {
        assert!(wf(json!({"tag": "t", "nodes": []}))
            .unwrap_err()
            .contains("no nodes"));
        let nodes: Vec<_> = (0..3)
            .map(|i| json!({"id": format!("n{i}"), "kind": "delay", "ms": 0}))
            .collect();
        let w: Workflow = serde_json::from_value(json!({"tag": "t", "nodes": nodes})).unwrap();
        assert!(w.compile(2).unwrap_err().contains("limit is 2"));
    }

    #[test]
    fn bad_filter_kind_and_tag_are_rejected() {
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "a", "kind": "transform", "filter": "{{{"}
        ]}))
        .unwrap_err();
        assert!(e.contains("node \"a\": invalid jq filter"), "{e}");
        let e = wf(json!({"tag": "t", "nodes": [{"id": "a", "kind": "teleport"}]})).unwrap_err();
        assert!(e.contains("teleport"), "{e}");
        let e = wf(json!({"tag": "bad tag", "nodes": [{"id": "a", "kind": "delay", "ms": 1}]}))
            .unwrap_err();
        assert!(e.contains("tag"), "{e}");
    }

    #[test]
    fn control_flow_fields_parse_store_and_validate() {
        let v = json!({"tag": "flow", "events": {"node_started": true}, "nodes": [
            {"id": "search", "kind": "transform", "filter": "{hits: []}"},
            {"id": "found", "kind": "transform", "depends_on": ["search"],
             "when": ".nodes.search.hits | length > 0", "filter": "1"},
            {"id": "none", "kind": "delay", "ms": 0, "depends_on": ["search"],
             "when": ".nodes.search.hits | length == 0"},
            {"id": "join", "kind": "transform", "depends_on": ["found", "none"],
             "trigger": "any_completed", "filter": "."},
            {"id": "each", "kind": "workflow", "tag": "child", "inputs": "{x: .item}",
             "foreach": "[range(3)]", "concurrency": 2, "depends_on": ["join"]}
        ]});
        let d = wf(v.clone()).unwrap();
        assert!(d.workflow.events.node_started);
        assert_eq!(d.node(3).trigger, Trigger::AnyCompleted);
        assert_eq!(d.node(4).concurrency(), 2);
        assert_eq!(d.node(0).concurrency(), DEFAULT_CONCURRENCY as usize);
        assert_eq!(
            d.workflow.child_tags().collect::<Vec<_>>(),
            vec![("each", "child")]
        );
        assert_eq!(d.sinks().collect::<Vec<_>>(), vec![4]);
        let stored = serde_json::to_value(&d.workflow).unwrap();
        assert_eq!(Workflow::from_json(stored).unwrap(), d.workflow);
        // A workflow without control flow stores as before.
        let plain = json!({"tag": "p", "nodes": [{"id": "a", "kind": "delay", "ms": 1}]});
        let w = wf(plain.clone()).unwrap().workflow;
        assert_eq!(serde_json::to_value(&w).unwrap(), plain);
    }

    #[test]
    fn bad_control_flow_is_refused_with_the_node_named() {
        let one = |node: serde_json::Value| {
            wf(json!({"tag": "t", "nodes": [
                {"id": "a", "kind": "delay", "ms": 0}, node
            ]}))
        };
        let cases = [
            (
                json!({"id": "b", "kind": "delay", "ms": 0, "depends_on": ["a"], "when": ".x |||"}),
                "node \"b\": when: invalid jq filter",
            ),
            (
                json!({"id": "b", "kind": "delay", "ms": 0, "depends_on": ["a"], "trigger": "most_completed"}),
                "node \"b\": field \"trigger\"",
            ),
            (
                json!({"id": "b", "kind": "delay", "ms": 0, "trigger": "any_completed"}),
                "node \"b\": trigger \"any_completed\" needs parents",
            ),
            (
                json!({"id": "b", "kind": "delay", "ms": 0, "foreach": "[1,"}),
                "node \"b\": foreach: invalid jq filter",
            ),
            (
                json!({"id": "b", "kind": "delay", "ms": 0, "concurrency": 4}),
                "node \"b\": concurrency needs foreach",
            ),
            (
                json!({"id": "b", "kind": "delay", "ms": 0, "foreach": "[]", "concurrency": 0}),
                "node \"b\": concurrency must be between 1 and 1024",
            ),
            (
                json!({"id": "b", "kind": "delay", "ms": 0, "foreach": "[]", "concurrency": -1}),
                "node \"b\": field \"concurrency\"",
            ),
            (
                json!({"id": "b", "kind": "workflow"}),
                "node \"b\": missing field \"tag\"",
            ),
            (
                json!({"id": "b", "kind": "workflow", "tag": "t"}),
                "a child workflow may not run itself",
            ),
            (
                json!({"id": "b", "kind": "workflow", "tag": "bad tag"}),
                "node \"b\": child workflow tag",
            ),
            (
                json!({"id": "b", "kind": "workflow", "tag": "c", "inputs": "{"}),
                "node \"b\": inputs: invalid jq filter",
            ),
            (
                json!({"id": "b", "kind": "workflow", "tag": "c", "url": "http://x"}),
                "node \"b\": unknown field \"url\" for a workflow node",
            ),
        ];
        for (node, want) in cases {
            let e = one(node.clone()).unwrap_err();
            assert!(e.contains(want), "{node}: {e}");
        }
        let e = wf(
            json!({"tag": "t", "events": {"node_startd": true}, "nodes": [
                {"id": "a", "kind": "delay", "ms": 0}
            ]}),
        )
        .unwrap_err();
        assert!(
            e.contains("field \"events\"") && e.contains("node_startd"),
            "{e}"
        );
    }

    #[test]
    fn child_graphs_must_exist_end_and_stay_shallow() {
        let g = |edges: &[(&str, &[&str])]| -> ChildGraph {
            edges
                .iter()
                .map(|(t, cs)| {
                    let e = cs
                        .iter()
                        .map(|c| (format!("run-{c}"), c.to_string()))
                        .collect();
                    (t.to_string(), e)
                })
                .collect()
        };
        let ok = g(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])]);
        assert_eq!(check_child_graph("a", &ok, 8), Ok(()));
        assert!(check_child_graph("a", &ok, 1)
            .unwrap_err()
            .contains("nest 2 deep"));
        let missing = g(&[("a", &["b"]), ("b", &["ghost"])]);
        let e = check_child_graph("a", &missing, 8).unwrap_err();
        assert!(
            e.contains(
                "node \"run-ghost\" of workflow \"b\": child workflow \"ghost\" does not exist"
            ),
            "{e}"
        );
        let e = check_child_graph("a", &g(&[("a", &["x"])]), 8).unwrap_err();
        assert!(
            e.starts_with("node \"run-x\": child workflow \"x\" does not exist"),
            "{e}"
        );
        let rec = g(&[("a", &["b"]), ("b", &["a"])]);
        let e = check_child_graph("a", &rec, 8).unwrap_err();
        assert!(
            e.contains("\"a\" runs \"b\" runs \"a\" again: recursion"),
            "{e}"
        );
        // A cycle below the root, and one found through a memoised branch.
        let deep = g(&[
            ("a", &["b", "c"]),
            ("b", &["d"]),
            ("c", &["d"]),
            ("d", &["c"]),
        ]);
        assert!(check_child_graph("a", &deep, 8)
            .unwrap_err()
            .contains("recursion"));
        // Depth through a shared subtree reached at two depths.
        let chain = g(&[
            ("r", &["s", "a"]),
            ("a", &["b"]),
            ("b", &["s"]),
            ("s", &["t"]),
            ("t", &[]),
        ]);
        assert_eq!(check_child_graph("r", &chain, 4), Ok(()));
        assert!(check_child_graph("r", &chain, 3)
            .unwrap_err()
            .contains("limit is 3"));
    }

    #[test]
    fn forbidden_functions_are_refused_naming_node_and_function() {
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "leak", "kind": "transform", "filter": "env | {FLOWCAST_JWT_SECRET}"}
        ]}))
        .unwrap_err();
        assert!(
            e.starts_with("node \"leak\": invalid jq filter: `env` is not available"),
            "{e}"
        );
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "h", "kind": "http", "url_filter": "\"http://x/\\($ENV.HOME)\""}
        ]}))
        .unwrap_err();
        assert!(
            e.contains("node \"h\": url_filter: invalid jq filter: `$ENV`"),
            "{e}"
        );
        let deep = format!("{}1{}", "[".repeat(800), "]".repeat(800));
        let e = wf(json!({"tag": "t", "nodes": [
            {"id": "d", "kind": "transform", "filter": deep}
        ]}))
        .unwrap_err();
        assert!(e.contains("node \"d\"") && e.contains("levels deep"), "{e}");
    }

    #[test]
    fn retry_backoff_grows() {
        let r = RetryPolicy {
            max_attempts: 4,
            backoff_ms: 100,
            multiplier: 2.0,
        };
        assert_eq!(r.backoff_before(2).as_millis(), 100);
        assert_eq!(r.backoff_before(3).as_millis(), 200);
        assert_eq!(r.backoff_before(4).as_millis(), 400);
    }
}
