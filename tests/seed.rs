//! The seed document's example, exactly: its curl call, its channel, its
//! WebSocket URL and its four events in order.

use serde_json::{json, Value};

use crate::support::*;

fn assert_seed_events(ev: &[Value]) {
    assert_eq!(ev.len(), 4, "{ev:?}");
    let run_id = ev[0]["run_id"].as_str().unwrap();
    assert!(
        ev.iter().all(|e| e["run_id"] == run_id),
        "one run_id: {ev:?}"
    );
    assert_eq!(ev[0]["type"], "workflow_started");
    assert_eq!(ev[0]["tag"], "flight-search");
    assert_eq!(ev[0]["nodes"], 2);
    assert_eq!(ev[0]["entry_nodes"], 1);
    assert_eq!(ev[1]["type"], "node_completed");
    assert_eq!(ev[1]["node_id"], "search");
    assert_eq!(ev[1]["status"], "completed");
    assert_eq!(ev[1]["counter"], 1);
    assert!(ev[1]["result_ref"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(ev[2]["type"], "node_completed");
    assert_eq!(ev[2]["node_id"], "format");
    assert_eq!(ev[2]["counter"], 0);
    assert_eq!(ev[3]["type"], "workflow_completed");
    assert_eq!(ev[3]["counter"], 0);
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        assert!(e["timestamp"].as_u64().unwrap() > 1_600_000_000);
        assert!(e["event_id"].is_string());
    }
}

fn seed_curl_body() -> Value {
    json!({"tag": "flight-search", "inputs": {"city": "NYC"}})
}

#[actix_rt::test]
async fn seed_curl_publishes_the_four_events_on_redis() {
    let (redis, d) = start(&[]).await;
    let mut sub = Sub::new(&redis, "workflow:events:test-user").await;
    let r = post(
        &format!("{}/api/v1/runs", d.api),
        Some("test-user"),
        &seed_curl_body(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["tag"], "flight-search");
    let run_id = r.body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/api/v1/runs/{run_id}").as_str())
    );
    let ev = sub.take(4, T).await;
    assert_seed_events(&ev);
    assert_eq!(ev[0]["run_id"], run_id.as_str());

    // The run's state and its outputs, as stored.
    let run = wait_run(&d, "test-user", &run_id, T).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["counter"], 0);
    assert_eq!(run["nodes"]["search"]["status"], "completed");
    let format_ref = run["nodes"]["format"]["result_ref"].as_str().unwrap();
    assert_eq!(format_ref, ev[2]["result_ref"].as_str().unwrap());
    let out = get(
        &format!("{}/api/v1/results/{format_ref}", d.api),
        Some("test-user"),
    )
    .await;
    assert_eq!(out.status, 200);
    assert_eq!(out.body, json!("1 flights to NYC"));
    // Another user may not read it.
    let other = get(
        &format!("{}/api/v1/results/{format_ref}", d.api),
        Some("mallory"),
    )
    .await;
    assert_eq!(other.status, 404);
    // The run's events endpoint returns the same four, in order.
    let stored = run_events(&d, "test-user", &run_id).await;
    assert_eq!(stored, ev);
}

#[actix_rt::test]
async fn seed_websocket_url_receives_the_four_events() {
    let (_redis, d) = start(&[]).await;
    let mut ws = ws_connect(&d, "/ws?username=test-user").await;
    wait_ready(&d).await;
    let r = post(
        &format!("{}/api/v1/runs", d.api),
        Some("test-user"),
        &seed_curl_body(),
    )
    .await;
    assert_eq!(r.status, 202);
    let ev = ws_take(&mut ws, 4, T).await;
    assert_seed_events(&ev);
    assert_eq!(ev[0]["run_id"], r.body["run_id"]);
}

/// The seed's JavaScript snippet, run in a real JavaScript runtime (Node's
/// built-in WebSocket), prints the seed's four events for the seed's curl.
#[actix_rt::test]
async fn seed_javascript_snippet_prints_the_four_events() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let node_ok = Command::new("node")
        .args([
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !node_ok {
        eprintln!("SKIPPED: no Node.js with a built-in WebSocket on PATH");
        return;
    }
    let (_redis, d) = start(&[]).await;
    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg("--no-warnings")
        .arg(repo().join("examples/js/seed-client.js"))
        .arg(format!("{}/ws?username=test-user", d.ws))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(T).unwrap(), "open");
    wait_ready(&d).await;
    let r = post(
        &format!("{}/api/v1/runs", d.api),
        Some("test-user"),
        &seed_curl_body(),
    )
    .await;
    assert_eq!(r.status, 202);
    let mut events = Vec::new();
    for _ in 0..4 {
        let line = rx.recv_timeout(T).expect("an event line from node");
        let rest = line
            .strip_prefix("Event: ")
            .unwrap_or_else(|| panic!("{line}"));
        let (kind, json) = rest.split_once(' ').unwrap();
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["type"], kind);
        events.push(v);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_seed_events(&events);
}
