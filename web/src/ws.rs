//! `GET /ws?username=U`: the WebSocket endpoint (the seed's URL).
//!
//! Query parameters: `username` (required unless a token or an `X-User-ID`
//! header names the user, and must match them), `types=a,b` and `run_id=`
//! (server-side filters), `last_event_id=` (replay from history first, page
//! by page; see `flowcast_actors::replay`). Everything is checked before the
//! upgrade, including a `last_event_id` later than any event this server
//! can have sent, so a bad request gets an HTTP 4xx with a JSON error, never
//! a socket that closes at once. Without `last_event_id` the socket starts
//! live, with no replay.
//!
//! SSE (`crate::sse`) takes the same steps with the same code: the query
//! ([`parse_query`]), the Subscriber ([`fanout_of`]) and the join
//! ([`join`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use flowcast_actors::event::EventBody;
use flowcast_actors::fanout::{Filter, SessionHandle};
use flowcast_actors::store::history::StreamId;
use flowcast_actors::subscriber::{Join, JoinError, Subscriber};

use crate::auth::{stream_user, Auth};
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

/// Parses and checks a `/ws` query string and the request's headers. The
/// user is decided by [`stream_user`]: in `jwt` mode the subject of
/// `token`; in `header` mode `username`, which must match an `X-User-ID`
/// header if the request carries one.
pub fn parse_query(qs: &str, headers: &HeaderMap, auth: &Auth) -> Result<WsQuery, ApiError> {
    let q: HashMap<String, String> = web::Query::<HashMap<String, String>>::from_query(qs)
        .map_err(|e| {
            ApiError::bad_request("invalid_query", format!("malformed query string: {e}"))
        })?
        .into_inner();
    let username = stream_user(
        auth,
        headers,
        q.get("token").map(String::as_str),
        q.get("username").map(String::as_str),
    )?;
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

/// The Subscriber that new sessions join: a 404 on an instance without
/// fan-out (role runner), a 503 once a drain has begun. Both transports
/// (`/ws`, SSE `/events`) ask it before anything else.
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

/// Joins a started session actor, of either transport, to its user's
/// Fanout; a refusal is an HTTP error answered before the stream starts.
/// Once this returns, live events reach the session, so a replay's first
/// page is read only after it (no gap).
pub async fn join(
    subscriber: &Addr<Subscriber>,
    user: &str,
    session: SessionHandle,
) -> Result<(), ApiError> {
    match subscriber
        .send(Join {
            user: user.to_owned(),
            session,
        })
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(JoinError::TooManySessions(n))) => Err(ApiError::too_many(
            "too_many_sessions",
            format!(
                "user {user:?} already has {n} sessions, the limit per user (--max-sessions-per-user)"
            ),
            1,
        )),
        Ok(Err(JoinError::ShuttingDown)) => Err(ApiError::unavailable(
            "the server is shutting down; reconnect to another instance",
        )),
        Err(_) => Err(ApiError::unavailable("fan-out is restarting; retry")),
    }
}

/// The `/ws` handler.
pub async fn ws_index(
    req: HttpRequest,
    stream: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = parse_query(req.query_string(), req.headers(), &st.auth)?;
    let subscriber = fanout_of(&st)?;
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
    join(&subscriber, &q.username, handle).await?;
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
        let q = parse_query("username=test-user", &HeaderMap::new(), &Auth::Header).unwrap();
        assert_eq!(q.username, "test-user");
        assert_eq!(q.filter, Filter::default());
        let q = parse_query(
            "username=bob%40example.com&types=workflow_completed,node_completed&last_event_id=5-1",
            &HeaderMap::new(),
            &Auth::Header,
        )
        .unwrap();
        assert_eq!(q.username, "bob@example.com");
        assert_eq!(q.filter.types.unwrap().len(), 2);
        assert_eq!(q.last_event_id, Some(StreamId { ms: 5, seq: 1 }));
        let q = parse_query(
            "username=a&last_event_id=0",
            &HeaderMap::new(),
            &Auth::Header,
        )
        .unwrap();
        assert_eq!(q.last_event_id, Some(StreamId::ZERO));
        let q = parse_query("username=a", &HeaderMap::new(), &Auth::Header).unwrap();
        assert_eq!(q.last_event_id, None, "no replay without last_event_id");
    }

    #[test]
    fn rejects_bad_queries() {
        for (qs, code) in [
            ("", "missing_username"),
            ("username=", "invalid_user"),
            ("username=a%0Ab", "invalid_user"),
            ("username=alice%E2%80%8B", "invalid_user"),
            ("username=a%20b", "invalid_user"),
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
                parse_query(qs, &HeaderMap::new(), &Auth::Header)
                    .unwrap_err()
                    .code,
                code,
                "{qs}"
            );
        }
    }

    #[test]
    fn a_user_header_must_name_the_same_user() {
        use actix_web::http::header::{HeaderName, HeaderValue};
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static("x-user-id"),
                HeaderValue::from_str(v).unwrap(),
            );
            h
        };
        let q = parse_query("username=alice", &with("alice"), &Auth::Header).unwrap();
        assert_eq!(q.username, "alice");
        let e = parse_query("username=alice", &with("mallory"), &Auth::Header).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "forbidden"));
        // The header alone names the user.
        assert_eq!(
            parse_query("", &with("bob"), &Auth::Header)
                .unwrap()
                .username,
            "bob"
        );
        let e = parse_query("username=alice", &with("a b"), &Auth::Header).unwrap_err();
        assert_eq!(e.code, "invalid_user");
    }
}
