//! `GET /events`: Server-Sent Events, for browsers (`EventSource`) and for
//! proxies that break WebSockets.
//!
//! The query is `/ws`'s (`username` or, in jwt mode, `token`; `types`,
//! `run_id`, `last_event_id`), checked by the same code
//! (`ws::parse_query`, whose user is `auth::stream_user`'s) before the
//! stream starts, and so is the resume position against the user's history
//! (`resume::open_replay`): a bad request is an HTTP 4xx with a JSON error,
//! as on `/ws` (a `last_event_id` later than any event is a 400, Redis
//! unreachable while checking it a 503). The `Last-Event-ID` header, which
//! `EventSource` sends when it reconnects by itself, takes precedence over
//! `last_event_id`: it is the newer position.
//!
//! One [`SseSession`] actor per stream joins the user's Fanout exactly as a
//! WebSocket session does (`ws::fanout_of`, `ws::join`), with the same
//! filter, and resumes with the same paged replay
//! ([`ReplayCursor`], see `flowcast_actors::replay`) and the same seam
//! between history and live (`session::admit_live`). Each event is one
//! block `id: <event_id>\ndata: <the event JSON>\n\n` (no `event:` field,
//! so `onmessage` sees every event); a stream opened without a position
//! starts with `id: <end of history>` and no data, which sets the browser's
//! last id without firing an event, and replays from there what lands
//! before the join, so that even a reconnect before the first event resumes
//! without a gap (while Redis is unreachable it starts live without a
//! position, as a WebSocket does). Keep-alive comments (`: keep-alive`) go
//! out every heartbeat interval and reveal a peer that went away.
//!
//! The replay goes at the pace the client reads: a page is one block of
//! the queue, and the session reads the next page only once the response
//! body has handed out the last event of the previous one (which it does
//! only as the connection drains), so a slow resuming client holds about a
//! page, whatever the history's length, and is never cut for the size of
//! what it missed. Live events that arrive meanwhile are held by the
//! cursor's bounded window.
//!
//! The bound is the WebSocket one: the actor writes into a channel of
//! `--max-queue-msgs` blocks (plus one kept for the goodbye), which the
//! response body drains as fast as the client reads. A client whose queue
//! is full is cut: the stream ends with a comment saying why, and
//! `EventSource` reconnects with `Last-Event-ID` and loses nothing.
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
use flowcast_actors::fanout::{CloseSession, Frame, FrameData, SessionHandle};
use flowcast_actors::metrics::Metrics;
use flowcast_actors::replay::ReplayCursor;
use flowcast_actors::subscriber::{Leave, Subscriber};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::resume::{open_at_end, open_replay, parse_last_event_id};
use crate::session::{admit_live, StartReplay};
use crate::state::{AppState, WsConfig};
use crate::ws::{fanout_of, join, parse_query};

/// The header `EventSource` resumes with.
const LAST_EVENT_ID: &str = "Last-Event-ID";

/// What the session hands its response body, in order.
#[derive(Debug)]
enum Out {
    /// A live event.
    Event(Frame),
    /// A page of the replay (one queue slot). `taken`, when set, fires once
    /// the body has handed out the page's last event: the session reads the
    /// next page only then.
    Page {
        frames: Vec<Frame>,
        taken: Option<oneshot::Sender<()>>,
    },
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
    /// The rest of the replay page being written.
    page: std::vec::IntoIter<Frame>,
    /// Fired once `page` is handed out.
    taken: Option<oneshot::Sender<()>>,
}

impl futures_util::Stream for Body {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(f) = self.page.next() {
                if self.page.len() == 0 {
                    self.page_taken();
                }
                return Poll::Ready(Some(Ok(event_block(&f.0))));
            }
            self.page_taken();
            let out = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(out)) => out,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let block = match out {
                Out::Event(f) => event_block(&f.0),
                Out::Page { frames, taken } => {
                    self.page = frames.into_iter();
                    self.taken = taken;
                    continue;
                }
                Out::Position(id) => Bytes::from(format!("id: {id}\n\n")),
                Out::Comment(c) => comment_block(&c),
            };
            return Poll::Ready(Some(Ok(block)));
        }
    }
}

impl Body {
    /// Tells the session that the page was handed out.
    fn page_taken(&mut self) {
        if let Some(t) = self.taken.take() {
            // The session may have ended meanwhile: nothing to tell then.
            let _ = t.send(());
        }
    }
}

/// The actor of one SSE stream.
pub struct SseSession {
    id: u64,
    user: String,
    subscriber: Addr<Subscriber>,
    /// Where history is read from.
    redis: ConnectionManager,
    cfg: WsConfig,
    metrics: Metrics,
    /// The replay, as in `WsSession`: kept once done until the first live
    /// frame newer than it.
    replay: Option<ReplayCursor>,
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

    /// Reads the replay's next page and queues it; the page after it is read
    /// once the body has handed this one out (the client's pace).
    fn read_page(&mut self, ctx: &mut Context<Self>) {
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
                let frames = match page {
                    Ok(page) => cursor.apply(page),
                    Err(e) => {
                        log::warn!("sse {}: replay for {} failed: {e}", act.id, act.user);
                        act.end("1011 history unavailable; retry".into(), ctx);
                        return;
                    }
                };
                if cursor.is_done() {
                    if !frames.is_empty() {
                        act.push(
                            Out::Page {
                                frames,
                                taken: None,
                            },
                            ctx,
                        );
                    }
                } else if frames.is_empty() {
                    // Nothing passed the filter: read on at once.
                    act.read_page(ctx);
                } else {
                    let (taken, on_taken) = oneshot::channel();
                    act.push(
                        Out::Page {
                            frames,
                            taken: Some(taken),
                        },
                        ctx,
                    );
                    on_taken
                        .into_actor(act)
                        .map(|taken, act, ctx| match taken {
                            Ok(()) => act.read_page(ctx),
                            // The body is gone: so is the client.
                            Err(_) => ctx.stop(),
                        })
                        .spawn(ctx);
                }
            })
            .spawn(ctx);
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
        if let Some(frame) = admit_live(&mut self.replay, frame) {
            self.push(Out::Event(frame), ctx);
        }
    }
}

impl Handler<StartReplay> for SseSession {
    type Result = ();

    fn handle(&mut self, _: StartReplay, ctx: &mut Self::Context) {
        self.read_page(ctx);
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
    let mut q = parse_query(req.query_string(), req.headers(), &st.auth)?;
    if let Some(h) = req.headers().get(LAST_EVENT_ID) {
        let id = h.to_str().map_err(|_| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not ASCII")
        })?;
        if !id.trim().is_empty() {
            q.last_event_id = Some(parse_last_event_id(id.trim())?);
        }
    }
    let subscriber = fanout_of(st)?;
    let (replay, start_at) = match q.last_event_id {
        Some(after) => (
            Some(open_replay(st, &q.username, after, q.filter.clone()).await?),
            None,
        ),
        // Starting live: stand at the end of the history, and replay what
        // lands between that read and the join. With Redis away, start live
        // without a position, as a WebSocket does.
        None => match open_at_end(st, &q.username, q.filter.clone()).await {
            Ok(cursor) => {
                let at = cursor.position().to_string();
                (Some(cursor), Some(at))
            }
            Err(e) => {
                log::debug!("sse: no position for {}: {e}", q.username);
                (None, None)
            }
        },
    };
    let replaying = replay.is_some();
    let id = st.next_session.fetch_add(1, Ordering::Relaxed);
    let started = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(st.ws.max_queue_msgs + 1);
    let addr = SseSession {
        id,
        user: q.username.clone(),
        subscriber: subscriber.clone(),
        redis: st.redis.clone(),
        cfg: st.ws.clone(),
        metrics: st.metrics.clone(),
        replay,
        started: started.clone(),
        out: Some(tx),
        start_at,
    }
    .start();
    let handle = SessionHandle {
        id,
        frames: addr.clone().recipient(),
        close: addr.clone().recipient(),
        filter: q.filter,
        started,
    };
    if let Err(e) = join(&subscriber, &q.username, handle).await {
        addr.do_send(CloseSession {
            code: 1011,
            reason: "could not join",
        });
        return Err(e);
    }
    if replaying {
        // Joined: live events are held from here on, so history is read
        // only now (no gap).
        addr.do_send(StartReplay);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx and friends: do not buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(Body {
            rx,
            page: Vec::new().into_iter(),
            taken: None,
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

    fn frame(ms: u64) -> Frame {
        Frame::parse(ByteString::from(format!(
            r#"{{"type":"node_completed","run_id":"r","event_id":"{ms}-0"}}"#
        )))
        .unwrap()
    }

    #[test]
    fn a_page_is_taken_only_once_the_body_handed_out_its_last_event() {
        use futures_util::{FutureExt, StreamExt};
        let (tx, rx) = mpsc::channel(4);
        let mut body = Body {
            rx,
            page: Vec::new().into_iter(),
            taken: None,
        };
        let (taken, mut on_taken) = oneshot::channel();
        tx.try_send(Out::Page {
            frames: vec![frame(1), frame(2), frame(3)],
            taken: Some(taken),
        })
        .unwrap();
        tx.try_send(Out::Event(frame(4))).unwrap();
        let mut next = || match body.next().now_or_never() {
            Some(Some(Ok(b))) => b,
            other => panic!("expected a block, got {other:?}"),
        };
        assert!(next().starts_with(b"id: 1-0\n"));
        assert!(next().starts_with(b"id: 2-0\n"));
        assert!(
            on_taken.try_recv().is_err(),
            "the next page is read only once this one is handed out"
        );
        assert!(next().starts_with(b"id: 3-0\n"));
        assert!(on_taken.try_recv().is_ok(), "the page was taken");
        assert!(next().starts_with(b"id: 4-0\n"), "then live events");
        assert!(body.next().now_or_never().is_none(), "nothing more yet");
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
