//! No lost events: history and replay, failures and retries, cancel, and
//! `http` nodes against a local test server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use flowcast_actors::store::keys;
use serde_json::{json, Value};

use crate::support::*;

/// Asserts that `events` hold each run's events exactly once, in seq order,
/// with no gap, and returns them grouped by run.
fn by_run(events: &[Value]) -> HashMap<String, Vec<u64>> {
    let mut runs: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events {
        let seqs = runs
            .entry(e["run_id"].as_str().unwrap().to_owned())
            .or_default();
        let seq = e["seq"].as_u64().unwrap();
        if let Some(&last) = seqs.last() {
            assert_eq!(
                seq,
                last + 1,
                "gap or duplicate in run {}: {events:?}",
                e["run_id"]
            );
        }
        seqs.push(seq);
    }
    runs
}

fn chain(tag: &str, n: usize, ms: u64) -> Value {
    let nodes: Vec<Value> = (0..n)
        .map(|i| {
            let mut node = json!({"id": format!("n{i}"), "kind": "delay", "ms": ms});
            if i > 0 {
                node["depends_on"] = json!([format!("n{}", i - 1)]);
            }
            node
        })
        .collect();
    json!({"tag": tag, "nodes": nodes})
}

#[actix_rt::test]
async fn reconnect_with_last_event_id_replays_missed_events_once() {
    let (_redis, d) = start(&[]).await;
    let mut ws = ws_connect(&d, "/ws?username=carol").await;
    wait_ready(&d).await;
    start_run(&d, "carol", "flight-search", json!({"city": "Oslo"})).await;
    let first = ws_take(&mut ws, 4, T).await;
    let last_id = first[3]["event_id"].as_str().unwrap().to_owned();
    drop(ws);

    // Missed while away: three runs.
    let mut missed = Vec::new();
    for city in ["Rome", "Lima", "Nuuk"] {
        missed.push(start_run(&d, "carol", "flight-search", json!({"city": city})).await);
    }
    for r in &missed {
        wait_run(&d, "carol", r, T).await;
    }
    let mut ws = ws_connect(&d, &format!("/ws?username=carol&last_event_id={last_id}")).await;
    let replayed = ws_take(&mut ws, 12, T).await;
    let runs = by_run(&replayed);
    assert_eq!(runs.len(), 3);
    for r in &missed {
        assert_eq!(runs[r], vec![1, 2, 3, 4]);
    }
    // Then live.
    let live = start_run(&d, "carol", "flight-search", json!({"city": "Baku"})).await;
    let ev = ws_take(&mut ws, 4, T).await;
    assert!(ev.iter().all(|e| e["run_id"] == live.as_str()), "{ev:?}");
    assert!(matches!(
        ws_next(&mut ws, Duration::from_millis(300)).await,
        WsEvent::Timeout
    ));
}

#[actix_rt::test]
async fn reconnect_racing_a_publishing_run_has_no_gap_and_no_duplicate() {
    let (_redis, d) = start(&[]).await;
    register(&d, &chain("slow-chain", 30, 15)).await;
    for round in 0..3 {
        let user = format!("dave{round}");
        let mut ws = ws_connect(&d, &format!("/ws?username={user}")).await;
        wait_ready(&d).await;
        let run = start_run(&d, &user, "slow-chain", json!({})).await;
        let seen = ws_take(&mut ws, 5 + round * 3, T).await;
        let last_id = seen.last().unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        drop(ws);
        // Reconnect while the run is still publishing.
        let mut ws = ws_connect(&d, &format!("/ws?username={user}&last_event_id={last_id}")).await;
        let mut rest = Vec::new();
        loop {
            match ws_next(&mut ws, T).await {
                WsEvent::Event(e) => {
                    let done = e["type"] == "workflow_completed";
                    rest.push(e);
                    if done {
                        break;
                    }
                }
                other => panic!("unexpected {other:?} after {rest:?}"),
            }
        }
        let mut all = seen.clone();
        all.extend(rest);
        let runs = by_run(&all);
        assert_eq!(runs[&run], (1..=32).collect::<Vec<u64>>(), "round {round}");
    }
}

#[actix_rt::test]
async fn replay_from_before_the_retained_history_is_signalled() {
    let (_redis, d) = start(&["--history-max", "6"]).await;
    let r1 = start_run(&d, "erin", "flight-search", json!({"city": "A"})).await;
    wait_run(&d, "erin", &r1, T).await;
    let first_id = run_events(&d, "erin", &r1).await[0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for c in ["B", "C"] {
        let r = start_run(&d, "erin", "flight-search", json!({"city": c})).await;
        wait_run(&d, "erin", &r, T).await;
    }
    // 12 events published, 6 kept: resuming after the first event lost five.
    let mut ws = ws_connect(&d, &format!("/ws?username=erin&last_event_id={first_id}")).await;
    let ev = ws_take(&mut ws, 7, T).await;
    assert_eq!(ev[0]["type"], "replay_gap", "{ev:?}");
    assert!(ev[0]["oldest_available"].is_string());
    assert_eq!(ev.len(), 7);
    assert!(ev[1..].iter().all(|e| e["type"] != "replay_gap"));
    // The run's own events stay complete regardless of the user's cap.
    assert_eq!(run_events(&d, "erin", &r1).await.len(), 4);
}

#[actix_rt::test]
async fn a_raising_transform_fails_the_run_once() {
    let (redis, d) = start(&[]).await;
    register(
        &d,
        &json!({"tag": "boom", "nodes": [
            {"id": "ok", "kind": "transform", "filter": "1"},
            {"id": "bad", "kind": "transform", "filter": "error(\"boom\")", "depends_on": ["ok"]},
            {"id": "never", "kind": "transform", "filter": "2", "depends_on": ["bad"]}
        ]}),
    )
    .await;
    let mut sub = Sub::new(&redis, &keys::channel("frank")).await;
    let run = start_run(&d, "frank", "boom", json!({})).await;
    let ev = sub.take(4, T).await;
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "workflow_started",
            "node_completed",
            "node_failed",
            "workflow_failed"
        ]
    );
    assert_eq!(ev[2]["node_id"], "bad");
    assert_eq!(ev[2]["will_retry"], false);
    assert!(ev[2]["error"].as_str().unwrap().contains("boom"));
    assert_eq!(ev[3]["failed_node"], "bad");
    assert!(sub.next(Duration::from_millis(300)).await.is_none());
    let view = wait_run(&d, "frank", &run, T).await;
    assert_eq!(view["status"], "failed");
    // A node never reached ends cancelled, like the ones that were running.
    assert_eq!(view["nodes"]["never"]["status"], "cancelled");
}

#[actix_rt::test]
async fn failure_cancels_running_siblings() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        &json!({"tag": "sib", "nodes": [
            {"id": "slow", "kind": "delay", "ms": 60000},
            {"id": "bad", "kind": "transform", "filter": "error(\"nope\")"},
            {"id": "join", "kind": "transform", "filter": "1", "depends_on": ["slow", "bad"]}
        ]}),
    )
    .await;
    let run = start_run(&d, "gina", "sib", json!({})).await;
    let view = wait_run(&d, "gina", &run, T).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["nodes"]["slow"]["status"], "cancelled");
    assert_eq!(view["counter"], 0);
    let ev = run_events(&d, "gina", &run).await;
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "workflow_failed");
    assert_eq!(last["cancelled_nodes"], json!(["slow"]));
    assert_eq!(
        ev.iter().filter(|e| e["type"] == "workflow_failed").count(),
        1
    );
}

#[actix_rt::test]
async fn cancel_mid_run_is_idempotent_and_a_finished_run_is_a_conflict() {
    let (redis, d) = start(&[]).await;
    register(&d, &chain("long", 2, 60000)).await;
    let mut sub = Sub::new(&redis, &keys::channel("hank")).await;
    let run = start_run(&d, "hank", "long", json!({})).await;
    assert_eq!(sub.take(1, T).await[0]["type"], "workflow_started");
    let url = format!("{}/api/v1/runs/{run}/cancel", d.api);
    let other = post(&url, Some("ivan"), &json!({})).await;
    assert_eq!(other.status, 404, "only the owner may cancel");
    let r = post(&url, Some("hank"), &json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ev = sub.take(1, T).await;
    assert_eq!(ev[0]["type"], "workflow_cancelled");
    assert_eq!(ev[0]["cancelled_nodes"], json!(["n0"]));
    let again = post(&url, Some("hank"), &json!({})).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["status"], "cancelled");
    assert!(
        sub.next(Duration::from_millis(300)).await.is_none(),
        "one terminal event"
    );

    let done = start_run(&d, "hank", "flight-search", json!({"city": "X"})).await;
    wait_run(&d, "hank", &done, T).await;
    let r = post(
        &format!("{}/api/v1/runs/{done}/cancel", d.api),
        Some("hank"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "run_finished");
}

/// A local HTTP server whose `/flaky` answers 500 twice then 200, `/slow`
/// sleeps two seconds, and `/missing` answers 404.
async fn test_server() -> (String, Arc<AtomicUsize>, actix_web::dev::ServerHandle) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let (base, handle) = local_server(move |app| {
        let h = h.clone();
        app.route(
            "/flaky",
            web::post().to(move |body: web::Json<Value>| {
                let n = h.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        HttpResponse::InternalServerError().body("try again")
                    } else {
                        HttpResponse::Ok()
                            .json(json!({"echo": body.into_inner(), "attempt": n + 1}))
                    }
                }
            }),
        )
        .route(
            "/slow",
            web::get().to(|| async {
                actix_rt::time::sleep(Duration::from_secs(2)).await;
                HttpResponse::Ok().json(json!({}))
            }),
        )
        .route(
            "/missing",
            web::get().to(|| async { HttpResponse::NotFound().body("no") }),
        );
    });
    (base, hits, handle)
}

#[actix_rt::test]
async fn http_node_retries_5xx_and_succeeds_on_attempt_three() {
    let (base, hits, srv) = test_server().await;
    let (_redis, d) = start(&["--http-allow", "127.0.0.1/32"]).await;
    register(
        &d,
        &json!({"tag": "flaky", "nodes": [
            {"id": "call", "kind": "http", "method": "POST", "url": format!("{base}/flaky"),
             "body": "{city: .inputs.city}",
             "retry": {"max_attempts": 3, "backoff_ms": 10, "multiplier": 2}}
        ]}),
    )
    .await;
    let run = start_run(&d, "jill", "flaky", json!({"city": "Kyiv"})).await;
    let view = wait_run(&d, "jill", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["nodes"]["call"]["attempt"], 3);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let ev = run_events(&d, "jill", &run).await;
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "workflow_started",
            "node_failed",
            "node_failed",
            "node_completed",
            "workflow_completed"
        ]
    );
    assert_eq!(
        (ev[1]["attempt"].as_u64(), ev[1]["will_retry"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        (ev[2]["attempt"].as_u64(), ev[2]["will_retry"].as_bool()),
        (Some(2), Some(true))
    );
    let out_ref = ev[3]["result_ref"].as_str().unwrap();
    let out = get(&format!("{}/api/v1/results/{out_ref}", d.api), Some("jill")).await;
    assert_eq!(out.body, json!({"echo": {"city": "Kyiv"}, "attempt": 3}));
    srv.stop(false).await;
}

#[actix_rt::test]
async fn http_timeouts_and_4xx_fail_the_run() {
    let (base, _, srv) = test_server().await;
    let (_redis, d) = start(&["--http-allow", "127.0.0.1/32"]).await;
    register(
        &d,
        &json!({"tag": "slow-http", "nodes": [
            {"id": "call", "kind": "http", "url": format!("{base}/slow"), "timeout_ms": 200,
             "retry": {"max_attempts": 2, "backoff_ms": 1}}
        ]}),
    )
    .await;
    register(
        &d,
        &json!({"tag": "missing-http", "nodes": [
            {"id": "call", "kind": "http", "url": format!("{base}/missing"),
             "retry": {"max_attempts": 5, "backoff_ms": 1}}
        ]}),
    )
    .await;
    let run = start_run(&d, "kim", "slow-http", json!({})).await;
    let view = wait_run(&d, "kim", &run, T).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["nodes"]["call"]["attempt"], 2, "timeouts are retried");
    assert!(view["nodes"]["call"]["error"]
        .as_str()
        .unwrap()
        .contains("timed out"));

    let run = start_run(&d, "kim", "missing-http", json!({})).await;
    let view = wait_run(&d, "kim", &run, T).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["nodes"]["call"]["attempt"], 1, "4xx is not retried");
    assert!(view["nodes"]["call"]["error"]
        .as_str()
        .unwrap()
        .contains("404"));
    srv.stop(false).await;
}

#[actix_rt::test]
async fn cancel_through_an_instance_that_does_not_hold_the_run() {
    let (redis, a) = start(&["--instance-id", "runner-a"]).await;
    register(&a, &chain("long-x", 2, 60000)).await;
    let mut sub = Sub::new(&redis, &keys::channel("lena")).await;
    let run = start_run(&a, "lena", "long-x", json!({})).await;
    assert_eq!(sub.take(1, T).await[0]["type"], "workflow_started");
    // A second instance, started after the run was taken by the first.
    let b = Daemon::start(&redis, &["--instance-id", "runner-b", "--role", "runner"]);
    let r = post(
        &format!("{}/api/v1/runs/{run}/cancel", b.api),
        Some("lena"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "cancelling");
    let ev = sub.take(1, T).await;
    assert_eq!(ev[0]["type"], "workflow_cancelled", "{ev:?}");
    assert_eq!(ev[0]["cancelled_nodes"], json!(["n0"]));
    let view = wait_run(&b, "lena", &run, T).await;
    assert_eq!(view["status"], "cancelled");
    let again = post(
        &format!("{}/api/v1/runs/{run}/cancel", b.api),
        Some("lena"),
        &json!({}),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert!(
        sub.next(Duration::from_millis(300)).await.is_none(),
        "one terminal event"
    );
}
