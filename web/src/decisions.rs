//! What people and services send to a waiting run: decisions on
//! `approval` nodes and signals for `signal` nodes.
//!
//! - `POST /api/v1/runs/{id}/nodes/{node}/approve` and `.../reject`
//!   `{"comment"?}`: the run's owner only (another user's run is a 404);
//!   taken once, while the approval waits (409 `not_waiting` before it
//!   waits or after it timed out, 409 `already_decided` after a decision).
//!   The decision `{approved, by, comment, at, timed_out}` is the node's
//!   output.
//! - `POST /api/v1/runs/{id}/signals/{name}` with any JSON body: recorded
//!   once per name on a running run (409 `already_signalled` after); the
//!   run's `signal` nodes of that name complete with it as they wait, now
//!   or later.
//!
//! Both are written in Redis by one script each (`store::waits`), which
//! also wakes the run actor holding the run, in whatever process.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use flowcast_actors::counter::NodeStatus;
use flowcast_actors::event::now_ms;
use flowcast_actors::outside::spec::validate_name;
use flowcast_actors::run::decision;
use flowcast_actors::store::waits::{self, Decided, Signalled, WaitId};
use flowcast_actors::store::RunRecord;
use flowcast_actors::workflow::{json_kind, NodeKind};
use serde_json::{json, Value};

use crate::api::{fields, not_allowed, optional_json, owned_run};
use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;
use crate::tasks::within_output_limit;

/// Longest decision comment, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4096;

/// Registers the routes (full paths, mounted before the `/api/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (verb, approve) in [("approve", true), ("reject", false)] {
        cfg.service(
            web::resource(format!("/api/v1/runs/{{id}}/nodes/{{node}}/{verb}"))
                .app_data(web::Data::new(Approve(approve)))
                .route(web::post().to(decide))
                .default_service(not_allowed("POST")),
        );
    }
    cfg.service(
        web::resource("/api/v1/runs/{id}/signals/{name}")
            .route(web::post().to(signal))
            .default_service(not_allowed("POST")),
    );
}

/// Whether the route approves.
struct Approve(bool);

fn conflict(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

fn run_finished(run: &RunRecord) -> ApiError {
    conflict(
        "run_finished",
        format!("run {} already {}", run.run_id, run.status.as_str()),
    )
}

/// `POST /api/v1/runs/{id}/nodes/{node}/approve|reject`.
async fn decide(
    st: web::Data<AppState>,
    approve: web::Data<Approve>,
    user: User,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (run_id, node_id) = path.into_inner();
    let comment = match optional_json(payload, st.limits.max_body_bytes).await? {
        None | Some(Value::Null) => None,
        Some(body) => match fields(body, &["comment"])?.remove("comment") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) if c.len() <= MAX_COMMENT_BYTES => Some(c),
            Some(Value::String(c)) => {
                return Err(ApiError::invalid_body(format!(
                    "field \"comment\" is {} bytes; the limit is {MAX_COMMENT_BYTES}",
                    c.len()
                )))
            }
            Some(other) => {
                return Err(ApiError::invalid_body(format!(
                    "field \"comment\" must be a string, not {}",
                    json_kind(&other)
                )))
            }
        },
    };
    let run = owned_run(&st, &user, &run_id).await?;
    let Some(index) = run.workflow.nodes.iter().position(|n| n.id == node_id) else {
        return Err(ApiError::not_found(format!(
            "run {run_id} has no node {node_id:?}"
        )));
    };
    let spec = &run.workflow.nodes[index];
    if !matches!(spec.kind, NodeKind::Approval(_)) {
        return Err(ApiError::not_found(format!(
            "node {node_id:?} of run {run_id} is a {} node, not an approval",
            spec.kind_name()
        )));
    }
    if run.status.is_terminal() {
        return Err(run_finished(&run));
    }
    let rec = run.nodes.get(&node_id);
    let (status, attempt) = rec.map_or((NodeStatus::Waiting, 0), |r| (r.status, r.attempt));
    // Asked: its `approval_required` was published for this attempt.
    let asked = rec.is_some_and(|r| r.asked == Some(r.attempt));
    let not_waiting = |why: &str| {
        conflict(
            "not_waiting",
            format!("approval {node_id:?} of run {run_id} is not waiting for a decision: {why}"),
        )
    };
    match status {
        NodeStatus::Completed => {
            return Err(conflict(
                "already_decided",
                format!("approval {node_id:?} of run {run_id} was already decided"),
            ))
        }
        NodeStatus::Active if asked => {}
        NodeStatus::Active => return Err(not_waiting("it has not asked yet")),
        NodeStatus::Waiting => return Err(not_waiting("its parents have not completed")),
        other => return Err(not_waiting(&format!("it is {other:?}").to_lowercase())),
    }
    let id = WaitId {
        run_id: run.run_id.clone(),
        node: index,
        attempt,
    };
    let output = decision(approve.0, Some(&user.0), comment.as_deref(), now_ms());
    match waits::decide(&mut st.redis.clone(), &id, &output.to_string()).await? {
        Decided::Taken => Ok(HttpResponse::Ok().json(json!({
            "run_id": run.run_id,
            "node_id": node_id,
            "decision": output,
        }))),
        Decided::NotWaiting(state) if state == "completed" => Err(conflict(
            "already_decided",
            format!("approval {node_id:?} of run {run_id} was already decided"),
        )),
        Decided::NotWaiting(state) => Err(not_waiting(&match state.as_str() {
            "timed_out" => "it timed out".to_owned(),
            other => format!("it is {other}"),
        })),
        Decided::Missing => Err(not_waiting("it has not asked yet")),
    }
}

/// `POST /api/v1/runs/{id}/signals/{name}`.
async fn signal(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (run_id, name) = path.into_inner();
    validate_name("signal name", &name).map_err(|m| ApiError::bad_request("invalid_signal", m))?;
    let body = optional_json(payload, st.limits.max_body_bytes)
        .await?
        .unwrap_or(Value::Null);
    let text = body.to_string();
    within_output_limit(&st, "payload_too_large", "the signal's payload", text.len())?;
    let run = owned_run(&st, &user, &run_id).await?;
    let listens = run
        .workflow
        .nodes
        .iter()
        .any(|n| matches!(&n.kind, NodeKind::Signal(s) if s.name == name));
    if !listens {
        return Err(ApiError::not_found(format!(
            "run {run_id} has no signal node named {name:?}"
        )));
    }
    if run.status.is_terminal() {
        return Err(run_finished(&run));
    }
    match waits::signal(&mut st.redis.clone(), &run.run_id, &name, &text).await? {
        Signalled::Recorded => Ok(HttpResponse::Accepted().json(json!({
            "run_id": run.run_id,
            "signal": name,
            "status": "received",
        }))),
        Signalled::Duplicate => Err(conflict(
            "already_signalled",
            format!("run {run_id} already received signal {name:?}; a signal is taken once"),
        )),
        Signalled::Ended => {
            let now = owned_run(&st, &user, &run_id).await?;
            Err(run_finished(&now))
        }
        Signalled::Missing => Err(ApiError::not_found(format!("run {run_id} not found"))),
    }
}
