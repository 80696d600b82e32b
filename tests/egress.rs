//! `http` nodes reach public addresses only: loopback targets are refused
//! unless `--http-allow` opens them, redirects are re-checked at every hop,
//! and bodies are read up to `--max-output-bytes`.
//!
//! Every target here is a tiny HTTP server on 127.0.0.1 that counts the
//! connections it accepted, so "refused" means the daemon never connected.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// What the test server answers to one request.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send no Content-Length and close after the body.
    close_delimited: bool,
}

impl Answer {
    fn json(v: Value) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type", "application/json".into())],
            body: v.to_string().into_bytes(),
            close_delimited: false,
        }
    }

    fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: b"no".to_vec(),
            close_delimited: false,
        }
    }

    fn redirect(status: u16, location: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("Location", location.into())],
            body: vec![],
            close_delimited: false,
        }
    }
}

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1.
struct Server {
    port: u16,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
    /// `METHOD /path` of every request, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(reply: impl Fn(&str) -> Answer + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (conns.clone(), requests.clone());
        actix_rt::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let Some((method, path)) = read_request(&mut s).await else {
                    continue;
                };
                r.lock().unwrap().push(format!("{method} {path}"));
                let a = reply(&path);
                let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", a.status);
                if !a.close_delimited {
                    head.push_str(&format!("Content-Length: {}\r\n", a.body.len()));
                }
                for (k, v) in &a.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&a.body).await;
                let _ = s.shutdown().await;
            }
        });
        Self {
            port,
            conns,
            requests,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads a request head and its Content-Length body; the method and path.
async fn read_request(s: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - end;
    while have < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        have += n;
    }
    let mut first = head.lines().next()?.split(' ');
    Some((first.next()?.to_owned(), first.next()?.to_owned()))
}

/// Registers a one-node workflow `tag` with `node` (id `call`), runs it and
/// returns the run view and its events.
async fn run_node(d: &Daemon, tag: &str, node: Value) -> (Value, Vec<Value>) {
    let mut node = node;
    node["id"] = json!("call");
    node["kind"] = json!("http");
    if node.get("retry").is_none() {
        node["retry"] = json!({"max_attempts": 3, "backoff_ms": 1});
    }
    register(d, "eve", &json!({"tag": tag, "nodes": [node]})).await;
    let run = start_run(d, "eve", tag, json!({})).await;
    let view = wait_run(d, "eve", &run, T).await;
    let events = run_events(d, "eve", &run).await;
    (view, events)
}

fn error_of(view: &Value) -> &str {
    view["nodes"]["call"]["error"].as_str().unwrap_or("")
}

/// Failed on attempt 1 with one `node_failed` that will not be retried.
fn assert_failed_without_retry(view: &Value, events: &[Value]) {
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["nodes"]["call"]["attempt"], 1, "{view}");
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "node_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["will_retry"], false);
}

#[actix_rt::test]
async fn loopback_is_refused_by_default_and_never_connected_to() {
    let srv = Server::start(|_| Answer::json(json!({"secret": true}))).await;
    let (_redis, d) = start(&[]).await;
    let port = srv.port;

    let (view, events) = run_node(&d, "ip", json!({"url": srv.url("/")})).await;
    assert_failed_without_retry(&view, &events);
    assert_eq!(
        error_of(&view),
        format!("http node: 127.0.0.1:{port} (loopback) is not allowed; open it with --http-allow")
    );

    let url = format!("http://localhost:{port}/");
    let (view, events) = run_node(&d, "name", json!({"url": url})).await;
    assert_failed_without_retry(&view, &events);
    let e = error_of(&view);
    assert!(
        e.contains("localhost at ") && e.contains("(loopback)"),
        "{e}"
    );
    assert!(e.contains("--http-allow"), "{e}");

    let url = format!("http://[::ffff:127.0.0.1]:{port}/");
    let (view, events) = run_node(&d, "mapped", json!({"url": url})).await;
    assert_failed_without_retry(&view, &events);
    let e = error_of(&view);
    assert!(
        e.contains(&format!(
            "[::ffff:127.0.0.1]:{port} (IPv4-mapped 127.0.0.1, loopback)"
        )),
        "{e}"
    );

    // The daemon's own API, the attack that motivated the policy.
    let (view, _) = run_node(
        &d,
        "own-api",
        json!({"url": format!("{}/api/v1/runs", d.api), "headers": {"X-User-ID": "alice"}}),
    )
    .await;
    assert!(error_of(&view).contains("is not allowed"), "{view}");

    assert_eq!(srv.conns(), 0, "the server must not be connected to");
}

#[actix_rt::test]
async fn cidr_allow_opens_loopback_with_hops_limits_and_retries() {
    let srv = Server::start(|path| match path {
        "/ok" => Answer::json(json!({"ok": true})),
        "/see-other" => Answer::redirect(303, "/landed?x=1"),
        "/landed?x=1" => Answer::json(json!({"landed": true})),
        "/fail" => Answer::status(500),
        "/missing" => Answer::status(404),
        "/big" => Answer::json(json!({"pad": "x".repeat(2000)})),
        "/big-stream" => Answer {
            close_delimited: true,
            ..Answer::json(json!({"pad": "y".repeat(2000)}))
        },
        p => match p.strip_prefix("/hop/").and_then(|n| n.parse::<u32>().ok()) {
            // /hop/N redirects to /hop/N-1 down to /hop/0, which answers.
            Some(0) => Answer::json(json!({"hops": "done"})),
            Some(n) => Answer::redirect(302, format!("/hop/{}", n - 1)),
            None => Answer::status(404),
        },
    })
    .await;
    let (_redis, d) = start(&["--http-allow", "127.0.0.1/32", "--max-output-bytes", "1000"]).await;

    let (view, _) = run_node(&d, "ok", json!({"url": srv.url("/ok")})).await;
    assert_eq!(view["status"], "completed", "{view}");
    let out_ref = view["nodes"]["call"]["result_ref"].as_str().unwrap();
    let out = get(&format!("{}/api/v1/results/{out_ref}", d.api), Some("eve")).await;
    assert_eq!(out.body, json!({"ok": true}));

    // 303 after a POST: a GET without body, to a relative Location.
    let (view, _) = run_node(
        &d,
        "see-other",
        json!({"method": "POST", "url": srv.url("/see-other"), "body": "{a: 1}"}),
    )
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    let reqs = srv.requests();
    assert_eq!(
        reqs[reqs.len() - 2..],
        ["POST /see-other", "GET /landed?x=1"]
    );

    // Five redirects are followed; six are too many.
    let (view, _) = run_node(&d, "five-hops", json!({"url": srv.url("/hop/5")})).await;
    assert_eq!(view["status"], "completed", "{view}");
    let before = srv.requests().len();
    let (view, events) = run_node(&d, "six-hops", json!({"url": srv.url("/hop/6")})).await;
    assert_failed_without_retry(&view, &events);
    assert!(error_of(&view).contains("more than 5 redirects"), "{view}");
    assert_eq!(
        srv.requests().len() - before,
        6,
        "the first request and five redirects"
    );

    for tag in ["big", "big-stream"] {
        let (view, events) = run_node(&d, tag, json!({"url": srv.url(&format!("/{tag}"))})).await;
        assert_failed_without_retry(&view, &events);
        assert!(
            error_of(&view).contains("over --max-output-bytes (1000 bytes)"),
            "{view}"
        );
    }

    let (view, events) = run_node(&d, "missing", json!({"url": srv.url("/missing")})).await;
    assert_failed_without_retry(&view, &events);
    assert!(error_of(&view).contains("404"), "{view}");

    let before = srv.requests().len();
    let (view, events) = run_node(
        &d,
        "fail",
        json!({"url": srv.url("/fail"), "retry": {"max_attempts": 2, "backoff_ms": 1}}),
    )
    .await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["nodes"]["call"]["attempt"], 2, "5xx is retried");
    assert!(error_of(&view).contains("500"), "{view}");
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "node_failed")
        .map(|e| &e["will_retry"])
        .collect();
    assert_eq!(retries, [&json!(true), &json!(false)]);
    assert_eq!(srv.requests().len() - before, 2);
}

#[actix_rt::test]
async fn host_port_allow_opens_one_port_and_redirects_are_checked_per_hop() {
    let closed = Server::start(|_| Answer::json(json!({"secret": true}))).await;
    let target = format!("http://127.0.0.1:{}/inside", closed.port);
    let open = Server::start(move |path| match path {
        "/to-closed" => Answer::redirect(302, target.clone()),
        _ => Answer::json(json!({"open": true})),
    })
    .await;
    let allow = format!("127.0.0.1:{}", open.port);
    let (_redis, d) = start(&["--http-allow", &allow]).await;

    let (view, _) = run_node(&d, "open", json!({"url": open.url("/")})).await;
    assert_eq!(view["status"], "completed", "{view}");

    let (view, events) = run_node(&d, "closed", json!({"url": closed.url("/")})).await;
    assert_failed_without_retry(&view, &events);
    assert!(
        error_of(&view).contains(&format!("127.0.0.1:{} (loopback)", closed.port)),
        "{view}"
    );

    let (view, events) = run_node(&d, "hop", json!({"url": open.url("/to-closed")})).await;
    assert_failed_without_retry(&view, &events);
    assert_eq!(
        error_of(&view),
        format!(
            "http node: 127.0.0.1:{} (loopback) is not allowed; open it with --http-allow",
            closed.port
        )
    );
    assert_eq!(open.requests(), ["GET /", "GET /to-closed"]);
    assert_eq!(
        closed.conns(),
        0,
        "the closed port must not be connected to"
    );
}

#[actix_rt::test]
async fn a_bad_http_allow_entry_stops_the_start_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .args(["serve", "--http-allow", "10.0.0.0/8,10.0.0.0/33"])
        .args(["--api-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0"])
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("10.0.0.0/33") && err.contains("--http-allow"),
        "{err}"
    );
}
