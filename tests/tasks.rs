//! Work done outside the daemon, driven over REST as a worker, a person
//! and a service would: task queues and the worker protocol (long-poll
//! claims, tokens, leases, progress), approvals, signals, their survival of
//! a daemon kill -9, tenancy, and bad input. The shipped worker libraries
//! are tested as processes in `workers`.
//!
//! No timing thresholds: every wait is a generous deadline on an outcome.

use std::time::Duration;

use flowcast_actors::store::keys;
use redis::Commands;
use serde_json::{json, Value};

use crate::support::*;

fn task_flow(tag: &str, task: Value) -> Value {
    let mut work = json!({"id": "work", "kind": "task", "queue": "q", "depends_on": ["prep"],
                          "input": "{city: .inputs.city, n: .nodes.prep.n}"});
    if let (Some(w), Some(t)) = (work.as_object_mut(), task.as_object()) {
        w.extend(t.clone());
    }
    json!({"tag": tag, "nodes": [
        {"id": "prep", "kind": "transform", "filter": "{n: 41}"},
        work,
        {"id": "after", "kind": "transform", "depends_on": ["work"], "filter": ".nodes.work.answer + 1"}
    ]})
}

#[actix_rt::test]
async fn a_waiting_claim_gets_the_task_worked_outside_and_the_run_completes() {
    let (_redis, d) = start(&[]).await;
    register(&d, "ada", &task_flow("outside", json!({}))).await;
    // A long-poll that waits far longer than this test would: it is
    // answered because the task appears, not because its wait ends.
    let waiting = {
        let api = d.api.clone();
        actix_rt::spawn(async move {
            post(
                &format!("{api}/api/v1/tasks/claim"),
                Some("ada"),
                &json!({"queues": ["other", "q"], "max": 5, "wait_ms": 60000, "worker_id": "w1"}),
            )
            .await
        })
    };
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let run = start_run(&d, "ada", "outside", json!({"city": "Oslo"})).await;
    let got = actix_rt::time::timeout(T, waiting).await.unwrap().unwrap();
    assert_eq!(got.status, 200, "{}", got.text);
    let tasks = got.body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{}", got.text);
    let t = &tasks[0];
    assert_eq!(t["run_id"], run.as_str());
    assert_eq!(t["node_id"], "work");
    assert_eq!(t["attempt"], 1);
    assert_eq!(t["queue"], "q");
    assert_eq!(t["input"], json!({"city": "Oslo", "n": 41}));
    assert_eq!(t["lease_ms"], 30000);
    let (id, token) = (t["task_id"].as_str().unwrap(), t["token"].clone());

    // Waiting holds the token: the counter is unchanged.
    let view = get(&format!("{}/api/v1/runs/{run}", d.api), Some("ada")).await;
    assert_eq!(view.body["counter"], 1);
    assert_eq!(view.body["nodes"]["work"]["status"], "active");

    let hb = task_report(
        &d,
        "ada",
        id,
        "heartbeat",
        &json!({"token": token, "progress": 0.5, "message": "half way"}),
    )
    .await;
    assert_eq!(hb.status, 200, "{}", hb.text);
    assert_eq!(hb.body["lease_ms"], 30000);
    let p = wait_event(&d, "ada", &run, "node_progress", T, |_| true).await;
    assert_eq!(
        (
            p["node_id"].clone(),
            p["progress"].clone(),
            p["message"].clone()
        ),
        (json!("work"), json!(0.5), json!("half way"))
    );

    // A wrong token changes nothing.
    let wrong = task_report(
        &d,
        "ada",
        id,
        "complete",
        &json!({"token": "nope", "output": 1}),
    )
    .await;
    assert_eq!(wrong.status, 409, "{}", wrong.text);
    assert_eq!(wrong.body["error"]["code"], "stale_token");

    complete(&d, "ada", t, json!({"answer": 41})).await;
    let done = wait_run(&d, "ada", &run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["nodes"]["work"]["attempt"], 1);
    assert_eq!(
        node_output(&d, "ada", &done, "work").await,
        json!({"answer": 41})
    );
    assert_eq!(node_output(&d, "ada", &done, "after").await, json!(42));

    // A repeated completion is a 409 and changes nothing.
    let again = task_report(
        &d,
        "ada",
        id,
        "complete",
        &json!({"token": token, "output": 7}),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.body["error"]["code"], "stale_token");
    let events = run_events(&d, "ada", &run).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "workflow_started",
            "node_completed",
            "node_progress",
            "node_completed",
            "node_completed",
            "workflow_completed"
        ],
        "{events:?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    let m = scrape(&d).await;
    assert_eq!(m.value("flowcast_tasks_claimed_total", &[]), 1.0);
    for (report, outcome, n) in [
        ("heartbeat", "taken", 1.0),
        ("complete", "taken", 1.0),
        ("complete", "stale", 2.0),
    ] {
        let labels = [("report", report), ("outcome", outcome)];
        assert_eq!(
            m.value("flowcast_task_reports_total", &labels),
            n,
            "{report} {outcome}"
        );
    }
    assert_eq!(m.value("flowcast_task_claims_waiting", &[]), 0.0);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn progress_reports_are_coalesced_to_about_ten_a_second_per_node() {
    let (_redis, d) = start(&[]).await;
    register(&d, "pat", &task_flow("progress", json!({}))).await;
    let run = start_run(&d, "pat", "progress", json!({})).await;
    let t = claim_one(&d, "pat", "q").await;
    let id = t["task_id"].as_str().unwrap();
    let began = std::time::Instant::now();
    for i in 1..=40 {
        let r = task_report(
            &d,
            "pat",
            id,
            "heartbeat",
            &json!({"token": t["token"], "progress": f64::from(i) / 40.0}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // The last report is published, whenever it came.
    wait_event(&d, "pat", &run, "node_progress", T, |e| {
        e["progress"] == 1.0
    })
    .await;
    let elapsed_ms = began.elapsed().as_millis() as usize;
    complete(&d, "pat", &t, json!({"answer": 1})).await;
    wait_run(&d, "pat", &run, T).await;
    let events = run_events(&d, "pat", &run).await;
    let progress: Vec<f64> = events
        .iter()
        .filter(|e| e["type"] == "node_progress")
        .map(|e| e["progress"].as_f64().unwrap())
        .collect();
    // At most one per 100 ms of reporting (plus the first and the last).
    assert!(
        progress.len() <= elapsed_ms / 100 + 2,
        "{} events in {elapsed_ms} ms",
        progress.len()
    );
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
}

#[actix_rt::test]
async fn a_lapsed_lease_hands_the_task_out_again_with_the_next_attempt() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "lee",
        &task_flow(
            "lease",
            json!({"heartbeat_ms": 300,
        "retry": {"max_attempts": 3, "backoff_ms": 0}}),
        ),
    )
    .await;
    let run = start_run(&d, "lee", "lease", json!({})).await;
    let first = claim_one(&d, "lee", "q").await;
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["lease_ms"], 300);
    // This worker goes silent; the next claim gets the next attempt once
    // the lease has lapsed and the retry policy handed it out again.
    let second = claim_one(&d, "lee", "q").await;
    assert_eq!(second["attempt"], 2, "{second}");
    assert_eq!(second["run_id"], first["run_id"]);
    assert_ne!(second["token"], first["token"]);
    assert_ne!(second["task_id"], first["task_id"]);
    let failed = wait_event(&d, "lee", &run, "node_failed", T, |_| true).await;
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["will_retry"], true);
    assert!(
        failed["error"].as_str().unwrap().contains("lease expired"),
        "{failed}"
    );

    // The silent worker wakes up: its report is refused, nothing changes.
    for (verb, body) in [
        ("heartbeat", json!({"token": first["token"]})),
        (
            "complete",
            json!({"token": first["token"], "output": {"answer": 0}}),
        ),
    ] {
        let late = task_report(&d, "lee", first["task_id"].as_str().unwrap(), verb, &body).await;
        assert_eq!(late.status, 409, "{verb}: {}", late.text);
        assert_eq!(late.body["error"]["code"], "stale_token");
    }
    complete(&d, "lee", &second, json!({"answer": 1})).await;
    let done = wait_run(&d, "lee", &run, T).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(node_output(&d, "lee", &done, "after").await, json!(2));
    let events = run_events(&d, "lee", &run).await;
    assert_eq!(count(&events, "node_completed", Some("work")), 1);
    assert_eq!(count(&events, "workflow_completed", None), 1);
}

#[actix_rt::test]
async fn a_failed_task_follows_the_retry_policy_and_then_fails_the_run() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "fay",
        &task_flow(
            "fails",
            json!({"retry": {"max_attempts": 2, "backoff_ms": 0}}),
        ),
    )
    .await;
    let run = start_run(&d, "fay", "fails", json!({})).await;
    let t1 = claim_one(&d, "fay", "q").await;
    let r = task_report(
        &d,
        "fay",
        t1["task_id"].as_str().unwrap(),
        "fail",
        &json!({"token": t1["token"], "error": "disk full", "retryable": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t2 = claim_one(&d, "fay", "q").await;
    assert_eq!(t2["attempt"], 2);
    let r = task_report(
        &d,
        "fay",
        t2["task_id"].as_str().unwrap(),
        "fail",
        &json!({"token": t2["token"], "error": "still full"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let done = wait_run(&d, "fay", &run, T).await;
    assert_eq!(done["status"], "failed", "{done}");
    let events = run_events(&d, "fay", &run).await;
    let wf = events
        .iter()
        .find(|e| e["type"] == "workflow_failed")
        .unwrap();
    assert_eq!(wf["failed_node"], "work");
    assert!(wf["error"].as_str().unwrap().contains("still full"), "{wf}");

    // A failure that is not retryable fails at once.
    let run = start_run(&d, "fay", "fails", json!({})).await;
    let t = claim_one(&d, "fay", "q").await;
    task_report(
        &d,
        "fay",
        t["task_id"].as_str().unwrap(),
        "fail",
        &json!({"token": t["token"], "error": "bad input", "retryable": false}),
    )
    .await;
    let done = wait_run(&d, "fay", &run, T).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["nodes"]["work"]["attempt"], 1);
}

#[actix_rt::test]
async fn another_users_worker_never_sees_the_task() {
    let (_redis, d) = start(&[]).await;
    register(&d, "alice", &task_flow("mine", json!({}))).await;
    let run = start_run(&d, "alice", "mine", json!({})).await;
    wait_until_async("the task is queued", T, || async {
        let r = get(&format!("{}/api/v1/runs/{run}", d.api), Some("alice")).await;
        r.body["nodes"]["work"]["status"] == "active"
    })
    .await;
    let mallory = claim(&d, "mallory", &["q"], 100, 500).await;
    assert_eq!(mallory.status, 200);
    assert_eq!(mallory.body["tasks"], json!([]), "{}", mallory.text);
    let t = claim_one(&d, "alice", "q").await;
    let id = t["task_id"].as_str().unwrap();
    // Even with the token, another user's task is absent.
    for (verb, body) in [
        ("heartbeat", json!({"token": t["token"]})),
        ("complete", json!({"token": t["token"], "output": 1})),
        ("fail", json!({"token": t["token"], "error": "x"})),
    ] {
        let r = task_report(&d, "mallory", id, verb, &body).await;
        assert_eq!(r.status, 404, "{verb}: {}", r.text);
    }
    let r = decide(&d, "mallory", &run, "work", "approve", &json!({})).await;
    assert_eq!(r.status, 404);
    complete(&d, "alice", &t, json!({"answer": 0})).await;
    assert_eq!(wait_run(&d, "alice", &run, T).await["status"], "completed");
}

#[actix_rt::test]
async fn one_task_wakes_one_of_many_idle_claims_and_the_rest_stay_parked() {
    let (_redis, d) = start(&[]).await;
    register(&d, "ivy", &task_flow("many", json!({}))).await;
    let mut idle = Vec::new();
    for i in 0..40 {
        let api = d.api.clone();
        let queue = if i % 2 == 0 { "q" } else { "elsewhere" };
        idle.push(actix_rt::spawn(async move {
            post(
                &format!("{api}/api/v1/tasks/claim"),
                Some("ivy"),
                &json!({"queues": [queue], "wait_ms": 3000}),
            )
            .await
        }));
    }
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let run = start_run(&d, "ivy", "many", json!({})).await;
    let mut got = Vec::new();
    for h in idle {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        got.extend(r.body["tasks"].as_array().unwrap().clone());
    }
    assert_eq!(got.len(), 1, "exactly one claim gets the one task: {got:?}");
    assert_eq!(got[0]["run_id"], run.as_str());
}

fn approvals() -> Value {
    json!({"tag": "gates", "nodes": [
        {"id": "start", "kind": "transform", "filter": "{amount: .inputs.amount}"},
        {"id": "yes", "kind": "approval", "depends_on": ["start"],
         "prompt": "\"pay \\(.nodes.start.amount) EUR?\""},
        {"id": "no", "kind": "approval", "depends_on": ["start"]},
        {"id": "late", "kind": "approval", "depends_on": ["start"], "timeout_ms": 400, "on_timeout": "approve"},
        {"id": "later", "kind": "approval", "depends_on": ["start"], "timeout_ms": 400},
        {"id": "end", "kind": "transform", "depends_on": ["yes", "no", "late", "later"],
         "filter": "[.nodes.yes.approved, .nodes.no.approved, .nodes.late.approved, .nodes.later.approved]"}
    ]})
}

#[actix_rt::test]
async fn approvals_are_approved_rejected_and_timed_out_once_by_their_owner() {
    let (_redis, d) = start(&[]).await;
    register(&d, "olga", &approvals()).await;
    let run = start_run(&d, "olga", "gates", json!({"amount": 120})).await;
    let asked = wait_event(&d, "olga", &run, "approval_required", T, |e| {
        e["node_id"] == "yes"
    })
    .await;
    assert_eq!(asked["prompt"], "pay 120 EUR?");
    assert_eq!(asked["expires_at"], Value::Null);
    let other = wait_event(&d, "olga", &run, "approval_required", T, |e| {
        e["node_id"] == "late"
    })
    .await;
    let expires = other["expires_at"].as_u64().expect("a deadline");
    assert!(expires >= other["ts_ms"].as_u64().unwrap(), "{other}");
    wait_event(&d, "olga", &run, "approval_required", T, |e| {
        e["node_id"] == "no"
    })
    .await;

    // Only the owner decides; another user sees no such run.
    let r = decide(&d, "eve", &run, "yes", "approve", &json!({})).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = decide(&d, "olga", &run, "start", "approve", &json!({})).await;
    assert_eq!(r.status, 404, "not an approval: {}", r.text);
    let r = decide(
        &d,
        "olga",
        &run,
        "yes",
        "approve",
        &json!({"comment": "fine"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["decision"]["approved"], true);
    assert_eq!(r.body["decision"]["by"], "olga");
    for verb in ["approve", "reject"] {
        let r = decide(&d, "olga", &run, "yes", verb, &json!({})).await;
        assert_eq!(r.status, 409, "{}", r.text);
        assert_eq!(r.body["error"]["code"], "already_decided");
    }
    let r = decide(
        &d,
        "olga",
        &run,
        "no",
        "reject",
        &json!({"comment": "too much"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let done = wait_run(&d, "olga", &run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    let yes = node_output(&d, "olga", &done, "yes").await;
    assert_eq!(
        (
            yes["approved"].clone(),
            yes["by"].clone(),
            yes["comment"].clone(),
            yes["timed_out"].clone()
        ),
        (json!(true), json!("olga"), json!("fine"), json!(false))
    );
    assert!(yes["at"].as_u64().unwrap() > 0);
    let no = node_output(&d, "olga", &done, "no").await;
    assert_eq!(
        (no["approved"].clone(), no["comment"].clone()),
        (json!(false), json!("too much"))
    );
    let late = node_output(&d, "olga", &done, "late").await;
    assert_eq!(
        (
            late["approved"].clone(),
            late["by"].clone(),
            late["timed_out"].clone()
        ),
        (json!(true), Value::Null, json!(true))
    );
    assert_eq!(late["at"].as_u64(), Some(expires));
    let later = node_output(&d, "olga", &done, "later").await;
    assert_eq!(
        (later["approved"].clone(), later["timed_out"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(
        node_output(&d, "olga", &done, "end").await,
        json!([true, false, true, false])
    );
    // Too late now.
    let r = decide(&d, "olga", &run, "late", "reject", &json!({})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let events = run_events(&d, "olga", &run).await;
    assert_eq!(count(&events, "approval_required", None), 4);
    assert_eq!(count(&events, "workflow_completed", None), 1);
}

#[actix_rt::test]
async fn a_decision_on_a_node_that_is_not_waiting_is_a_409_and_changes_nothing() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "nat",
        &json!({"tag": "later", "nodes": [
            {"id": "slow", "kind": "signal", "name": "go"},
            {"id": "gate", "kind": "approval", "depends_on": ["slow"]}
        ]}),
    )
    .await;
    let run = start_run(&d, "nat", "later", json!({})).await;
    let r = decide(&d, "nat", &run, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "not_waiting");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gate"),
        "{}",
        r.text
    );
    let r = decide(&d, "nat", &run, "gate", "approve", &json!({"comment": 5})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = decide(
        &d,
        "nat",
        &run,
        "gate",
        "approve",
        &json!({"comment": "x".repeat(5000)}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = request(
        "POST",
        &format!("{}/api/v1/runs/{run}/nodes/gate/approve", d.api),
        Some("nat"),
        Some("{oops"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        send_signal(&d, "nat", &run, "go", &json!(1)).await.status,
        202
    );
    wait_event(&d, "nat", &run, "approval_required", T, |_| true).await;
    let r = decide(&d, "nat", &run, "gate", "reject", &json!(null)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let done = wait_run(&d, "nat", &run, T).await;
    assert_eq!(
        node_output(&d, "nat", &done, "gate").await["approved"],
        false
    );
    let r = decide(&d, "nat", &run, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "run_finished");
}

#[actix_rt::test]
async fn signals_complete_their_nodes_once_buffered_or_not_and_time_out() {
    let (_redis, d) = start(&[]).await;
    register(&d, "sig", &json!({"tag": "signals", "nodes": [
        {"id": "first", "kind": "signal", "name": "go"},
        {"id": "second", "kind": "signal", "name": "more", "depends_on": ["first"]},
        {"id": "both", "kind": "transform", "depends_on": ["second"], "filter": "[.nodes.first, .nodes.second]"}
    ]})).await;
    let run = start_run(&d, "sig", "signals", json!({})).await;
    // `more` comes before its node waits: it is kept for it.
    let r = send_signal(&d, "sig", &run, "more", &json!({"b": [1, 2]})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "received");
    let r = send_signal(&d, "sig", &run, "more", &json!("again")).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "already_signalled");
    let r = send_signal(&d, "sig", &run, "nothing-listens", &json!({})).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = send_signal(&d, "sig", &run, "bad%20name", &json!({})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        send_signal(&d, "eve", &run, "go", &json!({})).await.status,
        404
    );
    let r = send_signal(&d, "sig", &run, "go", &json!({"a": "x"})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let done = wait_run(&d, "sig", &run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        node_output(&d, "sig", &done, "both").await,
        json!([{"a": "x"}, {"b": [1, 2]}])
    );
    let r = send_signal(&d, "sig", &run, "go", &json!({})).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "run_finished");

    // A signal that does not come in time fails its node per its policy.
    register(&d, "sig", &json!({"tag": "impatient", "nodes": [
        {"id": "wait", "kind": "signal", "name": "go", "timeout_ms": 300, "retry": {"max_attempts": 2}}
    ]})).await;
    let run = start_run(&d, "sig", "impatient", json!({})).await;
    let done = wait_run(&d, "sig", &run, T).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["nodes"]["wait"]["attempt"], 2);
    let events = run_events(&d, "sig", &run).await;
    assert_eq!(count(&events, "node_failed", Some("wait")), 2);
    assert!(
        events.iter().any(|e| e["type"] == "workflow_failed"
            && e["error"].as_str().unwrap_or("").contains("timed out")),
        "{events:?}"
    );
}

#[actix_rt::test]
async fn a_daemon_killed_with_tasks_claimed_and_approvals_pending_loses_nothing() {
    let args = ["--instance-id", "outside-a"];
    let (redis, mut d) = start(&args).await;
    register(
        &d,
        "kim",
        &json!({"tag": "crash", "nodes": [
            {"id": "work", "kind": "task", "queue": "q", "input": ".inputs"},
            {"id": "queued", "kind": "task", "queue": "later"},
            {"id": "gate", "kind": "approval"},
            {"id": "sig", "kind": "signal", "name": "go"},
            {"id": "end", "kind": "transform", "depends_on": ["work", "queued", "gate", "sig"],
             "filter": "[.nodes.work, .nodes.queued, .nodes.gate.approved, .nodes.sig]"}
        ]}),
    )
    .await;
    let run = start_run(&d, "kim", "crash", json!({"x": 1})).await;
    let t = claim_one(&d, "kim", "q").await;
    wait_event(&d, "kim", &run, "approval_required", T, |_| true).await;
    let before = run_events(&d, "kim", &run).await;

    d.kill9();
    let d = Daemon::start(&redis, &args);
    wait_ready(&d).await;
    // The worker kept its task and token through the restart.
    let hb = task_report(
        &d,
        "kim",
        t["task_id"].as_str().unwrap(),
        "heartbeat",
        &json!({"token": t["token"], "progress": 0.9}),
    )
    .await;
    assert_eq!(hb.status, 200, "{}", hb.text);
    complete(&d, "kim", &t, json!("worked")).await;
    // The queued task is still there for a worker, once.
    let q = claim_one(&d, "kim", "later").await;
    assert_eq!(q["attempt"], 1);
    complete(&d, "kim", &q, json!("queued-worked")).await;
    // The approval still waits, and was not asked again.
    let r = decide(&d, "kim", &run, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        send_signal(&d, "kim", &run, "go", &json!(7)).await.status,
        202
    );
    let done = wait_run(&d, "kim", &run, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        node_output(&d, "kim", &done, "end").await,
        json!(["worked", "queued-worked", true, 7])
    );
    let events = run_events(&d, "kim", &run).await;
    assert_eq!(
        &events[..before.len()],
        &before[..],
        "history is kept as it was"
    );
    assert_eq!(count(&events, "approval_required", None), 1, "{events:?}");
    for n in ["work", "queued", "gate", "sig", "end"] {
        assert_eq!(
            count(&events, "node_completed", Some(n)),
            1,
            "{n}: {events:?}"
        );
    }
    assert_eq!(count(&events, "node_failed", None), 0, "{events:?}");
    assert_eq!(count(&events, "workflow_completed", None), 1);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_no_panic(&d);
}

/// The crash-loop breaker fails a run resumed 3 times in a row without
/// progress. A run that only waits makes no commits, so unrelated crashes
/// would count against it: a resumed run whose waits are in place clears
/// its count instead, and survives any number of kill -9s.
#[actix_rt::test]
async fn a_run_that_only_waits_outlives_any_number_of_runner_crashes() {
    let args = ["--instance-id", "patient"];
    let (redis, mut d) = start(&args).await;
    register(
        &d,
        "ivy",
        &json!({"tag": "patient", "nodes": [
            {"id": "gate", "kind": "approval"},
            {"id": "work", "kind": "task", "queue": "q"},
            {"id": "end", "kind": "transform", "depends_on": ["gate", "work"],
             "filter": "[.nodes.gate.approved, .nodes.work]"}
        ]}),
    )
    .await;
    let run = start_run(&d, "ivy", "patient", json!({})).await;
    wait_event(&d, "ivy", &run, "approval_required", T, |_| true).await;
    let mut conn = redis.conn();
    let mut owner = run_owner(&mut conn, &run);
    for crash in 1..=5 {
        d.kill9();
        d = Daemon::start(&redis, &args);
        wait_ready(&d).await;
        // Taken over by the new process (which counted a resumption), then
        // found only waiting: the count is cleared.
        let what = format!("crash {crash}: resumed by the new process, count cleared");
        wait_until(&what, T, || {
            let now = run_owner(&mut conn, &run);
            let resumes: Option<u32> = conn.hget(keys::run(&run), keys::field::RESUMES).unwrap();
            now.is_some() && now != owner && resumes.is_none()
        })
        .await;
        owner = run_owner(&mut conn, &run);
        assert_eq!(run_status(&mut conn, &run), "running");
    }
    let r = decide(&d, "ivy", &run, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = claim_one(&d, "ivy", "q").await;
    assert_eq!(t["attempt"], 1, "the same attempt through every restart");
    complete(&d, "ivy", &t, json!("done")).await;
    let view = wait_run(&d, "ivy", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        node_output(&d, "ivy", &view, "end").await,
        json!([true, "done"])
    );
    let events = run_events(&d, "ivy", &run).await;
    assert_eq!(count(&events, "node_failed", None), 0, "{events:?}");
    assert_eq!(count(&events, "approval_required", None), 1, "{events:?}");
    assert_no_panic(&d);
}

/// The same for a parent that waits for a child run which waits for an
/// approval: both only wait, and both outlive runner crashes.
#[actix_rt::test]
async fn a_parent_waiting_on_a_child_that_waits_outlives_runner_crashes() {
    let args = ["--instance-id", "family"];
    let (redis, mut d) = start(&args).await;
    register(
        &d,
        "jo",
        &json!({"tag": "ask", "nodes": [{"id": "gate", "kind": "approval"}]}),
    )
    .await;
    register(
        &d,
        "jo",
        &json!({"tag": "parent", "nodes": [
            {"id": "call", "kind": "workflow", "tag": "ask"},
            {"id": "end", "kind": "transform", "depends_on": ["call"],
             "filter": ".nodes.call.gate.approved"}
        ]}),
    )
    .await;
    let parent = start_run(&d, "jo", "parent", json!({})).await;
    let deadline = std::time::Instant::now() + T;
    let child = loop {
        let r = get(&format!("{}/api/v1/runs?limit=10", d.api), Some("jo")).await;
        let found = r.body["runs"].as_array().and_then(|runs| {
            runs.iter()
                .find(|r| r["parent_run_id"] == parent.as_str())
                .and_then(|r| r["run_id"].as_str().map(str::to_owned))
        });
        if let Some(c) = found {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no child run: {}",
            r.text
        );
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    };
    wait_event(&d, "jo", &child, "approval_required", T, |_| true).await;
    let mut conn = redis.conn();
    for crash in 1..=4 {
        let before = [&parent, &child].map(|r| run_owner(&mut conn, r));
        d.kill9();
        d = Daemon::start(&redis, &args);
        wait_ready(&d).await;
        let what = format!("crash {crash}: both resumed, both counts cleared");
        wait_until(&what, T, || {
            [&parent, &child].iter().zip(&before).all(|(run, was)| {
                let now = run_owner(&mut conn, run);
                let resumes: Option<u32> = conn.hget(keys::run(run), keys::field::RESUMES).unwrap();
                now.is_some() && now != *was && resumes.is_none()
            })
        })
        .await;
    }
    let r = decide(&d, "jo", &child, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let view = wait_run(&d, "jo", &parent, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(node_output(&d, "jo", &view, "end").await, json!(true));
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_cancelled_run_takes_its_tasks_back() {
    let (redis, d) = start(&[]).await;
    register(
        &d,
        "cal",
        &json!({"tag": "two", "nodes": [
            {"id": "a", "kind": "task", "queue": "q"},
            {"id": "b", "kind": "task", "queue": "q2"}
        ]}),
    )
    .await;
    let run = start_run(&d, "cal", "two", json!({})).await;
    let t = claim_one(&d, "cal", "q").await;
    let r = post(
        &format!("{}/api/v1/runs/{run}/cancel", d.api),
        Some("cal"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(wait_run(&d, "cal", &run, T).await["status"], "cancelled");
    let mut conn = redis.conn();
    wait_until("the queued task left its queue", T, || {
        conn.zcard::<_, usize>(keys::task_queue("cal", "q2"))
            .unwrap()
            == 0
    })
    .await;
    let hb = task_report(
        &d,
        "cal",
        t["task_id"].as_str().unwrap(),
        "heartbeat",
        &json!({"token": t["token"]}),
    )
    .await;
    assert_eq!(hb.status, 409, "{}", hb.text);
    assert!(
        hb.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{}",
        hb.text
    );
    assert_eq!(
        claim(&d, "cal", &["q", "q2"], 10, 0).await.body["tasks"],
        json!([])
    );
}

#[actix_rt::test]
async fn bad_worker_input_is_a_clear_4xx_and_loses_nothing() {
    let (_redis, d) = start(&["--max-output-bytes", "1000"]).await;
    register(&d, "bob", &task_flow("bad", json!({}))).await;
    let url = format!("{}/api/v1/tasks/claim", d.api);
    for (body, status, code, says) in [
        (
            json!({"queues": ["bad queue"]}),
            400,
            "invalid_queue",
            "queue",
        ),
        (json!({"queues": ["q/../x"]}), 400, "invalid_queue", "queue"),
        // Not a way into another user's queues (`user:queue:name` keys).
        (
            json!({"queues": ["x:queue:q"]}),
            400,
            "invalid_queue",
            "':'",
        ),
        (json!({"queues": [""]}), 400, "invalid_queue", "empty"),
        (json!({"queues": []}), 422, "invalid_body", "queues"),
        (json!({"queues": "q"}), 422, "invalid_body", "queues"),
        (json!({}), 422, "invalid_body", "queues"),
        (
            json!({"queues": ["q"], "max": 1000}),
            422,
            "invalid_body",
            "max",
        ),
        (
            json!({"queues": ["q"], "max": 0}),
            422,
            "invalid_body",
            "max",
        ),
        (
            json!({"queues": ["q"], "max": -1}),
            422,
            "invalid_body",
            "max",
        ),
        (
            json!({"queues": ["q"], "wait_ms": 3600000}),
            422,
            "invalid_body",
            "wait_ms",
        ),
        (
            json!({"queues": ["q"], "worker_id": "a\u{0}b"}),
            422,
            "invalid_body",
            "worker_id",
        ),
        (
            json!({"queues": ["q"], "extra": 1}),
            422,
            "invalid_body",
            "extra",
        ),
        (json!([1]), 422, "invalid_body", "object"),
    ] {
        let r = post(&url, Some("bob"), &body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert_eq!(r.body["error"]["code"], code, "{body}: {}", r.text);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.text
        );
    }
    assert_eq!(
        post(&url, None, &json!({"queues": ["q"]})).await.status,
        401
    );
    let r = request("POST", &url, Some("bob"), Some("{not json")).await;
    assert_eq!(r.status, 400, "{}", r.text);

    let run = start_run(&d, "bob", "bad", json!({})).await;
    let t = claim_one(&d, "bob", "q").await;
    let id = t["task_id"].as_str().unwrap();
    let tok = t["token"].clone();
    for (verb, body, status, code) in [
        ("complete", json!({"output": 1}), 422, "invalid_body"),
        (
            "complete",
            json!({"token": 5, "output": 1}),
            422,
            "invalid_body",
        ),
        ("complete", json!({"token": tok}), 422, "invalid_body"),
        (
            "complete",
            json!({"token": tok, "output": "x".repeat(2000)}),
            413,
            "output_too_large",
        ),
        (
            "heartbeat",
            json!({"token": tok, "progress": 2}),
            422,
            "invalid_body",
        ),
        (
            "heartbeat",
            json!({"token": tok, "progress": "half"}),
            422,
            "invalid_body",
        ),
        (
            "heartbeat",
            json!({"token": tok, "message": 3}),
            422,
            "invalid_body",
        ),
        ("fail", json!({"token": tok}), 422, "invalid_body"),
        (
            "fail",
            json!({"token": tok, "error": "e", "retryable": "yes"}),
            422,
            "invalid_body",
        ),
    ] {
        let r = task_report(&d, "bob", id, verb, &body).await;
        assert_eq!(r.status, status, "{verb} {body}: {}", r.text);
        assert_eq!(r.body["error"]["code"], code, "{verb} {body}: {}", r.text);
    }
    for bad_id in [
        "nope",
        "1.2.3",
        &format!("{run}.0.0"),
        &format!("{run}.x.1"),
    ] {
        let r = task_report(
            &d,
            "bob",
            bad_id,
            "complete",
            &json!({"token": tok, "output": 1}),
        )
        .await;
        assert_eq!(r.status, 400, "{bad_id}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "invalid_task_id");
    }
    let unknown = format!("{}.1.1", uuid::Uuid::new_v4());
    let r = task_report(
        &d,
        "bob",
        &unknown,
        "complete",
        &json!({"token": tok, "output": 1}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = get(&format!("{}/api/v1/tasks/claim", d.api), Some("bob")).await;
    assert_eq!(r.status, 405, "{}", r.text);
    // After all that, the task is still the worker's, and completes.
    complete(&d, "bob", &t, json!({"answer": 9})).await;
    let done = wait_run(&d, "bob", &run, T).await;
    assert_eq!(node_output(&d, "bob", &done, "after").await, json!(10));

    // Workflows with bad outside nodes are refused at registration.
    for (node, says) in [
        (
            json!({"id": "t", "kind": "task"}),
            "missing field \"queue\"",
        ),
        (json!({"id": "t", "kind": "task", "queue": "a b"}), "queue"),
        (
            json!({"id": "t", "kind": "task", "queue": "q", "heartbeat_ms": 1}),
            "heartbeat_ms",
        ),
        (
            json!({"id": "t", "kind": "task", "queue": "q", "input": "env"}),
            "input",
        ),
        (
            json!({"id": "t", "kind": "approval", "on_timeout": "maybe"}),
            "on_timeout",
        ),
        (
            json!({"id": "t", "kind": "approval", "prompt": "{{"}),
            "prompt",
        ),
        (
            json!({"id": "t", "kind": "signal"}),
            "missing field \"name\"",
        ),
        (
            json!({"id": "t", "kind": "signal", "name": "x", "queue": "q"}),
            "unknown field \"queue\"",
        ),
    ] {
        let r = put(
            &format!("{}/api/v1/workflows/badwf", d.api),
            Some("bob"),
            &json!({"nodes": [node]}),
        )
        .await;
        assert_eq!(r.status, 422, "{node}: {}", r.text);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(says),
            "{node}: {}",
            r.text
        );
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_drain_lets_go_at_once_of_runs_that_only_wait_and_they_resume() {
    // A grace far longer than the test's deadline: the drain must not
    // spend it on a run that waits for a person or a worker.
    let args = ["--instance-id", "drainer", "--drain-grace-ms", "600000"];
    let (redis, mut d) = start(&args).await;
    register(
        &d,
        "dan",
        &json!({"tag": "waits", "nodes": [
            {"id": "gate", "kind": "approval"},
            {"id": "work", "kind": "task", "queue": "q"}
        ]}),
    )
    .await;
    let run = start_run(&d, "dan", "waits", json!({})).await;
    wait_event(&d, "dan", &run, "approval_required", T, |_| true).await;
    let t = claim_one(&d, "dan", "q").await;
    d.signal("-TERM");
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        d.log_text()
    );
    let d = Daemon::start(&redis, &args);
    wait_ready(&d).await;
    let r = decide(&d, "dan", &run, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    complete(&d, "dan", &t, json!(1)).await;
    assert_eq!(wait_run(&d, "dan", &run, T).await["status"], "completed");
    assert_eq!(
        count(
            &run_events(&d, "dan", &run).await,
            "approval_required",
            None
        ),
        1
    );
}

#[actix_rt::test]
async fn a_thousand_idle_long_polls_park_without_a_redis_connection_each() {
    use tokio::io::AsyncWriteExt;
    let (redis, d) = start(&[]).await;
    register(&d, "ida", &task_flow("idle", json!({}))).await;
    let host = d.api.trim_start_matches("http://").to_owned();
    let body = json!({"queues": ["idle"], "wait_ms": 60000}).to_string();
    let request = format!(
        "POST /api/v1/tasks/claim HTTP/1.1\r\nHost: {host}\r\nX-User-ID: ida\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut parked = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        parked.push(s);
    }
    wait_until_async("1000 claims waiting", T, || async {
        scrape(&d).await.value("flowcast_task_claims_waiting", &[]) >= 1000.0
    })
    .await;
    // No Redis connection per waiting claim: the daemon's few, and ours.
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut redis.conn())
        .unwrap();
    let clients: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        clients < 20,
        "{clients} Redis connections for 1000 waiting claims"
    );
    // And the daemon serves everyone else as usual meanwhile.
    let run = start_run(&d, "ida", "idle", json!({})).await;
    let t = claim_one(&d, "ida", "q").await;
    complete(&d, "ida", &t, json!({"answer": 0})).await;
    assert_eq!(wait_run(&d, "ida", &run, T).await["status"], "completed");
    drop(parked);
    assert_no_panic(&d);
}
