//! A bench SSE client: one HTTP/1.1 GET (hyper, so chunked bodies are
//! decoded) on a connection opened by [`conn`](super::conn), whose body is
//! cut into events the way `EventSource` does: blocks end at a blank line,
//! `data:` lines are joined with `\n`, comments (keep-alives) and blocks
//! without data (positions) are skipped.

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::split_url;

/// An open event stream.
pub struct SseStream {
    body: Incoming,
    buf: BytesMut,
}

/// The data of the first complete block in `buf` that has any, removing
/// the blocks it reads; `None` until such a block is complete.
fn next_event(buf: &mut BytesMut) -> Option<Bytes> {
    loop {
        let end = buf.windows(2).position(|w| w == b"\n\n")?;
        let block = buf.split_to(end + 2).freeze();
        let mut data: Option<BytesMut> = None;
        for line in block.split(|&b| b == b'\n') {
            let Some(v) = line.strip_prefix(b"data:") else {
                continue;
            };
            let v = v.strip_prefix(b" ").unwrap_or(v);
            match &mut data {
                None => data = Some(BytesMut::from(v)),
                Some(d) => {
                    d.extend_from_slice(b"\n");
                    d.extend_from_slice(v);
                }
            }
        }
        if let Some(d) = data {
            return Some(d.freeze());
        }
    }
}

impl SseStream {
    /// Sends the GET for `url` on `tcp` and checks the answer is a stream.
    pub async fn open(url: &str, tcp: TcpStream) -> anyhow::Result<Self> {
        let (host, path) = split_url(url)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(path)
            .header("host", host)
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            bail!("HTTP error: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(Self {
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }

    /// The next event's data; `None` when the server ended the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            if let Some(d) = next_event(&mut self.buf) {
                return Ok(Some(d));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(f) => {
                    let f = f.context("reading the stream")?;
                    if let Ok(mut data) = f.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_events_like_event_source() {
        let mut b = BytesMut::from(
            &b"id: 1-0\n\n: keep-alive\n\nid: 2-0\ndata: {\"a\":1}\n\ndata: x\ndata:y\n\ndata: part"[..],
        );
        assert_eq!(next_event(&mut b).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(next_event(&mut b).as_deref(), Some(&b"x\ny"[..]));
        assert_eq!(next_event(&mut b), None);
        b.extend_from_slice(b"ial\n\n");
        assert_eq!(next_event(&mut b).as_deref(), Some(&b"partial"[..]));
    }
}
