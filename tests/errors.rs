//! Client mistakes: every one is a 4xx with `{"error": {"code", "message"}}`
//! whose message names the field or thing at fault, and none of them is a
//! 500 or a panic in the daemon.

use flowcast_actors::store::keys;
use serde_json::{json, Value};

use crate::support::*;

#[actix_rt::test]
async fn the_user_header_is_required_and_validated() {
    let (redis, d) = start(&[]).await;
    let runs = format!("{}/api/v1/runs", d.api);
    let body = json!({"tag": "flight-search", "inputs": {"city": "NYC"}}).to_string();

    // Missing: 401, on every endpoint that needs a caller.
    let r = request("POST", &runs, None, Some(&body)).await;
    assert_error(&r, 401, &["X-User-ID"]);
    let r = get(&runs, None).await;
    assert_error(&r, 401, &["X-User-ID"]);
    let r = put(
        &format!("{}/api/v1/workflows/x", d.api),
        None,
        &json!({"nodes": []}),
    )
    .await;
    assert_error(&r, 401, &["X-User-ID"]);

    // Empty, control characters, too long, not UTF-8: 400.
    let too_long = "x".repeat(129);
    let cases: [(&[u8], &[&str]); 5] = [
        (b"", &["X-User-ID", "empty"]),
        (b"a\tb", &["X-User-ID", "U+0009"]),
        (too_long.as_bytes(), &["X-User-ID", "129", "128"]),
        (b"caf\xe9", &["X-User-ID", "UTF-8"]),
        (b"bob smith", &["X-User-ID", "U+0020"]),
    ];
    for (user, mentions) in cases {
        let r = request_as_users("POST", &runs, &[user], Some(&body)).await;
        assert_error(&r, 400, mentions);
        let r = request_as_users("GET", &runs, &[user], None).await;
        assert_error(&r, 400, mentions);
    }
    // Two identities: which one a gateway set is unknowable, so neither.
    let r = request_as_users("POST", &runs, &[b"alice", b"mallory"], Some(&body)).await;
    assert_error(&r, 400, &["X-User-ID", "more than once"]);
    // 128 bytes is still fine.
    let r = get(&runs, Some(&"x".repeat(128))).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The seed's bob@example.com is a valid name, with its own channel.
    let mut sub = Sub::new(&redis, &keys::channel("bob@example.com")).await;
    let id = start_run(
        &d,
        "bob@example.com",
        "flight-search",
        json!({"city": "NYC"}),
    )
    .await;
    let ev = sub.take(4, T).await;
    assert_eq!(ev.len(), 4, "{ev:?}");
    assert!(ev.iter().all(|e| e["run_id"] == id.as_str()));
    assert_eq!(ev[3]["type"], "workflow_completed");
    let run = wait_run(&d, "bob@example.com", &id, T).await;
    assert_eq!(run["status"], "completed");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn bad_run_requests_name_the_field() {
    let (_redis, d) = start(&[]).await;
    let runs = format!("{}/api/v1/runs", d.api);
    let exec = format!("{}/api/v1/workflows/flight-search/execute", d.api);
    let u = Some("alice");

    // Malformed JSON: 400.
    for url in [&runs, &exec] {
        for body in ["{\"tag\": ", "{tag: 1}", "[1, 2", "not json"] {
            let r = request("POST", url, u, Some(body)).await;
            assert_error(&r, 400, &["JSON"]);
        }
    }
    let r = request("POST", &runs, u, Some("")).await;
    assert_error(&r, 400, &["JSON"]);

    // Unknown tag: 404 naming it.
    let r = post(&runs, u, &json!({"tag": "no-such-flow", "inputs": {}})).await;
    assert_error(&r, 404, &["no-such-flow"]);
    let r = post(
        &format!("{}/api/v1/workflows/no-such-flow/execute", d.api),
        u,
        &json!({"inputs": {}}),
    )
    .await;
    assert_error(&r, 404, &["no-such-flow"]);
    // A tag that cannot be one: 400 naming the tag.
    let r = post(&runs, u, &json!({"tag": "bad tag", "inputs": {}})).await;
    assert_error(&r, 400, &["tag"]);

    // `inputs` not an object: 422.
    for inputs in [json!([1, 2]), json!("NYC"), json!(3), json!(true)] {
        let r = post(&runs, u, &json!({"tag": "flight-search", "inputs": inputs})).await;
        assert_error(&r, 422, &["inputs"]);
        let r = post(&exec, u, &json!({"inputs": inputs})).await;
        assert_error(&r, 422, &["inputs"]);
    }

    // Unknown fields, missing or mistyped `tag`: 422 naming the field.
    let r = post(
        &runs,
        u,
        &json!({"tag": "flight-search", "inputs": {}, "priority": 1}),
    )
    .await;
    assert_error(&r, 422, &["priority"]);
    let r = post(&exec, u, &json!({"inputs": {}, "priority": 1})).await;
    assert_error(&r, 422, &["priority"]);
    let r = post(&runs, u, &json!({"inputs": {"city": "NYC"}})).await;
    assert_error(&r, 422, &["tag"]);
    let r = post(&runs, u, &json!({"tag": 7, "inputs": {}})).await;
    assert_error(&r, 422, &["tag"]);
    let r = post(&runs, u, &json!(["flight-search"])).await;
    assert_error(&r, 422, &["tag"]);

    // None of those started a run.
    let r = get(&runs, u).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["runs"], json!([]), "{}", r.text);

    // A valid request still works after all that, with or without a body
    // on `execute`.
    let r = post(&exec, u, &json!({"inputs": {"city": "Paris"}})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = request("POST", &exec, u, None).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_body_over_the_limit_is_413() {
    let (_redis, d) = start(&["--max-body-bytes", "1024"]).await;
    let u = Some("alice");
    let big = "x".repeat(2048);
    let r = post(
        &format!("{}/api/v1/runs", d.api),
        u,
        &json!({"tag": "flight-search", "inputs": {"city": big}}),
    )
    .await;
    assert_error(&r, 413, &["1024"]);
    let r = post(
        &format!("{}/api/v1/workflows/flight-search/execute", d.api),
        u,
        &json!({"inputs": {"city": big}}),
    )
    .await;
    assert_error(&r, 413, &["1024"]);
    let r = put(
        &format!("{}/api/v1/workflows/big", d.api),
        u,
        &json!({"tag": "big", "nodes": [{"id": "a", "kind": "transform", "filter": format!("\"{big}\"")}]}),
    )
    .await;
    assert_error(&r, 413, &["1024"]);

    // Nothing was accepted; a request under the limit still is.
    let r = get(&format!("{}/api/v1/runs", d.api), u).await;
    assert_eq!(r.body["runs"], json!([]), "{}", r.text);
    let r = get(&format!("{}/api/v1/workflows/big", d.api), u).await;
    assert_error(&r, 404, &["big"]);
    let id = start_run(&d, "alice", "flight-search", json!({"city": "NYC"})).await;
    let run = wait_run(&d, "alice", &id, T).await;
    assert_eq!(run["status"], "completed");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn invalid_workflows_are_422_naming_the_node() {
    let (_redis, d) = start(&["--max-nodes", "5"]).await;
    let delay =
        |id: &str, deps: &[&str]| json!({"id": id, "kind": "delay", "ms": 0, "depends_on": deps});
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "cycle",
            json!([
                delay("entry", &[]),
                delay("x", &["entry", "z"]),
                delay("y", &["x"]),
                delay("z", &["y"])
            ]),
            vec!["cycle", "x", "y", "z"],
        ),
        (
            "selfloop",
            json!([delay("entry", &[]), delay("me", &["me"])]),
            vec!["cycle", "me"],
        ),
        (
            "orphan",
            json!([delay("a", &[]), delay("b", &["ghost"])]),
            vec!["\"b\"", "ghost"],
        ),
        (
            "dup",
            json!([
                delay("a", &[]),
                delay("twin", &["a"]),
                delay("twin", &["a"])
            ]),
            vec!["twin", "twice"],
        ),
        (
            "badjq",
            json!([{"id": "parse-me", "kind": "transform", "filter": "{{{ .x"}]),
            vec!["parse-me", "jq"],
        ),
        (
            "undefjq",
            json!([{"id": "call-me", "kind": "transform", "filter": "no_such_function(1)"}]),
            vec!["call-me", "no_such_function"],
        ),
        (
            "kind",
            json!([delay("a", &[]), {"id": "beam", "kind": "teleport", "depends_on": ["a"]}]),
            vec!["beam", "teleport"],
        ),
        (
            "nokind",
            json!([{"id": "vague", "filter": "."}]),
            vec!["vague", "kind"],
        ),
        ("noid", json!([{"kind": "delay", "ms": 1}]), vec!["id"]),
        (
            "badfield",
            json!([delay("a", &[]), {"id": "late", "kind": "delay", "ms": "soon"}]),
            vec!["late", "ms"],
        ),
        (
            "big",
            json!((0..6)
                .map(|i| delay(&format!("n{i}"), &[]))
                .collect::<Vec<_>>()),
            vec!["6 nodes", "limit is 5"],
        ),
        ("empty", json!([]), vec!["no nodes"]),
        ("notalist", json!({"a": 1}), vec!["nodes"]),
    ];
    for (tag, nodes, mentions) in cases {
        let url = format!("{}/api/v1/workflows/{tag}", d.api);
        let r = put(&url, Some("alice"), &json!({"tag": tag, "nodes": nodes})).await;
        assert_error(&r, 422, &mentions);
        // Nothing was registered.
        let r = get(&url, Some("alice")).await;
        assert_error(&r, 404, &[tag]);
    }

    // The path's tag and the body's must agree; a bad tag in the path is 400.
    let r = put(
        &format!("{}/api/v1/workflows/one", d.api),
        Some("alice"),
        &json!({"tag": "other", "nodes": [delay("a", &[])]}),
    )
    .await;
    assert_error(&r, 422, &["one", "other"]);
    let r = put(
        &format!("{}/api/v1/workflows/a%20b", d.api),
        Some("alice"),
        &json!({"nodes": [delay("a", &[])]}),
    )
    .await;
    assert_error(&r, 400, &["tag"]);
    let r = put(
        &format!("{}/api/v1/workflows/arr", d.api),
        Some("alice"),
        &json!([1]),
    )
    .await;
    assert_error(&r, 422, &["object"]);

    // Five nodes is within the limit; the tag may come from the path alone.
    let nodes: Vec<Value> = (0..5).map(|i| delay(&format!("n{i}"), &[])).collect();
    let r = put(
        &format!("{}/api/v1/workflows/five", d.api),
        Some("alice"),
        &json!({"nodes": nodes}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn bad_paths_are_400_and_unknown_routes_404() {
    let (_redis, d) = start(&[]).await;
    let u = Some("alice");
    for path in ["/api/v1/runs/not-a-uuid", "/api/v1/runs/not-a-uuid/events"] {
        let r = get(&format!("{}{path}", d.api), u).await;
        assert_error(&r, 400, &["not-a-uuid"]);
    }
    let r = post(
        &format!("{}/api/v1/runs/not-a-uuid/cancel", d.api),
        u,
        &json!({}),
    )
    .await;
    assert_error(&r, 400, &["not-a-uuid"]);
    // A well-formed id that does not exist: 404.
    let ghost = "0b0e3f0e-0000-4000-8000-000000000000";
    let r = get(&format!("{}/api/v1/runs/{ghost}", d.api), u).await;
    assert_error(&r, 404, &[ghost]);

    for bad in ["sha256:xyz", "md5:abc", "sha256:ABCDEF"] {
        let r = get(&format!("{}/api/v1/results/{bad}", d.api), u).await;
        assert_error(&r, 400, &[bad, "sha256"]);
    }
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = get(&format!("{}/api/v1/results/{missing}", d.api), u).await;
    assert_error(&r, 404, &[&missing]);

    // (`/` is the dashboard.)
    for path in [
        "/api/v1/nope",
        "/api/v2/runs",
        "/nope",
        "/api/v1/runs/x/y/z",
    ] {
        let r = get(&format!("{}{path}", d.api), u).await;
        assert_error(&r, 404, &[path]);
    }
    // A known path with the wrong method is a JSON error too.
    let r = request("DELETE", &format!("{}/api/v1/runs", d.api), u, None).await;
    assert_error(&r, 405, &["DELETE"]);
    assert_no_panic(&d);
}

// ---- helpers ----

/// Asserts an error response: this status, a JSON error object with a code,
/// and a message that mentions each of `mentions`.
#[track_caller]
fn assert_error(r: &Resp, status: u16, mentions: &[&str]) {
    assert_eq!(r.status, status, "wanted {status}, got: {}", r.text);
    let e = &r.body["error"];
    let code = e["code"].as_str().unwrap_or_default();
    assert!(!code.is_empty(), "no error.code: {}", r.text);
    let msg = e["message"].as_str().unwrap_or_default();
    for m in mentions {
        assert!(msg.contains(m), "message should mention {m:?}: {}", r.text);
    }
}

/// Like `support::request` but with raw `X-User-ID` values, one header each.
async fn request_as_users(method: &str, url: &str, users: &[&[u8]], body: Option<&str>) -> Resp {
    let headers: Vec<(&str, &[u8])> = users.iter().map(|u| ("X-User-ID", *u)).collect();
    request_with_headers(method, url, &headers, body).await
}
