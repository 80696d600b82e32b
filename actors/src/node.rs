//! Node execution: what each node kind does with its input.
//!
//! [`execute`] runs one attempt and says whether a failure is worth another
//! attempt: jq errors and HTTP 4xx are not (the same input fails the same
//! way), HTTP 5xx, connection errors and timeouts are. The run actor owns
//! attempts, backoff and the deadline. `workflow` nodes are child runs
//! (`child`), started by the run actor; `task`, `approval` and `signal`
//! nodes wait outside the daemon (`run::outside`).
//!
//! Every jq evaluation of a run goes through this module: the node kinds'
//! filters here, and [`evaluate`] for control flow (`when`, `foreach`, a
//! child's `inputs`) and the waiting kinds' filters (a task's `input`, an
//! approval's `prompt`).

use std::time::Duration;

use serde_json::Value;

use crate::http_node::{self, HttpClient};
use crate::jq;
use crate::workflow::{HttpSpec, NodeKind, NodeSpec};

/// Deadline of an `http` request when the node sets no `timeout_ms`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a `transform` attempt (and of each of an `http` node's
/// filters) when the node sets no `timeout_ms`.
pub const DEFAULT_TRANSFORM_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a jq filter in the sandboxed evaluator pool, within `deadline`. A
/// filter's own error, or a crash of its evaluator, would repeat: not
/// retryable.
async fn run_jq(
    pool: &jq::Pool,
    filter: &str,
    input: &Value,
    deadline: Duration,
) -> Result<Value, NodeError> {
    match actix_rt::time::timeout(deadline, pool.eval(filter, input)).await {
        Err(_) => Err(NodeError::timeout(deadline)),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(jq::EvalError::Unavailable(m))) => Err(NodeError::retryable(m)),
        Ok(Err(e)) => Err(NodeError::fatal(e.to_string())),
    }
}

/// Evaluates a control-flow filter (`when`, `foreach`, a child's
/// `inputs`) in the sandboxed evaluator pool, within `deadline`, like a
/// node's own filters; `what` names it in errors.
pub async fn evaluate(
    pool: &jq::Pool,
    what: &str,
    filter: &str,
    input: &Value,
    deadline: Duration,
) -> Result<Value, NodeError> {
    run_jq(pool, filter, input, deadline)
        .await
        .map_err(|e| NodeError {
            message: format!("{what}: {}", e.message),
            ..e
        })
}

/// Evaluates a `when` condition: false and null are false, anything else
/// true (jq's truth). A condition that fails or runs past its deadline is
/// an error that fails its node without retry: a retry would run the node
/// without its condition.
pub async fn condition(
    pool: &jq::Pool,
    filter: &str,
    input: &Value,
    deadline: Duration,
) -> Result<bool, NodeError> {
    match evaluate(pool, "when", filter, input, deadline).await {
        Ok(v) => Ok(truth(&v)),
        Err(e) => Err(NodeError::fatal(e.message)),
    }
}

/// jq's truth: false and null are false, anything else true.
pub fn truth(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeError {
    /// What went wrong, for users.
    pub message: String,
    /// True when another attempt may succeed.
    pub retryable: bool,
}

impl NodeError {
    /// A failure another attempt would repeat.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A failure another attempt may not repeat.
    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// The error for an attempt that ran past its deadline.
    pub fn timeout(after: Duration) -> Self {
        Self::retryable(format!("timed out after {} ms", after.as_millis()))
    }
}

/// Runs one attempt of `node` on `input` (`{inputs, nodes}`), its filters
/// in `jq`.
pub async fn execute(
    node: &NodeSpec,
    input: Value,
    http: &HttpClient,
    jq: &jq::Pool,
) -> Result<Value, NodeError> {
    // The run actor also bounds a transform by its deadline; an http node's
    // filters are bounded here.
    let jq_deadline = node
        .timeout_ms
        .map_or(DEFAULT_TRANSFORM_TIMEOUT, Duration::from_millis);
    match &node.kind {
        NodeKind::Transform { filter } => run_jq(jq, filter, &input, jq_deadline).await,
        NodeKind::Delay { ms } => {
            actix_rt::time::sleep(Duration::from_millis(*ms)).await;
            Ok(Value::Null)
        }
        NodeKind::Http(spec) => {
            let timeout = node
                .timeout_ms
                .map_or(DEFAULT_HTTP_TIMEOUT, Duration::from_millis);
            let jq = |f| run_jq(jq, f, &input, jq_deadline);
            http_request(spec, http, timeout, jq).await
        }
        NodeKind::Workflow(_) => Err(NodeError::fatal(
            "a workflow node runs as a child run, started by its run actor",
        )),
        // Never executed here: the run actor waits for their outcome
        // (`run::outside`).
        NodeKind::Task(_) | NodeKind::Approval(_) | NodeKind::Signal(_) => Err(NodeError::fatal(
            format!("a {} node waits outside the daemon", node.kind_name()),
        )),
    }
}

/// Evaluates an http node's URL and body filters, then sends the request
/// through the egress-checked client (which reads at most
/// `--max-output-bytes` of the body).
async fn http_request<'a, F>(
    spec: &'a HttpSpec,
    http: &HttpClient,
    timeout: Duration,
    jq: impl Fn(&'a str) -> F,
) -> Result<Value, NodeError>
where
    F: std::future::Future<Output = Result<Value, NodeError>>,
{
    let url = match (&spec.url, &spec.url_filter) {
        (Some(u), _) => u.clone(),
        (None, Some(f)) => match jq(f).await? {
            Value::String(s) => s,
            other => {
                return Err(NodeError::fatal(format!(
                    "url_filter gave {other}, not a string"
                )))
            }
        },
        (None, None) => return Err(NodeError::fatal("no url")),
    };
    let body = match &spec.body {
        Some(f) => Some(jq(f).await?),
        None => None,
    };
    let req = http_node::Request {
        method: &spec.method,
        url: &url,
        headers: &spec.headers,
        body: body.as_ref(),
    };
    http.send(req, timeout).await
}
