//! A real WebSocket client (tokio-tungstenite) on the daemon's WS listener:
//! connect, read the next event or the close, take N events, send a frame.
//! Pings are answered by tungstenite whenever the socket is polled; a test
//! that must look like a dead peer simply stops polling it.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{Daemon, T};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a WebSocket client to `{d.ws}{path_and_query}`.
pub async fn ws_connect(d: &Daemon, path_and_query: &str) -> Ws {
    let url = format!("{}{path_and_query}", d.ws);
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// Connects a WebSocket client with extra request headers (e.g. the
/// `X-User-ID` a gateway sets); the handshake's error if it is refused.
pub async fn ws_connect_with(
    d: &Daemon,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut req = format!("{}{path_and_query}", d.ws)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// What a WebSocket client saw next.
#[derive(Debug)]
pub enum WsEvent {
    Event(Value),
    Closed(Option<(u16, String)>),
    Timeout,
}

/// The next event (skipping pings), a close, or a timeout.
pub async fn ws_next(ws: &mut Ws, timeout: Duration) -> WsEvent {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match actix_rt::time::timeout(left, ws.next()).await {
            Err(_) => return WsEvent::Timeout,
            Ok(None) => return WsEvent::Closed(None),
            Ok(Some(Err(_))) => return WsEvent::Closed(None),
            Ok(Some(Ok(Message::Text(t)))) => {
                return WsEvent::Event(serde_json::from_str(&t).unwrap())
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                return WsEvent::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string())))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Collects `n` events or panics after the timeout.
pub async fn ws_take(ws: &mut Ws, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        match ws_next(ws, deadline.saturating_duration_since(Instant::now())).await {
            WsEvent::Event(v) => out.push(v),
            other => panic!(
                "expected {n} events, got {} then {other:?}: {out:?}",
                out.len()
            ),
        }
    }
    out
}

/// Sends a client frame.
pub async fn ws_send(ws: &mut Ws, m: Message) {
    ws.send(m).await.unwrap();
}

/// Expects a close frame with `code` (events before it are skipped).
pub async fn assert_closed_with(ws: &mut Ws, code: u16) {
    loop {
        match ws_next(ws, T).await {
            WsEvent::Event(_) => continue,
            WsEvent::Closed(Some((c, reason))) => {
                assert_eq!(c, code, "close reason {reason:?}");
                return;
            }
            other => panic!("expected a close with {code}, got {other:?}"),
        }
    }
}
