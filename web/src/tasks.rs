//! The worker protocol: how workers of any language take `task` nodes and
//! report on them, over plain HTTP.
//!
//! - `POST /api/v1/tasks/claim` `{queues, max, wait_ms, worker_id}`: up to
//!   `max` of the caller's tasks from `queues` (in that order), each with a
//!   fresh token and lease; with `wait_ms`, a long-poll: the answer comes
//!   the moment a task is claimable (woken through `outside::Waiters`, no
//!   polling), or empty at the end of the wait;
//! - `POST /api/v1/tasks/{task_id}/heartbeat` `{token, progress?, message?}`
//!   extends the lease (progress becomes `node_progress`);
//! - `POST /api/v1/tasks/{task_id}/complete` `{token, output}` and
//!   `.../fail` `{token, error, retryable?}`.
//!
//! A worker acts for the user it authenticates as and sees only that
//! user's tasks (another user's task is a 404). A report with a token that
//! is not the task's current one, or after its lease lapsed, is a 409
//! `stale_token` and changes nothing (`store::tasks::report`). Input is
//! checked before anything is written: a bad queue name, a claim for too
//! many tasks, a missing token, an output over `--max-output-bytes` are
//! each a 4xx naming the problem, and the task stays as it was.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use flowcast_actors::event::cut_error;
use flowcast_actors::outside::spec::validate_queue;
use flowcast_actors::result;
use flowcast_actors::store::tasks::{self, Claimed, Report, Reported};
use flowcast_actors::store::waits::WaitId;
use flowcast_actors::workflow::json_kind;
use serde_json::{json, Map, Value};

use crate::api::{fields, not_allowed};
use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;

/// Most tasks one claim may ask for.
pub const MAX_CLAIM: u64 = 100;
/// Longest long-poll, in ms.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Most queues one claim may name.
pub const MAX_QUEUES: usize = 16;
/// Longest `worker_id`, in bytes.
pub const MAX_WORKER_ID_BYTES: usize = 128;

/// Registers the worker protocol's routes (full paths, mounted before the
/// `/api/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/tasks/claim")
            .route(web::post().to(claim))
            .default_service(not_allowed("POST")),
    );
    for (path, handler) in [
        ("heartbeat", Verb::Heartbeat),
        ("complete", Verb::Complete),
        ("fail", Verb::Fail),
    ] {
        cfg.service(
            web::resource(format!("/api/v1/tasks/{{task_id}}/{path}"))
                .app_data(web::Data::new(handler))
                .route(web::post().to(report))
                .default_service(not_allowed("POST")),
        );
    }
}

/// Which report a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Heartbeat,
    Complete,
    Fail,
}

/// Runs `f` when dropped.
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid_body(message)
}

/// An optional non-negative integer field within `max`.
fn bounded(
    m: &mut Map<String, Value>,
    name: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ApiError> {
    match m.remove(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(invalid(format!(
                "field {name:?} must be a whole number from {min} to {max}, not {n}"
            ))),
        },
        Some(other) => Err(invalid(format!(
            "field {name:?} must be a number, not {}",
            json_kind(&other)
        ))),
    }
}

fn queues_of(m: &mut Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list = match m.remove("queues") {
        Some(Value::Array(l)) => l,
        None => {
            return Err(invalid(
                "missing field \"queues\": the queues to claim from",
            ))
        }
        Some(other) => {
            return Err(invalid(format!(
                "field \"queues\" must be a list of queue names, not {}",
                json_kind(&other)
            )))
        }
    };
    if list.is_empty() || list.len() > MAX_QUEUES {
        return Err(invalid(format!(
            "field \"queues\" names {} queues; name 1 to {MAX_QUEUES}",
            list.len()
        )));
    }
    let mut queues: Vec<String> = Vec::with_capacity(list.len());
    for (i, q) in list.into_iter().enumerate() {
        let Value::String(q) = q else {
            return Err(invalid(format!(
                "queues[{i}] must be a string, not {}",
                json_kind(&q)
            )));
        };
        validate_queue(&q).map_err(|m| ApiError::bad_request("invalid_queue", m))?;
        if !queues.contains(&q) {
            queues.push(q);
        }
    }
    Ok(queues)
}

fn worker_id_of(m: &mut Map<String, Value>) -> Result<String, ApiError> {
    match m.remove("worker_id") {
        None | Some(Value::Null) => Ok("anonymous".into()),
        Some(Value::String(w))
            if !w.is_empty()
                && w.len() <= MAX_WORKER_ID_BYTES
                && !w.chars().any(char::is_control) =>
        {
            Ok(w)
        }
        Some(Value::String(_)) => Err(invalid(format!(
            "field \"worker_id\" must be 1 to {MAX_WORKER_ID_BYTES} bytes without control characters"
        ))),
        Some(other) => Err(invalid(format!(
            "field \"worker_id\" must be a string, not {}",
            json_kind(&other)
        ))),
    }
}

fn task_view(t: Claimed) -> Value {
    json!({
        "task_id": t.task_id,
        "token": t.token,
        "run_id": t.run_id,
        "node_id": t.node_id,
        "attempt": t.attempt,
        "queue": t.queue,
        // Stored by the run actor as JSON text.
        "input": serde_json::from_str::<Value>(&t.input).unwrap_or(Value::Null),
        "lease_ms": t.lease_ms,
    })
}

/// `POST /api/v1/tasks/claim`.
async fn claim(
    st: web::Data<AppState>,
    user: User,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut m = fields(
        body.into_inner(),
        &["queues", "max", "wait_ms", "worker_id"],
    )?;
    let queues = queues_of(&mut m)?;
    let max = bounded(&mut m, "max", 1, MAX_CLAIM, 1)? as usize;
    let wait_ms = bounded(&mut m, "wait_ms", 0, MAX_WAIT_MS, 0)?;
    let worker_id = worker_id_of(&mut m)?;
    if st.shutdown.is_cancelled() {
        return Err(flowcast_actors::Error::ShuttingDown.into());
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let waiting = st.metrics.task_claims_waiting.clone();
    waiting.inc();
    // Counted down however the claim ends (its client may go away).
    let _waiting = scopeguard(move || waiting.dec());
    let claimed = st
        .waiters
        .claim_until(&user.0, &queues, deadline, &st.shutdown, || {
            let mut conn = st.redis.clone();
            let (user, queues, worker_id) = (&user.0, &queues, &worker_id);
            async move { tasks::claim(&mut conn, user, queues, max, worker_id).await }
        })
        .await?;
    st.metrics.tasks_claimed.inc_by(claimed.len() as u64);
    let tasks: Vec<Value> = claimed.into_iter().map(task_view).collect();
    Ok(HttpResponse::Ok().json(json!({ "tasks": tasks })))
}

/// A 413 `code` when `what`, `len` bytes long, is over `--max-output-bytes`.
pub(crate) fn within_output_limit(
    st: &AppState,
    code: &'static str,
    what: &str,
    len: usize,
) -> Result<(), ApiError> {
    let limit = st.limits.max_output_bytes;
    if len <= limit {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code,
        format!("{what} is {len} bytes, over the limit of {limit} bytes (--max-output-bytes)"),
    ))
}

fn task_id_of(path: &str) -> Result<WaitId, ApiError> {
    WaitId::parse(path).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_task_id",
            format!("{path:?} is not a task id (as a claim answers it: <run id>.<node>.<attempt>)"),
        )
    })
}

fn token_of(m: &mut Map<String, Value>) -> Result<String, ApiError> {
    match m.remove("token") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t),
        None | Some(Value::Null) => Err(invalid(
            "missing field \"token\": the token the claim gave this task",
        )),
        Some(other) => Err(invalid(format!(
            "field \"token\" must be the claim's token (a string), not {}",
            json_kind(&other)
        ))),
    }
}

/// What a 409 says about why a report was refused.
fn stale(task_id: &WaitId, why: &str) -> ApiError {
    let message = match why {
        "token" => format!(
            "task {task_id}: this token is not the task's current one (it was claimed again, or the token was never issued); nothing changed"
        ),
        "expired" => format!(
            "task {task_id}: its lease expired before this report, and the attempt was given up; nothing changed"
        ),
        "cancelled" => format!("task {task_id} was cancelled: its run ended; nothing changed"),
        "timed_out" => format!("task {task_id} timed out (its node's timeout_ms); nothing changed"),
        "queued" => format!("task {task_id} is not claimed; nothing changed"),
        done => format!("task {task_id} was already {done}; nothing changed"),
    };
    ApiError::new(StatusCode::CONFLICT, "stale_token", message)
}

/// `POST /api/v1/tasks/{task_id}/heartbeat|complete|fail`.
async fn report(
    st: web::Data<AppState>,
    verb: web::Data<Verb>,
    user: User,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let task_id = task_id_of(&path)?;
    let allowed: &[&str] = match **verb {
        Verb::Heartbeat => &["token", "progress", "message"],
        Verb::Complete => &["token", "output"],
        Verb::Fail => &["token", "error", "retryable"],
    };
    let mut m = fields(body.into_inner(), allowed)?;
    let token = token_of(&mut m)?;
    // Owned texts the report borrows.
    let (output, message, error);
    let what = match **verb {
        Verb::Heartbeat => {
            let progress = match m.remove("progress") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(p) if (0.0..=1.0).contains(&p) => Some(p),
                    _ => {
                        return Err(invalid(format!(
                            "field \"progress\" must be from 0 to 1, not {n}"
                        )))
                    }
                },
                Some(other) => {
                    return Err(invalid(format!(
                        "field \"progress\" must be a number from 0 to 1, not {}",
                        json_kind(&other)
                    )))
                }
            };
            message = match m.remove("message") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(cut_error(&s)),
                Some(other) => {
                    return Err(invalid(format!(
                        "field \"message\" must be a string, not {}",
                        json_kind(&other)
                    )))
                }
            };
            Report::Heartbeat {
                progress,
                message: message.as_deref(),
            }
        }
        Verb::Complete => {
            let Some(out) = m.remove("output") else {
                return Err(invalid(
                    "missing field \"output\": the task's result (any JSON, null too)",
                ));
            };
            let (_, bytes) = result::address(&out);
            within_output_limit(
                &st,
                "output_too_large",
                "the output (canonical JSON)",
                bytes.len(),
            )
            .map_err(|mut e| {
                e.message
                    .push_str("; the task is still yours: fail it, or complete it with less");
                e
            })?;
            output = out.to_string();
            Report::Complete { output: &output }
        }
        Verb::Fail => {
            error = match m.remove("error") {
                Some(Value::String(e)) => cut_error(&e),
                None | Some(Value::Null) => {
                    return Err(invalid("missing field \"error\": what went wrong"))
                }
                Some(other) => other.to_string().chars().take(4096).collect(),
            };
            let retryable = match m.remove("retryable") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => b,
                Some(other) => {
                    return Err(invalid(format!(
                        "field \"retryable\" must be true or false, not {}",
                        json_kind(&other)
                    )))
                }
            };
            Report::Fail {
                error: &error,
                retryable,
            }
        }
    };
    let reported = tasks::report(&mut st.redis.clone(), &user.0, &task_id, &token, what).await?;
    let (name, outcome) = (
        match **verb {
            Verb::Heartbeat => "heartbeat",
            Verb::Complete => "complete",
            Verb::Fail => "fail",
        },
        match reported {
            Reported::Taken { .. } => "taken",
            Reported::Missing => "missing",
            Reported::Stale(_) => "stale",
        },
    );
    st.metrics
        .task_reports
        .with_label_values(&[name, outcome])
        .inc();
    match reported {
        Reported::Taken { lease_ms } => Ok(HttpResponse::Ok().json(match **verb {
            Verb::Heartbeat => json!({"task_id": task_id.to_string(), "lease_ms": lease_ms}),
            Verb::Complete => json!({"task_id": task_id.to_string(), "status": "completed"}),
            Verb::Fail => json!({"task_id": task_id.to_string(), "status": "failed"}),
        })),
        Reported::Missing => Err(ApiError::not_found(format!("task {task_id} not found"))),
        Reported::Stale(why) => Err(stale(&task_id, &why)),
    }
}
