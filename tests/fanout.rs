//! Fan-out: WebSocket sessions through per-user Fanout actors.
//!
//! Every test runs the real daemon against a private Redis and drives it with
//! real WebSocket clients (tokio-tungstenite), raw HTTP where the upgrade must
//! fail, and PUBLISH straight to Redis where the test needs exact control of
//! what is on a user's channel. Nothing asserts how long something took:
//! deadlines are generous and only bound a wait.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

// ---------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn each_user_sees_only_their_own_runs_and_every_socket_gets_everything() {
    let (redis, d) = start(&[]).await;
    let users = ["alice", "bob", "bob@example.com"];
    let mut a1 = ws_connect(&d, "/ws?username=alice").await;
    let mut a2 = ws_connect(&d, "/ws?username=alice").await;
    let mut b = ws_connect(&d, "/ws?username=bob").await;
    let mut e = ws_connect(&d, "/ws?username=bob%40example.com").await;
    wait_ready(&d).await;

    // One PubSub connection for the whole process, one subscription per user.
    for u in users {
        assert_eq!(numsub(&redis, u), 1, "channel of {u}");
    }
    assert_eq!(
        pubsub_clients(&redis),
        1,
        "one PubSub connection per process"
    );
    // (Gauges move when the actors start, just after the handshake.)
    wait_metric(&d, "flowcast_ws_sessions", 4.0).await;
    wait_metric(&d, "flowcast_ws_users", 3.0).await;

    let mut runs = Vec::new();
    for u in users {
        runs.push(start_run(&d, u, "flight-search", json!({"city": u})).await);
    }
    for (ws, run) in [
        (&mut a1, &runs[0]),
        (&mut a2, &runs[0]),
        (&mut b, &runs[1]),
        (&mut e, &runs[2]),
    ] {
        let ev = ws_take(ws, 4, T).await;
        assert_run_events(&ev, run);
    }
    for (u, run) in users.iter().zip(&runs) {
        let view = wait_run(&d, u, run, T).await;
        assert_eq!(view["status"], "completed");
    }

    // Every run's events are out. A sentinel on each channel must be the next
    // thing each socket sees: nothing of another user slipped in after them.
    let mut pubc = publisher(&redis).await;
    for u in users {
        publish(&mut pubc, u, &sentinel(u)).await;
    }
    for (ws, u) in [
        (&mut a1, "alice"),
        (&mut a2, "alice"),
        (&mut b, "bob"),
        (&mut e, "bob@example.com"),
    ] {
        let ev = ws_take(ws, 1, T).await;
        assert_eq!(ev[0], sentinel(u), "{u}");
    }

    // The last session of a user unsubscribes its channel; the others stay.
    for ws in [&mut a1, &mut a2] {
        ws.close(None).await.unwrap();
    }
    drop((a1, a2));
    wait_until("alice's channel unsubscribed", T, || {
        numsub(&redis, "alice") == 0
    })
    .await;
    assert_eq!(numsub(&redis, "bob"), 1);
    publish(&mut pubc, "bob", &sentinel("bob-again")).await;
    assert_eq!(ws_take(&mut b, 1, T).await[0], sentinel("bob-again"));
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn users_joining_at_once_are_all_subscribed_once_ready() {
    let (redis, d) = start(&[]).await;
    let users: Vec<String> = (0..24).map(|i| format!("crowd-{i}")).collect();
    let paths: Vec<String> = users.iter().map(|u| format!("/ws?username={u}")).collect();
    let mut socks = futures_util::future::join_all(paths.iter().map(|p| ws_connect(&d, p))).await;
    // Ready means every live channel is subscribed: no event published after
    // this may be missed.
    wait_ready(&d).await;
    let mut pubc = publisher(&redis).await;
    for u in &users {
        publish(&mut pubc, u, &sentinel(u)).await;
    }
    for (ws, u) in socks.iter_mut().zip(&users) {
        assert_eq!(ws_take(ws, 1, T).await[0], sentinel(u), "{u}");
    }
    assert_eq!(pubsub_clients(&redis), 1);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn types_and_run_id_filters_are_applied_server_side() {
    let (redis, d) = start(&[]).await;
    register(
        &d,
        "carol",
        &json!({"tag": "hold", "nodes": [{"id": "wait", "kind": "delay", "ms": 3_600_000}]}),
    )
    .await;
    let mut all = ws_connect(&d, "/ws?username=carol").await;
    let mut done = ws_connect(&d, "/ws?username=carol&types=workflow_completed").await;
    wait_ready(&d).await;

    // Two runs that wait: the run_id filter can be set before they end.
    let h1 = start_run(&d, "carol", "hold", json!({})).await;
    let h2 = start_run(&d, "carol", "hold", json!({})).await;
    let started = ws_take(&mut all, 2, T).await;
    let mut seen: Vec<&str> = started
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "workflow_started", "{e}");
            e["run_id"].as_str().unwrap()
        })
        .collect();
    seen.sort();
    let mut want = vec![h1.as_str(), h2.as_str()];
    want.sort();
    assert_eq!(seen, want);
    let mut only_h1 = ws_connect(&d, &format!("/ws?username=carol&run_id={h1}")).await;
    wait_ready(&d).await;
    for h in [&h2, &h1] {
        let r = post(
            &format!("{}/api/v1/runs/{h}/cancel", d.api),
            Some("carol"),
            &json!({}),
        )
        .await;
        assert!(r.status == 200 || r.status == 202, "cancel: {}", r.text);
    }
    // Both cancellations reach the unfiltered socket (in either order)...
    let mut cancelled = Vec::new();
    while cancelled.len() < 2 {
        let e = ws_take(&mut all, 1, T).await.remove(0);
        let r = e["run_id"].as_str().unwrap().to_owned();
        assert!(r == h1 || r == h2, "{e}");
        if e["type"] == "workflow_cancelled" {
            cancelled.push(r);
        }
    }
    cancelled.sort();
    assert_eq!(cancelled, want);
    // ...and only h1's reach the run_id socket.
    loop {
        let e = ws_take(&mut only_h1, 1, T).await.remove(0);
        assert_eq!(e["run_id"], h1.as_str(), "{e}");
        if e["type"] == "workflow_cancelled" {
            break;
        }
    }

    // Two complete runs: the types filter passes only their ends.
    let r1 = start_run(&d, "carol", "flight-search", json!({"city": "Oslo"})).await;
    let ev = ws_take(&mut all, 4, T).await;
    assert_run_events(&ev, &r1);
    let r2 = start_run(&d, "carol", "flight-search", json!({"city": "Rome"})).await;
    let ev = ws_take(&mut all, 4, T).await;
    assert_run_events(&ev, &r2);
    let ev = ws_take(&mut done, 2, T).await;
    for (e, r) in ev.iter().zip([&r1, &r2]) {
        assert_eq!(e["type"], "workflow_completed", "{ev:?}");
        assert_eq!(e["run_id"], r.as_str());
    }

    // Sentinels: whatever was filtered out would have come before them.
    let mut pubc = publisher(&redis).await;
    let s_done = json!({"type": "workflow_completed", "run_id": h1, "seq": 99, "sentinel": true});
    publish(
        &mut pubc,
        "carol",
        &json!({"type": "node_completed", "run_id": h1, "seq": 98}),
    )
    .await;
    publish(&mut pubc, "carol", &s_done).await;
    assert_eq!(ws_take(&mut done, 1, T).await[0], s_done);
    let ev = ws_take(&mut only_h1, 2, T).await;
    assert_eq!(ev[0]["seq"], 98, "{ev:?}");
    assert_eq!(ev[1], s_done);
    let ev = ws_take(&mut all, 2, T).await;
    assert_eq!(ev[1], s_done);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// Slow consumer
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn a_slow_socket_is_closed_with_4008_and_never_slows_the_others() {
    const QUEUE: usize = 16;
    // ~2 KB each: 40 MB, far more than the loopback socket buffers hold.
    const MIN_EVENTS: u64 = 20_000;
    const MAX_EVENTS: u64 = 200_000;
    let queue = QUEUE.to_string();
    let (redis, d) = start(&["--max-queue-msgs", &queue]).await;
    let user = "slowpoke";
    let mut a = ws_connect(&d, &format!("/ws?username={user}")).await;
    let mut b = ws_connect(&d, &format!("/ws?username={user}")).await;
    wait_ready(&d).await;

    // A stops reading. Events go out in batches smaller than the queue, and B
    // reads each batch before the next is published, so B's queue can never
    // fill whatever the scheduling; A's fills once the socket buffers between
    // it and the server are full.
    let run_id = uuid::Uuid::new_v4().to_string();
    let pad = "x".repeat(2000);
    let mut pubc = publisher(&redis).await;
    let batch = (QUEUE / 2) as u64;
    let mut seq = 0u64;
    let mut evicted_at = None;
    loop {
        publish_padded(&mut pubc, user, &run_id, &mut seq, batch, &pad).await;
        let got = ws_take(&mut b, batch as usize, T).await;
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e["seq"], seq - batch + 1 + i as u64, "B out of order");
        }
        if evicted_at.is_none() && seq.is_multiple_of(512) {
            let m = metrics(&d).await;
            if metric(&m, "flowcast_ws_slow_consumer_closes_total").unwrap_or(0.0) >= 1.0 {
                evicted_at = Some(seq);
            }
        }
        if evicted_at.is_some_and(|at| seq >= (at + 512).max(MIN_EVENTS)) {
            break;
        }
        assert!(seq < MAX_EVENTS, "A was never closed as a slow consumer");
    }
    let m = metrics(&d).await;
    assert_eq!(
        metric(&m, "flowcast_ws_slow_consumer_closes_total"),
        Some(1.0),
        "only A is slow: {m}"
    );

    // A resumes: what was buffered for it, in order and without a gap, then 4008.
    let mut next = 1u64;
    let close = loop {
        match ws_next(&mut a, T).await {
            WsEvent::Event(e) => {
                assert_eq!(e["seq"], next, "A out of order");
                next += 1;
            }
            other => break other,
        }
    };
    match close {
        WsEvent::Closed(Some((code, reason))) => {
            assert_eq!(code, 4008, "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("A: expected a 4008 close after {next} events, got {other:?}"),
    }
    assert!(
        next > 1 && next - 1 < seq,
        "A saw {} of {seq} events",
        next - 1
    );

    // B is still live.
    let last = json!({"type": "workflow_completed", "run_id": run_id, "seq": seq + 1});
    publish(&mut pubc, user, &last).await;
    assert_eq!(ws_take(&mut b, 1, T).await[0], last);
    let m = metrics(&d).await;
    assert_eq!(
        metric_labeled(&m, "flowcast_redis_reconnects_total", "subscriber").unwrap_or(0.0),
        0.0,
        "the Subscriber's connection must stay up: {m}"
    );
    assert_no_panic(&d);
}

/// actix/actix-web#2441: a `WebsocketContext` whose socket stopped draining
/// is no longer polled, so its timers and mailbox stall. A peer that never
/// reads again must still be cut, and its session cleaned up, without the
/// stalled actor's help: the Fanout stops feeding it at once (4008) and the
/// kernel's TCP user timeout aborts the connection.
#[actix_rt::test]
async fn a_peer_that_never_reads_again_is_cut_and_cleaned_up() {
    let (redis, d) = start(&["--max-queue-msgs", "16", "--tcp-user-timeout-ms", "1500"]).await;
    let user = "stuck";
    // Connected, then never polled again.
    let _stuck = ws_connect(&d, &format!("/ws?username={user}")).await;
    wait_ready(&d).await;
    wait_metric(&d, "flowcast_ws_sessions", 1.0).await;
    let pad = "x".repeat(2000);
    let mut pubc = publisher(&redis).await;
    let mut seq = 0u64;
    // Small batches, paced: the session keeps its mailbox drained into the
    // socket until the socket buffers are full and the actor stalls; only
    // then does its queue fill.
    loop {
        publish_padded(&mut pubc, user, "stuck", &mut seq, 8, &pad).await;
        actix_rt::time::sleep(Duration::from_millis(2)).await;
        if seq.is_multiple_of(256) {
            let m = metrics(&d).await;
            if metric(&m, "flowcast_ws_slow_consumer_closes_total").unwrap_or(0.0) >= 1.0 {
                break;
            }
        }
        assert!(seq < 200_000, "the stuck peer was never evicted");
    }
    // The peer still reads nothing; the kernel cuts it and the session,
    // the Fanout and the channel subscription are all released.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = metrics(&d).await;
        if metric(&m, "flowcast_ws_sessions") == Some(0.0)
            && metric(&m, "flowcast_ws_users") == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck session was never cleaned up:\n{m}"
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    wait_until("the channel is unsubscribed", T, || {
        numsub(&redis, user) == 0
    })
    .await;
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn the_shared_subscription_stays_up_and_loses_nothing_while_idle() {
    let (redis, d) = start(&[]).await;
    let mut ws = ws_connect(&d, "/ws?username=steady").await;
    wait_ready(&d).await;
    let conn_before = pubsub_client_ids(&redis);
    // The Subscriber's connection, and the runner's control listener.
    assert_eq!(conn_before.len(), 2);
    assert_eq!(pubsub_clients(&redis), 1);
    // A steady trickle across several of the Subscriber's health checks: every
    // event arrives, in order, over the same Redis connection.
    let mut pubc = publisher(&redis).await;
    let until = Instant::now() + Duration::from_secs(12);
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let e = json!({"type": "node_completed", "run_id": "steady", "seq": seq});
        publish(&mut pubc, "steady", &e).await;
        assert_eq!(ws_take(&mut ws, 1, T).await[0], e);
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pubsub_client_ids(&redis),
        conn_before,
        "the Subscriber reconnected"
    );
    let m = metrics(&d).await;
    assert_eq!(
        metric_labeled(&m, "flowcast_redis_errors_total", "subscriber").unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// Redis restart
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn sessions_survive_a_redis_restart() {
    let (mut redis, d) = start(&[]).await;
    let mut w1 = ws_connect(&d, "/ws?username=dora").await;
    let mut w2 = ws_connect(&d, "/ws?username=erin").await;
    wait_ready(&d).await;
    let mut pubc = publisher(&redis).await;
    let before = sentinel("before");
    publish(&mut pubc, "dora", &before).await;
    assert_eq!(ws_take(&mut w1, 1, T).await[0], before);
    drop(pubc);

    redis.stop();
    // Down: not ready, and the Subscriber knows it lost its channels.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(&format!("{}/readyz", d.http_base()), None).await;
        if r.status == 503 && r.body["subscriber"] == false {
            break;
        }
        assert!(
            r.status == 503 || r.status == 200,
            "readyz: {} {}",
            r.status,
            r.text
        );
        assert!(
            Instant::now() < deadline,
            "readyz never said down: {}",
            r.text
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let r = get(&format!("{}/readyz", d.http_base()), None).await;
        assert_eq!(r.status, 503, "Redis is down: {}", r.text);
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }

    // A session that joins during the outage is subscribed on reconnect.
    let mut late = ws_connect(&d, "/ws?username=fynn").await;

    redis.restart();
    wait_ready_within(&d, Duration::from_secs(60)).await;

    // The same sockets get new events.
    let mut pubc = publisher(&redis).await;
    for (ws, u) in [(&mut w1, "dora"), (&mut w2, "erin"), (&mut late, "fynn")] {
        let s = sentinel(&format!("after-{u}"));
        publish(&mut pubc, u, &s).await;
        assert_eq!(ws_take(ws, 1, T).await[0], s, "{u}");
    }
    let run = start_run(&d, "dora", "flight-search", json!({"city": "Lima"})).await;
    let ev = ws_take(&mut w1, 4, Duration::from_secs(60)).await;
    assert_run_events(&ev, &run);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// Split roles
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn a_fanout_only_daemon_streams_runs_of_a_runner_only_daemon() {
    let redis = Redis::start();
    let fan = Daemon::start(&redis, &["--role", "fanout", "--instance-id", "fan-1"]);
    let run = Daemon::start(&redis, &["--role", "runner", "--instance-id", "run-1"]);
    assert!(fan.api.is_empty() && run.ws.is_empty());
    let mut ws = ws_connect(&fan, "/ws?username=test-user").await;
    wait_ready(&fan).await;
    wait_ready(&run).await;
    let r = post(
        &format!("{}/api/v1/runs", run.api),
        Some("test-user"),
        &json!({"tag": "flight-search", "inputs": {"city": "NYC"}}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ev = ws_take(&mut ws, 4, T).await;
    assert_run_events(&ev, r.body["run_id"].as_str().unwrap());
    // The runner serves no WebSockets; the fan-out has no REST API.
    let h = get(&format!("{}/healthz", fan.http_base()), None).await;
    assert_eq!(h.status, 200);
    let m = metrics(&fan).await;
    assert_eq!(metric(&m, "flowcast_ws_sessions"), Some(1.0), "{m}");
    assert_no_panic(&fan);
    assert_no_panic(&run);
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn bad_requests_get_an_http_error_before_the_upgrade() {
    let (_redis, d) = start(&[]).await;
    let long = "u".repeat(129);
    let cases: [(&str, &str); 9] = [
        ("/ws", "missing_username"),
        ("/ws?types=node_completed", "missing_username"),
        ("/ws?username=", "invalid_user"),
        ("/ws?username=a%01b", "invalid_user"),
        ("/ws?username=a%0Ab", "invalid_user"),
        (&format!("/ws?username={long}"), "invalid_user"),
        ("/ws?username=a&types=bogus", "invalid_types"),
        ("/ws?username=a&types=", "invalid_types"),
        ("/ws?username=a&run_id=not-a-uuid", "invalid_run_id"),
    ];
    for (path, code) in cases {
        // A real WebSocket client is refused with the status...
        let url = format!("{}{path}", d.ws);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400, "{path}")
            }
            Err(e) => panic!("{path}: expected an HTTP 400, got {e}"),
            Ok(_) => panic!("{path}: upgraded"),
        }
        // ...and the body says why, as JSON.
        let (status, body) = raw_ws_request(&d, path, true).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    // A plain GET without the upgrade headers is a client error too.
    for path in ["/ws?username=alice", "/ws"] {
        let r = get(&format!("{}{path}", d.http_base()), None).await;
        assert!(
            (400..500).contains(&r.status),
            "{path}: {} {}",
            r.status,
            r.text
        );
        assert!(r.body["error"]["code"].is_string(), "{path}: {}", r.text);
    }
    // A good one still works afterwards.
    let mut ws = ws_connect(&d, "/ws?username=after-bad-input").await;
    ws_send(&mut ws, Message::text(r#"{"type":"ping"}"#)).await;
    assert_eq!(ws_take(&mut ws, 1, T).await[0], json!({"type": "pong"}));
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn unexpected_frames_get_close_codes_and_ping_gets_pong() {
    let (redis, d) = start(&[]).await;

    let mut ws = ws_connect(&d, "/ws?username=frames").await;
    ws_send(&mut ws, Message::text(r#"{"type":"ping"}"#)).await;
    assert_eq!(ws_take(&mut ws, 1, T).await[0], json!({"type": "pong"}));
    // Whitespace is not meaning: the same JSON message is still a ping.
    ws_send(&mut ws, Message::text(r#"{ "type" : "ping" }"#)).await;
    assert_eq!(ws_take(&mut ws, 1, T).await[0], json!({"type": "pong"}));
    // A WebSocket-level ping is answered too (tungstenite hides the pong; the
    // session must simply stay usable).
    ws_send(&mut ws, Message::Ping(b"hi".to_vec().into())).await;
    ws_send(&mut ws, Message::text(r#"{"type":"ping"}"#)).await;
    assert_eq!(ws_take(&mut ws, 1, T).await[0], json!({"type": "pong"}));
    // A client that just goes away (no close frame) ends its session too.
    drop(ws);

    let mut ws = ws_connect(&d, "/ws?username=frames").await;
    ws_send(&mut ws, Message::binary(vec![1u8, 2, 3])).await;
    assert_closed_with(&mut ws, 1003).await;

    let mut ws = ws_connect(&d, "/ws?username=frames").await;
    ws_send(&mut ws, Message::text("hello")).await;
    assert_closed_with(&mut ws, 1008).await;

    let mut ws = ws_connect(&d, "/ws?username=frames").await;
    ws_send(&mut ws, Message::text(r#"{"type":"subscribe"}"#)).await;
    assert_closed_with(&mut ws, 1008).await;

    let mut ws = ws_connect(&d, "/ws?username=frames").await;
    // The send itself may fail once the server has closed: that is fine.
    let _ = ws.send(Message::text("x".repeat(100 * 1024))).await;
    assert_closed_with(&mut ws, 1009).await;

    // A frame of exactly 64 KiB is accepted (and, not being a ping, refused as text).
    let mut ws = ws_connect(&d, "/ws?username=frames").await;
    let _ = ws.send(Message::text("y".repeat(64 * 1024))).await;
    assert_closed_with(&mut ws, 1008).await;

    // A client close is answered and the session goes away cleanly.
    let mut ws = ws_connect(&d, "/ws?username=frames").await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match ws_next(&mut ws, T).await {
        WsEvent::Closed(_) => {}
        other => panic!("expected the close to be answered, got {other:?}"),
    }

    // Every one of those sessions is gone.
    wait_metric(&d, "flowcast_ws_sessions", 0.0).await;
    wait_metric(&d, "flowcast_ws_users", 0.0).await;
    wait_until("frames's channel unsubscribed", T, || {
        numsub(&redis, "frames") == 0
    })
    .await;
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn sessions_per_user_are_limited_with_429() {
    let (redis, d) = start(&["--max-sessions-per-user", "2"]).await;
    let mut s1 = ws_connect(&d, "/ws?username=greedy").await;
    let mut s2 = ws_connect(&d, "/ws?username=greedy").await;
    let url = format!("{}/ws?username=greedy", d.ws);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        Err(e) => panic!("expected an HTTP 429, got {e}"),
        Ok(_) => panic!("a third session was accepted"),
    }
    let (status, body) = raw_ws_request(&d, "/ws?username=greedy", true).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    // Other users are not affected.
    let mut other = ws_connect(&d, "/ws?username=modest").await;
    wait_ready(&d).await;
    // The two sessions work (the refused ones left nothing behind).
    let mut pubc = publisher(&redis).await;
    publish(&mut pubc, "greedy", &sentinel("g1")).await;
    publish(&mut pubc, "modest", &sentinel("m1")).await;
    assert_eq!(ws_take(&mut s1, 1, T).await[0], sentinel("g1"));
    assert_eq!(ws_take(&mut s2, 1, T).await[0], sentinel("g1"));
    assert_eq!(ws_take(&mut other, 1, T).await[0], sentinel("m1"));
    let m = metrics(&d).await;
    assert_eq!(metric(&m, "flowcast_ws_sessions"), Some(3.0), "{m}");

    // Once one leaves, a new one is accepted.
    s1.close(None).await.unwrap();
    let _ = ws_next(&mut s1, T).await;
    drop(s1);
    let deadline = Instant::now() + T;
    let mut s3 = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {
                assert!(Instant::now() < deadline, "the freed slot never came back");
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reconnect: {e}"),
        }
    };
    wait_ready(&d).await;
    publish(&mut pubc, "greedy", &sentinel("g2")).await;
    assert_eq!(ws_take(&mut s3, 1, T).await[0], sentinel("g2"));
    assert_eq!(ws_take(&mut s2, 1, T).await[0], sentinel("g2"));
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// Heartbeat
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn heartbeat_keeps_live_clients_and_drops_dead_peers() {
    let (redis, d) = start(&[
        "--heartbeat-interval-ms",
        "200",
        "--client-timeout-ms",
        "300",
    ])
    .await;
    let mut ws = ws_connect(&d, "/ws?username=beat").await;
    wait_ready(&d).await;
    // Keep polling (tungstenite answers the server's pings) for > 2 s.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        match ws_next(&mut ws, until.saturating_duration_since(Instant::now())).await {
            WsEvent::Timeout => {}
            other => panic!("a live client must stay connected, got {other:?}"),
        }
    }
    let mut pubc = publisher(&redis).await;
    publish(&mut pubc, "beat", &sentinel("still-here")).await;
    assert_eq!(ws_take(&mut ws, 1, T).await[0], sentinel("still-here"));

    // A peer that completes the handshake and then never answers is dropped:
    // the server's pings arrive, then the connection ends. Meanwhile the live
    // client keeps polling (and so answering).
    let (status, mut tcp, _, rest) = raw_request(&d, "/ws?username=beat", true).await;
    assert_eq!(status, 101);
    let mut buf = vec![0u8; 4096];
    let mut saw_ping = rest.contains(&0x89);
    let deadline = actix_rt::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => saw_ping |= buf[..n].contains(&0x89),
            },
            e = ws_next(&mut ws, Duration::from_secs(3600)) => {
                panic!("the live client got {e:?}")
            }
            _ = actix_rt::time::sleep_until(deadline) => {
                panic!("a peer that never answers pings was not dropped")
            }
        }
    }
    assert!(saw_ping, "the server never pinged");
    // The live one is unaffected.
    publish(&mut pubc, "beat", &sentinel("after-dead-peer")).await;
    assert_eq!(ws_take(&mut ws, 1, T).await[0], sentinel("after-dead-peer"));
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn sigterm_closes_sessions_with_1001_and_exits_0() {
    let (_redis, mut d) = start(&[]).await;
    let mut w1 = ws_connect(&d, "/ws?username=zed").await;
    let mut w2 = ws_connect(&d, "/ws?username=zed").await;
    let mut w3 = ws_connect(&d, "/ws?username=yan&types=workflow_completed").await;
    wait_ready(&d).await;
    d.signal("-TERM");
    for ws in [&mut w1, &mut w2, &mut w3] {
        assert_closed_with(ws, 1001).await;
    }
    let status = d
        .wait_exit(Duration::from_secs(60))
        .expect("the daemon did not exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", d.log_text());
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Checks a flight-search run's four events, in order, all of `run`.
fn assert_run_events(ev: &[Value], run: &str) {
    assert_eq!(ev.len(), 4, "{ev:?}");
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "workflow_started",
            "node_completed",
            "node_completed",
            "workflow_completed"
        ],
        "{ev:?}"
    );
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["run_id"], run, "another run's event: {ev:?}");
        assert_eq!(e["seq"], i as u64 + 1, "{ev:?}");
    }
}

/// A synthetic event that names `tag`.
fn sentinel(tag: &str) -> Value {
    json!({"type": "workflow_completed", "run_id": format!("sentinel-{tag}"), "counter": 0, "seq": 1})
}
