//! The Fanout actor: one per username with live sessions.
//!
//! The [`Subscriber`](crate::subscriber::Subscriber) hands it each message of
//! the user's channel as raw bytes. The Fanout parses the routing fields
//! once, wraps the bytes in one shared [`Frame`] and offers it to every
//! session whose filter matches, with `try_send` into the session's bounded
//! mailbox. A session whose mailbox is full is reading too slowly: it is
//! dropped from the list at once and told to close (see `flowcast-web`'s
//! session), so one slow client never delays the others and never makes the
//! Fanout buffer for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::event::EventMeta;
use crate::metrics::Metrics;

/// One event as delivered to sessions: parsed once, shared by all of them.
/// The routing fields are slices of `text` (no copies) unless the JSON
/// escaped them.
#[derive(Debug)]
pub struct FrameData {
    /// The event's JSON text, sent as the WebSocket text frame.
    pub text: ByteString,
    /// The event's `type`.
    pub kind: ByteString,
    /// Its run.
    pub run_id: ByteString,
    /// Its history id (empty if the publisher gave none).
    pub event_id: ByteString,
}

/// An event for a session.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Frame(pub Arc<FrameData>);

impl Frame {
    /// Parses an event's JSON once. `None` if it is not an event object.
    pub fn parse(text: ByteString) -> Option<Self> {
        let (kind, run_id, event_id) = {
            let meta: EventMeta = serde_json::from_str(&text).ok()?;
            let field = |c: Option<std::borrow::Cow<'_, str>>| match c {
                None => ByteString::new(),
                Some(std::borrow::Cow::Borrowed(b)) => text.slice_ref(b),
                Some(std::borrow::Cow::Owned(o)) => ByteString::from(o),
            };
            (
                field(Some(meta.kind)),
                field(meta.run_id),
                field(meta.event_id),
            )
        };
        Some(Self(Arc::new(FrameData {
            text,
            kind,
            run_id,
            event_id,
        })))
    }
}

/// Tells a session to close with this code: it fell behind (4008) or the
/// server is going away (1001).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct CloseSession {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

/// Close code: the client read too slowly and its queue filled.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code: the server is shutting down (standard "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Close every session of this Fanout with 1001 (drain).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct CloseAll;

/// A session's server-side filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only these event types (all if `None`).
    pub types: Option<Vec<String>>,
    /// Only this run (all if `None`).
    pub run_id: Option<String>,
}

impl Filter {
    /// True when the frame passes the filter.
    pub fn matches(&self, f: &FrameData) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == &*f.kind))
            && self.run_id.as_ref().is_none_or(|r| r == &*f.run_id)
    }
}

/// How a Fanout reaches one session.
pub struct SessionHandle {
    /// Unique per process.
    pub id: u64,
    /// The session's bounded mailbox.
    pub frames: Recipient<Frame>,
    /// Where close orders go (ignores the mailbox bound).
    pub close: Recipient<CloseSession>,
    /// What the session wants.
    pub filter: Filter,
    /// Set by the session once it runs with its real mailbox bound. Until then
    /// its mailbox has actix's small default bound, and a full one does not
    /// mean the client is slow: the frame is queued anyway.
    pub started: Arc<AtomicBool>,
}

/// Add a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddSession(pub SessionHandle);

/// Remove a session (idempotent).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoveSession {
    /// The session's id.
    pub id: u64,
}

/// A message from the user's channel.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The payload as published.
    pub payload: ByteString,
}

/// The Fanout actor of one user.
pub struct Fanout {
    user: String,
    sessions: Vec<SessionHandle>,
    metrics: Metrics,
}

impl Fanout {
    /// A Fanout for `user` with no sessions yet.
    pub fn new(user: String, metrics: Metrics) -> Self {
        Self {
            user,
            sessions: Vec::new(),
            metrics,
        }
    }
}

impl Actor for Fanout {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.metrics.users.inc();
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.metrics.users.dec();
    }
}

impl Handler<AddSession> for Fanout {
    type Result = ();

    fn handle(&mut self, msg: AddSession, _ctx: &mut Self::Context) {
        self.sessions.push(msg.0);
    }
}

impl Handler<RemoveSession> for Fanout {
    type Result = ();

    fn handle(&mut self, msg: RemoveSession, _ctx: &mut Self::Context) {
        self.sessions.retain(|s| s.id != msg.id);
    }
}

impl Handler<CloseAll> for Fanout {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _ctx: &mut Self::Context) {
        for s in self.sessions.drain(..) {
            s.close.do_send(CloseSession {
                code: CLOSE_GOING_AWAY,
                reason: "server shutting down",
            });
        }
    }
}

impl Handler<Deliver> for Fanout {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Self::Context) {
        let Some(frame) = Frame::parse(msg.payload) else {
            log::warn!(
                "fanout {}: dropping a message that is not an event",
                self.user
            );
            return;
        };
        let metrics = &self.metrics;
        let mut delivered = 0;
        self.sessions.retain(|s| {
            if !s.filter.matches(&frame.0) {
                return true;
            }
            if !s.started.load(Ordering::Acquire) {
                // Joined but not running yet (it starts a moment after the
                // handshake, and only then gets its real mailbox bound): queue
                // the frame without parking the sender on actix's default bound.
                s.frames.do_send(frame.clone());
                delivered += 1;
                return s.frames.connected();
            }
            match s.frames.try_send(frame.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(SendError::Full(_)) => {
                    metrics.slow_consumer_closes.inc();
                    s.close.do_send(CloseSession {
                        code: CLOSE_SLOW_CONSUMER,
                        reason: "slow consumer: outbound queue full; reconnect with last_event_id",
                    });
                    false
                }
                Err(SendError::Closed(_)) => false,
            }
        });
        metrics.deliveries.inc_by(delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_type_and_run() {
        let f = Frame::parse(ByteString::from_static(
            r#"{"type":"node_completed","run_id":"r1","event_id":"5-0"}"#,
        ))
        .unwrap();
        assert_eq!(f.0.event_id, "5-0");
        assert!(Filter::default().matches(&f.0));
        let types = Filter {
            types: Some(vec!["workflow_completed".into()]),
            run_id: None,
        };
        assert!(!types.matches(&f.0));
        let run = Filter {
            types: None,
            run_id: Some("r1".into()),
        };
        assert!(run.matches(&f.0));
        let other = Filter {
            types: None,
            run_id: Some("r2".into()),
        };
        assert!(!other.matches(&f.0));
        assert!(Frame::parse(ByteString::from_static("not json")).is_none());
    }
}
