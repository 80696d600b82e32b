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
//! With `last_event_id`, the session first replays history: it joins (so
//! live events are buffered), reads the user's history stream after the
//! given id, sends it, then releases the buffered live events newer than the
//! last replayed one. No gap, no duplicate. [`Resume`] is that hold-back
//! buffer, shared with the SSE session (`crate::sse`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use flowcast_actors::fanout::{CloseSession, Filter, Frame, CLOSE_SLOW_CONSUMER};
use flowcast_actors::metrics::Metrics;
use flowcast_actors::subscriber::{Leave, Subscriber};

use crate::state::WsConfig;

/// Replay results handed to the session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replay {
    /// History frames after the client's last id, in order.
    pub frames: Vec<Frame>,
    /// Id of the last replayed event (empty if none).
    pub last_id: String,
}

/// Live frames held back while a session replays history; both transports
/// use it, so their seam between history and live is the same.
pub struct Resume {
    held: Option<Vec<Frame>>,
    max: usize,
}

/// What to do with a live frame.
pub enum Admit {
    /// Send it now.
    Send(Frame),
    /// Held until the replay is done.
    Held,
    /// More than the queue bound is held: the client is too slow.
    Overflow,
}

impl Resume {
    /// A buffer that holds frames (at most `max`) when `replaying`.
    pub fn new(replaying: bool, max: usize) -> Self {
        Self {
            held: replaying.then(Vec::new),
            max,
        }
    }

    /// Takes a live frame.
    pub fn admit(&mut self, frame: Frame) -> Admit {
        match &mut self.held {
            None => Admit::Send(frame),
            Some(held) if held.len() >= self.max => Admit::Overflow,
            Some(held) => {
                held.push(frame);
                Admit::Held
            }
        }
    }

    /// Ends the replay: the replayed frames, then the held live frames newer
    /// than the last replayed one, in order; later frames go out at once.
    pub fn release(&mut self, r: Replay) -> impl Iterator<Item = Frame> {
        let held = self.held.take().unwrap_or_default();
        let last_id = r.last_id;
        r.frames
            .into_iter()
            .chain(held.into_iter().filter(move |f| {
                // History ids and live ids come from the same stream: compare them.
                last_id.is_empty()
                    || flowcast_actors::store::history::id_after(&f.0.event_id, &last_id)
            }))
    }
}

/// The session actor.
pub struct WsSession {
    /// Session id (unique per process).
    pub id: u64,
    /// The user.
    pub user: String,
    /// What the client asked for.
    pub filter: Filter,
    /// The process's Subscriber.
    pub subscriber: Addr<Subscriber>,
    /// Settings.
    pub cfg: WsConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Live frames held back while history is replayed.
    pub resume: Resume,
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
        match self.resume.admit(frame) {
            Admit::Send(f) => ctx.text(f.0.text.clone()),
            Admit::Held => {}
            Admit::Overflow => {
                self.metrics.slow_consumer_closes.inc();
                self.close(
                    CLOSE_SLOW_CONSUMER,
                    "slow consumer: too many live events during replay",
                    ctx,
                );
            }
        }
    }
}

impl Handler<Replay> for WsSession {
    type Result = ();

    fn handle(&mut self, r: Replay, ctx: &mut Self::Context) {
        for f in self.resume.release(r) {
            ctx.text(f.0.text.clone());
        }
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
