//! The WebSocket session actor: one per connection.
//!
//! It joins its user's Fanout through the Subscriber and writes each
//! [`Frame`] it is handed as one text frame (the shared bytes, never
//! re-serialised). Its mailbox is the bounded outbound queue: the Fanout
//! `try_send`s into it, and when it is full the Fanout drops the session and
//! sends a [`CloseSession`] with
//! [`CLOSE_SLOW_CONSUMER`] (4008), on which the session closes. Because a `WebsocketContext` whose socket stopped
//! draining is no longer polled (actix-web#2441), the eviction never depends
//! on this actor running: the Fanout stops feeding it at once, and the
//! kernel's TCP user timeout (set on accept) cuts a peer that stays stuck.
//!
//! With `last_event_id`, the session first replays history through its
//! [`ReplayCursor`] (see `flowcast_actors::replay`): it has joined (so live
//! events arrive and are held by the cursor), then reads the history page
//! by page and releases the held live events newer than the last replayed
//! one. No gap, no duplicate. [`admit_live`] is that seam, shared with the
//! SSE session (`crate::sse`), which drives the same cursor.
//!
//! The replay goes at the pace the client reads. A page's frames are
//! written, and the next page is read, inside this actor; actix-web polls a
//! WebSocket actor only while the connection's write buffer has room (its
//! HTTP dispatcher stops pulling the response stream once the buffer is
//! full, until the socket drains it). So the page read next is handled
//! only once the client took the previous one: a slow reader stalls its own
//! replay, with at most about a page buffered, instead of the daemon
//! reading and queueing the whole history for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use flowcast_actors::fanout::{CloseSession, Frame};
use flowcast_actors::metrics::Metrics;
use flowcast_actors::replay::ReplayCursor;
use flowcast_actors::subscriber::{Leave, Subscriber};
use redis::aio::ConnectionManager;

use crate::state::WsConfig;

/// Begin the replay (sent once the session has joined its user's Fanout).
/// Both transports' sessions take it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartReplay;

/// The seam between a session's replay and live, the same for both
/// transports (WebSocket, SSE): the live frame to send now, or `None` when
/// the replay holds it (history is still being read) or already sent it
/// from history. Once a live frame newer than the replay arrives, the
/// replay is dropped: every later one is newer too.
pub fn admit_live(replay: &mut Option<ReplayCursor>, frame: Frame) -> Option<Frame> {
    if let Some(cursor) = replay {
        if !cursor.is_done() {
            cursor.hold(frame);
            return None;
        }
        if cursor.is_replayed(&frame) {
            return None; // sent from history already
        }
        *replay = None;
    }
    Some(frame)
}

/// The session actor.
pub struct WsSession {
    /// Session id (unique per process).
    pub id: u64,
    /// The user.
    pub user: String,
    /// The process's Subscriber.
    pub subscriber: Addr<Subscriber>,
    /// Where history is read from.
    pub redis: ConnectionManager,
    /// Settings.
    pub cfg: WsConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// The replay (`None`: live, nothing replayed or every live frame is
    /// newer than the replay): kept once done until the first live frame
    /// newer than it, to drop live copies of events it already sent.
    pub replay: Option<ReplayCursor>,
    /// Last time the peer showed life.
    pub last_seen: Instant,
    /// Shared with the Fanout: set once the mailbox has its real bound.
    pub started: Arc<AtomicBool>,
}

impl WsSession {
    fn close(&mut self, code: u16, reason: &str, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    /// Reads the replay's next page; its frames are written when the actor
    /// is next polled, which is when the connection has room for them.
    fn read_page(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(req) = self.replay.as_ref().and_then(ReplayCursor::request) else {
            return;
        };
        let mut conn = self.redis.clone();
        async move { req.fetch(&mut conn).await }
            .into_actor(self)
            .map(|page, act, ctx| {
                let Some(cursor) = act.replay.as_mut() else {
                    return;
                };
                match page {
                    Ok(page) => {
                        for f in cursor.apply(page) {
                            ctx.text(f.0.text.clone());
                        }
                        if !cursor.is_done() {
                            act.read_page(ctx);
                        }
                    }
                    Err(e) => {
                        log::warn!("session {}: replay for {} failed: {e}", act.id, act.user);
                        act.close(1011, "history unavailable; retry", ctx);
                    }
                }
            })
            .spawn(ctx);
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.max_queue_msgs);
        self.started.store(true, Ordering::Release);
        self.metrics.sessions.inc();
        let interval = self.cfg.heartbeat_interval;
        let limit = interval + self.cfg.client_timeout;
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_seen.elapsed() > limit {
                log::debug!("session {}: no pong for {limit:?}; dropping", act.id);
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.metrics.sessions.dec();
        self.subscriber.do_send(Leave {
            user: self.user.clone(),
            id: self.id,
        });
    }
}

impl Handler<Frame> for WsSession {
    type Result = ();

    fn handle(&mut self, frame: Frame, ctx: &mut Self::Context) {
        if let Some(frame) = admit_live(&mut self.replay, frame) {
            ctx.text(frame.0.text.clone());
        }
    }
}

impl Handler<StartReplay> for WsSession {
    type Result = ();

    fn handle(&mut self, _: StartReplay, ctx: &mut Self::Context) {
        self.read_page(ctx);
    }
}

impl Handler<CloseSession> for WsSession {
    type Result = ();

    fn handle(&mut self, c: CloseSession, ctx: &mut Self::Context) {
        self.close(c.code, c.reason, ctx);
    }
}

/// True for the one message a client may send: a JSON object `{"type":"ping"}`
/// (any whitespace and key layout, as any JSON encoder writes it).
fn is_ping(text: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
        .is_ok_and(|m| m.len() == 1 && m.get("type").is_some_and(|t| t == "ping"))
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        match msg {
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Text(t)) if is_ping(&t) => {
                ctx.text(r#"{"type":"pong"}"#);
            }
            Ok(ws::Message::Text(_)) => self.close(
                1008,
                "unexpected text frame: the only client message is {\"type\":\"ping\"}",
                ctx,
            ),
            Ok(ws::Message::Binary(_)) => self.close(1003, "binary frames are not accepted", ctx),
            Ok(ws::Message::Continuation(_)) => {
                self.close(1003, "fragmented frames are not accepted", ctx)
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Nop) => {}
            Err(ws::ProtocolError::Overflow) => self.close(1009, "frame too large", ctx),
            Err(e) => self.close(1002, &format!("protocol error: {e}"), ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_ping;

    #[test]
    fn ping_is_any_encoding_of_the_ping_object() {
        for p in [
            r#"{"type":"ping"}"#,
            r#"{"type": "ping"}"#,
            " {\n  \"type\" : \"ping\"\n} ",
        ] {
            assert!(is_ping(p), "{p}");
        }
        for p in [
            "ping",
            r#"{"type":"pong"}"#,
            r#"{"type":"ping","x":1}"#,
            r#"["ping"]"#,
            "",
        ] {
            assert!(!is_ping(p), "{p}");
        }
    }
}
