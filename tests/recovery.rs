//! "A daemon you can kill": runs survive kill -9 (same instance, or another
//! one after the lease lapses), run requests left pending by a dead runner
//! are taken over, a Redis restart loses no accepted run and never crashes
//! the daemon, SIGTERM drains and exits 0, and `/metrics` is valid
//! Prometheus text whose counters follow the work.
//!
//! No timing thresholds: every wait is a generous deadline on a condition.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use flowcast_actors::store::keys;
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
    let (redis, mut d) = start(first).await;
    let mut conn = redis.conn();
    register(&d, USER, &chain("chain5", NODES, 150)).await;
    let ids = start_runs(&d, "chain5", RUNS).await;

    // Some nodes have completed, and not every run has.
    wait_until("a node_completed with runs unfinished", FINISH, || {
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
    assert_no_panic_in(&first_log);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_frozen_runner_that_wakes_after_a_takeover_changes_nothing() {
    const NODES: usize = 5;
    const RUNS: usize = 30;
    let (redis, mut a) = start(&["--instance-id", "runner-a", "--lease-ms", "2000"]).await;
    let mut conn = redis.conn();
    register(&a, USER, &chain("chain5", NODES, 150)).await;
    let ids = start_runs(&a, "chain5", RUNS).await;
    wait_until("a node_completed with runs unfinished", FINISH, || {
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
    let woken = &a;
    wait_until_async(
        "the woken runner let go of its runs",
        FINISH,
        || async move { scrape(woken).await.value("flowcast_live_runs", &[]) == 0.0 },
    )
    .await;
    for id in &ids {
        let ev = run_events(&b, USER, id).await;
        assert_chain_history(id, &ev, NODES);
    }
    assert_clean(&mut conn, &ids);
    assert!(a.alive());
    assert_no_panic(&a);
    assert_no_panic(&b);
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
    let (redis, mut d) = start(&["--instance-id", dead, "--lease-ms", "2000"]).await;
    let mut conn = redis.conn();
    register(&d, USER, &chain("chain3", NODES, 50)).await;
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
    let failed_reads = "reading run requests failed";
    let before = d.log_count(failed_reads);
    // A read refused after the change: no read issued before it is still
    // blocked waiting for entries.
    wait_until("the runner's reads refused", FINISH, || {
        d.log_count(failed_reads) > before
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
        .arg(keys::GROUP)
        .arg(dead)
        .arg("COUNT")
        .arg(10_000)
        .arg("STREAMS")
        .arg(keys::REQUESTS)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    for id in &late {
        assert_eq!(run_status(&mut conn, id), "queued", "run {id}");
    }
    let queued = ids
        .iter()
        .filter(|id| run_status(&mut conn, id) == "queued")
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
    wait_until("no pending run requests", FINISH, || {
        pending_count(&mut conn) == 0
    })
    .await;
    assert_clean(&mut conn, &ids);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// 3. Redis restart during a stream of runs
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn redis_restart_loses_no_accepted_run_and_answers_503_meanwhile() {
    const NODES: usize = 3;
    let (mut redis, mut d) = start(&[]).await;
    register(&d, USER, &chain("chain3", NODES, 100)).await;

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
    wait_until_async("runs accepted before the outage", FINISH, || {
        let n = accepted(&answers.borrow()).len();
        async move { n >= 10 }
    })
    .await;

    redis.stop();
    // During the outage: not ready, and a run request is refused with a JSON
    // error, never accepted.
    let readyz = format!("{}/readyz", d.api);
    wait_until_async("/readyz 503 during the outage", FINISH, || {
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
    wait_until_async("the client saw the outage", FINISH, || {
        let seen = answers.borrow()[during..].iter().any(|(s, _)| *s == 503);
        async move { seen }
    })
    .await;
    // Hold the outage longer than the Redis timeouts and the retry backoffs.
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    assert!(d.alive(), "daemon died during the outage");
    // Metrics still served, and they show the failing Redis calls.
    let m = scrape(&d).await;
    assert!(m.value("flowcast_redis_errors_total", &[("component", "runner")]) > 0.0);

    redis.restart();
    wait_ready_within(&d, FINISH).await;
    let after = answers.borrow().len();
    wait_until_async("runs accepted after the outage", FINISH, || {
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
    assert!(d.alive(), "daemon died");
    assert_eq!(get(&format!("{}/healthz", d.api), None).await.status, 200);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// 4. SIGTERM drains
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn sigterm_drains_exits_0_and_the_next_start_finishes_the_rest() {
    let (redis, mut d) = start(&["--instance-id", "runner-a", "--drain-grace-ms", "5000"]).await;
    let mut conn = redis.conn();
    // Short runs finish within the grace; long ones (4 × 2 s) cannot.
    register(&d, USER, &chain("short", 2, 100)).await;
    register(&d, USER, &chain("long", 4, 2000)).await;
    let mut short = start_runs(&d, "short", 20).await;
    let long = start_runs(&d, "long", 20).await;
    let all: Vec<String> = short.iter().chain(&long).cloned().collect();
    wait_until("work under way", FINISH, || progress(&mut conn, &all).0 > 0).await;

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
    wait_until("the drain's last log line", FINISH, || d.logged("drained")).await;
    assert_no_panic(&d);
    drop(d);

    // What did not finish is durable and let go of: no lease is left behind.
    let unfinished: Vec<&String> = all
        .iter()
        .filter(|id| !is_terminal(&run_status(&mut conn, id)))
        .collect();
    assert!(
        !unfinished.is_empty(),
        "the long runs cannot finish within the grace"
    );
    for id in &unfinished {
        assert_eq!(
            run_owner(&mut conn, id),
            None,
            "run {id} still leased after the drain"
        );
    }
    // The drain flushed everything it published: stored state and events agree.
    for id in &all {
        let (st, seq, events) = run_stored(&mut conn, id);
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
    let (mut redis, mut d) =
        start(&["--instance-id", "runner-a", "--drain-grace-ms", "3000"]).await;
    let mut conn = redis.conn();
    register(&d, USER, &chain("chain3", 3, 300)).await;
    let ids = start_runs(&d, "chain3", 10).await;
    wait_until("runs started", FINISH, || {
        ids.iter().all(|id| run_status(&mut conn, id) == "running")
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
    assert_no_panic_in(&log);
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
    let (redis, mut d) = start(&["--instance-id", "runner-a", "--drain-grace-ms", "60000"]).await;
    let mut conn = redis.conn();
    register(&d, USER, &chain("long", 3, 1500)).await;
    let ids = start_runs(&d, "long", 10).await;
    wait_until("runs started", FINISH, || {
        ids.iter().all(|id| run_status(&mut conn, id) == "running")
    })
    .await;
    d.signal("-TERM");
    wait_until("the drain began", FINISH, || d.logged("draining")).await;
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
    assert_no_panic_in(&err);
}

// ---------------------------------------------------------------------------
// 5. /metrics
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn metrics_are_prometheus_text_and_count_the_work() {
    const NODES: usize = 3;
    const RUNS: usize = 5;
    let (_redis, d) = start(&[]).await;
    register(&d, USER, &chain("chain3", NODES, 20)).await;
    let before = scrape(&d).await;

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
        let m = scrape(&d).await;
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

/// The run ids of the accepted (202) answers.
fn accepted(answers: &[(u16, Value)]) -> Vec<String> {
    answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b["run_id"].as_str().unwrap().to_owned())
        .collect()
}
