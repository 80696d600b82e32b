//! Node execution: what each node kind does with its input.
//!
//! [`execute`] runs one attempt and says whether a failure is worth another
//! attempt: jq errors and HTTP 4xx are not (the same input fails the same
//! way), HTTP 5xx, connection errors and timeouts are. The run actor owns
//! attempts, backoff and the deadline. `workflow` nodes are child runs
//! (`child`), started by the run actor.
//!
//! Every jq evaluation of a run goes through this module: the node kinds'
//! filters here, and [`evaluate`] for control flow (`when`, `foreach`, a
//! child's `inputs`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::http_node::{self, HttpClient};
use crate::jq;
use crate::workflow::{HttpSpec, NodeKind, NodeSpec};

/// Deadline of an `http` request when the node sets no `timeout_ms`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a `transform` attempt when the node sets no `timeout_ms`.
pub const DEFAULT_TRANSFORM_TIMEOUT: Duration = Duration::from_secs(30);
/// jq programs running at once. Each runs on a blocking thread, so a filter
/// that never ends costs one slot, never the actors' thread.
const JQ_SLOTS: usize = 32;

fn jq_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(JQ_SLOTS)))
        .clone()
}

/// Runs a jq filter off the actors' thread.
async fn run_jq(filter: &str, input: Value) -> Result<Value, NodeError> {
    let permit = jq_slots()
        .acquire_owned()
        .await
        .map_err(|_| NodeError::fatal("jq workers are shut down"))?;
    let filter = filter.to_owned();
    actix_rt::task::spawn_blocking(move || {
        let _slot = permit;
        jq::run(&filter, &input)
    })
    .await
    .map_err(|_| NodeError::fatal("the jq worker failed"))?
    .map_err(NodeError::fatal)
}

/// Evaluates a control-flow filter (`when`, `foreach`, a child's
/// `inputs`) off the actors' thread; `what` names it in errors.
pub async fn evaluate(what: &str, filter: &str, input: Value) -> Result<Value, NodeError> {
    run_jq(filter, input)
        .await
        .map_err(|e| NodeError::fatal(format!("{what}: {}", e.message)))
}

/// Evaluates `when` conditions: `(node, filter, input, deadline)` each.
/// false and null are false, anything else true (jq's truth); a filter
/// that fails or runs past its deadline is an error for that node.
pub async fn conditions(
    checks: Vec<(usize, String, Value, Duration)>,
) -> Vec<(usize, Result<bool, NodeError>)> {
    let evals = checks
        .into_iter()
        .map(|(node, filter, input, deadline)| async move {
            let r = match actix_rt::time::timeout(deadline, evaluate("when", &filter, input)).await
            {
                Ok(r) => r.map(|v| !matches!(v, Value::Null | Value::Bool(false))),
                Err(_) => Err(NodeError::fatal(format!(
                    "when: timed out after {} ms",
                    deadline.as_millis()
                ))),
            };
            (node, r)
        });
    futures_util::future::join_all(evals).await
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
    pub(crate) fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

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

/// Runs one attempt of `node` on `input` (`{inputs, nodes}`).
pub async fn execute(node: &NodeSpec, input: Value, http: &HttpClient) -> Result<Value, NodeError> {
    match &node.kind {
        NodeKind::Transform { filter } => run_jq(filter, input).await,
        NodeKind::Delay { ms } => {
            actix_rt::time::sleep(Duration::from_millis(*ms)).await;
            Ok(Value::Null)
        }
        NodeKind::Http(spec) => {
            let timeout = node
                .timeout_ms
                .map_or(DEFAULT_HTTP_TIMEOUT, Duration::from_millis);
            http_request(spec, &input, http, timeout).await
        }
        NodeKind::Workflow(_) => Err(NodeError::fatal(
            "a workflow node runs as a child run, started by its run actor",
        )),
    }
}

/// Evaluates an http node's URL and body filters, then sends the request
/// through the egress-checked client.
async fn http_request(
    spec: &HttpSpec,
    input: &Value,
    http: &HttpClient,
    timeout: Duration,
) -> Result<Value, NodeError> {
    let url = match (&spec.url, &spec.url_filter) {
        (Some(u), _) => u.clone(),
        (None, Some(f)) => match run_jq(f, input.clone()).await? {
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
        Some(f) => Some(run_jq(f, input.clone()).await?),
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
