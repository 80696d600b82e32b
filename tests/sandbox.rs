//! User code is sandboxed: each attack a hostile user made on the shipped
//! daemon, against the real daemon and a real Redis. Filters that reach the
//! environment, the process or its exit are refused at registration; filters
//! too deep for the parser are refused before parsing and the daemon lives
//! on; values too deep, outputs too large and filters that never end fail
//! their node, and other users' runs go on; the evaluators hold no secrets.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// Pids of the live (not zombie) children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1) == Some(&pid.to_string().as_str()) && f[0] != "Z" {
            out.push(child);
        }
    }
    out
}

/// CPU clock ticks (user + system) a process has used.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// True while the process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        == Some(false)
}

async fn put_workflow(d: &Daemon, wf: &Value) -> Resp {
    let tag = wf["tag"].as_str().unwrap();
    put(
        &format!("{}/api/v1/workflows/{tag}", d.api),
        Some("eve"),
        wf,
    )
    .await
}

fn types(ev: &[Value]) -> Vec<&str> {
    ev.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The seed's run for `user`, which must complete.
async fn seed_run_completes(d: &Daemon, user: &str) {
    let run = start_run(d, user, "flight-search", json!({"city": "NYC"})).await;
    let view = wait_run(d, user, &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
}

#[actix_rt::test]
async fn filters_that_reach_outside_are_refused_naming_the_function() {
    let (_redis, d) = start(&[]).await;
    let cases = [
        ("env | {FLOWCAST_JWT_SECRET, FLOWCAST_REDIS_URL}", "env"),
        ("env.HOME", "env"),
        ("$ENV.FLOWCAST_JWT_SECRET", "$ENV"),
        ("halt", "halt"),
        ("\"bye\" | halt_error", "halt_error"),
        ("halt_error(1)", "halt_error"),
        ("input", "input"),
        ("[inputs]", "inputs"),
        ("debug", "debug"),
        ("debug(\"x\")", "debug"),
        ("stderr", "stderr"),
        ("input_filename", "input_filename"),
        ("import \"x\" as $x; $x", "import"),
    ];
    for (i, (filter, name)) in cases.iter().enumerate() {
        let wf = json!({"tag": format!("reach-{i}"), "nodes": [
            {"id": "ok", "kind": "transform", "filter": "."},
            {"id": "sneaky", "kind": "transform", "filter": filter, "depends_on": ["ok"]}
        ]});
        let r = put_workflow(&d, &wf).await;
        assert_eq!(r.status, 422, "{filter}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "invalid_workflow", "{}", r.text);
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("node \"sneaky\"")
                && msg.contains(&format!("`{name}` is not available in flowcast filters")),
            "{filter}: {msg}"
        );
    }
    // An http node's filters too, naming the field.
    let wf = json!({"tag": "reach-http", "nodes": [
        {"id": "call", "kind": "http", "url_filter": "\"https://example.com/\\(env.HOME)\""}
    ]});
    let r = put_workflow(&d, &wf).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("node \"call\": url_filter") && msg.contains("`env`"),
        "{msg}"
    );
    assert!(alive(d.pid()));
    seed_run_completes(&d, "test-user").await;
}

#[actix_rt::test]
async fn filters_too_deep_for_the_parser_are_refused_and_the_daemon_lives() {
    let (_redis, d) = start(&[]).await;
    let pid = d.pid();
    let attacks = [
        format!("{}1{}", "[".repeat(800), "]".repeat(800)),
        format!("{}1{}", "(".repeat(1000), ")".repeat(1000)),
        format!("{}1", "-".repeat(3000)),
        format!("{}.", ".a|".repeat(20000)),
    ];
    for (i, filter) in attacks.iter().enumerate() {
        let wf = json!({"tag": format!("deep-{i}"), "nodes": [
            {"id": "deep", "kind": "transform", "filter": filter}
        ]});
        let r = put_workflow(&d, &wf).await;
        assert_eq!(r.status, 422, "attack {i}: {}", r.text);
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("node \"deep\""), "{msg}");
        assert!(
            msg.contains("levels deep") || msg.contains("too deeply") || msg.contains("bytes"),
            "{msg}"
        );
        assert!(alive(pid), "the daemon died on attack {i}");
        assert_eq!(d.pid(), pid);
    }
    // What the limits allow registers (and the daemon still lives).
    let wf = json!({"tag": "deep-ok", "nodes": [
        {"id": "deep", "kind": "transform",
         "filter": format!("{}1{}", "[".repeat(256), "]".repeat(256))}
    ]});
    let r = put_workflow(&d, &wf).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    assert!(alive(pid));
    seed_run_completes(&d, "test-user").await;
}

#[actix_rt::test]
async fn a_value_too_deep_fails_its_node_and_nothing_else() {
    let (_redis, d) = start(&[]).await;
    let pid = d.pid();
    register(
        &d,
        "mallory",
        &json!({"tag": "deep-value", "nodes": [
            {"id": "nest", "kind": "transform", "filter": "reduce range(100000) as $i (0; [.])",
             "retry": {"max_attempts": 3, "backoff_ms": 1}}
        ]}),
    )
    .await;
    let run = start_run(&d, "mallory", "deep-value", json!({})).await;
    let view = wait_run(&d, "mallory", &run, T).await;
    assert_eq!(view["status"], "failed", "{view}");
    let ev = run_events(&d, "mallory", &run).await;
    assert_eq!(
        types(&ev),
        ["workflow_started", "node_failed", "workflow_failed"],
        "{ev:#?}"
    );
    assert_eq!(ev[1]["will_retry"], false, "not retried: {ev:#?}");
    assert_eq!(ev[1]["attempt"], 1);
    // Measured without recursion in the evaluator, refused before it is
    // printed or dropped.
    assert_eq!(ev[1]["error"], "output is nested deeper than 100 levels");
    assert_eq!(ev[2]["failed_node"], "nest");
    assert!(alive(pid));
    assert_eq!(d.pid(), pid);
    // Another user's run goes on.
    seed_run_completes(&d, "test-user").await;
    // And a filter that overflows its evaluator's stack crashes only that.
    register(
        &d,
        "mallory",
        &json!({"tag": "recurse", "nodes": [
            {"id": "forever", "kind": "transform", "filter": "def f: [f]; f"}
        ]}),
    )
    .await;
    let run = start_run(&d, "mallory", "recurse", json!({})).await;
    let view = wait_run(&d, "mallory", &run, T).await;
    assert_eq!(view["status"], "failed", "{view}");
    let ev = run_events(&d, "mallory", &run).await;
    assert!(
        ev[1]["error"]
            .as_str()
            .unwrap()
            .contains("crashed its sandboxed evaluator (too deep or too large)"),
        "{ev:#?}"
    );
    assert!(alive(pid));
    seed_run_completes(&d, "test-user").await;
}

#[actix_rt::test]
async fn runaway_filters_are_stopped_and_free_every_slot() {
    let (_redis, d) = start(&[]).await;
    let pid = d.pid();
    let nodes: Vec<Value> = (0..32)
        .map(|i| {
            json!({"id": format!("spin{i}"), "kind": "transform",
                   "filter": "last(range(1e15))", "timeout_ms": 300})
        })
        .collect();
    register(&d, "mallory", &json!({"tag": "spin", "nodes": nodes})).await;
    let spin = start_run(&d, "mallory", "spin", json!({})).await;
    // Another user's run, started right then, while the 32 slots are taken.
    let seed = start_run(&d, "test-user", "flight-search", json!({"city": "NYC"})).await;
    let view = wait_run(&d, "mallory", &spin, T).await;
    assert_eq!(view["status"], "failed", "{view}");
    let ev = run_events(&d, "mallory", &spin).await;
    let failed = ev.iter().find(|e| e["type"] == "node_failed").unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 300 ms"),
        "{failed}"
    );
    let view = wait_run(&d, "test-user", &seed, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert!(alive(pid));
    // No evaluator is left spinning: the ones that remain are idle.
    let deadline = Instant::now() + T;
    loop {
        let before: Vec<(u32, u64)> = children(pid)
            .into_iter()
            .filter_map(|c| Some((c, cpu_ticks(c)?)))
            .collect();
        actix_rt::time::sleep(Duration::from_secs(1)).await;
        let busy: Vec<u32> = before
            .iter()
            .filter(|(c, t)| cpu_ticks(*c).is_some_and(|now| now > t + 20))
            .map(|(c, _)| *c)
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "evaluators still burning CPU: {busy:?}"
        );
    }
    assert!(children(pid).len() <= 32, "{:?}", children(pid));
    // Every slot is free again: 32 filters at once still run.
    let nodes: Vec<Value> = (0..32)
        .map(|i| json!({"id": format!("n{i}"), "kind": "transform", "filter": ". | length"}))
        .collect();
    register(&d, "test-user", &json!({"tag": "wide", "nodes": nodes})).await;
    let run = start_run(&d, "test-user", "wide", json!({})).await;
    let view = wait_run(&d, "test-user", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
}

#[actix_rt::test]
async fn outputs_over_max_output_bytes_fail_their_node() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "mallory",
        &json!({"tag": "huge", "nodes": [
            {"id": "big", "kind": "transform", "filter": "[range(2000000)]"}
        ]}),
    )
    .await;
    let run = start_run(&d, "mallory", "huge", json!({})).await;
    let view = wait_run(&d, "mallory", &run, T).await;
    assert_eq!(view["status"], "failed", "{view}");
    let ev = run_events(&d, "mallory", &run).await;
    assert_eq!(
        types(&ev),
        ["workflow_started", "node_failed", "workflow_failed"]
    );
    let error = ev[1]["error"].as_str().unwrap();
    assert!(
        error.contains("over 1048576 bytes (--max-output-bytes)"),
        "{error}"
    );
    assert_eq!(ev[1]["will_retry"], false);
    seed_run_completes(&d, "test-user").await;
}

#[actix_rt::test]
async fn max_output_bytes_applies_to_the_canonical_output() {
    let (_redis, d) = start(&["--max-output-bytes", "1000"]).await;
    // jaq prints `1e2` as written (801 bytes for 200 of them), canonical
    // JSON as `100.0` (1201 bytes): the run actor's own check fails it.
    register(
        &d,
        "mallory",
        &json!({"tag": "floats", "nodes": [
            {"id": "f", "kind": "transform", "filter": "[range(200) | 1e2]",
             "retry": {"max_attempts": 2}}
        ]}),
    )
    .await;
    let run = start_run(&d, "mallory", "floats", json!({})).await;
    let view = wait_run(&d, "mallory", &run, T).await;
    assert_eq!(view["status"], "failed", "{view}");
    let ev = run_events(&d, "mallory", &run).await;
    assert_eq!(
        types(&ev),
        ["workflow_started", "node_failed", "workflow_failed"]
    );
    assert_eq!(
        ev[1]["error"],
        "output is 1201 bytes, over the limit of 1000 bytes (--max-output-bytes)"
    );
    assert_eq!(ev[1]["will_retry"], false);
    // Within the limit, fine.
    register(
        &d,
        "mallory",
        &json!({"tag": "small", "nodes": [
            {"id": "f", "kind": "transform", "filter": "[range(100) | 1e2]"}
        ]}),
    )
    .await;
    let run = start_run(&d, "mallory", "small", json!({})).await;
    let view = wait_run(&d, "mallory", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
}

/// The daemon, started with extra environment variables (support's
/// `Daemon::start` passes none).
struct EnvDaemon {
    child: Child,
    api: String,
}

impl EnvDaemon {
    fn start(redis: &Redis, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowcast"));
        cmd.arg("serve")
            .args(["--redis-url", &redis.url()])
            .args(["--api-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0"])
            .arg("--workflows-dir")
            .arg(repo().join("examples/workflows"))
            .args(["--workers", "1"])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("daemon binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("api listening on ") {
                    let _ = tx.send(line[i + "api listening on ".len()..].trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the daemon did not start");
        Self {
            child,
            api: format!("http://{addr}"),
        }
    }
}

impl Drop for EnvDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_rt::test]
async fn no_secret_of_the_daemon_reaches_a_run_or_an_evaluator() {
    let redis = Redis::start();
    let secret = format!("sekrit-{}", uuid::Uuid::new_v4());
    let canary = format!("canary-{}", uuid::Uuid::new_v4());
    let d = EnvDaemon::start(
        &redis,
        &[
            ("FLOWCAST_JWT_SECRET", secret.as_str()),
            ("SANDBOX_TEST_CANARY", canary.as_str()),
        ],
    );
    let pid = d.child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&environ).contains(&canary),
        "the daemon has the canary"
    );
    // Everything a filter may still use about its surroundings.
    let wf = json!({"tag": "curious", "nodes": [
        {"id": "a", "kind": "transform",
         "filter": "{now: (now | type), t: (0 | todate), s: (.inputs | tojson | @sh), b: (.inputs | @base64), p: [paths], loc: \"\\(.)\"}"},
        {"id": "b", "kind": "transform", "depends_on": ["a"],
         "filter": "[.. | strings] | join(\",\")"},
        {"id": "c", "kind": "transform", "depends_on": ["b"],
         "filter": "try error(.nodes) catch ."}
    ]});
    let r = put(
        &format!("{}/api/v1/workflows/curious", d.api),
        Some("eve"),
        &wf,
    )
    .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    for filter in ["env", "$ENV", "env.FLOWCAST_JWT_SECRET"] {
        let r = put(
            &format!("{}/api/v1/workflows/leak", d.api),
            Some("eve"),
            &json!({"tag": "leak", "nodes": [{"id": "x", "kind": "transform", "filter": filter}]}),
        )
        .await;
        assert_eq!(r.status, 422, "{}", r.text);
        assert!(!r.text.contains(&secret) && !r.text.contains(&canary));
    }
    let r = post(
        &format!("{}/api/v1/runs", d.api),
        Some("eve"),
        &json!({"tag": "curious", "inputs": {"x": 1}}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let run = r.body["run_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + T;
    let view = loop {
        let r = get(&format!("{}/api/v1/runs/{run}", d.api), Some("eve")).await;
        if matches!(r.body["status"].as_str(), Some("completed" | "failed")) {
            break r.body;
        }
        assert!(Instant::now() < deadline, "run did not finish: {}", r.text);
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(view["status"], "completed", "{view}");
    let mut seen = view.to_string();
    let events = get(&format!("{}/api/v1/runs/{run}/events", d.api), Some("eve")).await;
    seen.push_str(&events.text);
    for e in events.body["events"].as_array().unwrap() {
        if let Some(r) = e["result_ref"].as_str() {
            seen.push_str(
                &get(&format!("{}/api/v1/results/{r}", d.api), Some("eve"))
                    .await
                    .text,
            );
        }
    }
    assert!(seen.contains("sha256:"), "results were read: {seen}");
    assert!(!seen.contains(&secret) && !seen.contains(&canary), "{seen}");
    // The evaluators themselves hold no secret: an empty environment (but
    // for the allocator setting), `/` as their directory, limits lowered.
    let workers = children(pid);
    assert!(!workers.is_empty(), "evaluators were started");
    for w in workers {
        let environ = std::fs::read(format!("/proc/{w}/environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        assert!(!environ.contains(&secret) && !environ.contains(&canary));
        assert!(!environ.contains("FLOWCAST_"), "{environ}");
        assert_eq!(
            std::fs::read_link(format!("/proc/{w}/cwd")).unwrap(),
            std::path::Path::new("/")
        );
        let limits = std::fs::read_to_string(format!("/proc/{w}/limits")).unwrap();
        let line = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .split_whitespace()
                .rev()
                .nth(1)
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(line("Max core file size"), "0", "{limits}");
        assert_ne!(line("Max address space"), "unlimited", "{limits}");
        assert_ne!(line("Max cpu time"), "unlimited", "{limits}");
    }
}

#[actix_rt::test]
async fn the_pool_reuses_workers_and_kills_what_it_drops() {
    use flowcast_actors::jq::{EvalError, Pool, PoolConfig, WorkerCommand};
    let pool = Pool::new(PoolConfig {
        command: WorkerCommand {
            program: env!("CARGO_BIN_EXE_flowcast").into(),
            args: vec!["jq-worker".into()],
        },
        slots: 2,
        max_output_bytes: 1000,
    });
    assert_eq!(pool.eval(".a + 1", &json!({"a": 1})).await, Ok(json!(2)));
    assert_eq!(pool.eval(".a * 2", &json!({"a": 21})).await, Ok(json!(42)));
    assert_eq!(pool.idle_workers(), 1, "one worker served both");
    assert_eq!(
        pool.eval("error(\"no\")", &json!(null)).await,
        Err(EvalError::Filter("\"no\"".into()))
    );
    assert_eq!(
        pool.eval("[range(1000)]", &json!(null)).await,
        Err(EvalError::Filter(
            "output is over 1000 bytes (--max-output-bytes)".into()
        ))
    );
    assert_eq!(
        pool.eval("def f: [f]; f", &json!(null)).await,
        Err(EvalError::Crashed)
    );
    // This test's workers: the children of this process that are evaluators
    // (other tests' evaluators are their daemons' children).
    let workers = || {
        children(std::process::id())
            .into_iter()
            .filter(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("jq-worker"))
            })
            .count()
    };
    // The crash took the one idle worker with it.
    assert_eq!((workers(), pool.idle_workers()), (0, 0));
    let input = json!(null);
    let mut runaway = Box::pin(pool.eval("last(range(1e15))", &input));
    let deadline = Instant::now() + T;
    while workers() == 0 {
        assert!(Instant::now() < deadline, "no worker started");
        tokio::select! {
            r = &mut runaway => panic!("a runaway filter ended: {r:?}"),
            _ = actix_rt::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    assert_eq!(pool.free_slots(), 1);
    drop(runaway);
    assert_eq!(pool.free_slots(), 2, "its slot is free at once");
    // Killed: within a moment it is no longer a live child.
    let deadline = Instant::now() + T;
    while workers() > 0 {
        assert!(Instant::now() < deadline, "the runaway worker lives on");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.eval("1", &json!(null)).await, Ok(json!(1)));
}
