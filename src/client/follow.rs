//! Live events over the daemon's WebSocket (`/ws`), resumed across drops.
//!
//! A [`Follower`] remembers the `event_id` of the last event it handed out;
//! when the connection drops (a daemon restart closes with 1001, a slow
//! reader is closed with 4008, the network breaks), it reconnects with
//! `last_event_id` after a backoff, and the server replays what was missed
//! before going live again: no gap, no duplicate. The caller sees each
//! event once, plus [`Step`]s saying when the connection came and went, so
//! that it can tell a person.
//!
//! The first connection must succeed (an unreachable daemon is an error at
//! once, naming the URL); later ones are retried until
//! [`RECONNECT_GIVE_UP`] has passed without one succeeding. An HTTP error
//! answer to the upgrade (bad filter, bad token, too many sessions) is the
//! server's refusal and is not retried, except a 503 (the daemon drains).

use std::time::{Duration, Instant};

use flowcast_actors::backoff::Backoff;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message};

use super::api::Identity;
use super::error::{Error, Listener, Result};

/// How long a WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest wait between reconnects.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Failing reconnects are given up after this long.
pub const RECONNECT_GIVE_UP: Duration = Duration::from_secs(120);
/// Silence after which [`Step::Quiet`] lets the caller look elsewhere.
const QUIET_AFTER: Duration = Duration::from_secs(15);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What happened next on a followed stream.
#[derive(Debug)]
pub enum Step {
    /// An event (or a server notice such as `replay_gap`), as sent.
    Event(Value),
    /// A connection is up; `resumed` when it replaced a lost one.
    Connected { resumed: bool },
    /// The connection was lost; the next attempt is in `retry_in`.
    Lost { reason: String, retry_in: Duration },
    /// Nothing arrived for a while (the connection is still up).
    Quiet,
}

/// Server-side filters of a followed stream.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Event types (`types=`), all when empty.
    pub types: Vec<String>,
    /// One run's events (`run_id=`).
    pub run_id: Option<String>,
}

/// A resumable WebSocket event stream.
pub struct Follower {
    /// The listener's URL as given (for messages).
    base: String,
    /// `/ws?...` URL without `last_event_id`.
    url: url::Url,
    last_event_id: Option<String>,
    ws: Option<Ws>,
    backoff: Backoff,
    /// Wait before the next connect.
    delay: Option<Duration>,
    connected_once: bool,
    failing_since: Option<Instant>,
}

impl Follower {
    /// A follower of the caller's events on the listener at `base`
    /// (`ws://host:port`, `/ws` appended unless there).
    pub fn new(base: &str, id: &Identity, filter: &Filter) -> Result<Self> {
        let bad = |why: &str| Error::usage(format!("--ws {base:?}: {why}"));
        if base.starts_with("wss://") {
            return Err(bad(
                "wss is not supported; reach the daemon over ws:// (it speaks no TLS)",
            ));
        }
        if !base.starts_with("ws://") {
            return Err(bad("expected a ws:// URL, such as ws://127.0.0.1:8084"));
        }
        let mut url = url::Url::parse(base).map_err(|e| bad(&e.to_string()))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("the WebSocket URL takes no query or fragment"));
        }
        if !url.path().trim_end_matches('/').ends_with("/ws") {
            let path = format!("{}/ws", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        {
            let mut q = url.query_pairs_mut();
            match id {
                Identity::User(u) => q.append_pair("username", u),
                Identity::Token(t) => q.append_pair("token", t),
            };
            if !filter.types.is_empty() {
                q.append_pair("types", &filter.types.join(","));
            }
            if let Some(r) = &filter.run_id {
                q.append_pair("run_id", r);
            }
        }
        Ok(Self {
            base: base.to_owned(),
            url,
            last_event_id: None,
            ws: None,
            backoff: Backoff::new(RECONNECT_MIN, RECONNECT_MAX),
            delay: None,
            connected_once: false,
            failing_since: None,
        })
    }

    /// Follows only this run (its id known once it was started).
    pub fn only_run(&mut self, run_id: &str) {
        self.url.query_pairs_mut().append_pair("run_id", run_id);
    }

    /// Starts (or resumes) after this event id: the server replays what
    /// came after it first.
    pub fn resume_after(&mut self, event_id: String) {
        self.last_event_id = Some(event_id);
    }

    /// The id of the last event handed out, if any.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The next step; reconnects by itself.
    pub async fn next(&mut self) -> Result<Step> {
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return self.connect().await;
            };
            let frame = match tokio::time::timeout(QUIET_AFTER, ws.next()).await {
                Err(_) => return Ok(Step::Quiet),
                Ok(f) => f,
            };
            let reason = match frame {
                Some(Ok(Message::Text(t))) => {
                    let Ok(ev) = serde_json::from_str::<Value>(&t) else {
                        continue;
                    };
                    if let Some(id) = ev.get("event_id").and_then(Value::as_str) {
                        self.last_event_id = Some(id.to_owned());
                        self.backoff.reset();
                    }
                    return Ok(Step::Event(ev));
                }
                Some(Ok(Message::Close(c))) => match c {
                    Some(c) => format!(
                        "closed by the server ({} {})",
                        u16::from(c.code),
                        super::output::clean(&c.reason)
                    ),
                    None => "closed by the server".to_owned(),
                },
                Some(Ok(_)) => continue,
                Some(Err(e)) => e.to_string(),
                None => "connection closed".to_owned(),
            };
            self.ws = None;
            let retry_in = self.backoff.next_delay();
            self.delay = Some(retry_in);
            self.failing_since.get_or_insert_with(Instant::now);
            return Ok(Step::Lost { reason, retry_in });
        }
    }

    async fn connect(&mut self) -> Result<Step> {
        if let Some(d) = self.delay.take() {
            tokio::time::sleep(d).await;
        }
        let mut url = self.url.clone();
        if let Some(id) = &self.last_event_id {
            url.query_pairs_mut().append_pair("last_event_id", id);
        }
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let reason = match attempt {
            Ok(Ok((ws, _))) => {
                self.ws = Some(ws);
                self.failing_since = None;
                let resumed = self.connected_once;
                self.connected_once = true;
                return Ok(Step::Connected { resumed });
            }
            Ok(Err(tungstenite::Error::Http(resp))) if resp.status().as_u16() != 503 => {
                return Err(refusal(&resp));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        let unreachable = || Error::Unreachable {
            listener: Listener::Ws,
            url: self.base.clone(),
            detail: reason.clone(),
        };
        if !self.connected_once {
            return Err(unreachable());
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_GIVE_UP {
            return Err(unreachable());
        }
        let retry_in = self.backoff.next_delay();
        self.delay = Some(retry_in);
        Ok(Step::Lost { reason, retry_in })
    }
}

/// The server's JSON error answer to an upgrade request.
fn refusal(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> Error {
    let status = resp.status().as_u16();
    let body: Option<Value> = resp
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok());
    let text = |k: &str| {
        body.as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(|s| super::output::clean(s).into_owned())
    };
    Error::Api {
        status,
        code: text("code").unwrap_or_else(|| format!("http_{status}")),
        message: text("message").unwrap_or_else(|| "the WebSocket upgrade was refused".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str, filter: &Filter) -> Result<String> {
        Follower::new(base, &Identity::User("bob@example.com".into()), filter)
            .map(|f| f.url.to_string())
    }

    #[test]
    fn builds_the_ws_url_with_filters() {
        let f = Filter {
            types: vec!["node_completed".into(), "workflow_completed".into()],
            run_id: Some("r1".into()),
        };
        assert_eq!(
            url("ws://127.0.0.1:8084", &f).unwrap(),
            "ws://127.0.0.1:8084/ws?username=bob%40example.com\
             &types=node_completed%2Cworkflow_completed&run_id=r1"
        );
        let plain = Filter::default();
        assert_eq!(
            url("ws://h:1/ws", &plain).unwrap(),
            "ws://h:1/ws?username=bob%40example.com"
        );
        assert_eq!(
            url("ws://h:1/prefix/", &plain).unwrap(),
            "ws://h:1/prefix/ws?username=bob%40example.com"
        );
        assert!(url("wss://h", &plain).is_err());
        assert!(url("http://h", &plain).is_err());
        assert!(url("ws://h/?x=1", &plain).is_err());
    }

    #[test]
    fn tokens_go_in_the_query() {
        let f = Follower::new(
            "ws://h:1",
            &Identity::Token("a.b.c".into()),
            &Filter::default(),
        )
        .unwrap();
        assert_eq!(f.url.as_str(), "ws://h:1/ws?token=a.b.c");
    }
}
