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
    for round in 0..3 {
        let user = format!("dave{round}");
        register(&d, &user, &chain("slow-chain", 30, 15)).await;
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
        "frank",
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
        "gina",
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
    register(&d, "hank", &chain("long", 2, 60000)).await;
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
        "jill",
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
        "kim",
        &json!({"tag": "slow-http", "nodes": [
            {"id": "call", "kind": "http", "url": format!("{base}/slow"), "timeout_ms": 200,
             "retry": {"max_attempts": 2, "backoff_ms": 1}}
        ]}),
    )
    .await;
    register(
        &d,
        "kim",
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
    register(&a, "lena", &chain("long-x", 2, 60000)).await;
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

/// Issue 11 (3): five sessions resuming with `last_event_id=0` took the
/// daemon from 29 MiB to 975 MiB, the whole history read into memory for
/// each of them. Replay now goes page by page at the pace the client reads.
#[actix_rt::test]
async fn slow_clients_replaying_a_long_history_keep_the_daemons_memory_bounded() {
    const EVENTS: u64 = 4000;
    const CLIENTS: usize = 6;
    // Generous, on a noisy machine: with the history read into memory once
    // per client the daemon grew by ~160 MiB here; paged, by 10-20 MiB
    // (allocator and buffers), the same for three times the history.
    const BOUND_KIB: u64 = 64 * 1024;
    let (redis, d) = start(&[]).await;
    let user = "hoarder";
    let run_id = uuid::Uuid::new_v4().to_string();
    let mut conn = publisher(&redis).await;
    fill_history(&mut conn, user, &run_id, EVENTS, &"x".repeat(4000)).await;

    let baseline = d.rss_kib();
    let peak = PeakRss::sample(d.pid(), baseline);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(ws_connect(&d, &format!("/ws?username={user}&last_event_id=0")).await);
    }
    // Nobody reads for a while: a daemon that loaded the history for each
    // session would hold it all now.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            actix_rt::spawn(async move {
                let mut events = Vec::new();
                while (events.len() as u64) < EVENTS {
                    match ws_next(&mut ws, T).await {
                        WsEvent::Event(e) => events.push(e),
                        other => panic!("after {} events: {other:?}", events.len()),
                    }
                    if events.len() % 200 == 0 {
                        // A slow reader.
                        actix_rt::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                (ws, events)
            })
        })
        .collect();
    let mut sockets = Vec::new();
    for r in readers {
        let (ws, events) = r.await.unwrap();
        // Every event exactly once, in order.
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=EVENTS).collect::<Vec<u64>>());
        assert!(events.iter().all(|e| e["run_id"] == run_id.as_str()));
        sockets.push(ws);
    }
    let grew = peak.finish().await.saturating_sub(baseline);
    assert!(
        grew < BOUND_KIB,
        "the daemon grew by {grew} KiB (from {baseline} KiB) while {CLIENTS} clients replayed"
    );
    // Then live, on every socket.
    start_run(&d, user, "flight-search", json!({"city": "Hoard"})).await;
    for ws in &mut sockets {
        let ev = ws_take(ws, 4, T).await;
        assert_eq!(ev[0]["type"], "workflow_started", "{ev:?}");
        assert!(matches!(
            ws_next(ws, Duration::from_millis(100)).await,
            WsEvent::Timeout
        ));
    }
    assert_no_panic(&d);
}

/// Issue 11 (7): `last_event_id=18446744073709551615-18446744073709551615`
/// was upgraded, then closed with 1011 "retry" (a client mistake reported
/// as a server fault). Every malformed or impossible id is a 400 before the
/// upgrade.
#[actix_rt::test]
async fn bad_last_event_ids_are_a_400_before_the_upgrade() {
    let (_redis, d) = start(&[]).await;
    let run = start_run(&d, "ivy", "flight-search", json!({"city": "Riga"})).await;
    wait_run(&d, "ivy", &run, T).await;
    let newest = run_events(&d, "ivy", &run).await[3]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tomorrow = format!("{}-0", flowcast_actors::event::now_ms() + 86_400_000);
    for id in [
        "18446744073709551615-18446744073709551615",
        "18446744073709551615-0",
        "99999999999999999999-0",
        tomorrow.as_str(),
        "-1",
        "-1-0",
        "5--1",
        "abc",
        "1-2-3",
        "%2B5-0",
        "5",
        "",
        "%00",
    ] {
        let path = format!("/ws?username=ivy&last_event_id={id}");
        let (status, body) = raw_ws_request(&d, &path, true).await;
        assert_eq!(status, 400, "{id}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid_last_event_id",
            "{id}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("last_event_id"), "{id}: {message}");
    }
    // Real ids still resume: the newest (nothing to replay) and 0 (everything).
    let mut ws = ws_connect(&d, &format!("/ws?username=ivy&last_event_id={newest}")).await;
    assert!(matches!(
        ws_next(&mut ws, Duration::from_millis(300)).await,
        WsEvent::Timeout
    ));
    let mut ws = ws_connect(&d, "/ws?username=ivy&last_event_id=0").await;
    let ev = ws_take(&mut ws, 4, T).await;
    assert!(ev.iter().all(|e| e["run_id"] == run.as_str()), "{ev:?}");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn without_last_event_id_a_socket_starts_live_with_no_replay() {
    let (_redis, d) = start(&[]).await;
    let old = start_run(&d, "jay", "flight-search", json!({"city": "Old"})).await;
    wait_run(&d, "jay", &old, T).await;
    let mut ws = ws_connect(&d, "/ws?username=jay").await;
    wait_ready(&d).await;
    assert!(matches!(
        ws_next(&mut ws, Duration::from_millis(300)).await,
        WsEvent::Timeout
    ));
    let new = start_run(&d, "jay", "flight-search", json!({"city": "New"})).await;
    let ev = ws_take(&mut ws, 4, T).await;
    assert!(ev.iter().all(|e| e["run_id"] == new.as_str()), "{ev:?}");
    assert_eq!(ev[0]["type"], "workflow_started");
}

/// A replay of many pages overlapping a run that publishes meanwhile: the
/// history first, then the run's events, each exactly once.
#[actix_rt::test]
async fn a_long_replay_racing_a_live_run_has_no_gap_and_no_duplicate() {
    const EVENTS: u64 = 3000;
    let (redis, d) = start(&[]).await;
    let user = "kai";
    register(&d, user, &chain("race-chain", 30, 0)).await;
    let filled = uuid::Uuid::new_v4().to_string();
    let mut conn = publisher(&redis).await;
    fill_history(&mut conn, user, &filled, EVENTS, &"y".repeat(200)).await;
    let mut ws = ws_connect(&d, &format!("/ws?username={user}&last_event_id=0")).await;
    let run = start_run(&d, user, "race-chain", json!({})).await;
    let mut all = Vec::new();
    while !all
        .iter()
        .any(|e: &Value| e["type"] == "workflow_completed")
    {
        match ws_next(&mut ws, T).await {
            WsEvent::Event(e) => all.push(e),
            other => panic!("after {} events: {other:?}", all.len()),
        }
    }
    let runs = by_run(&all);
    assert_eq!(runs[&filled], (1..=EVENTS).collect::<Vec<u64>>());
    assert_eq!(runs[&run], (1..=32).collect::<Vec<u64>>());
    let ids: Vec<&str> = all
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| {
            let p = |s: &str| {
                let (a, b) = s.split_once('-').unwrap();
                (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
            };
            p(w[0]) < p(w[1])
        }),
        "event ids out of order"
    );
    assert!(matches!(
        ws_next(&mut ws, Duration::from_millis(300)).await,
        WsEvent::Timeout
    ));
}
