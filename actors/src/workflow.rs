//! The workflow model and its validation.
//!
//! A workflow is a DAG of nodes registered under a tag. [`Workflow::compile`]
//! checks everything that can be checked before a run starts (unique ids,
//! parents exist, no cycle, at least one entry node, size limits, jq filters
//! that parse) and yields a [`Dag`]: the index-based graph that the counter
//! state machine and the run actor work on. Every error message names the
//! node it is about, and a cycle error names the nodes of the cycle.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jq;

/// Upper bound on nodes per workflow unless configured otherwise.
pub const DEFAULT_MAX_NODES: usize = 10_000;
/// Longest accepted node id or tag, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// A workflow as users write it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workflow {
    /// The name runs refer to.
    pub tag: String,
    /// The nodes, in any order.
    pub nodes: Vec<NodeSpec>,
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
        }
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
}

/// Checks a tag: non-empty, at most [`MAX_ID_BYTES`], URL-path safe.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    validate_name("tag", tag)
}

fn validate_name(what: &str, s: &str) -> Result<(), String> {
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
const NODE_FIELDS: &[&str] = &["id", "kind", "depends_on", "retry", "timeout_ms"];
/// The node kinds and the fields each adds.
const KINDS: &[(&str, &[&str])] = &[
    ("transform", &["filter"]),
    ("delay", &["ms"]),
    ("http", &["method", "url", "url_filter", "headers", "body"]),
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
        if let Some(k) = m.keys().next() {
            return Err(format!(
                "workflow {tag:?}: unknown field {k:?}; expected \"tag\" and \"nodes\""
            ));
        }
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(pos, n)| NodeSpec::from_json(pos, n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { tag, nodes })
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

fn check_node(n: &NodeSpec) -> Result<(), String> {
    let bad = |m: String| Err(format!("node {:?}: {m}", n.id));
    match &n.kind {
        NodeKind::Transform { filter } => {
            if let Err(e) = jq::check(filter) {
                return bad(format!("invalid jq filter: {e}"));
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
            for (field, f) in [("url_filter", &h.url_filter), ("body", &h.body)] {
                if let Some(Err(e)) = f.as_deref().map(jq::check) {
                    return bad(format!("{field}: invalid jq filter: {e}"));
                }
            }
        }
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
