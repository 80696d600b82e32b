//! `GET /ws?username=U`: the WebSocket endpoint (the seed's URL).
//!
//! Query parameters: `username` (required), `types=a,b` and `run_id=` (server-side
//! filters), `last_event_id=` (replay from history first, page by page; see
//! `flowcast_actors::replay`). Everything is checked before the upgrade,
//! including a `last_event_id` later than any event this server can have
//! sent, so a bad request gets an HTTP 4xx with a JSON error, never a socket
//! that closes at once. Without `last_event_id` the socket starts live, with
//! no replay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use flowcast_actors::event::EventBody;
use flowcast_actors::fanout::{Filter, SessionHandle};
use flowcast_actors::store::history::StreamId;
use flowcast_actors::subscriber::{Join, JoinError};
use flowcast_actors::user::validate_username;

use crate::auth::{ws_user, Auth};
use crate::error::ApiError;
use crate::resume::{open_replay, parse_last_event_id};
use crate::session::{StartReplay, WsSession};
use crate::state::AppState;

/// A parsed `/ws` query.
#[derive(Debug, PartialEq)]
pub struct WsQuery {
    /// The user.
    pub username: String,
    /// Filters.
    pub filter: Filter,
    /// Replay after this history id.
    pub last_event_id: Option<StreamId>,
}

/// Parses and checks a `/ws` query string. In `jwt` mode the user is the
/// subject of `token`, and a `username` that differs is refused.
pub fn parse_query(qs: &str, auth: &Auth) -> Result<WsQuery, ApiError> {
    let q: HashMap<String, String> = web::Query::<HashMap<String, String>>::from_query(qs)
        .map_err(|e| {
            ApiError::bad_request("invalid_query", format!("malformed query string: {e}"))
        })?
        .into_inner();
    let from_token = ws_user(
        auth,
        q.get("token").map(String::as_str),
        q.get("username").map(String::as_str),
    )?;
    let Some(username) = from_token.or_else(|| q.get("username").cloned()) else {
        return Err(ApiError::bad_request(
            "missing_username",
            "the username query parameter is required",
        ));
    };
    validate_username(&username).map_err(|m| ApiError::bad_request("invalid_user", m))?;
    let types = match q.get("types") {
        None => None,
        Some(t) => {
            let list: Vec<String> = t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if list.is_empty() {
                return Err(ApiError::bad_request("invalid_types", "types is empty"));
            }
            if let Some(bad) = list
                .iter()
                .find(|t| !EventBody::TYPES.contains(&t.as_str()))
            {
                return Err(ApiError::bad_request(
                    "invalid_types",
                    format!(
                        "unknown event type {bad:?} in types; known: {}",
                        EventBody::TYPES.join(",")
                    ),
                ));
            }
            Some(list)
        }
    };
    let run_id = match q.get("run_id") {
        None => None,
        Some(r) => {
            uuid::Uuid::parse_str(r).map_err(|_| {
                ApiError::bad_request("invalid_run_id", format!("run_id {r:?} is not a UUID"))
            })?;
            Some(r.clone())
        }
    };
    let last_event_id = q
        .get("last_event_id")
        .map(|id| parse_last_event_id(id))
        .transpose()?;
    Ok(WsQuery {
        username,
        filter: Filter { types, run_id },
        last_event_id,
    })
}

/// The `/ws` handler.
pub async fn ws_index(
    req: HttpRequest,
    stream: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = parse_query(req.query_string(), &st.auth)?;
    let Some(subscriber) = st.subscriber.clone() else {
        return Err(ApiError::not_found(
            "this instance serves no WebSockets (role runner)",
        ));
    };
    if st.shutdown.is_cancelled() {
        return Err(ApiError::unavailable(
            "the server is shutting down; reconnect to another instance",
        ));
    }
    let replay = match q.last_event_id {
        Some(after) => Some(open_replay(&st, &q.username, after, q.filter.clone()).await?),
        None => None,
    };
    let replaying = replay.is_some();
    let id = st.next_session.fetch_add(1, Ordering::Relaxed);
    let started = Arc::new(AtomicBool::new(false));
    let session = WsSession {
        id,
        user: q.username.clone(),
        subscriber: subscriber.clone(),
        redis: st.redis.clone(),
        cfg: st.ws.clone(),
        metrics: st.metrics.clone(),
        replay,
        last_seen: Instant::now(),
        started: started.clone(),
    };
    let (addr, resp) = ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(st.ws.max_frame_bytes)
        .start_with_addr()
        .map_err(|e| {
            ApiError::bad_request(
                "not_websocket",
                format!("expected a WebSocket upgrade: {e}"),
            )
        })?;
    let handle = SessionHandle {
        id,
        frames: addr.clone().recipient(),
        close: addr.clone().recipient(),
        filter: q.filter,
        started,
    };
    match subscriber
        .send(Join {
            user: q.username.clone(),
            session: handle,
        })
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(JoinError::TooManySessions(n))) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!("user {:?} already has {n} sessions, the limit", q.username),
            ))
        }
        Ok(Err(JoinError::ShuttingDown)) => {
            return Err(ApiError::unavailable(
                "the server is shutting down; reconnect to another instance",
            ))
        }
        Err(_) => return Err(ApiError::unavailable("fan-out is restarting; retry")),
    }
    if replaying {
        // Joined: live events are held from here on, so history is read
        // only now (no gap).
        addr.do_send(StartReplay);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seeds_url_and_filters() {
        let q = parse_query("username=test-user", &Auth::Header).unwrap();
        assert_eq!(q.username, "test-user");
        assert_eq!(q.filter, Filter::default());
        let q = parse_query(
            "username=bob%40example.com&types=workflow_completed,node_completed&last_event_id=5-1",
            &Auth::Header,
        )
        .unwrap();
        assert_eq!(q.username, "bob@example.com");
        assert_eq!(q.filter.types.unwrap().len(), 2);
        assert_eq!(q.last_event_id, Some(StreamId { ms: 5, seq: 1 }));
        let q = parse_query("username=a&last_event_id=0", &Auth::Header).unwrap();
        assert_eq!(q.last_event_id, Some(StreamId::ZERO));
        let q = parse_query("username=a", &Auth::Header).unwrap();
        assert_eq!(q.last_event_id, None, "no replay without last_event_id");
    }

    #[test]
    fn rejects_bad_queries() {
        for (qs, code) in [
            ("", "missing_username"),
            ("username=", "invalid_user"),
            ("username=a%0Ab", "invalid_user"),
            ("username=a&types=bogus", "invalid_types"),
            ("username=a&run_id=nope", "invalid_run_id"),
            ("username=a&last_event_id=xyz", "invalid_last_event_id"),
            ("username=a&last_event_id=", "invalid_last_event_id"),
            ("username=a&last_event_id=-1", "invalid_last_event_id"),
            ("username=a&last_event_id=-1-0", "invalid_last_event_id"),
            ("username=a&last_event_id=%2B5-0", "invalid_last_event_id"),
            (
                "username=a&last_event_id=18446744073709551616-0",
                "invalid_last_event_id",
            ),
        ] {
            assert_eq!(
                parse_query(qs, &Auth::Header).unwrap_err().code,
                code,
                "{qs}"
            );
        }
    }
}
