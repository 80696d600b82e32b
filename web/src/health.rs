//! `/healthz`, `/readyz` and `/metrics`, served on both listeners.
//!
//! `/healthz` says the process is alive. `/readyz` says it can do its job:
//! Redis answers PING, the runner is reading requests (when this process runs
//! one), the Subscriber has every live channel subscribed (when this process
//! serves WebSockets), and no drain has begun.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use flowcast_actors::runner::IsReady;
use flowcast_actors::store;
use serde_json::json;

use crate::state::AppState;

/// How long `/readyz` waits for Redis.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Registers the health routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(st: web::Data<AppState>) -> HttpResponse {
    let mut conn = st.redis.clone();
    let ping = actix_rt::time::timeout(READY_TIMEOUT, store::ping(&mut conn)).await;
    let redis_ok = matches!(ping, Ok(Ok(_)));
    let runner_ok = match &st.runner {
        // A runner too busy to answer within the timeout is not ready either.
        Some(r) => Some(matches!(
            actix_rt::time::timeout(READY_TIMEOUT, r.send(IsReady)).await,
            Ok(Ok(true))
        )),
        None => None,
    };
    let subscriber_ok = st
        .subscriber_ready
        .as_ref()
        .map(|r| r.load(Ordering::SeqCst));
    let draining = st.shutdown.is_cancelled();
    let ready = redis_ok && runner_ok != Some(false) && subscriber_ok != Some(false) && !draining;
    let body = json!({
        "ready": ready,
        "redis": redis_ok,
        "runner": runner_ok,
        "subscriber": subscriber_ok,
        "draining": draining,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.metrics.render())
}
