//! The worker protocol as a worker speaks it (claim, heartbeat, complete,
//! fail), decisions and signals, and waiting for a run's events; plus the
//! worker libraries (`clients/python`, `clients/js`) run as real processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{get, post, repo, run_events, Daemon, Resp};

/// `POST /api/v1/tasks/claim` as `user`.
pub async fn claim(d: &Daemon, user: &str, queues: &[&str], max: u64, wait_ms: u64) -> Resp {
    post(
        &format!("{}/api/v1/tasks/claim", d.api),
        Some(user),
        &json!({"queues": queues, "max": max, "wait_ms": wait_ms, "worker_id": format!("{user}-test")}),
    )
    .await
}

/// Claims one task of `user` on `queue`, waiting up to 15 s; panics if none.
pub async fn claim_one(d: &Daemon, user: &str, queue: &str) -> Value {
    let r = claim(d, user, &[queue], 1, 15_000).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let tasks = r.body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "no task on {queue}: {}", r.text);
    tasks[0].clone()
}

/// `POST /api/v1/tasks/{id}/{verb}` as `user` with `body`.
pub async fn task_report(d: &Daemon, user: &str, task_id: &str, verb: &str, body: &Value) -> Resp {
    post(
        &format!("{}/api/v1/tasks/{task_id}/{verb}", d.api),
        Some(user),
        body,
    )
    .await
}

/// Completes a claimed task (as its user) with `output`; asserts 200.
pub async fn complete(d: &Daemon, user: &str, task: &Value, output: Value) {
    let r = task_report(
        d,
        user,
        task["task_id"].as_str().unwrap(),
        "complete",
        &json!({"token": task["token"], "output": output}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// `POST /api/v1/runs/{id}/nodes/{node}/approve|reject`.
pub async fn decide(
    d: &Daemon,
    user: &str,
    run: &str,
    node: &str,
    verb: &str,
    body: &Value,
) -> Resp {
    post(
        &format!("{}/api/v1/runs/{run}/nodes/{node}/{verb}", d.api),
        Some(user),
        body,
    )
    .await
}

/// `POST /api/v1/runs/{id}/signals/{name}` with `payload`.
pub async fn send_signal(d: &Daemon, user: &str, run: &str, name: &str, payload: &Value) -> Resp {
    post(
        &format!("{}/api/v1/runs/{run}/signals/{name}", d.api),
        Some(user),
        payload,
    )
    .await
}

/// Waits until the run has an event of type `kind` matching `pred`;
/// returns it.
pub async fn wait_event(
    d: &Daemon,
    user: &str,
    run: &str,
    kind: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let events = run_events(d, user, run).await;
        if let Some(e) = events.iter().find(|e| e["type"] == kind && pred(e)) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event in run {run}: {events:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A node's output, read through its `result_ref`.
pub async fn node_output(d: &Daemon, user: &str, run: &Value, node: &str) -> Value {
    let r = run["nodes"][node]["result_ref"]
        .as_str()
        .unwrap_or_else(|| panic!("node {node} has no result: {run}"));
    let resp = get(&format!("{}/api/v1/results/{r}", d.api), Some(user)).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.body
}

/// How many events of `kind` (for `node`, if given) the run has.
pub fn count(events: &[Value], kind: &str, node: Option<&str>) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && node.is_none_or(|n| e["node_id"] == n))
        .count()
}

/// A worker process of one of the shipped libraries, killed on drop.
pub struct WorkerProc {
    pub child: Child,
    pub name: String,
}

impl WorkerProc {
    /// Runs `script` (Python or JavaScript source, written to a temp file)
    /// with the library on its path, against `d` as `user`.
    pub fn spawn(
        lang: Lang,
        d: &Daemon,
        user: &str,
        script: &str,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flowcast-worker-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (file, mut cmd) = match lang {
            Lang::Python => {
                let f = dir.join("worker.py");
                let mut c = Command::new("python3");
                c.arg("-u").arg(&f).env("PYTHONPATH", python_lib());
                (f, c)
            }
            Lang::Js => {
                let f = dir.join("worker.mjs");
                let mut c = Command::new("node");
                c.arg(&f);
                (f, c)
            }
        };
        let source = script.replace("@JS_LIB@", &js_lib().join("index.js").to_string_lossy());
        std::fs::write(&file, source).unwrap();
        cmd.env("FLOWCAST_API", &d.api)
            .env("FLOWCAST_USER", user)
            .envs(extra_env.iter().copied())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {lang:?} worker: {e}"));
        Self {
            child,
            name: format!("{lang:?}"),
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful stop); waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        super::wait_child(&mut self.child, timeout)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The worker libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Python,
    Js,
}

/// `clients/python/src`, for `PYTHONPATH`.
pub fn python_lib() -> PathBuf {
    repo().join("clients/python/src")
}

/// `clients/js/src`.
pub fn js_lib() -> PathBuf {
    repo().join("clients/js/src")
}
