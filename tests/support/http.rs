//! HTTP as a client sees it: requests through awc with parsed JSON answers,
//! the REST helpers every test uses (register a workflow, start a run, wait
//! for it, read its events), readiness, and hand-written requests on a raw
//! TCP socket for what a well-behaved client library would never send; and
//! [`local_server`], a small server for `http` nodes to call.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Daemon, T};

/// An HTTP response: status and parsed JSON body (Null if not JSON).
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub location: Option<String>,
    pub headers: awc::http::header::HeaderMap,
}

impl Resp {
    /// A response header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request with an optional user and raw body.
pub async fn request(method: &str, url: &str, user: Option<&str>, body: Option<&str>) -> Resp {
    let headers: Vec<(&str, &[u8])> = user
        .map(|u| ("X-User-ID", u.as_bytes()))
        .into_iter()
        .collect();
    request_with_headers(method, url, &headers, body).await
}

/// Sends a request with raw header values (each appended, so a name may
/// repeat) and an optional JSON body.
pub async fn request_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: Option<&str>,
) -> Resp {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut req = client.request(
        awc::http::Method::from_bytes(method.as_bytes()).unwrap(),
        url,
    );
    for (name, value) in headers {
        req = req.append_header((
            *name,
            awc::http::header::HeaderValue::from_bytes(value).unwrap(),
        ));
    }
    let mut resp = match body {
        Some(b) => req
            .insert_header(("Content-Type", "application/json"))
            .send_body(b.to_owned())
            .await
            .unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = resp.body().limit(64 * 1024 * 1024).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Resp {
        status: resp.status().as_u16(),
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        location: resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned()),
        headers: resp.headers().clone(),
        text,
    }
}

pub async fn get(url: &str, user: Option<&str>) -> Resp {
    request("GET", url, user, None).await
}

pub async fn post(url: &str, user: Option<&str>, body: &Value) -> Resp {
    request("POST", url, user, Some(&body.to_string())).await
}

pub async fn put(url: &str, user: Option<&str>, body: &Value) -> Resp {
    request("PUT", url, user, Some(&body.to_string())).await
}

// ---------------------------------------------------------------------------
// Workflows and runs
// ---------------------------------------------------------------------------

/// Registers a workflow as `user`'s own (only they can run it); panics
/// unless 200/201.
pub async fn register(d: &Daemon, user: &str, wf: &Value) {
    let tag = wf["tag"].as_str().unwrap();
    let r = put(&format!("{}/api/v1/workflows/{tag}", d.api), Some(user), wf).await;
    assert!(
        r.status == 200 || r.status == 201,
        "register {tag}: {} {}",
        r.status,
        r.text
    );
}

/// Starts a run; returns its id.
pub async fn start_run(d: &Daemon, user: &str, tag: &str, inputs: Value) -> String {
    let r = post(
        &format!("{}/api/v1/runs", d.api),
        Some(user),
        &serde_json::json!({"tag": tag, "inputs": inputs}),
    )
    .await;
    assert_eq!(r.status, 202, "start run: {}", r.text);
    r.body["run_id"].as_str().unwrap().to_owned()
}

/// Whether a run status is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Polls a run until its status is terminal; returns the run view.
pub async fn wait_run(d: &Daemon, user: &str, run_id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(&format!("{}/api/v1/runs/{run_id}", d.api), Some(user)).await;
        if r.status == 200 && is_terminal(r.body["status"].as_str().unwrap_or("")) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} did not finish: {}",
            r.text
        );
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A run's stored events.
pub async fn run_events(d: &Daemon, user: &str, run_id: &str) -> Vec<Value> {
    let r = get(
        &format!("{}/api/v1/runs/{run_id}/events", d.api),
        Some(user),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["events"].as_array().unwrap().clone()
}

/// Waits until the daemon answers `/readyz` with 200: Redis reachable, the
/// runner reading, and the Subscriber subscribed to every live channel.
pub async fn wait_ready(d: &Daemon) {
    wait_ready_within(d, Duration::from_secs(20)).await;
}

/// [`wait_ready`] with another deadline (a daemon waiting for Redis to
/// come back may take longer).
pub async fn wait_ready_within(d: &Daemon, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(&format!("{}/readyz", d.http_base()), None).await;
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "daemon not ready: {}", r.text);
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// A server for http nodes
// ---------------------------------------------------------------------------

/// A local HTTP server on 127.0.0.1 whose app `routes` configures, for
/// `http` nodes to call (the daemon needs `--http-allow 127.0.0.1/32`).
/// Returns its base URL and the handle that stops it.
pub fn local_server(
    routes: impl Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
) -> (String, actix_web::dev::ServerHandle) {
    let srv = actix_web::HttpServer::new(move || actix_web::App::new().configure(routes.clone()))
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = srv.addrs()[0];
    let srv = srv.run();
    let handle = srv.handle();
    actix_rt::spawn(srv);
    (format!("http://{addr}"), handle)
}

// ---------------------------------------------------------------------------
// Raw requests on the WebSocket listener
// ---------------------------------------------------------------------------

/// Sends a WebSocket upgrade request (or a plain GET) by hand and returns the
/// status and the JSON body of an error answer.
pub async fn raw_ws_request(d: &Daemon, path_and_query: &str, upgrade: bool) -> (u16, Value) {
    raw_ws_request_with(d, path_and_query, upgrade, &[]).await
}

/// [`raw_ws_request`] with extra request headers (`name: value` lines).
pub async fn raw_ws_request_with(
    d: &Daemon,
    path_and_query: &str,
    upgrade: bool,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let (status, mut tcp, head, mut body) =
        raw_request_with(d, path_and_query, upgrade, headers).await;
    if status == 101 {
        return (status, Value::Null);
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while body.len() < len {
        body.extend_from_slice(&read_some(&mut tcp, "body").await);
    }
    let body = serde_json::from_slice(&body[..len])
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, body)
}

/// Sends a GET (an upgrade request if `upgrade`) by hand to the WebSocket
/// listener; returns the status, the still open socket, the response head
/// and whatever bytes followed it.
pub async fn raw_request(
    d: &Daemon,
    path_and_query: &str,
    upgrade: bool,
) -> (u16, tokio::net::TcpStream, String, Vec<u8>) {
    raw_request_with(d, path_and_query, upgrade, &[]).await
}

/// [`raw_request`] with extra request headers.
pub async fn raw_request_with(
    d: &Daemon,
    path_and_query: &str,
    upgrade: bool,
    headers: &[(&str, &str)],
) -> (u16, tokio::net::TcpStream, String, Vec<u8>) {
    let host = d.ws.trim_start_matches("ws://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut req = format!("GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if upgrade {
        req.push_str(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut data = Vec::new();
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        data.extend_from_slice(&read_some(&mut tcp, "response head").await);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let rest = data[end + 4..].to_vec();
    (status, tcp, head, rest)
}

/// Reads the next bytes of `what`; panics on a timeout or an early close.
async fn read_some(tcp: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let n = actix_rt::time::timeout(T, tcp.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
        .unwrap();
    assert!(n > 0, "connection closed before the end of the {what}");
    buf[..n].to_vec()
}
