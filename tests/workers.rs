//! The worker libraries that ship with flowcast (`clients/python`,
//! `clients/js`), run as real processes against the real daemon: their
//! examples work a run together, a worker killed mid-task (SIGKILL) has its
//! task handed out again after its lease, with the next attempt, a worker
//! rides out a daemon kill -9 and restart (its retries), and a worker stops
//! gracefully on SIGTERM.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const PY_SLOW: &str = r#"
import os, time
from flowcast_worker import Worker

def handle(task):
    if task.attempt == 1:
        open(os.environ["MARK"], "w").write(task.task_id)
        while True:
            time.sleep(1)
    return {"attempt": task.attempt, "by": "python"}

Worker(os.environ["FLOWCAST_API"], queues=["slow"], handler=handle,
       user=os.environ["FLOWCAST_USER"], wait_ms=2000).run()
"#;

const JS_SLOW: &str = r#"
import fs from "node:fs";
import { Worker } from "@JS_LIB@";

await new Worker({
  api: process.env.FLOWCAST_API, user: process.env.FLOWCAST_USER, queues: ["slow"], waitMs: 2000,
  handler: async (task) => {
    if (task.attempt === 1) {
      fs.writeFileSync(process.env.MARK, task.taskId);
      await new Promise(() => {});
    }
    return { attempt: task.attempt, by: "node" };
  },
}).run();
"#;

#[actix_rt::test]
async fn a_run_with_a_python_worked_and_a_node_worked_node_completes() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "wes",
        &json!({"tag": "polyglot", "nodes": [
            {"id": "py", "kind": "task", "queue": "py", "input": "{name: .inputs.name}"},
            {"id": "js", "kind": "task", "queue": "js", "depends_on": ["py"],
             "input": "{name: .nodes.py.greeting}"},
            {"id": "end", "kind": "transform", "depends_on": ["js"], "filter": ".nodes.js.greeting"}
        ]}),
    )
    .await;
    let py_example = repo().join("clients/python/examples/worker.py");
    let js_example = repo().join("clients/js/examples/worker.mjs");
    let mut py = WorkerProc::spawn(
        Lang::Python,
        &d,
        "wes",
        &std::fs::read_to_string(py_example).unwrap(),
        &[("FLOWCAST_QUEUE", "py")],
    );
    let mut js = WorkerProc::spawn(
        Lang::Js,
        &d,
        "wes",
        &std::fs::read_to_string(js_example)
            .unwrap()
            .replace("../src/index.js", "@JS_LIB@"),
        &[("FLOWCAST_QUEUE", "js")],
    );
    let runs: Vec<String> = {
        let mut v = Vec::new();
        for name in ["Ada", "Grace", "Linus"] {
            v.push(start_run(&d, "wes", "polyglot", json!({"name": name})).await);
        }
        v
    };
    for (run, name) in runs.iter().zip(["Ada", "Grace", "Linus"]) {
        let done = wait_run(&d, "wes", run, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let py_out = node_output(&d, "wes", &done, "py").await;
        assert_eq!(py_out["by"], "python");
        assert_eq!(py_out["greeting"], format!("hello {name}"));
        assert_eq!(node_output(&d, "wes", &done, "js").await["by"], "node");
        assert_eq!(
            node_output(&d, "wes", &done, "end").await,
            json!(format!("hello hello {name}"))
        );
        let events = run_events(&d, "wes", run).await;
        for node in ["py", "js"] {
            assert!(
                count(&events, "node_progress", Some(node)) >= 1,
                "{events:?}"
            );
            assert_eq!(count(&events, "node_completed", Some(node)), 1);
        }
        // Progress comes before the completion it precedes.
        let last_progress = events
            .iter()
            .rposition(|e| e["type"] == "node_progress" && e["node_id"] == "py");
        let completed = events
            .iter()
            .position(|e| e["type"] == "node_completed" && e["node_id"] == "py");
        assert!(last_progress < completed, "{events:?}");
    }
    // A graceful stop: both exit 0 on SIGTERM.
    for w in [&mut py, &mut js] {
        let status = w.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{}: {status:?}",
            w.name
        );
    }
    assert_no_panic(&d);
}

async fn killed_mid_task(lang: Lang, script: &str) {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "kay",
        &json!({"tag": "slow", "nodes": [
            {"id": "work", "kind": "task", "queue": "slow", "heartbeat_ms": 2000,
             "retry": {"max_attempts": 3, "backoff_ms": 0}}
        ]}),
    )
    .await;
    let mark =
        std::env::temp_dir().join(format!("flowcast-mark-{}", uuid::Uuid::new_v4().simple()));
    let mark_s = mark.to_string_lossy().into_owned();
    let mut first = WorkerProc::spawn(lang, &d, "kay", script, &[("MARK", &mark_s)]);
    let run = start_run(&d, "kay", "slow", json!({})).await;
    wait_until("the first worker took the task", T, || mark.exists()).await;
    // Heartbeats keep the lease while the handler runs, beyond the lease.
    actix_rt::time::sleep(Duration::from_millis(3000)).await;
    let view = get(&format!("{}/api/v1/runs/{run}", d.api), Some("kay")).await;
    assert_eq!(view.body["status"], "running", "{}", view.text);
    let events = run_events(&d, "kay", &run).await;
    assert_eq!(
        count(&events, "node_failed", None),
        0,
        "the lease held: {events:?}"
    );

    first.kill9();
    let _second = WorkerProc::spawn(lang, &d, "kay", script, &[("MARK", &mark_s)]);
    let done = wait_run(&d, "kay", &run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let out = node_output(&d, "kay", &done, "work").await;
    assert_eq!(out["attempt"], 2, "{out}");
    let events = run_events(&d, "kay", &run).await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "node_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["attempt"], 1);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("lease expired"),
        "{failed:?}"
    );
    assert_eq!(count(&events, "node_completed", Some("work")), 1);
    let _ = std::fs::remove_file(mark);
}

#[actix_rt::test]
async fn a_python_worker_killed_mid_task_has_its_task_handed_out_again() {
    killed_mid_task(Lang::Python, PY_SLOW).await;
}

#[actix_rt::test]
async fn a_node_worker_killed_mid_task_has_its_task_handed_out_again() {
    killed_mid_task(Lang::Js, JS_SLOW).await;
}

const PY_THROUGH: &str = r#"
import os, time
from flowcast_worker import Worker

def handle(task):
    open(os.environ["MARK"], "w").write(task.task_id)
    for i in range(30):
        time.sleep(0.1)
        task.progress((i + 1) / 30)
    return {"attempt": task.attempt, "by": "python"}

Worker(os.environ["FLOWCAST_API"], queues=["long"], handler=handle,
       user=os.environ["FLOWCAST_USER"], wait_ms=2000).run()
"#;

const JS_THROUGH: &str = r#"
import fs from "node:fs";
import { Worker } from "@JS_LIB@";

await new Worker({
  api: process.env.FLOWCAST_API, user: process.env.FLOWCAST_USER, queues: ["long"], waitMs: 2000,
  handler: async (task) => {
    fs.writeFileSync(process.env.MARK, task.taskId);
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 100));
      task.progress((i + 1) / 30);
    }
    return { attempt: task.attempt, by: "node" };
  },
}).run();
"#;

/// The daemon is killed (-9) while a worker holds a task and restarted on
/// the same port: the worker's heartbeats and completion are retried
/// through the outage, and the task completes on its first attempt.
async fn worker_rides_out_a_daemon_kill(lang: Lang, script: &str) {
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let args = ["--instance-id", "through", "--api-addr", addr.as_str()];
    let (redis, mut d) = start(&args).await;
    register(
        &d,
        "rio",
        &json!({"tag": "long", "nodes": [
            {"id": "work", "kind": "task", "queue": "long", "retry": {"max_attempts": 3}}
        ]}),
    )
    .await;
    let mark =
        std::env::temp_dir().join(format!("flowcast-mark-{}", uuid::Uuid::new_v4().simple()));
    let mark_s = mark.to_string_lossy().into_owned();
    let _w = WorkerProc::spawn(lang, &d, "rio", script, &[("MARK", &mark_s)]);
    let run = start_run(&d, "rio", "long", json!({})).await;
    wait_until("the worker took the task", T, || mark.exists()).await;
    d.kill9();
    let d = Daemon::start(&redis, &args);
    wait_ready(&d).await;
    let done = wait_run(&d, "rio", &run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(node_output(&d, "rio", &done, "work").await["attempt"], 1);
    let events = run_events(&d, "rio", &run).await;
    assert_eq!(count(&events, "node_failed", None), 0, "{events:?}");
    assert_eq!(count(&events, "node_completed", Some("work")), 1);
    let _ = std::fs::remove_file(mark);
}

#[actix_rt::test]
async fn a_python_worker_rides_out_a_daemon_kill9() {
    worker_rides_out_a_daemon_kill(Lang::Python, PY_THROUGH).await;
}

#[actix_rt::test]
async fn a_node_worker_rides_out_a_daemon_kill9() {
    worker_rides_out_a_daemon_kill(Lang::Js, JS_THROUGH).await;
}

#[actix_rt::test]
async fn with_jwt_a_worker_acts_for_its_tokens_subject() {
    use crate::auth::SECRET;
    let (_redis, d) = start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
    let tia = jwt("tia", SECRET, 3600);
    let bearer = format!("Bearer {tia}");
    let headers: Vec<(&str, &[u8])> = vec![("Authorization", bearer.as_bytes())];
    let wf = json!({"tag": "jwt", "nodes": [
        {"id": "py", "kind": "task", "queue": "py", "input": "{name: .inputs.name}"}
    ]});
    let r = request_with_headers(
        "PUT",
        &format!("{}/api/v1/workflows/jwt", d.api),
        &headers,
        Some(&wf.to_string()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let script = r#"
import os
from flowcast_worker import Worker
Worker(os.environ["FLOWCAST_API"], queues=["py"], token=os.environ["FLOWCAST_TOKEN"],
       handler=lambda task: "hi " + task.input["name"]).run()
"#;
    let _w = WorkerProc::spawn(
        Lang::Python,
        &d,
        "ignored",
        script,
        &[("FLOWCAST_TOKEN", &tia)],
    );
    let r = request_with_headers(
        "POST",
        &format!("{}/api/v1/runs", d.api),
        &headers,
        Some(&json!({"tag": "jwt", "inputs": {"name": "Tia"}}).to_string()),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let run = r.body["run_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = request_with_headers(
            "GET",
            &format!("{}/api/v1/runs/{run}", d.api),
            &headers,
            None,
        )
        .await;
        if v.body["status"] == "completed" {
            let r = v.body["nodes"]["py"]["result_ref"]
                .as_str()
                .unwrap()
                .to_owned();
            let out = request_with_headers(
                "GET",
                &format!("{}/api/v1/results/{r}", d.api),
                &headers,
                None,
            )
            .await;
            assert_eq!(out.body, json!("hi Tia"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run did not complete: {}",
            v.text
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    // Without a valid token, a claim is refused.
    let r = post(
        &format!("{}/api/v1/tasks/claim", d.api),
        Some("tia"),
        &json!({"queues": ["py"]}),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
}

/// The README's "Workers, approvals, signals" section as written: its
/// Python worker, its workflow (PUT with curl's body), and its CLI
/// commands, approved then rejected: the run branches on the decision.
#[actix_rt::test]
async fn the_readmes_worker_and_branch_on_approval_example_work_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Workers, approvals, signals")
        .expect("the README's section")..];
    let python = section
        .split("```python\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the README's Python worker");
    let lines = python.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 10, "the README's worker has {lines} lines");
    let body = section
        .split("/api/v1/workflows/hello -d '")
        .nth(1)
        .and_then(|s| s.split("'\n").next())
        .expect("the README's workflow");
    let wf: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the README's workflow is not JSON ({e}): {body}"));

    let (_redis, d) = start(&[]).await;
    let r = put(
        &format!("{}/api/v1/workflows/hello", d.api),
        Some("alice"),
        &wf,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let script = python.replace("\"http://127.0.0.1:8081\"", &format!("{:?}", d.api));
    assert_ne!(script, python, "the README's worker names the API");
    let _worker = WorkerProc::spawn(Lang::Python, &d, "alice", &script, &[]);

    // Approved: `held` is skipped, `sent` completes with the signal.
    let follow = CliProc::spawn(&d, "alice", &["run", "hello", "-i", "name=Ada", "--follow"]);
    let asked = loop {
        let line = follow.next_line();
        if line.starts_with("approval_required") {
            break line;
        }
    };
    assert!(
        asked.contains("ok: send hello Ada? (flowcast approve|reject "),
        "{asked}"
    );
    let run = asked
        .split("(flowcast approve|reject ")
        .nth(1)
        .and_then(|h| h.split(' ').next())
        .unwrap()
        .to_owned();
    cli(&d, "alice", &["approve", &run, "ok"]).assert_code(0);
    wait_event(&d, "alice", &run, "node_skipped", T, |e| {
        e["node_id"] == "held"
    })
    .await;
    cli(&d, "alice", &["signal", &run, "delivered", r#"{"at": 1}"#]).assert_code(0);
    let (code, rest) = follow.wait();
    assert_eq!(code, 0, "{rest:?}");
    let view = wait_run(&d, "alice", &run, T).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(view["nodes"]["held"]["status"], "skipped");
    assert_eq!(
        node_output(&d, "alice", &view, "greet").await,
        json!({"greeting": "hello Ada"})
    );
    assert_eq!(
        node_output(&d, "alice", &view, "ok").await["approved"],
        true
    );
    assert_eq!(
        node_output(&d, "alice", &view, "sent").await,
        json!({"at": 1})
    );
    let events = run_events(&d, "alice", &run).await;
    let progress = events
        .iter()
        .find(|e| e["type"] == "node_progress" && e["node_id"] == "greet")
        .unwrap_or_else(|| panic!("no progress from the worker: {events:?}"));
    assert_eq!(
        (&progress["progress"], &progress["message"]),
        (&json!(0.5), &json!("looking it up"))
    );

    // Rejected: `sent` is skipped and `held` says why.
    let run = start_run(&d, "alice", "hello", json!({"name": "Bo"})).await;
    wait_event(&d, "alice", &run, "approval_required", T, |_| true).await;
    cli(
        &d,
        "alice",
        &["reject", &run, "ok", "--comment", "not today"],
    )
    .assert_code(0);
    let view = wait_run(&d, "alice", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["nodes"]["sent"]["status"], "skipped");
    assert_eq!(
        node_output(&d, "alice", &view, "held").await,
        json!("held: not today")
    );
    assert_no_panic(&d);
}
