//! "A daemon you can kill": runs survive kill -9 (same instance, or another
//! one after the lease lapses), run requests left pending by a dead runner
//! are taken over, a Redis restart loses no accepted run and never crashes
//! the daemon, SIGTERM drains and exits 0, and `/metrics` is valid
//! Prometheus text whose counters follow the work.
//!
//! No timing thresholds: every wait is a generous deadline on a condition.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const USER: &str = "recovery-user";
/// Deadline for a batch of runs to finish after a restart.
const FINISH: Duration = Duration::from_secs(40);
/// Deadline for requests left pending by a dead runner (lease 2 s) to be
/// taken over and their runs finished: ten leases, far more than needed,
/// but less than an unrelated fixed idle time such as 30 s.
const TAKEOVER: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// 1. kill -9 mid-flight
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn kill9_mid_flight_same_instance_resumes_every_run_exactly_once() {
    kill9_mid_flight(
        &["--instance-id", "runner-a"],
        &["--instance-id", "runner-a"],
    )
    .await;
}

#[actix_rt::test]
async fn kill9_mid_flight_other_instance_takes_over_after_lease_expiry() {
    kill9_mid_flight(
        &["--instance-id", "runner-a", "--lease-ms", "2000"],
        &["--instance-id", "runner-b", "--lease-ms", "2000"],
    )
    .await;
}

async fn kill9_mid_flight(first: &[&str], second: &[&str]) {
    const NODES: usize = 5;
    const RUNS: usize = 60;
    let redis = Redis::start();
    let mut conn = redis.conn();
    let mut d = Daemon::start(&redis, first);
    register(&d, &chain("chain5", NODES, 150)).await;
    let ids = start_runs(&d, "chain5", RUNS).await;

    // Some nodes have completed, and not every run has.
    wait_for("a node_completed with runs unfinished", FINISH, || {
        let (nodes_done, runs_done) = progress(&mut conn, &ids);
        nodes_done > 0 && runs_done < RUNS
    })
    .await;
    d.kill9();
    let first_log = d.log_text();
    drop(d);
    let (nodes_done, runs_done) = progress(&mut conn, &ids);
    assert!(
        runs_done < RUNS,
        "every run finished before the kill; nothing was tested"
    );
    assert!(nodes_done > 0);

    let d = Daemon::start(&redis, second);
    wait_all(&d, &ids, FINISH).await;
    for id in &ids {
        let ev = run_events(&d, USER, id).await;
        assert_chain_history(id, &ev, NODES);
    }
    assert_clean(&mut conn, &ids);
    assert_no_panic(&first_log);
    assert_no_panic(&d.log_text());
}

#[actix_rt::test]
async fn a_frozen_runner_that_wakes_after_a_takeover_changes_nothing() {
    const NODES: usize = 5;
    const RUNS: usize = 30;
    let redis = Redis::start();
    let mut conn = redis.conn();
    let mut a = Daemon::start(&redis, &["--instance-id", "runner-a", "--lease-ms", "2000"]);
    register(&a, &chain("chain5", NODES, 150)).await;
    let ids = start_runs(&a, "chain5", RUNS).await;
    wait_for("a node_completed with runs unfinished", FINISH, || {
        let (nodes_done, runs_done) = progress(&mut conn, &ids);
        nodes_done > 0 && runs_done < RUNS
    })
    .await;
    // Frozen (a long pause, a stalled VM): its leases lapse and another
    // instance takes its runs over and finishes them.
    a.signal("-STOP");
    assert!(progress(&mut conn, &ids).1 < RUNS);
    let b = Daemon::start(&redis, &["--instance-id", "runner-b", "--lease-ms", "2000"]);
    wait_all(&b, &ids, FINISH).await;
    // It wakes with stale run actors whose nodes all finish now; it must
    // let go of every run without writing anything.
    a.signal("-CONT");
    let metrics = format!("{}/metrics", a.api);
    wait_for_async("the woken runner let go of its runs", FINISH, || {
        let url = metrics.clone();
        async move {
            let m = parse_prometheus(&get(&url, None).await.text);
            m.value("flowcast_live_runs", &[]) == 0.0
        }
    })
    .await;
    for id in &ids {
        let ev = run_events(&b, USER, id).await;
        assert_chain_history(id, &ev, NODES);
    }
    assert_clean(&mut conn, &ids);
    assert!(alive(&mut a));
    assert_no_panic(&a.log_text());
    assert_no_panic(&b.log_text());
}

// ---------------------------------------------------------------------------
// 2. Accepted requests not yet initialised when the runner dies
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn pending_requests_of_a_dead_runner_are_reread_by_the_same_instance() {
    pending_requests_taken_over("runner-a", &["--instance-id", "runner-a"]).await;
}

#[actix_rt::test]
async fn pending_requests_of_a_dead_runner_are_claimed_by_another_instance() {
    pending_requests_taken_over(
        "runner-a",
        &["--instance-id", "runner-b", "--lease-ms", "2000"],
    )
    .await;
}

async fn pending_requests_taken_over(dead: &str, second: &[&str]) {
    const NODES: usize = 3;
    const RUNS: usize = 50;
    let redis = Redis::start();
    let mut conn = redis.conn();
    let mut d = Daemon::start(&redis, &["--instance-id", dead, "--lease-ms", "2000"]);
    register(&d, &chain("chain3", NODES, 50)).await;
    // Some runs the runner takes up normally (it dies in the middle of them).
    let mut ids = start_runs(&d, "chain3", RUNS).await;
    // Then its reads stop working (the REST edge still accepts runs), so
    // the next requests are surely accepted but not initialised when it dies.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-xreadgroup")
        .query(&mut conn)
        .unwrap();
    let log = d.log.clone();
    let failed_reads = |log: &std::sync::Mutex<Vec<String>>| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("reading run requests failed"))
            .count()
    };
    let before = failed_reads(&log);
    // A read refused after the change: no read issued before it is still
    // blocked waiting for entries.
    wait_for("the runner's reads refused", FINISH, || {
        failed_reads(&log) > before
    })
    .await;
    let late = start_runs(&d, "chain3", RUNS).await;
    ids.extend(late.iter().cloned());
    d.kill9();
    drop(d);
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("+xreadgroup")
        .query(&mut conn)
        .unwrap();
    // What the dead runner had not read yet becomes its pending work too, as
    // if it had read it just before dying: those requests are now only in
    // its consumer's pending list, which nobody will ever acknowledge.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("runners")
        .arg(dead)
        .arg("COUNT")
        .arg(10_000)
        .arg("STREAMS")
        .arg("flowcast:runs:requests")
        .arg(">")
        .query(&mut conn)
        .unwrap();
    for id in &late {
        assert_eq!(status(&mut conn, id), "queued", "run {id}");
    }
    let queued = ids
        .iter()
        .filter(|id| status(&mut conn, id) == "queued")
        .count();
    let pending = pending_count(&mut conn);
    assert!(
        pending >= queued,
        "{queued} queued runs but only {pending} pending requests"
    );

    let d = Daemon::start(&redis, second);
    wait_all(&d, &ids, TAKEOVER).await;
    for id in &ids {
        let ev = run_events(&d, USER, id).await;
        assert_chain_history(id, &ev, NODES);
    }
    // Every request was acknowledged by the commit that initialised its run.
    wait_for("no pending run requests", FINISH, || {
        pending_count(&mut conn) == 0
    })
    .await;
    assert_clean(&mut conn, &ids);
    assert_no_panic(&d.log_text());
}

// ---------------------------------------------------------------------------
// 3. Redis restart during a stream of runs
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn redis_restart_loses_no_accepted_run_and_answers_503_meanwhile() {
    const NODES: usize = 3;
    let mut redis = Redis::start();
    let mut d = Daemon::start(&redis, &[]);
    register(&d, &chain("chain3", NODES, 100)).await;
    wait_ready(&d).await;

    // A client that keeps starting runs throughout, remembering what it was told.
    let stop = Rc::new(RefCell::new(false));
    let answers: Rc<RefCell<Vec<(u16, Value)>>> = Rc::default();
    let client = {
        let (stop, answers, api) = (stop.clone(), answers.clone(), d.api.clone());
        actix_rt::spawn(async move {
            while !*stop.borrow() {
                let r = post(
                    &format!("{api}/api/v1/runs"),
                    Some(USER),
                    &json!({"tag": "chain3", "inputs": {}}),
                )
                .await;
                answers.borrow_mut().push((r.status, r.body));
                actix_rt::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    wait_for_async("runs accepted before the outage", FINISH, || {
        let n = accepted(&answers.borrow()).len();
        async move { n >= 10 }
    })
    .await;

    redis.stop();
    // During the outage: not ready, and a run request is refused with a JSON
    // error, never accepted.
    let readyz = format!("{}/readyz", d.api);
    wait_for_async("/readyz 503 during the outage", FINISH, || {
        let url = readyz.clone();
        async move { get(&url, None).await.status == 503 }
    })
    .await;
    for _ in 0..3 {
        let r = post(
            &format!("{}/api/v1/runs", d.api),
            Some(USER),
            &json!({"tag": "chain3", "inputs": {}}),
        )
        .await;
        assert_eq!(r.status, 503, "run request during the outage: {}", r.text);
        assert!(
            r.body["error"]["message"].is_string() && r.body["error"]["code"].is_string(),
            "503 without a JSON error: {}",
            r.text
        );
    }
    let during = answers.borrow().len();
    wait_for_async("the client saw the outage", FINISH, || {
        let seen = answers.borrow()[during..].iter().any(|(s, _)| *s == 503);
        async move { seen }
    })
    .await;
    // Hold the outage longer than the Redis timeouts and the retry backoffs.
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    assert!(alive(&mut d), "daemon died during the outage");
    // Metrics still served, and they show the failing Redis calls.
    let m = parse_prometheus(&get(&format!("{}/metrics", d.api), None).await.text);
    assert!(m.value("flowcast_redis_errors_total", &[("component", "runner")]) > 0.0);

    redis.restart();
    wait_for_async("/readyz 200 after the outage", FINISH, || {
        let url = readyz.clone();
        async move { get(&url, None).await.status == 200 }
    })
    .await;
    let after = answers.borrow().len();
    wait_for_async("runs accepted after the outage", FINISH, || {
        let n = accepted(&answers.borrow()[after..]).len();
        async move { n >= 5 }
    })
    .await;
    *stop.borrow_mut() = true;
    client.await.unwrap();

    let answers = answers.borrow().clone();
    for (s, body) in &answers {
        assert!(
            *s == 202 || (*s == 503 && body["error"]["message"].is_string()),
            "unexpected answer {s}: {body}"
        );
    }
    let ids = accepted(&answers);
    wait_all(&d, &ids, FINISH).await;
    for id in &ids {
        let ev = run_events(&d, USER, id).await;
        assert_chain_history(id, &ev, NODES);
    }
    assert!(alive(&mut d), "daemon died");
    assert_eq!(get(&format!("{}/healthz", d.api), None).await.status, 200);
    assert_no_panic(&d.log_text());
}

// ---------------------------------------------------------------------------
// 4. SIGTERM drains
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn sigterm_drains_exits_0_and_the_next_start_finishes_the_rest() {
    let redis = Redis::start();
    let mut conn = redis.conn();
    let mut d = Daemon::start(
        &redis,
        &["--instance-id", "runner-a", "--drain-grace-ms", "5000"],
    );
    // Short runs finish within the grace; long ones (4 × 2 s) cannot.
    register(&d, &chain("short", 2, 100)).await;
    register(&d, &chain("long", 4, 2000)).await;
    let mut short = start_runs(&d, "short", 20).await;
    let long = start_runs(&d, "long", 20).await;
    let all: Vec<String> = short.iter().chain(&long).cloned().collect();
    wait_for("work under way", FINISH, || progress(&mut conn, &all).0 > 0).await;

    d.signal("-TERM");
    // Draining: run requests are refused with a JSON error (any accepted
    // before the drain began must complete like the others).
    let mut all = all;
    loop {
        let r = post(
            &format!("{}/api/v1/runs", d.api),
            Some(USER),
            &json!({"tag": "short", "inputs": {}}),
        )
        .await;
        if r.status == 202 {
            short.push(r.body["run_id"].as_str().unwrap().to_owned());
            all.push(short.last().unwrap().clone());
            continue;
        }
        assert_eq!(r.status, 503, "while draining: {}", r.text);
        assert!(r.body["error"]["message"].is_string(), "{}", r.text);
        break;
    }
    // Generous: the grace plus the HTTP servers' shutdown, on a slow machine.
    let exit = d.wait_exit(Duration::from_secs(30));
    let log = d.log_text();
    let exit = exit.unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{log}"));
    assert!(exit.success(), "exit status {exit:?}; log:\n{log}");
    // The last lines may still be on their way through the pipe.
    let lines = d.log.clone();
    wait_for("the drain's last log line", FINISH, || {
        lines.lock().unwrap().iter().any(|l| l.contains("drained"))
    })
    .await;
    assert_no_panic(&d.log_text());
    drop(d);

    // What did not finish is durable and let go of: no lease is left behind.
    let unfinished: Vec<&String> = all
        .iter()
        .filter(|id| !is_terminal(&status(&mut conn, id)))
        .collect();
    assert!(
        !unfinished.is_empty(),
        "the long runs cannot finish within the grace"
    );
    for id in &unfinished {
        let owner: Option<String> = redis::cmd("GET")
            .arg(format!("flowcast:run:{id}:owner"))
            .query(&mut conn)
            .unwrap();
        assert_eq!(owner, None, "run {id} still leased after the drain");
    }
    // The drain flushed everything it published: stored state and events agree.
    for id in &all {
        let (st, seq, events) = stored(&mut conn, id);
        assert_eq!(seq, events, "run {id} ({st}): seq and stored events differ");
    }

    // Another instance (leases were released, so no wait) finishes the rest.
    let d = Daemon::start(&redis, &["--instance-id", "runner-b"]);
    wait_all(&d, &all, FINISH).await;
    for id in &short {
        assert_chain_history(id, &run_events(&d, USER, id).await, 2);
    }
    for id in &long {
        assert_chain_history(id, &run_events(&d, USER, id).await, 4);
    }
    assert_clean(&mut conn, &all);
}

#[actix_rt::test]
async fn sigterm_with_redis_down_still_exits_0_within_the_grace() {
    let mut redis = Redis::start();
    let mut conn = redis.conn();
    let mut d = Daemon::start(
        &redis,
        &["--instance-id", "runner-a", "--drain-grace-ms", "3000"],
    );
    register(&d, &chain("chain3", 3, 300)).await;
    let ids = start_runs(&d, "chain3", 10).await;
    wait_for("runs started", FINISH, || {
        ids.iter().all(|id| status(&mut conn, id) == "running")
    })
    .await;
    drop(conn);
    // Commits cannot be written and the Publisher cannot flush: the drain
    // must still end, within its grace.
    redis.stop();
    d.signal("-TERM");
    let exit = d.wait_exit(Duration::from_secs(30));
    let log = d.log_text();
    let exit = exit.unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{log}"));
    assert!(exit.success(), "exit status {exit:?}; log:\n{log}");
    assert_no_panic(&log);
    drop(d);

    redis.restart();
    let d = Daemon::start(&redis, &["--instance-id", "runner-a"]);
    wait_all(&d, &ids, FINISH).await;
    for id in &ids {
        assert_chain_history(id, &run_events(&d, USER, id).await, 3);
    }
    assert_clean(&mut redis.conn(), &ids);
}

#[actix_rt::test]
async fn second_signal_exits_at_once_and_nothing_is_lost() {
    let redis = Redis::start();
    let mut conn = redis.conn();
    let mut d = Daemon::start(
        &redis,
        &["--instance-id", "runner-a", "--drain-grace-ms", "60000"],
    );
    register(&d, &chain("long", 3, 1500)).await;
    let ids = start_runs(&d, "long", 10).await;
    wait_for("runs started", FINISH, || {
        ids.iter().all(|id| status(&mut conn, id) == "running")
    })
    .await;
    d.signal("-TERM");
    let log = d.log.clone();
    wait_for("the drain began", FINISH, || {
        log.lock().unwrap().iter().any(|l| l.contains("draining"))
    })
    .await;
    d.signal("-TERM");
    // Far less than the 60 s grace the first signal allowed.
    let exit = d
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("second signal did not exit; log:\n{}", d.log_text()));
    assert!(!exit.success(), "an immediate exit is not a clean drain");
    drop(d);

    let d = Daemon::start(&redis, &["--instance-id", "runner-a"]);
    wait_all(&d, &ids, FINISH).await;
    for id in &ids {
        assert_chain_history(id, &run_events(&d, USER, id).await, 3);
    }
}

#[actix_rt::test]
async fn a_taken_port_fails_start_up_with_a_clear_error_not_a_panic() {
    let redis = Redis::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .arg("serve")
        .args(["--redis-url", &redis.url()])
        .args(["--api-addr", &addr, "--ws-addr", "127.0.0.1:0"])
        .arg("--workflows-dir")
        .arg(repo().join("examples/workflows"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot bind {addr}")), "{err}");
    assert_no_panic(&err);
}

// ---------------------------------------------------------------------------
// 5. /metrics
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn metrics_are_prometheus_text_and_count_the_work() {
    const NODES: usize = 3;
    const RUNS: usize = 5;
    let redis = Redis::start();
    let d = Daemon::start(&redis, &[]);
    register(&d, &chain("chain3", NODES, 20)).await;
    let url = format!("{}/metrics", d.api);
    let before = parse_prometheus(&get(&url, None).await.text);

    let ids = start_runs(&d, "chain3", RUNS).await;
    wait_all(&d, &ids, FINISH).await;

    let accepted = ("flowcast_runs_accepted_total", vec![]);
    let completed = ("flowcast_runs_total", vec![("outcome", "completed")]);
    let events = ("flowcast_events_published_total", vec![]);
    let attempts = (
        "flowcast_node_attempts_total",
        vec![("kind", "delay"), ("outcome", "completed")],
    );
    let want = [
        (&accepted, RUNS),
        (&completed, RUNS),
        (&events, RUNS * (NODES + 2)),
        (&attempts, RUNS * NODES),
    ];
    // The runs are visible as completed a moment before the Publisher has
    // counted the replies: wait for the counters to settle, then compare.
    let deadline = Instant::now() + FINISH;
    let after = loop {
        let m = parse_prometheus(&get(&url, None).await.text);
        let settled = want.iter().all(|((name, labels), n)| {
            m.value(name, labels) - before.value(name, labels) >= *n as f64
        });
        if settled || Instant::now() > deadline {
            break m;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    for ((name, labels), n) in want {
        assert_eq!(
            after.value(name, labels) - before.value(name, labels),
            n as f64,
            "{name}{labels:?}"
        );
    }
    // Types are declared as expected.
    for (name, ty) in [
        ("flowcast_runs_accepted_total", "counter"),
        ("flowcast_runs_total", "counter"),
        ("flowcast_events_published_total", "counter"),
        ("flowcast_node_attempts_total", "counter"),
        ("flowcast_publish_latency_seconds", "histogram"),
    ] {
        assert_eq!(
            after.types.get(name).map(String::as_str),
            Some(ty),
            "{name}"
        );
    }
    let h = after.value("flowcast_publish_latency_seconds_count", &[]);
    assert!(h > 0.0, "publish latency histogram is empty");
    assert_eq!(
        after.value("flowcast_publish_latency_seconds_bucket", &[("le", "+Inf")]),
        h
    );
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// A chain workflow `n1 → n2 → … → nN` of `delay` nodes.
fn chain(tag: &str, n: usize, ms: u64) -> Value {
    let nodes: Vec<Value> = (1..=n)
        .map(|i| {
            let mut node = json!({"id": format!("n{i}"), "kind": "delay", "ms": ms});
            if i > 1 {
                node["depends_on"] = json!([format!("n{}", i - 1)]);
            }
            node
        })
        .collect();
    json!({"tag": tag, "nodes": nodes})
}

/// Starts `n` runs of `tag` concurrently; every one must be accepted.
async fn start_runs(d: &Daemon, tag: &str, n: usize) -> Vec<String> {
    let posts = (0..n).map(|i| start_run(d, USER, tag, json!({"i": i})));
    futures_util::future::join_all(posts).await
}

/// Waits for every run to end; each must have completed.
async fn wait_all(d: &Daemon, ids: &[String], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let run = wait_run(d, USER, id, left.max(Duration::from_millis(1))).await;
        assert_eq!(run["status"], "completed", "run {id}: {run}");
        assert_eq!(run["counter"], 0, "run {id}: {run}");
        for (node, rec) in run["nodes"].as_object().unwrap() {
            assert_eq!(rec["status"], "completed", "run {id} node {node}: {run}");
        }
    }
}

/// A chain run's history: started, each node completed exactly once in
/// order with the exact counter, completed exactly once, seq 1..N.
fn assert_chain_history(run_id: &str, ev: &[Value], nodes: usize) {
    let ctx = || serde_json::to_string_pretty(ev).unwrap();
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap_or(0)).collect();
    let want: Vec<u64> = (1..=ev.len() as u64).collect();
    assert_eq!(seqs, want, "run {run_id}: seq not 1..N: {}", ctx());
    let count = |ty: &str| ev.iter().filter(|e| e["type"] == ty).count();
    assert_eq!(count("workflow_started"), 1, "run {run_id}: {}", ctx());
    assert_eq!(count("workflow_completed"), 1, "run {run_id}: {}", ctx());
    assert_eq!(count("workflow_failed"), 0, "run {run_id}: {}", ctx());
    assert_eq!(count("workflow_cancelled"), 0, "run {run_id}: {}", ctx());
    assert_eq!(count("node_failed"), 0, "run {run_id}: {}", ctx());
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for e in ev.iter().filter(|e| e["type"] == "node_completed") {
        *per_node.entry(e["node_id"].as_str().unwrap()).or_default() += 1;
    }
    for i in 1..=nodes {
        let id = format!("n{i}");
        assert_eq!(
            per_node.get(id.as_str()).copied().unwrap_or(0),
            1,
            "run {run_id}: node_completed of {id} not exactly once: {}",
            ctx()
        );
    }
    assert_eq!(ev.len(), nodes + 2, "run {run_id}: {}", ctx());
    assert_eq!(ev[0]["type"], "workflow_started");
    assert_eq!(ev[0]["nodes"], nodes);
    assert_eq!(ev[0]["entry_nodes"], 1);
    for (i, e) in ev.iter().enumerate().take(nodes + 1).skip(1) {
        assert_eq!(e["type"], "node_completed", "run {run_id}: {}", ctx());
        assert_eq!(e["node_id"], format!("n{i}"), "run {run_id}: {}", ctx());
        let counter = if i < nodes { 1 } else { 0 };
        assert_eq!(e["counter"], counter, "run {run_id}: {}", ctx());
        assert!(e["result_ref"]
            .as_str()
            .unwrap_or("")
            .starts_with("sha256:"));
    }
    let last = &ev[nodes + 1];
    assert_eq!(last["type"], "workflow_completed");
    assert_eq!(last["counter"], 0);
    assert!(ev.iter().all(|e| e["run_id"] == run_id), "{}", ctx());
    // event ids increase along the run.
    let ids: Vec<(u64, u64)> = ev
        .iter()
        .map(|e| {
            let (a, b) = e["event_id"].as_str().unwrap().split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "run {run_id}: event ids do not increase: {}",
        ctx()
    );
}

/// Finished runs leave nothing behind: not active, no lease.
fn assert_clean(conn: &mut redis::Connection, ids: &[String]) {
    let active: Vec<String> = redis::cmd("SMEMBERS")
        .arg("flowcast:runs:active")
        .query(conn)
        .unwrap();
    assert!(active.is_empty(), "runs still active: {active:?}");
    for id in ids {
        let owner: Option<String> = redis::cmd("GET")
            .arg(format!("flowcast:run:{id}:owner"))
            .query(conn)
            .unwrap();
        assert_eq!(owner, None, "finished run {id} still leased");
    }
}

fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

fn status(conn: &mut redis::Connection, id: &str) -> String {
    let s: Option<String> = redis::cmd("HGET")
        .arg(format!("flowcast:run:{id}"))
        .arg("status")
        .query(conn)
        .unwrap();
    s.unwrap_or_default()
}

/// (status, stored seq, stored events) of a run.
fn stored(conn: &mut redis::Connection, id: &str) -> (String, u64, u64) {
    let (st, seq, n): (Option<String>, Option<u64>, u64) = redis::pipe()
        .hget(format!("flowcast:run:{id}"), "status")
        .hget(format!("flowcast:run:{id}"), "seq")
        .llen(format!("flowcast:run:{id}:events"))
        .query(conn)
        .unwrap();
    (st.unwrap_or_default(), seq.unwrap_or(0), n)
}

/// (node_completed events, finished runs) over `ids`, read from Redis.
fn progress(conn: &mut redis::Connection, ids: &[String]) -> (usize, usize) {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.lrange(format!("flowcast:run:{id}:events"), 0, -1);
    }
    let lists: Vec<Vec<String>> = pipe.query(conn).unwrap();
    let mut nodes = 0;
    let mut runs = 0;
    for l in lists {
        nodes += l
            .iter()
            .filter(|e| e.contains("\"type\":\"node_completed\""))
            .count();
        runs += l
            .iter()
            .filter(|e| e.contains("\"type\":\"workflow_completed\""))
            .count();
    }
    (nodes, runs)
}

/// Run requests delivered to some runner and not acknowledged.
fn pending_count(conn: &mut redis::Connection) -> usize {
    let v: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("flowcast:runs:requests")
        .arg("runners")
        .query(conn)
        .unwrap();
    redis::from_redis_value(v[0].clone()).unwrap()
}

/// The run ids of the accepted (202) answers.
fn accepted(answers: &[(u16, Value)]) -> Vec<String> {
    answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b["run_id"].as_str().unwrap().to_owned())
        .collect()
}

fn alive(d: &mut Daemon) -> bool {
    d.wait_exit(Duration::from_millis(50)).is_none()
}

/// Polls a condition until it holds; panics at the deadline.
async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A parsed Prometheus text exposition.
#[derive(Default, Debug)]
struct Metrics {
    /// family → type
    types: HashMap<String, String>,
    /// (name, sorted labels) → value
    samples: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Metrics {
    /// A sample's value; 0 when absent (a counter not yet incremented).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.samples
            .get(&(name.to_owned(), l))
            .copied()
            .unwrap_or(0.0)
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses Prometheus text format 0.0.4 strictly, panicking on any malformed
/// line: `# HELP name text`, `# TYPE name type`, other comments, and samples
/// `name{label="value",...} value [timestamp]`.
fn parse_prometheus(text: &str) -> Metrics {
    let mut m = Metrics::default();
    let mut helped = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| -> ! { panic!("/metrics line {}: {why}: {line:?}", n + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(h) = rest.strip_prefix("HELP ") {
                let name = h.split(' ').next().unwrap_or("");
                if !is_metric_name(name) {
                    bad("HELP of a bad name");
                }
                if helped.insert(name.to_owned(), ()).is_some() {
                    bad("second HELP");
                }
            } else if let Some(t) = rest.strip_prefix("TYPE ") {
                let parts: Vec<&str> = t.split(' ').collect();
                if parts.len() != 2 || !is_metric_name(parts[0]) {
                    bad("malformed TYPE");
                }
                if !matches!(
                    parts[1],
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    bad("unknown type");
                }
                if m.types
                    .insert(parts[0].to_owned(), parts[1].to_owned())
                    .is_some()
                {
                    bad("second TYPE");
                }
            }
            continue;
        }
        // name
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if !is_metric_name(name) {
            bad("bad metric name");
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').unwrap_or_else(|| bad("label without ="));
                let key = &r[..eq];
                if !is_label_name(key) {
                    bad("bad label name");
                }
                let v = r[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| bad("unquoted label value"));
                let mut value = String::new();
                let mut chars = v.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            _ => bad("bad escape in label value"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                };
                labels.push((key.to_owned(), value));
                r = &v[end + 1..];
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                } else if !r.starts_with('}') {
                    bad("labels not separated by ,");
                }
            }
            rest = r;
        }
        let fields: Vec<&str> = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| bad("no space before the value"))
            .split(' ')
            .collect();
        if fields.is_empty() || fields.len() > 2 {
            bad("expected a value and an optional timestamp");
        }
        let value = match fields[0] {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| bad("value is not a float")),
        };
        if fields.len() == 2 && fields[1].parse::<i64>().is_err() {
            bad("timestamp is not an integer");
        }
        // Every sample belongs to a declared family.
        let family = [name, "_bucket", "_sum", "_count"]
            .iter()
            .skip(1)
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| {
                matches!(
                    m.types.get(*f).map(String::as_str),
                    Some("histogram" | "summary")
                )
            })
            .unwrap_or(name);
        if !m.types.contains_key(family) {
            bad("sample without a TYPE line before it");
        }
        labels.sort();
        if m.samples.insert((name.to_owned(), labels), value).is_some() {
            bad("duplicate sample");
        }
    }
    assert!(!m.samples.is_empty(), "/metrics has no samples:\n{text}");
    m
}
