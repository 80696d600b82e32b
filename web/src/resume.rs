//! What every transport (WebSocket, SSE) does with a client's
//! `last_event_id`, as HTTP answers: parse it (400 when malformed) and check
//! it against the user's history before anything is sent (400 when it is
//! later than any event this server can have sent, 503 while Redis is
//! unreachable), giving the transport a paged
//! [`ReplayCursor`](flowcast_actors::replay::ReplayCursor) to drive; and,
//! for SSE, the replay that gives a stream opened without a position one
//! ([`open_at_end`]).

use flowcast_actors::fanout::Filter;
use flowcast_actors::replay::{self, ReplayCursor};
use flowcast_actors::store::history::StreamId;

use crate::error::ApiError;
use crate::state::AppState;

/// Parses a client's `last_event_id` (a 400 naming it when malformed).
pub fn parse_last_event_id(raw: &str) -> Result<StreamId, ApiError> {
    replay::parse_last_event_id(raw).map_err(|m| ApiError::bad_request("invalid_last_event_id", m))
}

/// Checks `after` against the user's history and prepares the paged replay
/// after it: a 400 for an id later than any event this server can have
/// sent, a 503 when Redis is unreachable. For every transport (WebSocket,
/// SSE), before anything is sent.
pub async fn open_replay(
    st: &AppState,
    user: &str,
    after: StreamId,
    filter: Filter,
) -> Result<ReplayCursor, ApiError> {
    replay::open(&mut st.redis.clone(), user, after, filter, limits(st))
        .await
        .map_err(|e| match e {
            flowcast_actors::Error::InvalidInput(m) => {
                ApiError::bad_request("invalid_last_event_id", m)
            }
            other => other.into(),
        })
}

/// Prepares the replay of a stream that starts live at the end of the
/// user's history but tells its client that position (SSE; see
/// [`replay::open_at_end`]). A Redis failure is the caller's to weigh: a
/// stream may start live without a position instead.
pub async fn open_at_end(
    st: &AppState,
    user: &str,
    filter: Filter,
) -> flowcast_actors::Result<ReplayCursor> {
    replay::open_at_end(&mut st.redis.clone(), user, filter, limits(st)).await
}

/// A session's replay bounds: its queue bound and the retention.
fn limits(st: &AppState) -> replay::ReplayLimits {
    replay::ReplayLimits {
        hold_max: st.ws.max_queue_msgs,
        retention: st.ws.retention,
    }
}
