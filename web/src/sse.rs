//! `GET /events`: Server-Sent Events, for browsers (`EventSource`) and for
//! proxies that break WebSockets.
//!
//! The query is `/ws`'s (`username` or, in jwt mode, `token`; `types`,
//! `run_id`, `last_event_id`), checked by the same code before the stream
//! starts, so a bad request is an HTTP 4xx with a JSON error. The
//! `Last-Event-ID` header, which `EventSource` sends when it reconnects by
//! itself, takes precedence over `last_event_id`: it is the newer position.
//!
//! One [`SseSession`] actor per stream joins the user's Fanout exactly as a
//! WebSocket session does (`ws::join`), with the same filter, replay and
//! history/live seam ([`Resume`]). Each event is one block
//! `id: <event_id>\ndata: <the event JSON>\n\n` (no `event:` field, so
//! `onmessage` sees every event); a stream opened without a position starts
//! with `id: <newest history id>` and no data, which sets the browser's
//! last id without firing an event, so that even a reconnect before the
//! first event resumes without a gap (while Redis is unreachable it starts
//! live without one, as a WebSocket does). Keep-alive comments (`: keep-alive`)
//! go out every heartbeat interval and reveal a peer that went away.
//!
//! The bound is the WebSocket one: the actor writes into a channel of
//! `--max-queue-msgs` blocks (plus one kept for the goodbye), which the
//! response body drains as fast as the client reads. A client whose queue
//! is full is cut: the stream ends with a comment saying why, and
//! `EventSource` reconnects with `Last-Event-ID` and loses nothing. A replay
//! is one block of the queue, however long, so a resuming client is never
//! cut for the size of what it missed.
//!
//! CORS: the dashboard is served by the API listener, another origin, so
//! every answer carries `Access-Control-Allow-Origin: *`. That is safe
//! because identity never comes from ambient credentials: it is the
//! `username` (header mode, behind a trusted gateway) or the `token` in the
//! URL, and a browser does not expose a wildcard-CORS answer to a request
//! sent with cookies.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use actix::prelude::*;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{BufMut, Bytes, BytesMut};
use flowcast_actors::fanout::{CloseSession, Frame, FrameData};
use flowcast_actors::metrics::Metrics;
use flowcast_actors::store;
use flowcast_actors::subscriber::{Leave, Subscriber};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::session::{Admit, Replay, Resume};
use crate::state::{AppState, WsConfig};
use crate::ws::{fanout_of, join, parse_last_event_id, parse_query, SessionEnds};

/// The header `EventSource` resumes with.
const LAST_EVENT_ID: &str = "Last-Event-ID";

/// What the session hands its response body, in order.
#[derive(Debug)]
enum Out {
    /// A live event.
    Event(Frame),
    /// A replay: history, then held live events (one queue slot).
    Replay(Vec<Frame>),
    /// Sets the client's last id without an event.
    Position(String),
    /// A comment line (keep-alive, or why the stream ends).
    Comment(String),
}

/// Writes one event as an SSE block. JSON never holds a raw line break, but
/// a text that did would still arrive whole: each line is its own `data:`
/// and the client joins them with `\n`. An id that could break the framing
/// is left out.
fn event_block(f: &FrameData) -> Bytes {
    let mut b = BytesMut::with_capacity(f.text.len() + f.event_id.len() + 16);
    if !f.event_id.is_empty() && !f.event_id.contains(['\n', '\r', '\0']) {
        b.put_slice(b"id: ");
        b.put_slice(f.event_id.as_bytes());
        b.put_u8(b'\n');
    }
    for line in f.text.split(['\n', '\r']) {
        b.put_slice(b"data: ");
        b.put_slice(line.as_bytes());
        b.put_u8(b'\n');
    }
    b.put_u8(b'\n');
    b.freeze()
}

/// A comment block; line breaks in `text` are flattened.
fn comment_block(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace(['\n', '\r'], " ")))
}

/// The response body: what the session queued, one block per poll, so the
/// server writes no faster than the client reads.
struct Body {
    rx: mpsc::Receiver<Out>,
    replaying: std::vec::IntoIter<Frame>,
}

impl futures_util::Stream for Body {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(f) = self.replaying.next() {
                return Poll::Ready(Some(Ok(event_block(&f.0))));
            }
            let out = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(out)) => out,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let block = match out {
                Out::Event(f) => event_block(&f.0),
                Out::Replay(frames) => {
                    self.replaying = frames.into_iter();
                    continue;
                }
                Out::Position(id) => Bytes::from(format!("id: {id}\n\n")),
                Out::Comment(c) => comment_block(&c),
            };
            return Poll::Ready(Some(Ok(block)));
        }
    }
}

/// The actor of one SSE stream.
pub struct SseSession {
    id: u64,
    user: String,
    subscriber: Addr<Subscriber>,
    cfg: WsConfig,
    metrics: Metrics,
    resume: Resume,
    started: Arc<AtomicBool>,
    /// Where blocks go; `None` once the stream is ending.
    out: Option<mpsc::Sender<Out>>,
    /// Sent first when the stream starts live.
    start_at: Option<String>,
}

impl SseSession {
    /// Queues a block; cuts the client when its queue is full, stops when
    /// it went away.
    fn push(&mut self, out: Out, ctx: &mut Context<Self>) {
        let Some(tx) = &self.out else { return };
        // One slot stays free for the goodbye.
        if tx.capacity() <= 1 {
            self.metrics.slow_consumer_closes.inc();
            self.end(
                "slow consumer: queue full; reconnect with Last-Event-ID".into(),
                ctx,
            );
            return;
        }
        if tx.try_send(out).is_err() {
            // The body was dropped: the client is gone.
            self.out = None;
            ctx.stop();
        }
    }

    /// Ends the stream after what is queued, with a comment saying why.
    fn end(&mut self, why: String, ctx: &mut Context<Self>) {
        if let Some(tx) = self.out.take() {
            let _ = tx.try_send(Out::Comment(format!("closed: {why}")));
        }
        ctx.stop();
    }
}

impl Actor for SseSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.max_queue_msgs);
        self.started.store(true, Ordering::Release);
        self.metrics.sse_sessions.inc();
        if let Some(id) = self.start_at.take() {
            self.push(Out::Position(id), ctx);
        }
        ctx.run_interval(self.cfg.heartbeat_interval, |act, ctx| {
            if act.out.as_ref().is_none_or(|tx| tx.is_closed()) {
                ctx.stop();
                return;
            }
            act.push(Out::Comment("keep-alive".into()), ctx);
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.metrics.sse_sessions.dec();
        self.subscriber.do_send(Leave {
            user: self.user.clone(),
            id: self.id,
        });
    }
}

impl Handler<Frame> for SseSession {
    type Result = ();

    fn handle(&mut self, frame: Frame, ctx: &mut Self::Context) {
        match self.resume.admit(frame) {
            Admit::Send(f) => self.push(Out::Event(f), ctx),
            Admit::Held => {}
            Admit::Overflow => {
                self.metrics.slow_consumer_closes.inc();
                self.end(
                    "slow consumer: too many live events during replay".into(),
                    ctx,
                );
            }
        }
    }
}

impl Handler<Replay> for SseSession {
    type Result = ();

    fn handle(&mut self, r: Replay, ctx: &mut Self::Context) {
        let frames: Vec<Frame> = self.resume.release(r).collect();
        if !frames.is_empty() {
            self.push(Out::Replay(frames), ctx);
        }
    }
}

impl Handler<CloseSession> for SseSession {
    type Result = ();

    fn handle(&mut self, c: CloseSession, ctx: &mut Self::Context) {
        self.end(format!("{} {}", c.code, c.reason), ctx);
    }
}

/// Adds the CORS header every `/events` answer carries (see the module
/// header for why a wildcard is safe here).
fn cors(mut resp: HttpResponse) -> HttpResponse {
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

/// `GET /events`.
pub async fn events(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    match open(&req, &st).await {
        Ok(resp) => cors(resp),
        Err(e) => cors(e.error_response()),
    }
}

/// `OPTIONS /events`: the CORS preflight a browser may send before a
/// request carrying `Last-Event-ID`.
pub async fn preflight() -> HttpResponse {
    cors(
        HttpResponse::NoContent()
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET"))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Last-Event-ID, Cache-Control",
            ))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .finish(),
    )
}

async fn open(req: &HttpRequest, st: &AppState) -> Result<HttpResponse, ApiError> {
    let mut q = parse_query(req.query_string(), &st.auth)?;
    if let Some(h) = req.headers().get(LAST_EVENT_ID) {
        let id = h.to_str().map_err(|_| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not ASCII")
        })?;
        if !id.trim().is_empty() {
            q.last_event_id = Some(parse_last_event_id(id.trim())?);
        }
    }
    let subscriber = fanout_of(st)?;
    // Starting live: stand at the newest event, and take what lands
    // between that read and the join from history, like a resume. With
    // Redis away, start live without a position, as a WebSocket does.
    let start_at = match q.last_event_id {
        Some(_) => None,
        None => match store::history::newest(&mut st.redis.clone(), &q.username).await {
            Ok(newest) => {
                let at = newest.unwrap_or_else(|| "0-0".to_owned());
                q.last_event_id = Some(at.clone());
                Some(at)
            }
            Err(e) => {
                log::debug!("sse: no position for {}: {e}", q.username);
                None
            }
        },
    };
    let id = st.next_session.fetch_add(1, Ordering::Relaxed);
    let started = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(st.ws.max_queue_msgs + 1);
    let addr = SseSession {
        id,
        user: q.username.clone(),
        subscriber: subscriber.clone(),
        cfg: st.ws.clone(),
        metrics: st.metrics.clone(),
        resume: Resume::new(q.last_event_id.is_some(), st.ws.max_queue_msgs),
        started: started.clone(),
        out: Some(tx),
        start_at,
    }
    .start();
    let ends = SessionEnds {
        frames: addr.clone().recipient(),
        close: addr.clone().recipient(),
        replay: addr.clone().recipient(),
        started,
    };
    if let Err(e) = join(st, &subscriber, id, q, ends).await {
        addr.do_send(CloseSession {
            code: 1011,
            reason: "could not join",
        });
        return Err(e);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx and friends: do not buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(Body {
            rx,
            replaying: Vec::new().into_iter(),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytestring::ByteString;

    #[test]
    fn an_event_is_one_block_with_its_id() {
        let f = Frame::parse(ByteString::from_static(
            r#"{"type":"node_completed","run_id":"r","event_id":"5-1"}"#,
        ))
        .unwrap();
        assert_eq!(
            &event_block(&f.0)[..],
            b"id: 5-1\ndata: {\"type\":\"node_completed\",\"run_id\":\"r\",\"event_id\":\"5-1\"}\n\n"
        );
    }

    #[test]
    fn line_breaks_cannot_forge_fields() {
        let f = Frame::parse(ByteString::from_static(
            "{\"type\":\"x\",\n\"event_id\":\"1-0\"}",
        ))
        .unwrap();
        let block = event_block(&f.0);
        assert_eq!(
            &block[..],
            b"id: 1-0\ndata: {\"type\":\"x\",\ndata: \"event_id\":\"1-0\"}\n\n"
        );
        let f = Frame::parse(ByteString::from_static(
            r#"{"type":"x","event_id":"1-0\ndata: forged"}"#,
        ))
        .unwrap();
        assert!(
            !event_block(&f.0).starts_with(b"id:"),
            "a bad id is left out"
        );
        assert_eq!(&comment_block("a\nb")[..], b": a b\n\n");
    }
}
