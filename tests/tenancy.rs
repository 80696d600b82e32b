//! Tenancy: what a second, unfriendly tenant found against the shipped
//! daemon, each as a test. Workflows are owned (each user's namespace, plus
//! the operator's shared, read-only catalogue); a header-mode socket's
//! `X-User-ID` must match its `username`; usernames hide nothing
//! (zero-width, bidi, whitespace, control); and each user is bounded by
//! quotas (active runs, runs per second, sessions) that answer 429 with
//! `Retry-After` and never lose an accepted run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use flowcast_actors::store::keys;
use serde_json::{json, Value};

use crate::support::*;

/// What the payment test server was sent: (path, Authorization, body).
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A local HTTP server standing in for a payment provider (`/bob`) and for
/// mallory's collector (`/mallory`); it records every request.
async fn payment_server() -> (String, Seen, actix_web::dev::ServerHandle) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let srv = HttpServer::new(move || {
        let s = s.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let s = s.clone();
            async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                s.lock().unwrap().push((req.path().to_owned(), auth, body));
                HttpResponse::Ok().json(json!({"charged": true, "by": req.path()}))
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = srv.addrs()[0];
    let srv = srv.run();
    let handle = srv.handle();
    actix_rt::spawn(srv);
    (format!("http://{addr}"), seen, handle)
}

/// `pay`: one http node posting the card to `url` with `auth`.
fn pay(url: &str, auth: &str) -> Value {
    json!({"tag": "pay", "nodes": [{
        "id": "charge", "kind": "http", "method": "POST", "url": url,
        "headers": {"Authorization": auth}, "body": "{card: .inputs.card}"
    }]})
}

fn workflows_url(d: &Daemon) -> String {
    format!("{}/api/v1/workflows", d.api)
}

/// `{tag: scope}` of a user's workflow list.
async fn listed(d: &Daemon, user: &str) -> Vec<(String, String)> {
    let r = get(&workflows_url(d), Some(user)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["tag"].as_str().unwrap().to_owned(),
                w["scope"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(tag: &str, scope: &str) -> (String, String) {
    (tag.to_owned(), scope.to_owned())
}

/// The shared catalogue the daemon loads (`examples/workflows`).
const CATALOGUE: [&str; 4] = [
    "flight-branch",
    "flight-prices",
    "flight-search",
    "flight-trip",
];

/// What a user whose own workflows are `own` lists: those, and the shared
/// ones they do not shadow, sorted by tag.
fn sees(own: &[&str]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = CATALOGUE
        .iter()
        .filter(|t| !own.contains(t))
        .map(|t| pair(t, "shared"))
        .chain(own.iter().map(|t| pair(t, "own")))
        .collect();
    all.sort();
    all
}

#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "wanted {status} {code}, got: {}", r.text);
    assert_eq!(r.body["error"]["code"], code, "{}", r.text);
    assert!(r.body["error"]["message"].is_string(), "{}", r.text);
}

// ---------------------------------------------------------------------------
// 1. Workflows are owned
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn anonymous_workflow_calls_are_401() {
    let (_redis, d) = start(&[]).await;
    let base = workflows_url(&d);
    let wf = json!({"nodes": [{"id": "a", "kind": "delay", "ms": 0}]}).to_string();
    for (method, url, body) in [
        ("GET", base.clone(), None),
        ("GET", format!("{base}/flight-search"), None),
        ("PUT", format!("{base}/mine"), Some(wf.as_str())),
        ("DELETE", format!("{base}/flight-search"), None),
        ("POST", format!("{base}/flight-search/execute"), Some("{}")),
    ] {
        let r = request(method, &url, None, body).await;
        assert_error(&r, 401, "unauthorized");
        assert!(r.text.contains("X-User-ID"), "{method} {url}: {}", r.text);
    }
    // Nothing was registered, and the shared catalogue is intact.
    assert_eq!(listed(&d, "alice").await, sees(&[]));
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn mallory_cannot_read_replace_or_delete_bobs_workflow() {
    let (base, seen, srv) = payment_server().await;
    let (_redis, d) = start(&["--http-allow", "127.0.0.1/32"]).await;
    let url = format!("{}/pay", workflows_url(&d));
    let bobs = pay(&format!("{base}/bob"), "Bearer bob-secret");
    register(&d, "bob", &bobs).await;

    // She cannot read it, nor learn it exists: a 404 that names only the tag.
    let r = get(&url, Some("mallory")).await;
    assert_error(&r, 404, "not_found");
    assert!(!r.text.contains("bob"), "{}", r.text);
    assert!(!listed(&d, "mallory").await.contains(&pair("pay", "own")));
    // Nor delete it.
    let r = request("DELETE", &url, Some("mallory"), None).await;
    assert_error(&r, 404, "not_found");
    // Nor run it.
    let r = post(&format!("{url}/execute"), Some("mallory"), &json!({})).await;
    assert_error(&r, 404, "not_found");
    // Her PUT creates her own `pay` (201, not "replaced"), bob's stays.
    let hers = pay(&format!("{base}/mallory"), "Bearer mallory");
    let r = put(&url, Some("mallory"), &hers).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["scope"], "own");
    let r = get(&url, Some("bob")).await;
    assert_eq!((r.status, &r.body), (200, &bobs), "{}", r.text);
    let r = get(&url, Some("mallory")).await;
    assert_eq!((r.status, &r.body), (200, &hers), "{}", r.text);

    // Bob's run uses his own workflow: his card goes to his provider only.
    let run = start_run(&d, "bob", "pay", json!({"card": "4111-bob"})).await;
    let view = wait_run(&d, "bob", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    let mine = start_run(&d, "mallory", "pay", json!({"card": "0000"})).await;
    assert_eq!(
        wait_run(&d, "mallory", &mine, T).await["status"],
        "completed"
    );
    let seen = seen.lock().unwrap().clone();
    let bob_calls: Vec<_> = seen.iter().filter(|s| s.0 == "/bob").collect();
    assert_eq!(bob_calls.len(), 1, "{seen:?}");
    assert_eq!(bob_calls[0].1, "Bearer bob-secret");
    assert_eq!(bob_calls[0].2, json!({"card": "4111-bob"}));
    assert!(
        !seen
            .iter()
            .any(|s| s.0 == "/mallory" && s.2["card"] == "4111-bob"),
        "bob's card reached mallory: {seen:?}"
    );

    // Her DELETE removes only her copy.
    let r = request("DELETE", &url, Some("mallory"), None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_error(&get(&url, Some("mallory")).await, 404, "not_found");
    let r = get(&url, Some("bob")).await;
    assert_eq!((r.status, &r.body), (200, &bobs), "{}", r.text);
    assert_eq!(listed(&d, "bob").await, sees(&["pay"]));
    srv.stop(false).await;
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_shared_workflow_is_shadowed_by_a_users_own_copy_for_that_user_only() {
    let (redis, d) = start(&[]).await;
    let url = format!("{}/flight-search", workflows_url(&d));
    let shared = get(&url, Some("bob")).await;
    assert_eq!(shared.status, 200, "{}", shared.text);

    // Mallory's PUT of the shared tag creates her own copy.
    let hers = json!({"tag": "flight-search", "nodes": [
        {"id": "format", "kind": "transform", "filter": "\"mallory's flights\""}
    ]});
    let r = put(&url, Some("mallory"), &hers).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(listed(&d, "mallory").await, sees(&["flight-search"]));
    assert_eq!(listed(&d, "bob").await, sees(&[]));
    assert_eq!(get(&url, Some("mallory")).await.body, hers);
    assert_eq!(get(&url, Some("bob")).await.body, shared.body);

    // A run resolves the tag to the caller's own workflow, then the shared one.
    let output = |user: &'static str| {
        let d = &d;
        async move {
            let run = start_run(d, user, "flight-search", json!({"city": "Oslo"})).await;
            let view = wait_run(d, user, &run, T).await;
            assert_eq!(view["status"], "completed", "{view}");
            let r = view["nodes"]["format"]["result_ref"].as_str().unwrap();
            get(&format!("{}/api/v1/results/{r}", d.api), Some(user))
                .await
                .body
        }
    };
    assert_eq!(output("mallory").await, json!("mallory's flights"));
    assert_eq!(output("bob").await, json!("1 flights to Oslo"));

    // Her DELETE removes her copy only; the shared one is read-only.
    let r = request("DELETE", &url, Some("mallory"), None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = request("DELETE", &url, Some("mallory"), None).await;
    assert_error(&r, 404, "not_found");
    assert!(r.text.contains("read-only"), "{}", r.text);
    assert_eq!(output("mallory").await, json!("1 flights to Oslo"));
    assert_eq!(output("bob").await, json!("1 flights to Oslo"));
    let mut conn = redis.conn();
    let catalogue: bool = redis::cmd("HEXISTS")
        .arg(keys::WORKFLOWS)
        .arg("flight-search")
        .query(&mut conn)
        .unwrap();
    assert!(catalogue, "the shared flight-search was deleted");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn workflows_registered_before_ownership_are_shared_catalogue_entries() {
    let (redis, d) = start(&[]).await;
    // What an older daemon left: a tag in the one global hash.
    let legacy = json!({"tag": "legacy", "nodes": [
        {"id": "only", "kind": "transform", "filter": "\"old\""}
    ]});
    let mut conn = redis.conn();
    let _: i64 = redis::cmd("HSET")
        .arg(keys::WORKFLOWS)
        .arg("legacy")
        .arg(legacy.to_string())
        .query(&mut conn)
        .unwrap();
    for user in ["alice", "bob"] {
        assert!(listed(&d, user).await.contains(&pair("legacy", "shared")));
        let run = start_run(&d, user, "legacy", json!({})).await;
        assert_eq!(wait_run(&d, user, &run, T).await["status"], "completed");
    }
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// 2. Header-mode sockets
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn a_socket_whose_user_header_names_someone_else_is_403_before_the_upgrade() {
    let (_redis, d) = start(&[]).await;
    let run = start_run(&d, "alice", "flight-search", json!({"city": "Oslo"})).await;
    wait_run(&d, "alice", &run, T).await;
    let path = "/ws?username=alice&last_event_id=0";

    // Mallory's gateway identity with alice's username: refused, nothing streamed.
    let (status, body) = raw_ws_request_with(&d, path, true, &[("X-User-ID", "mallory")]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-User-ID"),
        "{body}"
    );
    // Two identities (which one the gateway set is unknowable): refused too.
    let (status, body) = raw_ws_request_with(
        &d,
        path,
        true,
        &[("X-User-ID", "alice"), ("X-User-ID", "mallory")],
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_user"))
    );

    // The matching header streams alice's history.
    let mut ws = ws_connect_with(&d, path, &[("X-User-ID", "alice")])
        .await
        .expect("a matching X-User-ID is upgraded");
    let ev = ws_take(&mut ws, 4, T).await;
    assert!(ev.iter().all(|e| e["run_id"] == run.as_str()), "{ev:?}");
    // So does the seed's browser snippet: no header, `?username=`.
    let mut seed = ws_connect(&d, path).await;
    assert_eq!(ws_take(&mut seed, 4, T).await, ev);
    // A header alone names the user.
    let mut hdr = ws_connect_with(&d, "/ws?last_event_id=0", &[("X-User-ID", "alice")])
        .await
        .expect("X-User-ID without username is upgraded");
    assert_eq!(ws_take(&mut hdr, 4, T).await, ev);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// 7. Usernames
// ---------------------------------------------------------------------------

/// Names that must never be a user, with the bytes REST sends.
fn bad_names() -> Vec<(&'static str, String)> {
    vec![
        ("zero-width space", "alice\u{200b}".into()),
        ("zero-width joiner", "al\u{200d}ice".into()),
        ("BOM", "\u{feff}alice".into()),
        ("right-to-left override", "alice\u{202e}moc.evil".into()),
        ("left-to-right mark", "\u{200e}alice".into()),
        ("space", "alice smith".into()),
        ("no-break space", "alice\u{a0}".into()),
        ("ideographic space", "alice\u{3000}".into()),
        ("line separator", "alice\u{2028}".into()),
        ("tab", "al\tice".into()),
        ("control", "alice\u{1}".into()),
        ("DEL", "alice\u{7f}".into()),
        ("empty", String::new()),
        ("129 bytes", "a".repeat(129)),
        ("65 two-byte letters", "é".repeat(65)),
    ]
}

/// Percent-encodes a query value byte by byte.
fn encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[actix_rt::test]
async fn usernames_that_hide_something_are_refused_everywhere() {
    let (redis, d) = start(&[]).await;
    let runs = format!("{}/api/v1/runs", d.api);
    let body = json!({"tag": "flight-search", "inputs": {"city": "Oslo"}}).to_string();
    let mut conn = redis.conn();
    for (what, name) in bad_names() {
        // REST: the X-User-ID header, on a run and on a workflow call
        // (where a header can carry the name at all: no controls, and HTTP
        // trims spaces and tabs around a value).
        let header_safe = awc::http::header::HeaderValue::from_bytes(name.as_bytes()).is_ok()
            && name.trim_matches([' ', '\t']) == name;
        if header_safe {
            let headers: [(&str, &[u8]); 1] = [("X-User-ID", name.as_bytes())];
            let r = request_with_headers("POST", &runs, &headers, Some(&body)).await;
            assert_error(&r, 400, "invalid_user");
            let r = request_with_headers("GET", &workflows_url(&d), &headers, None).await;
            assert_error(&r, 400, "invalid_user");
        }
        // WebSocket: refused before the upgrade.
        let (status, err) =
            raw_ws_request(&d, &format!("/ws?username={}", encode(&name)), true).await;
        assert_eq!(status, 400, "{what}: {err}");
        assert_eq!(err["error"]["code"], "invalid_user", "{what}: {err}");
        // ... and as a gateway's header on a socket.
        if header_safe && !name.is_empty() {
            let (status, err) =
                raw_ws_request_with(&d, "/ws?username=alice", true, &[("X-User-ID", &name)]).await;
            assert_eq!(status, 400, "{what}: {err}");
        }
    }
    // Nothing of theirs reached Redis.
    assert_eq!(request_count(&mut conn), 0);
    for (_, name) in bad_names() {
        assert!(user_active_runs(&mut conn, &name).is_empty());
    }

    // The seed's name, letters of any script and case are fine (and distinct).
    for name in ["bob@example.com", "zoë", "Ελένη", "山田", "Alice", "alice"] {
        let headers: [(&str, &[u8]); 1] = [("X-User-ID", name.as_bytes())];
        let r = request_with_headers("POST", &runs, &headers, Some(&body)).await;
        assert_eq!(r.status, 202, "{name}: {}", r.text);
        let run = r.body["run_id"].as_str().unwrap().to_owned();
        let mut ws = ws_connect(
            &d,
            &format!("/ws?username={}&last_event_id=0", encode(name)),
        )
        .await;
        let ev = ws_take(&mut ws, 4, T).await;
        assert!(
            ev.iter().all(|e| e["run_id"] == run.as_str()),
            "{name}: {ev:?}"
        );
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_token_subject_is_checked_like_any_username() {
    const SECRET: &str = "a-test-secret-of-32-bytes-length";
    let (_redis, d) = start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": sub, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let bad = token("alice\u{200b}");
    let auth = format!("Bearer {bad}");
    let headers: [(&str, &[u8]); 1] = [("Authorization", auth.as_bytes())];
    let r = request_with_headers("GET", &workflows_url(&d), &headers, None).await;
    assert_error(&r, 401, "unauthorized");
    assert!(r.text.contains("U+200B"), "{}", r.text);
    let (status, _) = raw_ws_request(&d, &format!("/ws?token={bad}"), true).await;
    assert_eq!(status, 401);
    let good = format!("Bearer {}", token("alice"));
    let headers: [(&str, &[u8]); 1] = [("Authorization", good.as_bytes())];
    let r = request_with_headers("GET", &workflows_url(&d), &headers, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// 6. Quotas
// ---------------------------------------------------------------------------

/// Posts a run; the raw answer.
async fn try_run(d: &Daemon, user: &str, tag: &str) -> Resp {
    post(
        &format!("{}/api/v1/runs", d.api),
        Some(user),
        &json!({"tag": tag, "inputs": {}}),
    )
    .await
}

#[track_caller]
fn assert_429(r: &Resp, code: &str, mentions: &[&str]) {
    assert_error(r, 429, code);
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {}", r.text))
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    let msg = r.body["error"]["message"].as_str().unwrap();
    for m in mentions {
        assert!(msg.contains(m), "message should mention {m:?}: {msg}");
    }
}

#[actix_rt::test]
async fn the_active_run_quota_refuses_with_429_and_accepts_again_once_runs_finish() {
    const LIMIT: usize = 3;
    let limit = LIMIT.to_string();
    let flags = ["--max-active-runs-per-user", limit.as_str()];
    let (redis, a) = start(&flags).await;
    // A second API instance on the same Redis enforces the same limit.
    let mut b_flags = flags.to_vec();
    b_flags.extend(["--role", "runner", "--instance-id", "second"]);
    let b = Daemon::start(&redis, &b_flags);
    wait_ready(&b).await;
    let mut conn = redis.conn();
    // Long enough to outlast a handful of POSTs by far.
    let hold = json!({"tag": "hold", "nodes": [{"id": "wait", "kind": "delay", "ms": 8000}]});
    let quick = json!({"tag": "quick", "nodes": [{"id": "wait", "kind": "delay", "ms": 50}]});
    for user in ["alice", "bob"] {
        register(&a, user, &hold).await;
        register(&a, user, &quick).await;
    }

    let mut accepted = Vec::new();
    for i in 0..LIMIT {
        let d = if i % 2 == 0 { &a } else { &b };
        let r = try_run(d, "alice", "hold").await;
        assert_eq!(r.status, 202, "{}", r.text);
        accepted.push(r.body["run_id"].as_str().unwrap().to_owned());
    }
    // Over the limit, through either instance and either endpoint.
    let requests_before = request_count(&mut conn);
    for d in [&a, &b] {
        let r = try_run(d, "alice", "quick").await;
        assert_429(&r, "quota_exceeded", &["3", "active"]);
        let r = post(
            &format!("{}/api/v1/workflows/quick/execute", d.api),
            Some("alice"),
            &json!({}),
        )
        .await;
        assert_429(&r, "quota_exceeded", &["3"]);
    }
    // A refused run wrote nothing.
    assert_eq!(request_count(&mut conn), requests_before);
    assert_eq!(user_active_runs(&mut conn, "alice").len(), LIMIT);
    let r = get(&format!("{}/api/v1/runs", a.api), Some("alice")).await;
    assert_eq!(
        r.body["runs"].as_array().unwrap().len(),
        LIMIT,
        "{}",
        r.text
    );

    // Another user is not held back by alice's quota.
    let bobs = start_run(&a, "bob", "quick", json!({})).await;
    assert_eq!(wait_run(&a, "bob", &bobs, T).await["status"], "completed");

    // Once alice's runs finish, she may start runs again.
    for id in &accepted {
        assert_eq!(wait_run(&a, "alice", id, T).await["status"], "completed");
    }
    assert!(user_active_runs(&mut conn, "alice").is_empty());
    for _ in 0..LIMIT {
        let r = try_run(&b, "alice", "quick").await;
        assert_eq!(r.status, 202, "{}", r.text);
        accepted.push(r.body["run_id"].as_str().unwrap().to_owned());
    }
    // Nothing accepted is lost: every 202 run completes.
    for id in &accepted {
        assert_eq!(wait_run(&a, "alice", id, T).await["status"], "completed");
    }
    assert!(user_active_runs(&mut conn, "alice").is_empty());
    assert_clean(&mut conn, &accepted);
    assert_no_panic(&a);
    assert_no_panic(&b);
}

#[actix_rt::test]
async fn the_run_rate_limit_refuses_past_the_burst_with_429() {
    // 1 run per second, bursts of 2.
    let (redis, d) = start(&["--max-runs-per-sec-per-user", "1"]).await;
    let mut conn = redis.conn();
    let mut accepted = Vec::new();
    let mut refused = None;
    let started = Instant::now();
    // A full bucket takes the burst at once; the refill (1/s) cannot keep
    // up with back-to-back requests for long.
    for i in 0..20 {
        let r = try_run(&d, "alice", "flight-search").await;
        match r.status {
            202 => accepted.push(r.body["run_id"].as_str().unwrap().to_owned()),
            _ => {
                assert!(i >= 2, "refused within the burst: {}", r.text);
                assert_429(&r, "rate_limited", &["1 per second", "2"]);
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("no request was rate limited");
    // At most the burst plus what refilled meanwhile was accepted.
    let refilled = started.elapsed().as_secs_f64().ceil() as usize;
    assert!(accepted.len() <= 2 + refilled, "{}", accepted.len());
    let requests = request_count(&mut conn);
    assert_eq!(requests, accepted.len(), "a refused run left a request");

    // Another user has a bucket of their own.
    let bobs = start_run(&d, "bob", "flight-search", json!({})).await;
    accepted.push(bobs.clone());

    // After Retry-After, alice is accepted again.
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    actix_rt::time::sleep(Duration::from_secs(wait)).await;
    let deadline = Instant::now() + T;
    loop {
        let r = try_run(&d, "alice", "flight-search").await;
        if r.status == 202 {
            accepted.push(r.body["run_id"].as_str().unwrap().to_owned());
            break;
        }
        assert_429(&r, "rate_limited", &[]);
        assert!(Instant::now() < deadline, "never accepted again");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &accepted {
        let user = if *id == bobs { "bob" } else { "alice" };
        assert_eq!(wait_run(&d, user, id, T).await["status"], "completed");
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn sessions_per_user_are_limited_to_100_by_default() {
    let (_redis, d) = start(&[]).await;
    let mut open = Vec::new();
    for _ in 0..100 {
        open.push(ws_connect(&d, "/ws?username=alice").await);
    }
    let (status, body) = raw_ws_request(&d, "/ws?username=alice", true).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("100"),
        "{body}"
    );
    // Another user is not affected, and alice's sessions all work.
    let mut bob = ws_connect(&d, "/ws?username=bob").await;
    let run = start_run(&d, "alice", "flight-search", json!({"city": "Oslo"})).await;
    for ws in open.iter_mut().step_by(33) {
        let ev = ws_take(ws, 4, T).await;
        assert_eq!(ev[3]["type"], "workflow_completed", "{ev:?}");
        assert_eq!(ev[3]["run_id"], run.as_str());
    }
    let bobs = start_run(&d, "bob", "flight-search", json!({"city": "Rome"})).await;
    assert_eq!(ws_take(&mut bob, 1, T).await[0]["run_id"], bobs.as_str());
    // Closing one frees a place.
    drop(open.pop());
    wait_until_async("a freed session place", T, || async {
        raw_ws_request(&d, "/ws?username=alice", true).await.0 == 101
    })
    .await;
    assert_no_panic(&d);
}
