//! The REST API under `/api/v1`: workflows, runs, results.
//!
//! Handlers are thin: validate the request, read or write Redis, answer.
//! Every endpoint acts for the caller ([`User`], 401 without one) on the
//! caller's things: their own workflows (plus the shared catalogue, read
//! only), runs and results; another user's are a 404, as if absent.
//! Runs are accepted by writing them durably (run hash and request stream in
//! one Lua script that first checks the user's quotas: over one, a 429 with
//! `Retry-After` and nothing written) and answered 202; a runner initialises
//! them. A Redis failure is a 503, never a 202 for work that was not stored.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError, Route};
use flowcast_actors::counter::RunStatus;
use flowcast_actors::runner::CancelRun;
use flowcast_actors::store::runs::{self, Admission};
use flowcast_actors::store::workflows::{self, Scope};
use flowcast_actors::workflow::{json_kind, validate_tag, Workflow};
use flowcast_actors::{result, store};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;

/// Registers the `/api/v1` routes. A known path with another method is a
/// JSON 405 with `Allow`, like every other error.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .service(
                web::resource("/workflows")
                    .route(web::get().to(list_workflows))
                    .default_service(not_allowed("GET")),
            )
            .service(
                web::resource("/workflows/{tag}")
                    .route(web::put().to(put_workflow))
                    .route(web::get().to(get_workflow))
                    .route(web::delete().to(delete_workflow))
                    .default_service(not_allowed("GET, PUT, DELETE")),
            )
            .service(
                web::resource("/workflows/{tag}/execute")
                    .route(web::post().to(execute))
                    .default_service(not_allowed("POST")),
            )
            .service(
                web::resource("/runs")
                    .route(web::post().to(create_run))
                    .route(web::get().to(list_runs))
                    .default_service(not_allowed("GET, POST")),
            )
            .service(
                web::resource("/runs/{id}")
                    .route(web::get().to(get_run))
                    .default_service(not_allowed("GET")),
            )
            .service(
                web::resource("/runs/{id}/events")
                    .route(web::get().to(run_events))
                    .default_service(not_allowed("GET")),
            )
            .service(
                web::resource("/runs/{id}/cancel")
                    .route(web::post().to(cancel_run))
                    .default_service(not_allowed("POST")),
            )
            .service(
                web::resource("/results/{ref}")
                    .route(web::get().to(get_result))
                    .default_service(not_allowed("GET")),
            ),
    );
}

/// The 405 answer of a resource that supports only `allow`.
pub(crate) fn not_allowed(allow: &'static str) -> Route {
    web::to(move |req: HttpRequest| async move {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} is not supported on {}; use {allow}",
                req.method(),
                req.path()
            ),
        )
        .error_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        resp
    })
}

/// Checks that a JSON body is an object with no fields but `allowed`.
pub(crate) fn fields(body: Value, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let expected = || {
        allowed
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    match body {
        Value::Object(m) => match m.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ApiError::invalid_body(format!(
                "unknown field {k:?}; expected {}",
                expected()
            ))),
            None => Ok(m),
        },
        other => Err(ApiError::invalid_body(format!(
            "the body must be an object with {}, not {}",
            expected(),
            json_kind(&other)
        ))),
    }
}

/// Reads an optional JSON body within the body limit: `None` when empty.
pub(crate) async fn optional_json(
    payload: web::Payload,
    limit: usize,
) -> Result<Option<Value>, ApiError> {
    let bytes = match payload.to_bytes_limited(limit).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Err(ApiError::bad_request(
                "bad_body",
                format!("could not read the body: {e}"),
            ))
        }
        Err(_) => return Err(ApiError::body_too_large(limit)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::from_json_error(&e))
}

fn tag_of(path: &str) -> Result<&str, ApiError> {
    validate_tag(path).map_err(|m| ApiError::bad_request("invalid_tag", m))?;
    Ok(path)
}

fn check_run_id(id: &str) -> Result<(), ApiError> {
    uuid::Uuid::parse_str(id).map(|_| ()).map_err(|_| {
        ApiError::bad_request("invalid_run_id", format!("run id {id:?} is not a UUID"))
    })
}

async fn put_workflow(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let tag = tag_of(&path)?;
    let mut body = body.into_inner();
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
            "a workflow is a JSON object",
        ));
    };
    match obj.get("tag") {
        None => {
            obj.insert("tag".into(), Value::String(tag.into()));
        }
        Some(Value::String(t)) if t == tag => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_workflow",
                format!("tag {other} in the body differs from {tag:?} in the path"),
            ))
        }
    }
    let wf = Workflow::from_json(body)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow", m))?;
    let invalid = |m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow", m);
    let dag = wf.compile(st.limits.max_nodes).map_err(invalid)?;
    // Child tags resolve as this user's runs will resolve them.
    workflows::check_children(
        &mut st.redis.clone(),
        workflows::Resolve::User(&user.0),
        &dag.workflow,
        st.limits.max_child_depth,
    )
    .await?
    .map_err(invalid)?;
    let replaced = workflows::put(&mut st.redis.clone(), &user.0, &dag).await?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(HttpResponse::build(status).json(json!({
        "tag": dag.workflow.tag,
        "scope": Scope::Own,
        "nodes": dag.len(),
        "entry_nodes": dag.entries.len(),
    })))
}

/// The caller's own workflow `tag`, else the shared one; another user's is
/// as absent as one that does not exist.
async fn visible_workflow(
    st: &AppState,
    user: &User,
    tag: &str,
) -> Result<(Scope, Workflow), ApiError> {
    workflows::get(&mut st.redis.clone(), &user.0, tag)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow {tag:?} not found")))
}

async fn get_workflow(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tag = tag_of(&path)?;
    let (_, wf) = visible_workflow(&st, &user, tag).await?;
    Ok(HttpResponse::Ok().json(wf))
}

async fn delete_workflow(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tag = tag_of(&path)?;
    let mut conn = st.redis.clone();
    if workflows::delete(&mut conn, &user.0, tag).await? {
        return Ok(HttpResponse::NoContent().finish());
    }
    let message = if workflows::is_shared(&mut conn, tag).await? {
        format!(
            "you have no workflow {tag:?} of your own; the shared one is read-only (only the operator's --workflows-dir changes it)"
        )
    } else {
        format!("workflow {tag:?} not found")
    };
    Err(ApiError::not_found(message))
}

async fn list_workflows(st: web::Data<AppState>, user: User) -> Result<HttpResponse, ApiError> {
    let listed = workflows::list(&mut st.redis.clone(), &user.0).await?;
    Ok(HttpResponse::Ok().json(json!({ "workflows": listed })))
}

/// `POST /api/v1/runs` with `{"tag", "inputs"}` (the seed's call).
async fn create_run(
    st: web::Data<AppState>,
    user: User,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut body = fields(body.into_inner(), &["tag", "inputs"])?;
    let tag = match body.remove("tag") {
        Some(Value::String(t)) => t,
        None => {
            return Err(ApiError::invalid_body(
                "missing field \"tag\": the workflow to run",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid_body(format!(
                "field \"tag\" must be a string, not {}",
                json_kind(&other)
            )))
        }
    };
    submit(&st, &user, &tag, body.remove("inputs")).await
}

/// `POST /api/v1/workflows/{tag}/execute` with `{"inputs"}`, or no body.
async fn execute(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let inputs = match optional_json(payload, st.limits.max_body_bytes).await? {
        Some(body) => fields(body, &["inputs"])?.remove("inputs"),
        None => None,
    };
    submit(&st, &user, &path, inputs).await
}

async fn submit(
    st: &AppState,
    user: &User,
    tag: &str,
    inputs: Option<Value>,
) -> Result<HttpResponse, ApiError> {
    if st.shutdown.is_cancelled() {
        return Err(flowcast_actors::Error::ShuttingDown.into());
    }
    let tag = tag_of(tag)?;
    let inputs = match inputs {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_inputs",
                format!(
                    "field \"inputs\" must be a JSON object, not {}",
                    json_kind(&other)
                ),
            ))
        }
    };
    let (_, wf) = visible_workflow(st, user, tag).await?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let quota = st.limits.run_quota;
    match runs::enqueue(&mut st.redis.clone(), &run_id, &user.0, &wf, &inputs, quota).await? {
        Admission::Accepted { .. } => {}
        Admission::QuotaExceeded { retry_after_s } => {
            return Err(ApiError::too_many(
                "quota_exceeded",
                format!(
                    "user {:?} has {} active (queued or running) runs, the limit per user (max_active_runs_per_user); retry when one has ended",
                    user.0, quota.max_active
                ),
                retry_after_s,
            ))
        }
        Admission::RateLimited { retry_after_s } => {
            return Err(ApiError::too_many(
                "rate_limited",
                format!(
                    "user {:?} is starting runs faster than {} per second (max_runs_per_sec_per_user, bursts of {}); retry after {retry_after_s} s",
                    user.0,
                    quota.per_sec,
                    quota.burst()
                ),
                retry_after_s,
            ))
        }
    }
    st.metrics.runs_accepted.inc();
    let location = format!("/api/v1/runs/{run_id}");
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, location))
        .json(json!({"run_id": run_id, "tag": tag, "status": "queued"})))
}

/// Loads a run the caller owns; another user's run is a 404, as if absent.
pub(crate) async fn owned_run(
    st: &AppState,
    user: &User,
    id: &str,
) -> Result<store::RunRecord, ApiError> {
    check_run_id(id)?;
    match runs::load(&mut st.redis.clone(), id).await? {
        Some(r) if r.user == user.0 => Ok(r),
        _ => Err(ApiError::not_found(format!("run {id} not found"))),
    }
}

async fn get_run(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let run = owned_run(&st, &user, &path).await?;
    Ok(HttpResponse::Ok().json(crate::views::run(&run)))
}

/// `GET /api/v1/runs` query.
#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// Runs listed when the query gives no `limit`.
const DEFAULT_LIST: usize = 100;

/// `GET /api/v1/runs?limit=N&cursor=C`: the caller's runs, newest first,
/// with the cursor of the next page (`null` on the last).
async fn list_runs(
    st: web::Data<AppState>,
    user: User,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let max = st.limits.max_list;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIST.min(max),
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit {n:?} is not a number from 1 to {max}"),
                ))
            }
        },
    };
    let cursor = q.cursor.as_deref();
    if let Some(c) = cursor {
        if !runs::is_valid_cursor(c) {
            return Err(ApiError::bad_request(
                "invalid_cursor",
                format!("cursor {c:?} is not a cursor of this list: pass next_cursor as returned"),
            ));
        }
    }
    let page = runs::list(&mut st.redis.clone(), &user.0, limit, cursor).await?;
    Ok(HttpResponse::Ok().json(crate::views::run_list(&page)))
}

async fn run_events(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    owned_run(&st, &user, &path).await?;
    let events = runs::events(&mut st.redis.clone(), &path).await?;
    // Stored events are JSON objects written by the commit script.
    let body = format!(
        "{{\"run_id\":\"{}\",\"events\":[{}]}}",
        path.as_str(),
        events.join(",")
    );
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

async fn cancel_run(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let run = owned_run(&st, &user, &path).await?;
    if run.status.is_terminal() {
        if run.status == RunStatus::Cancelled {
            return Ok(
                HttpResponse::Ok().json(json!({"run_id": run.run_id, "status": "cancelled"}))
            );
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_finished",
            format!("run {} already {}", run.run_id, run.status.as_str()),
        ));
    }
    let cancelled = match &st.runner {
        Some(r) => r
            .send(CancelRun {
                run_id: run.run_id.clone(),
            })
            .await
            .ok()
            .flatten(),
        None => None,
    };
    match cancelled {
        Some(true) => {
            Ok(HttpResponse::Accepted().json(json!({"run_id": run.run_id, "status": "cancelled"})))
        }
        Some(false) => {
            // It ended meanwhile; say how.
            let now = owned_run(&st, &user, &run.run_id).await?;
            if now.status == RunStatus::Cancelled {
                Ok(HttpResponse::Ok().json(json!({"run_id": now.run_id, "status": "cancelled"})))
            } else {
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "run_finished",
                    format!("run {} already {}", now.run_id, now.status.as_str()),
                ))
            }
        }
        None => {
            // Held by another instance (or not initialised yet): ask
            // whichever runner holds it, now or later.
            runs::request_cancel(&mut st.redis.clone(), &run.run_id).await?;
            Ok(
                HttpResponse::Accepted()
                    .json(json!({"run_id": run.run_id, "status": "cancelling"})),
            )
        }
    }
}

async fn get_result(
    st: web::Data<AppState>,
    user: User,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = path.as_str();
    if !result::is_valid_ref(r) {
        return Err(ApiError::bad_request(
            "invalid_ref",
            format!("{r:?} is not sha256:<64 hex digits>"),
        ));
    }
    match runs::result_for(&mut st.redis.clone(), &user.0, r).await? {
        Some(b) => Ok(HttpResponse::Ok().content_type("application/json").body(b)),
        None => Err(ApiError::not_found(format!("result {r} not found"))),
    }
}
