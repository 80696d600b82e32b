//! flowcast's HTTP edge: REST, WebSocket and SSE, the dashboard.
//!
//! # Layout
//!
//! - [`state`]: [`AppState`], what every handler shares, and the limits;
//! - [`error`]: [`ApiError`], the one mapping from errors to JSON responses;
//! - [`auth`]: the caller's username (`X-User-ID` or a token's subject), and
//!   [`auth::stream_user`], the one rule for the user of a WebSocket or SSE
//!   request;
//! - [`api`]: the REST API under `/api/v1`;
//! - [`tasks`]: the worker protocol (`/api/v1/tasks/...`): claim with
//!   long-poll, heartbeat, complete, fail;
//! - [`decisions`]: approvals' decisions and signals posted to runs;
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`;
//! - [`ws`]: the `/ws` upgrade and its query parameters;
//! - [`resume`]: `last_event_id` checked and turned into a paged replay, for
//!   every transport;
//! - [`session`]: [`session::WsSession`], the actor of one WebSocket connection;
//! - [`sse`]: `GET /events`, Server-Sent Events, and [`sse::SseSession`], the
//!   actor of one stream (joins the Fanout and replays like a WebSocket
//!   session);
//! - [`views`]: the JSON shapes of runs served by the REST API;
//! - [`dashboard`]: the dashboard page at `/` and its built-in assets.
//!
//! [`configure_api`] and [`configure_ws`] mount these on the two listeners;
//! the daemon (`src/`) builds the servers.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod decisions;
pub mod error;
pub mod health;
pub mod resume;
pub mod session;
pub mod sse;
pub mod state;
pub mod tasks;
pub mod views;
pub mod ws;

use actix_web::web;

pub use error::ApiError;
pub use state::{AppState, Limits, WsConfig};

fn common(cfg: &mut web::ServiceConfig, st: &AppState) {
    cfg.app_data(web::Data::new(st.clone()))
        .app_data(
            web::JsonConfig::default()
                .limit(st.limits.max_body_bytes)
                .content_type_required(false)
                .error_handler(error::json_error),
        )
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            ApiError::bad_request("invalid_query", format!("bad query string: {e}")).into()
        }))
        .app_data(web::PathConfig::default().error_handler(|e, _| {
            ApiError::bad_request("invalid_path", format!("bad path: {e}")).into()
        }))
        .configure(health::configure);
}

async fn no_route(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Mounts the REST API, health routes and the dashboard (the API listener).
pub fn configure_api(st: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        common(cfg, &st);
        // Before the `/api/v1` scope, which would answer their paths itself.
        cfg.configure(tasks::configure)
            .configure(decisions::configure)
            .configure(api::configure)
            .configure(dashboard::configure)
            .default_service(web::to(no_route));
    }
}

/// Mounts `/ws`, `/events` and health routes (the fan-out listener).
pub fn configure_ws(st: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        common(cfg, &st);
        cfg.route("/ws", web::get().to(ws::ws_index))
            .service(
                web::resource("/events")
                    .route(web::get().to(sse::events))
                    .route(web::method(actix_web::http::Method::OPTIONS).to(sse::preflight)),
            )
            .default_service(web::to(no_route));
    }
}
