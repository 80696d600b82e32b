//! `GET /events`: Server-Sent Events on the fan-out listener, with a real
//! HTTP client parsing the stream as `EventSource` does. The same events,
//! filters, identity rules, resume and slow-client bound as `/ws`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// The seqs of `run`'s events, in the order received.
fn seqs_of(run: &str, events: &[(String, Value)]) -> Vec<u64> {
    events
        .iter()
        .filter(|(_, e)| e["run_id"] == run)
        .map(|(_, e)| e["seq"].as_u64().unwrap())
        .collect()
}

/// `steps` delay nodes in a line: a run that publishes for a while.
fn line(tag: &str, steps: usize, ms: u64) -> Value {
    let nodes: Vec<Value> = (0..steps)
        .map(|i| match i {
            0 => json!({"id": "s0", "kind": "delay", "ms": ms}),
            _ => json!({"id": format!("s{i}"), "kind": "delay", "ms": ms,
                        "depends_on": [format!("s{}", i - 1)]}),
        })
        .collect();
    json!({"tag": tag, "nodes": nodes})
}

#[actix_rt::test]
async fn events_are_data_lines_with_their_id_and_no_event_field() {
    let (_redis, d) = start(&[]).await;
    let mut s = sse_connect(&d, "/events?username=bob%40example.com", &[]).await;
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("access-control-allow-origin"), Some("*"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    // A fresh stream stands at the (empty) history's start.
    assert_eq!(s.position().await, "0-0");
    let run = start_run(
        &d,
        "bob@example.com",
        "flight-search",
        json!({"city": "NYC"}),
    )
    .await;
    let ev = s.take(4, T).await;
    assert_eq!(seqs_of(&run, &ev), [1, 2, 3, 4]);
    assert_eq!(ev[3].1["type"], "workflow_completed");
    for (id, e) in &ev {
        assert_eq!(e["run_id"], run.as_str());
        assert_eq!(e["event_id"], id.as_str(), "id: is the event_id");
    }
    // The same objects as the run's stored events (and so as WebSocket frames).
    let stored = run_events(&d, "bob@example.com", &run).await;
    let got: Vec<Value> = ev.into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, stored);
    let raw = String::from_utf8(s.raw.clone()).unwrap();
    assert!(!raw.contains("event:"), "no event: field: {raw}");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_dropped_stream_resumes_with_last_event_id_exactly_once_in_order() {
    let (_redis, d) = start(&[]).await;
    let user = "resumer";
    register(&d, user, &line("sse-line", 30, 15)).await;
    let path = format!("/events?username={user}");

    // Dropped before any event: the position alone resumes without a gap.
    let mut s = sse_connect(&d, &path, &[]).await;
    let at = s.position().await;
    drop(s);
    let missed = start_run(&d, user, "flight-search", json!({"city": "Oslo"})).await;
    wait_run(&d, user, &missed, T).await;
    let mut s = sse_connect(&d, &path, &[("Last-Event-ID", &at)]).await;
    assert_eq!(seqs_of(&missed, &s.take(4, T).await), [1, 2, 3, 4]);
    drop(s);

    // Dropped in the middle of a run that keeps publishing; the header
    // (what EventSource sends) wins over a stale last_event_id in the URL.
    for round in 0..3 {
        let mut s = sse_connect(&d, &path, &[]).await;
        s.position().await;
        let run = start_run(&d, user, "sse-line", json!({})).await;
        let mut seen = s.take(4 + round * 5, T).await;
        let last = seen.last().unwrap().0.clone();
        drop(s);
        let stale = format!("{path}&last_event_id=0");
        let mut s = sse_connect(&d, &stale, &[("Last-Event-ID", &last)]).await;
        loop {
            let (id, e) = s.take(1, T).await.remove(0);
            let done = e["type"] == "workflow_completed" && e["run_id"] == run.as_str();
            seen.push((id, e));
            if done {
                break;
            }
        }
        assert_eq!(
            seqs_of(&run, &seen),
            (1..=32).collect::<Vec<u64>>(),
            "round {round}"
        );
        assert!(
            seqs_of(&missed, &seen).is_empty(),
            "nothing from before the id"
        );
        // Then live, and nothing more.
        let next = start_run(&d, user, "flight-search", json!({"city": "Rome"})).await;
        assert_eq!(seqs_of(&next, &s.take(4, T).await), [1, 2, 3, 4]);
        loop {
            match s.next(Duration::from_millis(300)).await {
                SseItem::Timeout => break,
                SseItem::Comment(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn types_and_run_id_filters_apply_to_streams_and_their_replay() {
    let (_redis, d) = start(&[]).await;
    let user = "filterer";
    let mut done = sse_connect(
        &d,
        &format!("/events?username={user}&types=workflow_completed"),
        &[],
    )
    .await;
    let mut all = sse_connect(&d, &format!("/events?username={user}"), &[]).await;
    let first = all.position().await;
    let r1 = start_run(&d, user, "flight-search", json!({"city": "A"})).await;
    let r2 = start_run(&d, user, "flight-search", json!({"city": "B"})).await;
    let ev = done.take(2, T).await;
    assert!(ev.iter().all(|(_, e)| e["type"] == "workflow_completed"));
    all.take(8, T).await;

    // A replay filtered by run: only r2's events, then live ones of r2 only.
    let mut only = sse_connect(
        &d,
        &format!("/events?username={user}&run_id={r2}&last_event_id={first}"),
        &[],
    )
    .await;
    let ev = only.take(4, T).await;
    assert_eq!(seqs_of(&r2, &ev), [1, 2, 3, 4]);
    assert!(seqs_of(&r1, &ev).is_empty());
    start_run(&d, user, "flight-search", json!({"city": "C"})).await;
    assert_eq!(done.take(1, T).await[0].1["type"], "workflow_completed");
    match only.next(Duration::from_millis(500)).await {
        SseItem::Timeout | SseItem::Comment(_) => {}
        other => panic!("the run filter let through {other:?}"),
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn bad_requests_are_refused_before_the_stream_starts() {
    let (_redis, d) = start(&[]).await;
    let long = "u".repeat(129);
    for (path, headers, code) in [
        ("/events", vec![], "missing_username"),
        ("/events?username=", vec![], "invalid_user"),
        ("/events?username=a%0Ab", vec![], "invalid_user"),
        (&*format!("/events?username={long}"), vec![], "invalid_user"),
        ("/events?username=a&types=bogus", vec![], "invalid_types"),
        ("/events?username=a&run_id=nope", vec![], "invalid_run_id"),
        (
            "/events?username=a&last_event_id=1-x",
            vec![],
            "invalid_last_event_id",
        ),
        (
            "/events?username=a",
            vec![("Last-Event-ID", "not-an-id")],
            "invalid_last_event_id",
        ),
        // Later than any event this server can have sent, as on /ws.
        (
            "/events?username=a&last_event_id=18446744073709551615-18446744073709551615",
            vec![],
            "invalid_last_event_id",
        ),
        (
            "/events?username=a",
            vec![("Last-Event-ID", "18446744073709551615-0")],
            "invalid_last_event_id",
        ),
    ] {
        let r = match sse_open(&d, path, &headers).await {
            Ok(_) => panic!("{path} {headers:?}: accepted"),
            Err(r) => r,
        };
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{path}: {}", r.body);
        let ct = r.headers.iter().find(|(k, _)| k == "content-type");
        assert_eq!(ct.map(|(_, v)| v.as_str()), Some("application/json"));
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "access-control-allow-origin" && v == "*"),
            "a browser may read the error"
        );
    }
    // The CORS preflight for Last-Event-ID.
    let events = format!("{}/events", d.ws.replace("ws://", "http://"));
    let r = request("OPTIONS", &events, None, None).await;
    assert_eq!(r.status, 204);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn jwt_mode_streams_only_to_the_tokens_subject() {
    const SECRET: &str = "an-sse-test-secret-of-32-bytes!!";
    let (_redis, d) = start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
    let good = jwt("alice", SECRET, 300);
    let forged = jwt("alice", "another-secret-of-32-bytes-long!", 300);
    let expired = jwt("alice", SECRET, -300);
    for (q, status) in [
        ("username=alice".to_owned(), 401),
        (format!("token={forged}"), 401),
        (format!("token={expired}"), 401),
        (format!("token={good}&username=mallory"), 403),
    ] {
        match sse_open(&d, &format!("/events?{q}"), &[]).await {
            Ok(_) => panic!("{q}: accepted"),
            Err(r) => assert_eq!(r.status, status, "{q}: {}", r.body),
        }
    }
    let mut s = sse_connect(&d, &format!("/events?token={good}"), &[]).await;
    s.position().await;
    let r = request_with_headers(
        "POST",
        &format!("{}/api/v1/runs", d.api),
        &[("Authorization", format!("Bearer {good}").as_bytes())],
        Some(r#"{"tag": "flight-search", "inputs": {"city": "Oslo"}}"#),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let run = r.body["run_id"].as_str().unwrap();
    assert_eq!(seqs_of(run, &s.take(4, T).await), [1, 2, 3, 4]);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn keep_alive_comments_flow_and_a_gone_client_is_cleaned_up() {
    let (_redis, d) = start(&["--heartbeat-interval-ms", "200"]).await;
    let mut s = sse_connect(&d, "/events?username=idle", &[]).await;
    s.position().await;
    let mut keep_alives = 0;
    while keep_alives < 3 {
        match s.next(T).await {
            SseItem::Comment(c) if c == "keep-alive" => keep_alives += 1,
            other => panic!("expected keep-alive comments, got {other:?}"),
        }
    }
    wait_metric(&d, "flowcast_sse_sessions", 1.0).await;
    drop(s);
    // The next keep-alive finds the body gone: session, Fanout and
    // subscription are released.
    wait_metric(&d, "flowcast_sse_sessions", 0.0).await;
    wait_metric(&d, "flowcast_ws_users", 0.0).await;
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_slow_stream_is_cut_and_resumes_losing_nothing() {
    const QUEUE: usize = 16;
    const MAX_EVENTS: u64 = 200_000;
    let (redis, d) = start(&["--max-queue-msgs", &QUEUE.to_string()]).await;
    let user = "slowsse";
    let path = format!("/events?username={user}");
    let mut a = sse_connect(&d, &path, &[]).await;
    let mut b = sse_connect(&d, &path, &[]).await;
    a.position().await;
    b.position().await;

    // A stops reading; B reads each batch (smaller than the queue) before
    // the next is published, so only A's queue can fill.
    let run_id = uuid::Uuid::new_v4().to_string();
    let pad = "x".repeat(2000);
    let mut pubc = publisher(&redis).await;
    let batch = (QUEUE / 2) as u64;
    let mut seq = 0u64;
    loop {
        publish_padded_with_history(&mut pubc, user, &run_id, &mut seq, batch, &pad).await;
        let got = b.take(batch as usize, T).await;
        assert_eq!(got[0].1["seq"], seq - batch + 1, "B out of order");
        if seq.is_multiple_of(512) {
            let m = metrics(&d).await;
            if metric(&m, "flowcast_ws_slow_consumer_closes_total").unwrap_or(0.0) >= 1.0 {
                break;
            }
        }
        assert!(seq < MAX_EVENTS, "A was never cut as a slow consumer");
    }
    // More while A is away.
    publish_padded_with_history(&mut pubc, user, &run_id, &mut seq, batch, &pad).await;
    b.take(batch as usize, T).await;

    // A reads what was queued for it, in order, then the end with a reason.
    let mut next = 1u64;
    let mut last_id = String::new();
    let why = loop {
        match a.next(T).await {
            SseItem::Event { id, data } => {
                assert_eq!(data["seq"], next, "A out of order");
                last_id = id.unwrap();
                next += 1;
            }
            SseItem::Comment(c) if c.starts_with("closed:") => break c,
            SseItem::Comment(_) => {}
            other => panic!("A: expected events then a closing comment, got {other:?}"),
        }
    };
    assert!(why.contains("slow consumer"), "{why}");
    assert_eq!(a.next(T).await, SseItem::Ended);
    assert!(next > 1 && next <= seq, "A saw {} of {seq}", next - 1);

    // A resumes as EventSource does: everything it missed, once, in order.
    let mut a = sse_connect(&d, &path, &[("Last-Event-ID", &last_id)]).await;
    let rest = a.take((seq + 1 - next) as usize, T).await;
    for (i, (_, e)) in rest.iter().enumerate() {
        assert_eq!(e["seq"], next + i as u64, "resumed A out of order");
    }
    let m = metrics(&d).await;
    assert_eq!(
        metric(&m, "flowcast_ws_slow_consumer_closes_total"),
        Some(1.0),
        "only A was slow: {m}"
    );
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn sigterm_ends_streams_with_a_reason() {
    let (_redis, mut d) = start(&[]).await;
    let mut s = sse_connect(&d, "/events?username=leaver", &[]).await;
    s.position().await;
    d.signal("-TERM");
    match s.next(T).await {
        SseItem::Comment(c) => assert!(c.starts_with("closed: 1001"), "{c}"),
        other => panic!("expected a closing comment, got {other:?}"),
    }
    assert_eq!(s.next(T).await, SseItem::Ended);
    assert!(d
        .wait_exit(Duration::from_secs(40))
        .is_some_and(|s| s.success()));
}

#[actix_rt::test]
async fn bench_fanout_measures_sse_and_websocket_on_the_same_scenario() {
    let (redis, d) = start(&[]).await;
    let http = d.ws.replace("ws://", "http://");
    for url in [
        format!("{http}/events?username={{user}}"),
        format!("{}/ws?username={{user}}", d.ws),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
            .args([
                "bench",
                "fanout",
                "--url",
                &url,
                "--redis-url",
                &redis.url(),
            ])
            .args([
                "--users",
                "2",
                "-c",
                "6",
                "--rate",
                "200",
                "--duration",
                "1",
            ])
            .args(["--settle-ms", "500", "--source-ips", "0"])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{url}: {stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["established"], 6, "{url}: {report}");
        assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["lost"], 0, "{url}: {report}");
        assert_eq!(report["duplicates"], 0, "{url}: {report}");
        assert_eq!(report["misrouted"], 0, "{url}: {report}");
    }
    assert_no_panic(&d);
}

/// The identity rule of `/ws` (`auth::stream_user`): in header mode an
/// `X-User-ID` that names someone else than `username` is a 403 before the
/// stream starts; a matching one, or the header alone, streams that user's
/// events.
#[actix_rt::test]
async fn a_stream_whose_user_header_names_someone_else_is_403() {
    let (_redis, d) = start(&[]).await;
    let run = start_run(&d, "alice", "flight-search", json!({"city": "Oslo"})).await;
    wait_run(&d, "alice", &run, T).await;
    let path = "/events?username=alice&last_event_id=0";
    match sse_open(&d, path, &[("X-User-ID", "mallory")]).await {
        Ok(_) => panic!("mallory's gateway identity streamed alice's events"),
        Err(r) => {
            assert_eq!(r.status, 403, "{}", r.body);
            assert_eq!(r.body["error"]["code"], "forbidden", "{}", r.body);
        }
    }
    let mut s = sse_connect(&d, path, &[("X-User-ID", "alice")]).await;
    assert_eq!(seqs_of(&run, &s.take(4, T).await), [1, 2, 3, 4]);
    let mut s = sse_connect(&d, "/events?last_event_id=0", &[("X-User-ID", "alice")]).await;
    assert_eq!(seqs_of(&run, &s.take(4, T).await), [1, 2, 3, 4]);
    assert_no_panic(&d);
}

/// While Redis is away a resume cannot be checked: a 503 before the stream
/// starts, as on `/ws`. A stream without a position needs no Redis to
/// start: it starts live without one and gets events once Redis is back.
#[actix_rt::test]
async fn while_redis_is_away_a_resume_is_503_and_a_new_stream_starts_live() {
    let (mut redis, d) = start(&[]).await;
    redis.stop();
    wait_until_async("/readyz 503", T, || {
        let url = format!("{}/readyz", d.http_base());
        async move { get(&url, None).await.status == 503 }
    })
    .await;
    match sse_open(&d, "/events?username=uma&last_event_id=0", &[]).await {
        Ok(_) => panic!("a resume was accepted without Redis"),
        Err(r) => assert_eq!(r.status, 503, "{}", r.body),
    }
    let (status, body) = raw_ws_request(&d, "/ws?username=uma&last_event_id=0", true).await;
    assert_eq!(status, 503, "the same answer on /ws: {body}");
    let mut s = sse_connect(&d, "/events?username=uma", &[]).await;
    match s.next(Duration::from_millis(300)).await {
        SseItem::Timeout | SseItem::Comment(_) => {}
        other => panic!("no position without Redis, got {other:?}"),
    }
    redis.restart();
    wait_ready_within(&d, Duration::from_secs(60)).await;
    let run = start_run(&d, "uma", "flight-search", json!({"city": "Back"})).await;
    assert_eq!(seqs_of(&run, &s.take(4, T).await), [1, 2, 3, 4]);
    assert_no_panic(&d);
}

/// The SSE variant of `replay::slow_clients_replaying_a_long_history_...`:
/// streams resuming from the start of a long history and reading slowly
/// get every event once, in order, while the daemon reads one page at a
/// time for each of them (the next once the response body took the
/// previous), so its memory stays bounded.
#[actix_rt::test]
async fn slow_streams_replaying_a_long_history_keep_the_daemons_memory_bounded() {
    const EVENTS: u64 = 4000;
    const CLIENTS: usize = 6;
    // As for the WebSocket: the whole history per client would be ~160 MiB.
    const BOUND_KIB: u64 = 64 * 1024;
    let (redis, d) = start(&[]).await;
    let user = "sse-hoarder";
    let run_id = uuid::Uuid::new_v4().to_string();
    let mut conn = publisher(&redis).await;
    fill_history(&mut conn, user, &run_id, EVENTS, &"x".repeat(4000)).await;

    let baseline = d.rss_kib();
    let peak = PeakRss::sample(d.pid(), baseline);
    let path = format!("/events?username={user}&last_event_id=0");
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(sse_connect(&d, &path, &[]).await);
    }
    // Nobody reads for a while.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut s| {
            actix_rt::spawn(async move {
                let mut seqs = Vec::new();
                while (seqs.len() as u64) < EVENTS {
                    let (_, e) = s.take(1, T).await.remove(0);
                    seqs.push(e["seq"].as_u64().unwrap());
                    if seqs.len() % 200 == 0 {
                        // A slow reader.
                        actix_rt::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // What was kept for wire-format checks is not needed here.
                s.raw = Vec::new();
                (s, seqs)
            })
        })
        .collect();
    let mut streams = Vec::new();
    for r in readers {
        let (s, seqs) = r.await.unwrap();
        assert_eq!(seqs, (1..=EVENTS).collect::<Vec<u64>>());
        streams.push(s);
    }
    let grew = peak.finish().await.saturating_sub(baseline);
    assert!(
        grew < BOUND_KIB,
        "the daemon grew by {grew} KiB (from {baseline} KiB) while {CLIENTS} streams replayed"
    );
    // Then live, on every stream, and nothing twice.
    let run = start_run(&d, user, "flight-search", json!({"city": "Hoard"})).await;
    for s in &mut streams {
        assert_eq!(seqs_of(&run, &s.take(4, T).await), [1, 2, 3, 4]);
        loop {
            match s.next(Duration::from_millis(100)).await {
                SseItem::Timeout => break,
                SseItem::Comment(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_no_panic(&d);
}

/// A replay of many pages overlapping a run that publishes meanwhile: the
/// history first, then the run's events, each exactly once (live copies of
/// events the replay already sent are dropped).
#[actix_rt::test]
async fn a_long_replay_racing_a_live_run_has_no_gap_and_no_duplicate() {
    const EVENTS: u64 = 3000;
    let (redis, d) = start(&[]).await;
    let user = "sse-racer";
    register(&d, user, &line("sse-race", 30, 0)).await;
    let filled = uuid::Uuid::new_v4().to_string();
    let mut conn = publisher(&redis).await;
    fill_history(&mut conn, user, &filled, EVENTS, &"y".repeat(200)).await;
    let mut s = sse_connect(&d, &format!("/events?username={user}&last_event_id=0"), &[]).await;
    let run = start_run(&d, user, "sse-race", json!({})).await;
    let mut all = Vec::new();
    loop {
        let (id, e) = s.take(1, T).await.remove(0);
        let done = e["type"] == "workflow_completed";
        all.push((id, e));
        if done {
            break;
        }
    }
    assert_eq!(seqs_of(&filled, &all), (1..=EVENTS).collect::<Vec<u64>>());
    assert_eq!(seqs_of(&run, &all), (1..=32).collect::<Vec<u64>>());
    let id = |s: &str| {
        let (a, b) = s.split_once('-').unwrap();
        (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
    };
    assert!(
        all.windows(2).all(|w| id(&w[0].0) < id(&w[1].0)),
        "event ids out of order"
    );
    loop {
        match s.next(Duration::from_millis(300)).await {
            SseItem::Timeout => break,
            SseItem::Comment(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_no_panic(&d);
}
