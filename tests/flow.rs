//! Control flow against the real daemon: `when` and `trigger` (branches
//! and their join, skips that cascade, runs that end skipped), `foreach`
//! (items in order, progress, durable items across a kill -9), child
//! workflows (outputs, parent fields on events, failure, cancellation,
//! depth), `node_started` for workflows that ask, and the seed's
//! `flight-search` keeping exactly its four events.
//!
//! No timing thresholds: every wait is a deadline on an outcome, and
//! "nothing else" is shown by ordering (the next event is another run's).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use flowcast_actors::store::keys;
use serde_json::{json, Value};

use crate::support::*;

/// `type` and `node_id` of each event, for comparing sequences.
fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["node_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn seq_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(t, n)| (t.to_string(), n.to_string()))
        .collect()
}

/// Registers a workflow for `user`; returns the answer (no status check).
async fn put_workflow(d: &Daemon, user: &str, wf: &Value) -> Resp {
    let tag = wf["tag"].as_str().unwrap();
    put(&format!("{}/api/v1/workflows/{tag}", d.api), Some(user), wf).await
}

/// The output stored under a result ref.
async fn output(d: &Daemon, user: &str, result_ref: &Value) -> Value {
    let r = get(
        &format!("{}/api/v1/results/{}", d.api, result_ref.as_str().unwrap()),
        Some(user),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Runs `tag` to its end; returns (run view, its events).
async fn run_to_end(d: &Daemon, user: &str, tag: &str, inputs: Value) -> (Value, Vec<Value>) {
    let id = start_run(d, user, tag, inputs).await;
    let run = wait_run(d, user, &id, T).await;
    let events = run_events(d, user, &id).await;
    (run, events)
}

/// Waits on `sub` for the `workflow_started` of a child of `parent`;
/// returns the child's run id.
async fn child_started(sub: &mut Sub, parent: &str) -> String {
    loop {
        let e = sub.next(T).await.expect("the child's workflow_started");
        if e["type"] == "workflow_started" && e["parent_run_id"] == parent {
            return e["run_id"].as_str().unwrap().to_owned();
        }
    }
}

/// Every event of one run, in order, with seq 1, 2, ... and one terminal
/// event, the last.
fn assert_well_formed(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "{events:#?}");
    }
    let terminal = events
        .iter()
        .filter(|e| {
            matches!(
                e["type"].as_str(),
                Some("workflow_completed" | "workflow_failed" | "workflow_cancelled")
            )
        })
        .count();
    assert_eq!(terminal, 1, "{events:#?}");
    assert!(events.last().unwrap()["type"]
        .as_str()
        .unwrap()
        .starts_with("workflow_"));
}

// ---------------------------------------------------------------------------
// The seed's sequence stays exact
// ---------------------------------------------------------------------------

/// flight-search publishes its four events and nothing between or after
/// them, on the Redis channel and on an unfiltered socket: the next event
/// on both is another run's `workflow_started`.
#[actix_rt::test]
async fn flight_search_keeps_exactly_the_seeds_four_events_on_redis_and_a_socket() {
    let (redis, d) = start(&[]).await;
    let mut sub = Sub::new(&redis, "workflow:events:test-user").await;
    let mut ws = ws_connect(&d, "/ws?username=test-user").await;
    wait_ready(&d).await;
    let seed = start_run(&d, "test-user", "flight-search", json!({"city": "NYC"})).await;
    let from_redis = sub.take(4, T).await;
    let from_ws = ws_take(&mut ws, 4, T).await;
    let want = seq_of(&[
        ("workflow_started", ""),
        ("node_completed", "search"),
        ("node_completed", "format"),
        ("workflow_completed", ""),
    ]);
    for ev in [&from_redis, &from_ws] {
        assert_eq!(kinds(ev), want, "{ev:#?}");
        assert!(ev.iter().all(|e| e["run_id"] == seed.as_str()));
        assert_eq!(ev[1]["counter"], 1);
        assert_eq!(ev[2]["counter"], 0);
        assert!(ev.iter().all(|e| e.get("parent_run_id").is_none()));
    }
    assert_eq!(from_redis, from_ws);
    assert_eq!(run_events(&d, "test-user", &seed).await, from_redis);
    // The next event on both is the marker run's first.
    let marker = start_run(&d, "test-user", "flight-search", json!({"city": "Rome"})).await;
    for next in [
        sub.next(T).await.unwrap(),
        ws_take(&mut ws, 1, T).await.remove(0),
    ] {
        assert_eq!(next["type"], "workflow_started", "{next}");
        assert_eq!(next["run_id"], marker.as_str());
    }
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// when / trigger
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn a_branch_runs_one_side_skips_the_other_and_the_join_runs() {
    let (redis, d) = start(&[]).await;
    let mut sub = Sub::new(&redis, &keys::channel("brancher")).await;
    let id = start_run(&d, "brancher", "flight-branch", json!({"city": "NYC"})).await;
    let ev = sub.take(6, T).await;
    assert_eq!(
        kinds(&ev),
        seq_of(&[
            ("workflow_started", ""),
            ("node_completed", "search"),
            ("node_skipped", "notify"),
            ("node_completed", "format"),
            ("node_completed", "reply"),
            ("workflow_completed", ""),
        ]),
        "{ev:#?}"
    );
    // The skip is in the same step as the completion that caused it.
    assert_eq!(ev[1]["counter"], 1);
    assert_eq!(ev[2]["counter"], 1);
    assert_eq!(ev[2]["status"], "skipped");
    assert_eq!(ev[2]["reason"], "when was false");
    assert_eq!(ev[3]["counter"], 1);
    assert_eq!(ev[4]["counter"], 0);
    assert_well_formed(&ev);
    let run = wait_run(&d, "brancher", &id, T).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["nodes"]["notify"]["status"], "skipped");
    assert!(run["nodes"]["notify"].get("result_ref").is_none());
    assert_eq!(
        output(&d, "brancher", &run["nodes"]["reply"]["result_ref"]).await,
        json!("1 flights to NYC")
    );

    // The other side.
    let (run, ev) = run_to_end(&d, "brancher", "flight-branch", json!({"city": "Atlantis"})).await;
    assert_eq!(
        kinds(&ev)[1..5],
        seq_of(&[
            ("node_completed", "search"),
            ("node_skipped", "format"),
            ("node_completed", "notify"),
            ("node_completed", "reply"),
        ])[..]
    );
    assert_eq!(
        output(&d, "brancher", &run["nodes"]["reply"]["result_ref"]).await,
        json!("no flights to Atlantis yet: we will email you")
    );
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn skips_cascade_and_a_run_whose_remaining_nodes_are_all_skipped_completes() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "gater",
        &json!({"tag": "gated", "nodes": [
            {"id": "gate", "kind": "transform", "when": ".inputs.go", "filter": "1"},
            {"id": "after", "kind": "transform", "depends_on": ["gate"], "filter": "2"},
            {"id": "join", "kind": "transform", "depends_on": ["after", "gate"],
             "trigger": "any_completed", "filter": "3"}
        ]}),
    )
    .await;
    // Skipped at the start: the run completes in its first commit.
    let (run, ev) = run_to_end(&d, "gater", "gated", json!({"go": false})).await;
    assert_eq!(
        kinds(&ev),
        seq_of(&[
            ("workflow_started", ""),
            ("node_skipped", "gate"),
            ("node_skipped", "after"),
            ("node_skipped", "join"),
            ("workflow_completed", ""),
        ]),
        "{ev:#?}"
    );
    assert_eq!(ev[2]["reason"], "parent \"gate\" was skipped");
    assert_eq!(ev[3]["reason"], "no parent completed");
    assert!(ev[1..4].iter().all(|e| e["counter"] == 0));
    assert_eq!(run["status"], "completed");
    assert_eq!(run["counter"], 0);
    // A null condition skips too; anything else but false runs.
    let (_, ev) = run_to_end(&d, "gater", "gated", json!({})).await;
    assert_eq!(ev[1]["type"], "node_skipped");
    let (run, ev) = run_to_end(&d, "gater", "gated", json!({"go": 0})).await;
    assert_eq!(ev.len(), 5, "{ev:#?}");
    assert_eq!(run["nodes"]["join"]["status"], "completed");

    // Skipped mid-run: the completion that skips the rest ends the run.
    register(
        &d,
        "gater",
        &json!({"tag": "tail", "nodes": [
            {"id": "a", "kind": "transform", "filter": "{n: 0}"},
            {"id": "b", "kind": "transform", "depends_on": ["a"], "when": ".nodes.a.n > 0", "filter": "1"},
            {"id": "c", "kind": "transform", "depends_on": ["b"], "filter": "2"}
        ]}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "gater", "tail", json!({})).await;
    assert_eq!(
        kinds(&ev),
        seq_of(&[
            ("workflow_started", ""),
            ("node_completed", "a"),
            ("node_skipped", "b"),
            ("node_skipped", "c"),
            ("workflow_completed", ""),
        ])
    );
    assert_eq!(ev[1]["counter"], 0);
    assert_eq!(run["status"], "completed");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn bad_control_flow_is_a_422_naming_the_node() {
    let (_redis, d) = start(&[]).await;
    let base =
        |node: Value| json!({"tag": "bad", "nodes": [{"id": "a", "kind": "delay", "ms": 0}, node]});
    let cases = [
        (
            base(
                json!({"id": "b", "kind": "delay", "ms": 0, "depends_on": ["a"], "when": ".x | ]"}),
            ),
            "node \"b\": when: invalid jq filter",
        ),
        (
            base(
                json!({"id": "b", "kind": "delay", "ms": 0, "depends_on": ["a"], "trigger": "all_done"}),
            ),
            "node \"b\": field \"trigger\"",
        ),
        (
            base(json!({"id": "b", "kind": "delay", "ms": 0, "depends_on": ["a"], "trigger": 7})),
            "node \"b\": field \"trigger\"",
        ),
        (
            base(
                json!({"id": "b", "kind": "delay", "ms": 0, "foreach": "[1,2", "depends_on": ["a"]}),
            ),
            "node \"b\": foreach: invalid jq filter",
        ),
        (
            base(
                json!({"id": "b", "kind": "delay", "ms": 0, "foreach": "[]", "concurrency": 100000}),
            ),
            "concurrency must be between 1 and 1024",
        ),
        (
            base(json!({"id": "b", "kind": "workflow", "tag": "no-such-flow"})),
            "node \"b\": child workflow \"no-such-flow\" does not exist",
        ),
        (
            base(json!({"id": "b", "kind": "workflow", "tag": "bad"})),
            "a child workflow may not run itself",
        ),
        (
            base(
                json!({"id": "b", "kind": "workflow", "tag": "flight-search", "inputs": "{city:"}),
            ),
            "node \"b\": inputs: invalid jq filter",
        ),
    ];
    for (wf, want) in cases {
        let r = put_workflow(&d, "admin", &wf).await;
        assert_eq!(r.status, 422, "{wf}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "invalid_workflow");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{wf}: {msg}");
    }
    // Recursion through another workflow: up -> down is fine, until down
    // is made to run up.
    let up = json!({"tag": "up", "nodes": [{"id": "call", "kind": "workflow", "tag": "down"}]});
    let down = json!({"tag": "down", "nodes": [{"id": "leaf", "kind": "delay", "ms": 0}]});
    assert_eq!(put_workflow(&d, "admin", &down).await.status, 201);
    assert_eq!(put_workflow(&d, "admin", &up).await.status, 201);
    let loop_back =
        json!({"tag": "down", "nodes": [{"id": "back", "kind": "workflow", "tag": "up"}]});
    let r = put_workflow(&d, "admin", &loop_back).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"down\" runs \"up\" runs \"down\" again: recursion"),
        "{msg}"
    );
    // Nothing was stored: down still runs.
    let (run, _) = run_to_end(&d, "admin", "up", json!({})).await;
    assert_eq!(run["status"], "completed");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_condition_that_fails_fails_its_node_without_retry() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "w",
        &json!({"tag": "bad-when", "nodes": [
            {"id": "a", "kind": "transform", "filter": "1"},
            {"id": "b", "kind": "transform", "depends_on": ["a"], "when": "error(\"no verdict\")",
             "filter": "2", "retry": {"max_attempts": 5, "backoff_ms": 1}},
            {"id": "c", "kind": "transform", "depends_on": ["b"], "filter": "3"}
        ]}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "w", "bad-when", json!({})).await;
    assert_eq!(run["status"], "failed");
    let failed: Vec<&Value> = ev.iter().filter(|e| e["type"] == "node_failed").collect();
    assert_eq!(failed.len(), 1, "{ev:#?}");
    assert_eq!(failed[0]["node_id"], "b");
    assert_eq!(failed[0]["will_retry"], false);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("when: "),
        "{ev:#?}"
    );
    assert!(failed[0]["error"].as_str().unwrap().contains("no verdict"));
    assert_eq!(ev.last().unwrap()["type"], "workflow_failed");
    // The node never reached is cancelled, not left waiting.
    assert_eq!(run["nodes"]["c"]["status"], "cancelled");
    assert_well_formed(&ev);
    // At the start of a run too.
    register(
        &d,
        "w",
        &json!({"tag": "bad-entry", "nodes": [
            {"id": "a", "kind": "transform", "when": ".inputs | keys | error", "filter": "1"}
        ]}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "w", "bad-entry", json!({"k": 1})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(
        kinds(&ev),
        seq_of(&[
            ("workflow_started", ""),
            ("node_failed", "a"),
            ("workflow_failed", "")
        ])
    );
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// foreach
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn foreach_runs_every_item_reports_progress_and_outputs_in_item_order() {
    let (redis, d) = start(&[]).await;
    let mut sub = Sub::new(&redis, &keys::channel("looper")).await;
    register(
        &d,
        "looper",
        &json!({"tag": "squares", "nodes": [
            {"id": "each", "kind": "transform", "foreach": "[range(.inputs.n)]", "concurrency": 3,
             "filter": "{i: .index, sq: (.item * .item), n: .inputs.n}"},
            {"id": "sum", "kind": "transform", "depends_on": ["each"],
             "filter": "[.nodes.each[].sq] | add"}
        ]}),
    )
    .await;
    let id = start_run(&d, "looper", "squares", json!({"n": 20})).await;
    let run = wait_run(&d, "looper", &id, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["nodes"]["each"]["items"],
        json!({"done": 20, "total": 20})
    );
    let out = output(&d, "looper", &run["nodes"]["each"]["result_ref"]).await;
    let want: Vec<Value> = (0..20)
        .map(|i| json!({"i": i, "sq": i * i, "n": 20}))
        .collect();
    assert_eq!(out, Value::Array(want));
    assert_eq!(
        output(&d, "looper", &run["nodes"]["sum"]["result_ref"]).await,
        json!((0..20).map(|i| i * i).sum::<i64>())
    );
    let ev = sub.take(25, T).await;
    assert_well_formed(&ev);
    // 0/20 once the array is known, then one per item, in order, then the
    // node's completion holding one token throughout.
    let progress: Vec<u64> = ev
        .iter()
        .filter(|e| e["type"] == "node_progress")
        .map(|e| e["done"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, (0..=20).collect::<Vec<u64>>());
    let last = ev.iter().rfind(|e| e["type"] == "node_progress").unwrap();
    assert_eq!(last["progress"], 1.0);
    assert_eq!(last["message"], "20/20 items");
    assert_eq!(last["total"], 20);
    assert_eq!(
        kinds(&ev[ev.len() - 3..]),
        seq_of(&[
            ("node_completed", "each"),
            ("node_completed", "sum"),
            ("workflow_completed", "")
        ])
    );
    assert_eq!(ev[ev.len() - 3]["counter"], 1);

    // An empty array completes the node with [] and no progress.
    let (run, ev) = run_to_end(&d, "looper", "squares", json!({"n": 0})).await;
    assert_eq!(
        output(&d, "looper", &run["nodes"]["each"]["result_ref"]).await,
        json!([])
    );
    assert!(ev.iter().all(|e| e["type"] != "node_progress"), "{ev:#?}");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn foreach_on_bad_values_and_failing_items_fails_the_node() {
    let (_redis, d) = start(&["--max-foreach-items", "5"]).await;
    register(
        &d,
        "e",
        &json!({"tag": "each", "nodes": [
            {"id": "each", "kind": "transform", "foreach": ".inputs.items",
             "filter": "if .item == \"bad\" then error(\"item refused\") else .item end",
             "retry": {"max_attempts": 4, "backoff_ms": 1}}
        ]}),
    )
    .await;
    let cases = [
        (
            json!({"items": {"a": 1}}),
            "foreach gave an object, not a list",
        ),
        (json!({"items": "abc"}), "foreach gave a string, not a list"),
        (json!({}), "foreach gave null, not a list"),
        (
            json!({"items": [1, 2, 3, 4, 5, 6]}),
            "foreach gave 6 items; the limit is 5 (--max-foreach-items)",
        ),
        (
            json!({"items": ["x", "bad", "y"]}),
            "item 1: \"item refused\"",
        ),
    ];
    for (inputs, want) in cases {
        let (run, ev) = run_to_end(&d, "e", "each", inputs.clone()).await;
        assert_eq!(run["status"], "failed", "{inputs}");
        let failed: Vec<&Value> = ev.iter().filter(|e| e["type"] == "node_failed").collect();
        assert_eq!(failed.len(), 1, "{inputs}: not retried: {ev:#?}");
        assert_eq!(failed[0]["will_retry"], false);
        let error = failed[0]["error"].as_str().unwrap();
        assert!(error.contains(want), "{inputs}: {error}");
        assert_eq!(ev.last().unwrap()["failed_node"], "each");
        assert_well_formed(&ev);
    }
    // At the limit is fine.
    let (run, _) = run_to_end(&d, "e", "each", json!({"items": [1, 2, 3, 4, 5]})).await;
    assert_eq!(run["status"], "completed");
    assert_no_panic(&d);
}

/// A local server for `http` items: `/item/{i}` answers `{"i": i}` and
/// counts its calls per item; while `hold` is set, items at or above
/// `hold_from` are held (never answered).
struct ItemServer {
    base: String,
    calls: Arc<Mutex<Vec<usize>>>,
    hold: Arc<AtomicBool>,
    _srv: actix_web::dev::ServerHandle,
}

impl ItemServer {
    fn start(items: usize, hold_from: usize) -> Self {
        let calls = Arc::new(Mutex::new(vec![0usize; items]));
        let hold = Arc::new(AtomicBool::new(true));
        let (c, h) = (calls.clone(), hold.clone());
        let (base, srv) = local_server(move |app| {
            let (c, h) = (c.clone(), h.clone());
            app.route(
                "/item/{i}",
                web::get().to(move |i: web::Path<usize>| {
                    let (c, h) = (c.clone(), h.clone());
                    async move {
                        let i = i.into_inner();
                        if let Some(n) = c.lock().unwrap().get_mut(i) {
                            *n += 1;
                        }
                        while i >= hold_from && h.load(Ordering::SeqCst) {
                            actix_rt::time::sleep(Duration::from_millis(20)).await;
                        }
                        HttpResponse::Ok().json(json!({"i": i}))
                    }
                }),
            );
        });
        Self {
            base,
            calls,
            hold,
            _srv: srv,
        }
    }

    fn calls(&self) -> Vec<usize> {
        self.calls.lock().unwrap().clone()
    }
}

/// kill -9 in the middle of a foreach: the restarted daemon resumes the
/// run and calls only the items that had not finished (the one in flight
/// is called again: at-least-once), and the output keeps item order.
#[actix_rt::test]
async fn kill9_in_a_foreach_does_not_redo_finished_items() {
    const ITEMS: usize = 10;
    const HOLD_FROM: usize = 5;
    let srv = ItemServer::start(ITEMS, HOLD_FROM);
    let args = ["--http-allow", "127.0.0.1/32", "--instance-id", "runner-a"];
    let (redis, mut d) = start(&args).await;
    register(
        &d,
        "k",
        &json!({"tag": "fetch-all", "nodes": [
            {"id": "fetch", "kind": "http", "foreach": "[range(.inputs.n)]", "concurrency": 1,
             "url_filter": "\"\\(.inputs.base)/item/\\(.index)\"", "timeout_ms": 120000}
        ]}),
    )
    .await;
    let id = start_run(&d, "k", "fetch-all", json!({"n": ITEMS, "base": srv.base})).await;
    // Five items durable and the sixth in flight (concurrency 1).
    let view = format!("{}/api/v1/runs/{id}", d.api);
    wait_until_async("five items done and the sixth in flight", T, || async {
        let r = get(&view, Some("k")).await;
        srv.calls()[HOLD_FROM] == 1
            && r.body["nodes"]["fetch"]["items"] == json!({"done": 5, "total": 10})
    })
    .await;
    d.kill9();
    srv.hold.store(false, Ordering::SeqCst);
    let d = Daemon::start(&redis, &args);
    let run = wait_run(&d, "k", &id, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    let mut want = vec![1; ITEMS];
    want[HOLD_FROM] = 2;
    assert_eq!(srv.calls(), want, "finished items were called again");
    let out = output(&d, "k", &run["nodes"]["fetch"]["result_ref"]).await;
    let items: Vec<Value> = (0..ITEMS).map(|i| json!({"i": i})).collect();
    assert_eq!(out, Value::Array(items));
    let ev = run_events(&d, "k", &id).await;
    assert_well_formed(&ev);
    let progress: Vec<u64> = ev
        .iter()
        .filter(|e| e["type"] == "node_progress")
        .map(|e| e["done"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, (0..=ITEMS as u64).collect::<Vec<_>>());
    assert_clean(&mut redis.conn(), std::slice::from_ref(&id));
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// Child workflows
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn a_child_run_gives_its_sinks_as_output_and_its_events_name_the_parent() {
    let (redis, d) = start(&[]).await;
    let mut sub = Sub::new(&redis, &keys::channel("parent-user")).await;
    let parent = start_run(&d, "parent-user", "flight-trip", json!({"to": "Oslo"})).await;
    let run = wait_run(&d, "parent-user", &parent, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        output(&d, "parent-user", &run["nodes"]["outbound"]["result_ref"]).await,
        json!({"format": "1 flights to Oslo"})
    );
    assert_eq!(
        output(&d, "parent-user", &run["nodes"]["summary"]["result_ref"]).await,
        json!("trip to Oslo: 1 flights to Oslo")
    );
    assert!(run.get("parent_run_id").is_none());
    // The child's four events carry the parent; the parent's do not.
    let ev = sub.take(8, T).await;
    let (child_ev, parent_ev): (Vec<Value>, Vec<Value>) =
        ev.into_iter().partition(|e| e["run_id"] != parent.as_str());
    assert_eq!(parent_ev.len(), 4, "{parent_ev:#?}");
    assert!(parent_ev.iter().all(|e| e.get("parent_run_id").is_none()));
    assert_eq!(child_ev.len(), 4, "{child_ev:#?}");
    assert_eq!(
        kinds(&child_ev),
        seq_of(&[
            ("workflow_started", ""),
            ("node_completed", "search"),
            ("node_completed", "format"),
            ("workflow_completed", ""),
        ])
    );
    for e in &child_ev {
        assert_eq!(e["parent_run_id"], parent.as_str(), "{e}");
        assert_eq!(e["parent_node_id"], "outbound");
    }
    assert_eq!(child_ev[0]["tag"], "flight-search");
    // The child is a run of the same user, and says whose child it is.
    let child = child_ev[0]["run_id"].as_str().unwrap();
    let r = get(
        &format!("{}/api/v1/runs/{child}", d.api),
        Some("parent-user"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["parent_run_id"], parent.as_str());
    assert_eq!(r.body["parent_node_id"], "outbound");
    assert_eq!(r.body["depth"], 1);
    assert_eq!(r.body["inputs"], json!({"city": "Oslo"}));
    let other = get(&format!("{}/api/v1/runs/{child}", d.api), Some("mallory")).await;
    assert_eq!(other.status, 404);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn foreach_over_a_child_workflow_runs_one_child_per_item() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "tourist",
        &json!({"tag": "tour", "nodes": [
            {"id": "legs", "kind": "workflow", "tag": "flight-search", "foreach": ".inputs.cities",
             "concurrency": 2, "inputs": "{city: .item}"}
        ]}),
    )
    .await;
    let cities = ["Oslo", "Rome", "Lima", "Nuuk", "Baku"];
    let (run, ev) = run_to_end(&d, "tourist", "tour", json!({"cities": cities})).await;
    assert_eq!(run["status"], "completed", "{run}");
    let out = output(&d, "tourist", &run["nodes"]["legs"]["result_ref"]).await;
    let want: Vec<Value> = cities
        .iter()
        .map(|c| json!({"format": format!("1 flights to {c}")}))
        .collect();
    assert_eq!(out, Value::Array(want));
    assert_eq!(
        ev.iter().filter(|e| e["type"] == "node_progress").count(),
        6
    );
    // Five child runs, each completed, each the parent's.
    let r = get(&format!("{}/api/v1/runs?limit=10", d.api), Some("tourist")).await;
    let children: Vec<&Value> = r.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["parent_run_id"] == run["run_id"])
        .collect();
    assert_eq!(children.len(), 5, "{}", r.text);
    assert!(children.iter().all(|c| c["status"] == "completed"));
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_failing_child_fails_the_parent_node() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "f",
        &json!({"tag": "breaks", "nodes": [
            {"id": "ok", "kind": "transform", "filter": "1"},
            {"id": "boom", "kind": "transform", "depends_on": ["ok"], "filter": "error(\"child broke\")"}
        ]}),
    )
    .await;
    register(
        &d,
        "f",
        &json!({"tag": "calls-breaks", "nodes": [
            {"id": "call", "kind": "workflow", "tag": "breaks", "inputs": "{}"}
        ]}),
    )
    .await;
    // Inputs that are not an object: the node fails, not retried.
    register(
        &d,
        "f",
        &json!({"tag": "bad-inputs", "nodes": [
            {"id": "call", "kind": "workflow", "tag": "breaks", "inputs": "[1, 2]",
             "retry": {"max_attempts": 3, "backoff_ms": 1}}
        ]}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "f", "bad-inputs", json!({})).await;
    assert_eq!(run["status"], "failed");
    let failed: Vec<&Value> = ev.iter().filter(|e| e["type"] == "node_failed").collect();
    assert_eq!(failed.len(), 1, "{ev:#?}");
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("inputs gave a list, not an object"));

    let (run, ev) = run_to_end(&d, "f", "calls-breaks", json!({})).await;
    assert_eq!(run["status"], "failed");
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "workflow_failed");
    assert_eq!(last["failed_node"], "call");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("(\"breaks\") failed: node \"boom\"") && error.contains("child broke"),
        "{error}"
    );
    assert_no_panic(&d);
}

/// kill -9 while a child runs: the restarted daemon resumes both, and the
/// parent finds the child it had started instead of starting another
/// (with `node_started`, whose record holds the attempt in flight).
#[actix_rt::test]
async fn kill9_with_a_running_child_resumes_the_parent_with_the_same_child() {
    let args = ["--instance-id", "runner-a"];
    let (redis, mut d) = start(&args).await;
    let mut sub = Sub::new(&redis, &keys::channel("crasher")).await;
    register(
        &d,
        "crasher",
        &json!({"tag": "slow-leaf", "nodes": [{"id": "wait", "kind": "delay", "ms": 3000}]}),
    )
    .await;
    register(
        &d,
        "crasher",
        &json!({"tag": "slow-root", "events": {"node_started": true}, "nodes": [
            {"id": "call", "kind": "workflow", "tag": "slow-leaf"}
        ]}),
    )
    .await;
    let parent = start_run(&d, "crasher", "slow-root", json!({})).await;
    let child = child_started(&mut sub, &parent).await;
    d.kill9();
    let d = Daemon::start(&redis, &args);
    let run = wait_run(&d, "crasher", &parent, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        output(&d, "crasher", &run["nodes"]["call"]["result_ref"]).await,
        json!({"wait": null})
    );
    let r = get(&format!("{}/api/v1/runs", d.api), Some("crasher")).await;
    let ids: Vec<&str> = r.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "one parent, one child: {}", r.text);
    assert!(ids.contains(&child.as_str()));
    let ev = run_events(&d, "crasher", &parent).await;
    assert_well_formed(&ev);
    // The attempt in flight ran again under its number.
    let started: Vec<u64> = ev
        .iter()
        .filter(|e| e["type"] == "node_started")
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert!(started.iter().all(|&a| a == 1), "{ev:#?}");
    assert_clean(&mut redis.conn(), &[parent, child]);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn cancelling_a_parent_cancels_its_running_child() {
    let (redis, d) = start(&[]).await;
    let mut sub = Sub::new(&redis, &keys::channel("canceller")).await;
    register(
        &d,
        "canceller",
        &json!({"tag": "long-child", "nodes": [{"id": "wait", "kind": "delay", "ms": 600000}]}),
    )
    .await;
    register(
        &d,
        "canceller",
        &json!({"tag": "long-parent", "nodes": [
            {"id": "call", "kind": "workflow", "tag": "long-child"},
            {"id": "after", "kind": "delay", "ms": 0, "depends_on": ["call"]}
        ]}),
    )
    .await;
    let parent = start_run(&d, "canceller", "long-parent", json!({})).await;
    // The child has started.
    let child = child_started(&mut sub, &parent).await;
    let r = post(
        &format!("{}/api/v1/runs/{parent}/cancel", d.api),
        Some("canceller"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let e = sub.next(T).await.expect("both runs cancelled");
        if e["type"] == "workflow_cancelled" {
            ended.push(e);
        }
    }
    let p = ended
        .iter()
        .find(|e| e["run_id"] == parent.as_str())
        .unwrap();
    assert_eq!(p["cancelled_nodes"], json!(["call"]));
    let c = ended
        .iter()
        .find(|e| e["run_id"] == child.as_str())
        .unwrap();
    assert_eq!(c["cancelled_nodes"], json!(["wait"]));
    assert_eq!(c["parent_run_id"], parent.as_str());
    let p = wait_run(&d, "canceller", &parent, T).await;
    assert_eq!(p["nodes"]["after"]["status"], "cancelled");
    assert_eq!(
        wait_run(&d, "canceller", &child, T).await["status"],
        "cancelled"
    );
    assert_clean(&mut redis.conn(), &[parent, child]);
    assert_no_panic(&d);
}

/// What registration cannot see is a clear node failure at run time, not
/// retried: a child tag deleted since, and nesting made deeper since.
#[actix_rt::test]
async fn a_missing_child_and_too_deep_a_nesting_fail_the_node_at_run_time() {
    let (_redis, d) = start(&["--max-child-depth", "1"]).await;
    let leaf = json!({"tag": "leaf", "nodes": [{"id": "x", "kind": "delay", "ms": 0}]});
    let mid = json!({"tag": "mid", "nodes": [{"id": "y", "kind": "delay", "ms": 0}]});
    let top = json!({"tag": "top", "nodes": [
        {"id": "call", "kind": "workflow", "tag": "mid", "retry": {"max_attempts": 3, "backoff_ms": 1}}
    ]});
    for wf in [&leaf, &mid, &top] {
        register(&d, "deep-user", wf).await;
    }
    // Registration refuses what it can see: top -> mid -> leaf is 2 deep.
    let deep = json!({"tag": "deep", "nodes": [{"id": "call", "kind": "workflow", "tag": "top"}]});
    let r = put_workflow(&d, "deep-user", &deep).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the limit is 1 (--max-child-depth)"));
    // mid now runs leaf: top's run nests 2 deep.
    register(
        &d,
        "deep-user",
        &json!({"tag": "mid", "nodes": [{"id": "y", "kind": "workflow", "tag": "leaf"}]}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "deep-user", "top", json!({})).await;
    assert_eq!(run["status"], "failed");
    let error = ev.last().unwrap()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("child workflow \"leaf\" would be nested 2 deep; the limit is 1"),
        "{error}"
    );
    // A child tag deleted after registration: one attempt, not three.
    let r = request(
        "DELETE",
        &format!("{}/api/v1/workflows/mid", d.api),
        Some("deep-user"),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    let (run, ev) = run_to_end(&d, "deep-user", "top", json!({})).await;
    assert_eq!(run["status"], "failed");
    let failed: Vec<&Value> = ev.iter().filter(|e| e["type"] == "node_failed").collect();
    assert_eq!(failed.len(), 1, "{ev:#?}");
    assert_eq!(failed[0]["error"], "child workflow \"mid\" does not exist");
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// node_started
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn node_started_comes_before_every_attempt_in_workflows_that_ask() {
    let hits = Arc::new(AtomicUsize::new(0));
    let (base, _srv) = local_server(move |app| {
        let h = hits.clone();
        app.route(
            "/flaky",
            web::get().to(move || {
                let n = h.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        HttpResponse::ServiceUnavailable().body("later")
                    } else {
                        HttpResponse::Ok().json(json!({"ok": true}))
                    }
                }
            }),
        );
    });
    let (_redis, d) = start(&["--http-allow", "127.0.0.1/32"]).await;
    let nodes = json!([
        {"id": "call", "kind": "http", "url": format!("{base}/flaky"),
         "retry": {"max_attempts": 2, "backoff_ms": 1}},
        {"id": "skip", "kind": "delay", "ms": 0, "depends_on": ["call"], "when": "false"},
        {"id": "done", "kind": "transform", "depends_on": ["call"], "filter": ".nodes.call"}
    ]);
    register(
        &d,
        "s",
        &json!({"tag": "announced", "events": {"node_started": true}, "nodes": nodes}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "s", "announced", json!({})).await;
    assert_eq!(run["status"], "completed", "{ev:#?}");
    assert_eq!(
        kinds(&ev),
        seq_of(&[
            ("workflow_started", ""),
            ("node_started", "call"),
            ("node_failed", "call"),
            ("node_started", "call"),
            ("node_completed", "call"),
            ("node_skipped", "skip"),
            ("node_started", "done"),
            ("node_completed", "done"),
            ("workflow_completed", ""),
        ]),
        "{ev:#?}"
    );
    assert_eq!(ev[1]["attempt"], 1);
    assert_eq!(ev[2]["will_retry"], true);
    assert_eq!(ev[3]["attempt"], 2);
    assert_well_formed(&ev);
    // The same workflow without the option: no node_started.
    register(&d, "s", &json!({"tag": "quiet", "nodes": nodes})).await;
    let (_, ev) = run_to_end(&d, "s", "quiet", json!({})).await;
    assert!(ev.iter().all(|e| e["type"] != "node_started"), "{ev:#?}");
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// On main's ground: tenancy, quotas, the sandbox, size limits
// ---------------------------------------------------------------------------

/// A child's tag resolves as a run's does, for the parent run's user:
/// their own workflow first, then the shared one; registration checks
/// child tags the same way.
#[actix_rt::test]
async fn a_child_tag_resolves_to_the_users_own_workflow_first_then_the_shared_one() {
    let (_redis, d) = start(&[]).await;
    let outbound = |user: &'static str| {
        let d = &d;
        async move {
            let (run, _) = run_to_end(d, user, "flight-trip", json!({"to": "Oslo"})).await;
            assert_eq!(run["status"], "completed", "{run}");
            output(d, user, &run["nodes"]["outbound"]["result_ref"]).await
        }
    };
    // The shared flight-trip runs the shared flight-search...
    assert_eq!(
        outbound("owner").await,
        json!({"format": "1 flights to Oslo"})
    );
    // ...until the user has their own flight-search, which shadows it in
    // their runs' children only.
    register(
        &d,
        "owner",
        &json!({"tag": "flight-search", "nodes": [
            {"id": "mine", "kind": "transform", "filter": "\"own flights to \\(.inputs.city)\""}
        ]}),
    )
    .await;
    assert_eq!(
        outbound("owner").await,
        json!({"mine": "own flights to Oslo"})
    );
    assert_eq!(
        outbound("other").await,
        json!({"format": "1 flights to Oslo"})
    );

    // Registration resolves child tags for the registering user.
    register(
        &d,
        "owner",
        &json!({"tag": "private-child", "nodes": [{"id": "x", "kind": "delay", "ms": 0}]}),
    )
    .await;
    let parent = json!({"tag": "calls-private", "nodes": [{"id": "call", "kind": "workflow", "tag": "private-child"}]});
    assert_eq!(put_workflow(&d, "owner", &parent).await.status, 201);
    let r = put_workflow(&d, "other", &parent).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        r.body["error"]["message"],
        "node \"call\": child workflow \"private-child\" does not exist"
    );
    // A user's copy that would make a shared workflow run itself again.
    let looping = json!({"tag": "flight-search", "nodes": [
        {"id": "again", "kind": "workflow", "tag": "flight-trip"}
    ]});
    let r = put_workflow(&d, "other", &looping).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("again: recursion is not allowed"), "{msg}");
    assert_no_panic(&d);
}

/// A child run is one more active run of its user: it counts against
/// `--max-active-runs-per-user` (not the rate), and a child the quota
/// refuses writes nothing and fails its node with a message saying so.
#[actix_rt::test]
async fn child_runs_count_as_active_runs_and_one_over_the_quota_fails_its_node() {
    let (redis, d) = start(&["--max-active-runs-per-user", "3"]).await;
    let mut sub = Sub::new(&redis, &keys::channel("q")).await;
    register(
        &d,
        "q",
        &json!({"tag": "slow-leaf", "nodes": [{"id": "wait", "kind": "delay", "ms": 1500}]}),
    )
    .await;
    register(
        &d,
        "q",
        &json!({"tag": "slow-root", "nodes": [
            {"id": "call", "kind": "workflow", "tag": "slow-leaf"}
        ]}),
    )
    .await;
    register(
        &d,
        "q",
        &json!({"tag": "retrying-root", "nodes": [
            {"id": "call", "kind": "workflow", "tag": "slow-leaf",
             "retry": {"max_attempts": 2, "backoff_ms": 1}}
        ]}),
    )
    .await;
    // A parent and its child: two active runs.
    let first = start_run(&d, "q", "slow-root", json!({})).await;
    let child = child_started(&mut sub, &first).await;
    let active = user_active_runs(&mut redis.conn(), "q");
    assert_eq!(active.len(), 2, "{active:?}");
    assert!(active.contains(&first) && active.contains(&child));
    // A second parent takes the third slot: the API refuses a fourth run...
    let second = start_run(&d, "q", "retrying-root", json!({})).await;
    let r = post(
        &format!("{}/api/v1/runs", d.api),
        Some("q"),
        &json!({"tag": "flight-search", "inputs": {}}),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "quota_exceeded");
    // ...and the second parent's child finds the quota full: its node
    // fails, retried per its policy, and the run fails.
    let view = wait_run(&d, "q", &second, T).await;
    assert_eq!(view["status"], "failed", "{view}");
    let ev = run_events(&d, "q", &second).await;
    let failed: Vec<&Value> = ev.iter().filter(|e| e["type"] == "node_failed").collect();
    assert_eq!(failed.len(), 2, "{ev:#?}");
    assert_eq!(failed[0]["will_retry"], true);
    assert_eq!(failed[1]["will_retry"], false);
    assert_eq!(
        failed[1]["error"],
        "child workflow \"slow-leaf\" was not started: user \"q\" has 3 active (queued or running) runs, the limit per user (--max-active-runs-per-user); child runs count as active runs"
    );
    assert_well_formed(&ev);
    // The first parent was never at risk.
    assert_eq!(wait_run(&d, "q", &first, T).await["status"], "completed");
    // Nothing of the refused children was written: two parents, one child.
    let r = get(&format!("{}/api/v1/runs", d.api), Some("q")).await;
    let runs = r.body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{}", r.text);
    let children: Vec<&Value> = runs
        .iter()
        .filter(|x| x["parent_run_id"].is_string())
        .collect();
    assert_eq!(children.len(), 1, "{}", r.text);
    assert_eq!(children[0]["run_id"], child.as_str());
    assert!(user_active_runs(&mut redis.conn(), "q").is_empty());
    assert_clean(&mut redis.conn(), &[first, child, second]);
    assert_no_panic(&d);
}

/// `when`, `foreach` and a child's `inputs` are jq filters like any other:
/// refused at registration when they reach outside the filter, run in the
/// sandboxed evaluators, stopped at the node's deadline.
#[actix_rt::test]
async fn control_flow_filters_are_sandboxed_and_stopped_at_their_deadline() {
    let (_redis, d) = start(&[]).await;
    let leaky = json!({"tag": "leaky", "nodes": [
        {"id": "a", "kind": "delay", "ms": 0, "when": "env.HOME != null"}
    ]});
    let r = put_workflow(&d, "spinner", &leaky).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("node \"a\": when: invalid jq filter: `env` is not available"),
        "{msg}"
    );
    let spin = "last(range(1e15))";
    for (field, node) in [
        (
            "when",
            json!({"id": "n", "kind": "delay", "ms": 0, "when": spin, "timeout_ms": 300}),
        ),
        (
            "foreach",
            json!({"id": "n", "kind": "delay", "ms": 0, "foreach": spin, "timeout_ms": 300}),
        ),
        (
            "inputs",
            json!({"id": "n", "kind": "workflow", "tag": "flight-search",
                   "inputs": spin, "timeout_ms": 300}),
        ),
    ] {
        let tag = format!("spin-{field}");
        register(&d, "spinner", &json!({"tag": tag, "nodes": [node]})).await;
        let (run, ev) = run_to_end(&d, "spinner", &tag, json!({})).await;
        assert_eq!(run["status"], "failed", "{field}: {run}");
        let failed = ev.iter().find(|e| e["type"] == "node_failed").unwrap();
        assert_eq!(
            failed["error"],
            format!("{field}: timed out after 300 ms"),
            "{ev:#?}"
        );
    }
    // Another user's run goes on.
    let (run, _) = run_to_end(&d, "test-user", "flight-search", json!({"city": "NYC"})).await;
    assert_eq!(run["status"], "completed");
    assert_no_panic(&d);
}

/// `--max-output-bytes` holds for a `foreach` node's array of item
/// outputs and for a child's output, not only for single outputs.
#[actix_rt::test]
async fn foreach_arrays_and_child_outputs_are_held_to_max_output_bytes() {
    let (_redis, d) = start(&["--max-output-bytes", "2000"]).await;
    // 100 items of about 40 bytes: each fits, their array does not.
    register(
        &d,
        "big",
        &json!({"tag": "many", "nodes": [
            {"id": "each", "kind": "transform", "foreach": "[range(100)]",
             "filter": "\"item \\(.index) padded to about forty bytes\""}
        ]}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "big", "many", json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    let failed = ev.iter().find(|e| e["type"] == "node_failed").unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("over the limit of 2000 bytes (--max-output-bytes)"),
        "{error}"
    );
    assert_eq!(failed["will_retry"], false);
    // Two sinks of 1,500 bytes each: each fits, the child's output does not.
    register(
        &d,
        "big",
        &json!({"tag": "two-sinks", "nodes": [
            {"id": "a", "kind": "transform", "filter": "[range(1500)] | map(\"x\") | add"},
            {"id": "b", "kind": "transform", "filter": "[range(1500)] | map(\"y\") | add"}
        ]}),
    )
    .await;
    register(
        &d,
        "big",
        &json!({"tag": "calls-two", "nodes": [{"id": "call", "kind": "workflow", "tag": "two-sinks"}]}),
    )
    .await;
    let (run, ev) = run_to_end(&d, "big", "calls-two", json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    let failed = ev.iter().find(|e| e["type"] == "node_failed").unwrap();
    assert_eq!(failed["node_id"], "call");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 2000 bytes (--max-output-bytes)"),
        "{failed}"
    );
    assert_no_panic(&d);
}
