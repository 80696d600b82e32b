//! Shared test helpers: a private redis-server per test, the real daemon
//! binary on free ports, and small HTTP / Redis / WebSocket clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free port below the ephemeral range, where outgoing connections of
/// the tests' clients cannot take it.
fn redis_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 250) as u16 * 40;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn redis_server_bin() -> String {
    std::env::var("FLOWCAST_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A private redis-server with AOF, on a free port, killed on drop.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        // A port can be taken between the probe and redis-server's bind (by
        // another test's daemon or client): try a few.
        for _ in 0..5 {
            let port = redis_port();
            let dir = std::env::temp_dir()
                .join(format!("flowcast-test-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut r = Self {
                port,
                dir,
                child: None,
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start a redis-server on a free port");
    }

    /// Starts redis-server on `self.port`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new(redis_server_bin())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A blocking connection for checks.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Stops the server (its AOF stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data (AOF reloaded).
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server could not restart on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real daemon, on free ports, killed on drop.
pub struct Daemon {
    child: Child,
    pub api: String,
    pub ws: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `flowcast serve` against `redis` with extra arguments.
    pub fn start(redis: &Redis, extra: &[&str]) -> Self {
        Self::start_with_url(&redis.url(), extra)
    }

    pub fn start_with_url(redis_url: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowcast"));
        cmd.arg("serve")
            .args(["--redis-url", redis_url])
            .args(["--api-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0"])
            .arg("--workflows-dir")
            .arg(repo().join("examples/workflows"))
            .args(["--workers", "1"])
            .args(extra)
            .env("RUST_LOG", "info,flowcast_actors=debug")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("daemon binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (key, tag) in [("api listening on ", "api"), ("ws listening on ", "ws")] {
                    if let Some(i) = line.find(key) {
                        let _ = tx.send((tag, line[i + key.len()..].trim().to_string()));
                    }
                }
                if std::env::var("FLOWCAST_TEST_ECHO").is_ok() {
                    eprintln!("daemon: {line}");
                }
                log2.lock().unwrap().push(line);
            }
        });
        let role = extra
            .windows(2)
            .find(|w| w[0] == "--role")
            .map(|w| w[1])
            .unwrap_or("all");
        let want_api = role != "fanout";
        let want_ws = role != "runner";
        let (mut api, mut ws) = (String::new(), String::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        while (want_api && api.is_empty()) || (want_ws && ws.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("api", a)) => api = format!("http://{a}"),
                Ok((_, a)) => ws = format!("ws://{a}"),
                Err(_) => panic!(
                    "daemon did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            }
        }
        Self {
            child,
            api,
            ws,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The health/metrics base URL (the API listener, or the WS one for fanout-only).
    pub fn http_base(&self) -> String {
        if self.api.is_empty() {
            self.ws.replace("ws://", "http://")
        } else {
            self.api.clone()
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status and parsed JSON body (Null if not JSON).
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub location: Option<String>,
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

/// Registers a workflow; panics unless 200/201.
pub async fn register(d: &Daemon, wf: &Value) {
    let tag = wf["tag"].as_str().unwrap();
    let r = put(
        &format!("{}/api/v1/workflows/{tag}", d.api),
        Some("admin"),
        wf,
    )
    .await;
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

/// Polls a run until its status is terminal; returns the run view.
pub async fn wait_run(d: &Daemon, user: &str, run_id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(&format!("{}/api/v1/runs/{run_id}", d.api), Some(user)).await;
        if r.status == 200 {
            let s = r.body["status"].as_str().unwrap_or("");
            if matches!(s, "completed" | "failed" | "cancelled") {
                return r.body;
            }
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

/// A Redis PubSub subscription collecting messages of one channel.
pub struct Sub {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Sub {
    pub async fn new(redis: &Redis, channel: &str) -> Self {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(channel).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                let p: String = m.get_payload().unwrap();
                if tx.send(serde_json::from_str(&p).unwrap()).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        actix_rt::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects messages until `n` arrived or the timeout passed.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }
}

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

/// Waits until the daemon's Subscriber is subscribed (readyz on the ws listener).
pub async fn wait_ready(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&format!("{}/readyz", d.http_base()), None).await;
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "daemon not ready: {}", r.text);
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds-long default timeout for events.
pub const T: Duration = Duration::from_secs(15);
