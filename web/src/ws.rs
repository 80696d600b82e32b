//! `GET /ws?username=U`: the WebSocket endpoint (the seed's URL).
//!
//! Query parameters: `username` (required), `types=a,b` and `run_id=` (server-side
//! filters), `last_event_id=` (replay from history first). Everything is
//! checked before the upgrade, so a bad request gets an HTTP 4xx with a JSON
//! error, never a socket that closes at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::{Addr, Recipient};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytestring::ByteString;
use flowcast_actors::event::EventBody;
use flowcast_actors::fanout::{CloseSession, Filter, Frame, SessionHandle};
use flowcast_actors::store;
use flowcast_actors::subscriber::{Join, JoinError, Subscriber};
use flowcast_actors::user::validate_username;

use crate::auth::{ws_user, Auth};
use crate::error::ApiError;
use crate::session::{Replay, Resume, WsSession};
use crate::state::AppState;

/// History entries read per page while replaying.
const REPLAY_PAGE: usize = 1000;

/// A parsed `/ws` query.
#[derive(Debug, PartialEq)]
pub struct WsQuery {
    /// The user.
    pub username: String,
    /// Filters.
    pub filter: Filter,
    /// Replay after this history id.
    pub last_event_id: Option<String>,
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

/// Checks a resume position (`last_event_id`, or SSE's `Last-Event-ID`):
/// a history id, or `0` for the whole history.
pub fn parse_last_event_id(id: &str) -> Result<String, ApiError> {
    if id == "0" || id == "0-0" {
        return Ok("0-0".to_owned());
    }
    store::history::parse_id(id).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_last_event_id",
            format!("last_event_id {id:?} is not an event id (like 1700000000000-0)"),
        )
    })?;
    Ok(id.to_owned())
}

/// The Subscriber that new sessions join: a 404 on an instance without
/// fan-out (role runner), a 503 once a drain has begun.
pub fn fanout_of(st: &AppState) -> Result<Addr<Subscriber>, ApiError> {
    let Some(subscriber) = st.subscriber.clone() else {
        return Err(ApiError::not_found(
            "this instance serves no event streams (role runner)",
        ));
    };
    if st.shutdown.is_cancelled() {
        return Err(ApiError::unavailable(
            "the server is shutting down; reconnect to another instance",
        ));
    }
    Ok(subscriber)
}

/// How the Fanout and the replay reach one session actor, whatever its
/// transport.
pub struct SessionEnds {
    /// The session's bounded mailbox for live frames.
    pub frames: Recipient<Frame>,
    /// Close orders.
    pub close: Recipient<CloseSession>,
    /// The replay's result.
    pub replay: Recipient<Replay>,
    /// Set by the session once its mailbox has its real bound.
    pub started: Arc<AtomicBool>,
}

/// Joins a started session actor to its user's Fanout and, when it resumes
/// from `last_event_id`, reads the history for it: the step both `/ws` and
/// SSE take once their actor exists. An error is answered before the
/// stream starts.
pub async fn join(
    st: &AppState,
    subscriber: &Addr<Subscriber>,
    id: u64,
    q: WsQuery,
    ends: SessionEnds,
) -> Result<(), ApiError> {
    let handle = SessionHandle {
        id,
        frames: ends.frames,
        close: ends.close.clone(),
        filter: q.filter.clone(),
        started: ends.started,
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
    if let Some(after) = q.last_event_id {
        let mut conn = st.redis.clone();
        let filter = q.filter;
        let user = q.username;
        actix_rt::spawn(async move {
            match replay(&mut conn, &user, &after, &filter).await {
                Ok(r) => ends.replay.do_send(r),
                Err(e) => {
                    log::warn!("session {id}: replay for {user} failed: {e}");
                    ends.close.do_send(CloseSession {
                        code: 1011,
                        reason: "history unavailable; retry",
                    });
                }
            }
        });
    }
    Ok(())
}

/// The `/ws` handler.
pub async fn ws_index(
    req: HttpRequest,
    stream: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = parse_query(req.query_string(), &st.auth)?;
    let subscriber = fanout_of(&st)?;
    let id = st.next_session.fetch_add(1, Ordering::Relaxed);
    let started = Arc::new(AtomicBool::new(false));
    let session = WsSession {
        id,
        user: q.username.clone(),
        filter: q.filter.clone(),
        subscriber: subscriber.clone(),
        cfg: st.ws.clone(),
        metrics: st.metrics.clone(),
        resume: Resume::new(q.last_event_id.is_some(), st.ws.max_queue_msgs),
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
    join(
        &st,
        &subscriber,
        id,
        q,
        SessionEnds {
            frames: addr.clone().recipient(),
            close: addr.clone().recipient(),
            replay: addr.recipient(),
            started,
        },
    )
    .await?;
    Ok(resp)
}

/// Reads the history after `after`, filtered, with a `replay_gap` notice first
/// when events after `after` were already trimmed.
async fn replay(
    conn: &mut redis::aio::ConnectionManager,
    user: &str,
    after: &str,
    filter: &Filter,
) -> flowcast_actors::Result<Replay> {
    let mut frames = Vec::new();
    if let Some(oldest) = store::history::gap(conn, user, after).await? {
        frames.extend(Frame::parse(ByteString::from(
            serde_json::json!({
                "type": "replay_gap",
                "requested_after": after,
                "oldest_available": oldest,
                "message": "events after last_event_id were trimmed from history; replay starts at oldest_available",
            })
            .to_string(),
        )));
    }
    let mut cursor = after.to_owned();
    loop {
        let page = store::history::read(conn, user, &cursor, REPLAY_PAGE).await?;
        let n = page.len();
        for (id, text) in page {
            cursor = id;
            if let Some(f) = Frame::parse(ByteString::from(text)) {
                if filter.matches(&f.0) {
                    frames.push(f);
                }
            }
        }
        if n < REPLAY_PAGE {
            break;
        }
    }
    let last_id = if cursor == after {
        String::new()
    } else {
        cursor
    };
    // Nothing replayed: release live events newer than the client's id.
    let last_id = if last_id.is_empty() {
        after.to_owned()
    } else {
        last_id
    };
    Ok(Replay { frames, last_id })
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
        assert_eq!(q.last_event_id.as_deref(), Some("5-1"));
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
        ] {
            assert_eq!(
                parse_query(qs, &Auth::Header).unwrap_err().code,
                code,
                "{qs}"
            );
        }
    }
}
