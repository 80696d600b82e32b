//! A real SSE client on the daemon's fan-out listener: an HTTP/1.1 GET
//! through awc whose streamed body is parsed as the browser's
//! `EventSource` does (blocks split on a blank line; `id:`, `data:` and
//! comment lines). A test that must look like a client that stopped
//! reading simply stops polling it.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::{Daemon, T};

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// An open event stream.
pub struct Sse {
    body: Body,
    buf: Vec<u8>,
    /// Response headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Every byte received so far, for checks on the wire format.
    pub raw: Vec<u8>,
}

/// What the stream gave next.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// A block with data: the event and its `id:` (if any).
    Event { id: Option<String>, data: Value },
    /// A block with an `id:` and no data: sets the client's position only.
    Position(String),
    /// A comment line (`: text`).
    Comment(String),
    /// The server ended the stream.
    Ended,
    /// Nothing within the timeout.
    Timeout,
}

/// The answer to a stream request that was refused.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

/// Opens `{fan-out}{path_and_query}` with extra headers: the stream, or the
/// refusal (status, JSON body, headers).
pub async fn sse_open(
    d: &Daemon,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Sse, Refused> {
    let url = format!("{}{path_and_query}", d.ws.replace("ws://", "http://"));
    let client = awc::Client::builder().disable_timeout().finish();
    let mut req = client
        .get(&url)
        .insert_header(("Accept", "text/event-stream"));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = actix_rt::time::timeout(T, req.send())
        .await
        .unwrap_or_else(|_| panic!("no answer from {url}"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let hdrs = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    if resp.status().as_u16() != 200 {
        let bytes = resp.body().await.unwrap_or_default();
        return Err(Refused {
            status: resp.status().as_u16(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers: hdrs,
        });
    }
    Ok(Sse {
        body: Box::pin(resp),
        buf: Vec::new(),
        headers: hdrs,
        raw: Vec::new(),
    })
}

/// Opens a stream that must be accepted.
pub async fn sse_connect(d: &Daemon, path_and_query: &str, headers: &[(&str, &str)]) -> Sse {
    match sse_open(d, path_and_query, headers).await {
        Ok(s) => s,
        Err(r) => panic!("{path_and_query}: refused {} {}", r.status, r.body),
    }
}

impl Sse {
    /// A response header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses one complete block out of the buffer, if there is one.
    fn block(&mut self) -> Option<SseItem> {
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buf.drain(..end + 2).collect();
        let text = String::from_utf8(block).expect("SSE is UTF-8");
        let (mut id, mut data, mut comment) = (None, Vec::new(), None);
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(c) = line.strip_prefix(':') {
                comment = Some(c.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_owned());
            } else {
                panic!("unexpected SSE line {line:?} in {text:?}");
            }
        }
        Some(match (id, data.is_empty(), comment) {
            (id, false, _) => SseItem::Event {
                id,
                data: serde_json::from_str(&data.join("\n")).expect("data is JSON"),
            },
            (Some(id), true, _) => SseItem::Position(id),
            (None, true, Some(c)) => SseItem::Comment(c),
            (None, true, None) => panic!("empty SSE block"),
        })
    }

    /// The next item, or a timeout.
    pub async fn next(&mut self, timeout: Duration) -> SseItem {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.block() {
                return item;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match actix_rt::time::timeout(left, self.body.next()).await {
                Err(_) => return SseItem::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return SseItem::Ended,
                Ok(Some(Ok(b))) => {
                    self.raw.extend_from_slice(&b);
                    self.buf.extend_from_slice(&b);
                }
            }
        }
    }

    /// The next `n` events with their ids (comments and positions skipped);
    /// panics on an end or a timeout first.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<(String, Value)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                SseItem::Event { id, data } => {
                    out.push((id.expect("every event has an id:"), data))
                }
                SseItem::Comment(_) | SseItem::Position(_) => {}
                other => panic!(
                    "expected {n} events, got {} then {other:?}: {out:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// The position a stream opened without one starts at (its first block).
    pub async fn position(&mut self) -> String {
        match self.next(T).await {
            SseItem::Position(id) => id,
            other => panic!("expected a position first, got {other:?}"),
        }
    }
}
