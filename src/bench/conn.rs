//! Opening bench connections — WebSockets, and for the fan-out bench SSE
//! streams too ([`Feed`]) — each from a chosen loopback source address
//! (bound before connect, so that every address brings its own ephemeral
//! port range), with TCP_NODELAY and small buffers, within a timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::sse::SseStream;
use super::template::loopback_target;

/// An open bench connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Read buffer per connection: events are small, and 20,000 connections
/// with tungstenite's 128 KiB default would cost the client gigabytes.
const READ_BUFFER: usize = 4096;

/// Opens a TCP connection to `url`'s loopback address from `source` (any
/// port), with TCP_NODELAY.
async fn tcp(url: &str, source: Option<Ipv4Addr>) -> anyhow::Result<TcpStream> {
    let target = loopback_target(url)?;
    let sock = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let (Some(ip), SocketAddr::V4(_)) = (source, target) {
        sock.bind(SocketAddr::from((ip, 0)))
            .with_context(|| format!("cannot bind source address {ip}"))?;
    }
    let tcp = sock.connect(target).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Connects to `url` (a `ws://` URL on a loopback address) from `source`
/// (any port), and completes the WebSocket handshake.
pub async fn connect(url: &str, source: Option<Ipv4Addr>, timeout: Duration) -> anyhow::Result<Ws> {
    let attempt = async {
        let tcp = tcp(url, source).await?;
        let cfg = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        let (ws, resp) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg)).await?;
        log::trace!("connected {url}: {}", resp.status());
        Ok::<_, anyhow::Error>(ws)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .with_context(|| format!("no handshake within {timeout:?}"))?
}

/// A subscription of the fan-out bench: a WebSocket (`ws://` URL) or a
/// Server-Sent Events stream (`http://` URL), so both transports of one
/// server are measured on the same scenario.
pub enum Feed {
    /// A WebSocket.
    Ws(Box<Ws>),
    /// An SSE stream.
    Sse(SseStream),
}

/// What a subscription received next.
pub enum Received {
    /// One message (a WebSocket text frame, an SSE event's data).
    Text(Bytes),
    /// A frame that is not text.
    Garbled,
    /// The connection ended, and why.
    End(String),
}

/// Subscribes at `url` from `source` within `timeout`, by the URL's scheme.
pub async fn subscribe(
    url: &str,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> anyhow::Result<Feed> {
    if url.starts_with("http://") {
        let attempt = async { SseStream::open(url, tcp(url, source).await?).await };
        return tokio::time::timeout(timeout, attempt)
            .await
            .with_context(|| format!("no answer within {timeout:?}"))?
            .map(Feed::Sse);
    }
    Ok(Feed::Ws(Box::new(connect(url, source, timeout).await?)))
}

impl Feed {
    /// The next message (pings, keep-alives and positions skipped).
    pub async fn recv(&mut self) -> Received {
        match self {
            Self::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Received::Text(Bytes::from(t)),
                    Some(Ok(Message::Binary(b))) => {
                        return match std::str::from_utf8(&b) {
                            Ok(_) => Received::Text(b),
                            Err(_) => Received::Garbled,
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        return Received::End(
                            c.map_or("close".to_owned(), |c| format!("close {}", c.code)),
                        )
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Received::End(error_kind(&e.into())),
                    None => return Received::End("eof".to_owned()),
                }
            },
            Self::Sse(s) => match s.next().await {
                Ok(Some(data)) => Received::Text(data),
                Ok(None) => Received::End("sse end".to_owned()),
                Err(e) => Received::End(error_kind(&e)),
            },
        }
    }
}

/// A short, stable description of a connect error, for grouping failures:
/// the text before any parenthesised detail (`Connection refused`, `HTTP
/// error: 503 Service Unavailable`), at most 80 characters.
pub fn error_kind(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let cut = text.find('(').unwrap_or(text.len());
    let short = text[..cut].trim_end_matches([' ', ':']);
    let short = if short.is_empty() { &text[..] } else { short };
    short.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_errors_by_their_text() {
        let e = anyhow::anyhow!("Connection refused (os error 111)");
        assert_eq!(error_kind(&e), "Connection refused");
        let e = anyhow::anyhow!("HTTP error: 503 Service Unavailable");
        assert_eq!(error_kind(&e), "HTTP error: 503 Service Unavailable");
        let e = anyhow::anyhow!("(odd)");
        assert_eq!(error_kind(&e), "(odd)");
    }

    #[tokio::test]
    async fn refuses_remote_targets_and_reports_refusals() {
        let remote = connect("ws://192.0.2.1:80/", None, Duration::from_secs(1)).await;
        assert!(remote.is_err());
        // A port nobody listens on (bound then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ws://127.0.0.1:{port}/ws");
        let r = connect(
            &url,
            Some(Ipv4Addr::new(127, 0, 0, 2)),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.is_err());
    }
}
