//! The runtime core: the counter's exact semantics on a diamond and a wide
//! fan-out/fan-in, many concurrent runs of many users, workflow CRUD, the
//! `execute` endpoint, per-user run listing and isolation, and the `delay`
//! and `transform` node kinds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flowcast_actors::store::keys;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::*;

/// The diamond a → {b, c} → d, where d's output shows both parents' outputs.
fn diamond(tag: &str) -> Value {
    json!({"tag": tag, "nodes": [
        {"id": "a", "kind": "transform", "filter": "{x: .inputs.x}"},
        {"id": "b", "kind": "transform", "depends_on": ["a"], "filter": ".nodes.a.x + 1"},
        {"id": "c", "kind": "transform", "depends_on": ["a"], "filter": ".nodes.a.x * 10"},
        {"id": "d", "kind": "transform", "depends_on": ["b", "c"],
         "filter": "{b: .nodes.b, c: .nodes.c, sum: (.nodes.b + .nodes.c)}"}
    ]})
}

#[actix_rt::test]
async fn diamond_counts_exactly_and_joins_both_parents() {
    let (redis, d) = start(&[]).await;
    register(&d, "dia", &diamond("diamond")).await;
    let mut sub = Sub::new(&redis, &keys::channel("dia")).await;

    // A few runs at once: their events interleave on the channel, but each
    // run's own events must arrive in order.
    let xs = [1i64, 2, 3];
    let mut runs = BTreeMap::new();
    for x in xs {
        let id = start_run(&d, "dia", "diamond", json!({"x": x})).await;
        runs.insert(id, x);
    }
    let all = sub.take(6 * xs.len(), T).await;
    assert_eq!(all.len(), 6 * xs.len(), "{all:#?}");
    let by_run = group_by_run(&all);
    assert_eq!(
        by_run.keys().collect::<BTreeSet<_>>(),
        runs.keys().collect::<BTreeSet<_>>()
    );

    for (run_id, &x) in &runs {
        let ev = &by_run[run_id];
        assert_eq!(
            types(ev),
            [
                "workflow_started",
                "node_completed",
                "node_completed",
                "node_completed",
                "node_completed",
                "workflow_completed"
            ]
        );
        assert_contiguous_seq(ev);
        assert_eq!(ev[0]["tag"], "diamond");
        assert_eq!(ev[0]["nodes"], 4);
        assert_eq!(ev[0]["entry_nodes"], 1);
        // After a: b and c are active.
        assert_eq!(ev[1]["node_id"], "a");
        assert_eq!(ev[1]["counter"], 2);
        // After the first of b/c: only the other is active. After the other:
        // d is activated (+1) and its token consumed (−1) in one step.
        let middle: BTreeSet<&str> = [&ev[2], &ev[3]]
            .iter()
            .map(|e| e["node_id"].as_str().unwrap())
            .collect();
        assert_eq!(middle, BTreeSet::from(["b", "c"]));
        assert_eq!(ev[2]["counter"], 1);
        assert_eq!(ev[3]["counter"], 1);
        assert_eq!(ev[4]["node_id"], "d");
        assert_eq!(ev[4]["counter"], 0);
        assert_eq!(ev[5]["counter"], 0);
        for e in &ev[1..5] {
            assert_eq!(e["status"], "completed");
            assert!(e["result_ref"].as_str().unwrap().starts_with("sha256:"));
        }

        // d saw both parents' outputs.
        let d_out = result(&d, "dia", ev[4]["result_ref"].as_str().unwrap()).await;
        assert_eq!(
            d_out,
            json!({"b": x + 1, "c": x * 10, "sum": x + 1 + x * 10})
        );

        // The stored run agrees, and its stored events are exactly what was
        // published: one workflow_completed, nothing after it.
        let run = wait_run(&d, "dia", run_id, T).await;
        assert_eq!(run["status"], "completed");
        assert_eq!(run["counter"], 0);
        for n in ["a", "b", "c", "d"] {
            assert_eq!(run["nodes"][n]["status"], "completed", "{run}");
            assert_eq!(run["nodes"][n]["attempt"], 1, "{run}");
        }
        assert_eq!(
            run["nodes"]["d"]["result_ref"], ev[4]["result_ref"],
            "{run}"
        );
        assert_eq!(&run_events(&d, "dia", run_id).await, ev);
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn wide_fan_out_and_fan_in_counts_every_node_once() {
    const WIDTH: usize = 200;
    let (redis, d) = start(&[]).await;
    let mut nodes = vec![json!({"id": "entry", "kind": "transform", "filter": "{base: 1000}"})];
    for i in 0..WIDTH {
        let id = format!("m{i:03}");
        nodes.push(if i % 2 == 0 {
            json!({"id": id, "kind": "delay", "ms": 0, "depends_on": ["entry"]})
        } else {
            json!({"id": id, "kind": "transform", "depends_on": ["entry"],
                   "filter": format!(".nodes.entry.base + {i}")})
        });
    }
    let mids: Vec<String> = (0..WIDTH).map(|i| format!("m{i:03}")).collect();
    nodes.push(json!({"id": "join", "kind": "transform", "depends_on": mids,
        "filter": "{parents: ([.nodes | keys[] | select(startswith(\"m\"))] | length), sum: ([.nodes[] | select(type == \"number\")] | add)}"}));
    register(&d, "wide-user", &json!({"tag": "wide", "nodes": nodes})).await;

    let mut sub = Sub::new(&redis, &keys::channel("wide-user")).await;
    let run_id = start_run(&d, "wide-user", "wide", json!({})).await;
    let n_events = 1 + (WIDTH + 2) + 1;
    let ev = sub.take(n_events, T).await;
    assert_eq!(ev.len(), n_events, "got {} events", ev.len());
    assert!(ev.iter().all(|e| e["run_id"] == run_id.as_str()));
    assert_contiguous_seq(&ev);

    assert_eq!(ev[0]["type"], "workflow_started");
    assert_eq!(ev[0]["nodes"], WIDTH + 2);
    assert_eq!(ev[0]["entry_nodes"], 1);
    let completed: Vec<&Value> = ev
        .iter()
        .filter(|e| e["type"] == "node_completed")
        .collect();
    assert_eq!(completed.len(), WIDTH + 2);
    let ids: BTreeSet<&str> = completed
        .iter()
        .map(|e| e["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), WIDTH + 2, "each node completes exactly once");
    assert_eq!(completed[0]["node_id"], "entry");
    assert_eq!(completed[0]["counter"], WIDTH);
    // The i-th middle node leaves WIDTH - i active; the last one activates
    // the join (+1) as it consumes its own token (−1).
    for (i, e) in completed[1..=WIDTH].iter().enumerate() {
        assert!(e["node_id"].as_str().unwrap().starts_with('m'), "{e}");
        let want = if i + 1 == WIDTH { 1 } else { WIDTH - i - 1 };
        assert_eq!(e["counter"], want, "{e}");
    }
    let last = completed[WIDTH + 1];
    assert_eq!(last["node_id"], "join");
    assert_eq!(last["counter"], 0);
    let zeros = completed.iter().filter(|e| e["counter"] == 0).count();
    assert_eq!(zeros, 1, "the counter reaches 0 only at the last node");
    assert_eq!(ev[n_events - 1]["type"], "workflow_completed");
    assert_eq!(
        ev.iter()
            .filter(|e| e["type"] == "workflow_completed")
            .count(),
        1
    );

    // The join saw every parent: 200 outputs, 100 of them numbers.
    let join = result(&d, "wide-user", last["result_ref"].as_str().unwrap()).await;
    let odd_sum: usize = (0..WIDTH).filter(|i| i % 2 == 1).map(|i| 1000 + i).sum();
    assert_eq!(join, json!({"parents": WIDTH, "sum": odd_sum}));

    let run = wait_run(&d, "wide-user", &run_id, T).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["counter"], 0);
    assert_eq!(run_events(&d, "wide-user", &run_id).await, ev);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_hundred_concurrent_runs_of_several_users_all_complete() {
    const RUNS: usize = 100;
    let users = ["u-ann", "u-ben", "u-cat", "u-dan", "bob@example.com"];
    let (redis, d) = start(&[]).await;
    let mut subs = Vec::new();
    for u in users {
        subs.push(Sub::new(&redis, &keys::channel(u)).await);
    }

    let starts = (0..RUNS).map(|i| {
        let (d, user) = (&d, users[i % users.len()]);
        async move {
            let id = start_run(d, user, "flight-search", json!({"city": format!("C{i}")})).await;
            (user, id, i)
        }
    });
    let started: Vec<(&str, String, usize)> = join_all(starts).await;
    let ids: BTreeSet<&str> = started.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), RUNS, "run ids are unique");

    for (user, id, i) in &started {
        let run = wait_run(&d, user, id, T).await;
        assert_eq!(run["status"], "completed", "{run}");
        let ev = run_events(&d, user, id).await;
        assert_eq!(
            types(&ev),
            [
                "workflow_started",
                "node_completed",
                "node_completed",
                "workflow_completed"
            ],
            "{ev:#?}"
        );
        assert_contiguous_seq(&ev);
        assert!(ev.iter().all(|e| e["run_id"] == id.as_str()));
        assert_eq!(ev[0]["tag"], "flight-search");
        assert_eq!(
            (&ev[1]["node_id"], &ev[1]["counter"]),
            (&json!("search"), &json!(1))
        );
        assert_eq!(
            (&ev[2]["node_id"], &ev[2]["counter"]),
            (&json!("format"), &json!(0))
        );
        assert_eq!(ev[3]["counter"], 0);
        let out = result(&d, user, ev[2]["result_ref"].as_str().unwrap()).await;
        assert_eq!(out, json!(format!("1 flights to C{i}")));
    }

    // Each user's channel carried exactly their runs' events, and each user
    // lists exactly their runs.
    for (u, sub) in users.iter().zip(subs.iter_mut()) {
        let mine: BTreeSet<&str> = started
            .iter()
            .filter(|(user, _, _)| user == u)
            .map(|(_, id, _)| id.as_str())
            .collect();
        let ev = sub.take(4 * mine.len(), T).await;
        assert_eq!(ev.len(), 4 * mine.len(), "{u}");
        let seen: BTreeSet<&str> = ev.iter().map(|e| e["run_id"].as_str().unwrap()).collect();
        assert_eq!(seen, mine, "{u}");
        let terminals = ev
            .iter()
            .filter(|e| e["type"] == "workflow_completed")
            .count();
        assert_eq!(terminals, mine.len(), "{u}");

        let list = get(&format!("{}/api/v1/runs", d.api), Some(u)).await;
        assert_eq!(list.status, 200, "{}", list.text);
        let listed: BTreeSet<&str> = list.body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, mine, "{u}");
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn workflow_crud_execute_and_run_isolation() {
    let (_redis, d) = start(&[]).await;
    let url = format!("{}/api/v1/workflows/crud", d.api);
    let v1 = json!({"tag": "crud", "nodes": [
        {"id": "only", "kind": "transform", "filter": ".inputs.n"}
    ]});
    let v2 = json!({"tag": "crud", "nodes": [
        {"id": "first", "kind": "transform", "filter": "{n: .inputs.n}"},
        {"id": "double", "kind": "transform", "depends_on": ["first"], "filter": ".nodes.first.n * 2"}
    ]});

    // Create, then replace.
    let r = put(&url, Some("alice"), &v1).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"tag": "crud", "scope": "own", "nodes": 1, "entry_nodes": 1})
    );
    let r = put(&url, Some("alice"), &v2).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"tag": "crud", "scope": "own", "nodes": 2, "entry_nodes": 1})
    );

    // Read it back, and in the list.
    let r = get(&url, Some("alice")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, v2);
    let r = get(&format!("{}/api/v1/workflows", d.api), Some("alice")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"workflows": [
            {"tag": "crud", "scope": "own"},
            {"tag": "flight-branch", "scope": "shared"},
            {"tag": "flight-prices", "scope": "shared"},
            {"tag": "flight-search", "scope": "shared"},
            {"tag": "flight-trip", "scope": "shared"}
        ]})
    );

    // Execute by tag: 202, Location, and the replaced workflow runs.
    let r = post(
        &format!("{url}/execute"),
        Some("alice"),
        &json!({"inputs": {"n": 21}}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["tag"], "crud");
    let exec_id = r.body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/api/v1/runs/{exec_id}").as_str())
    );
    let run = wait_run(&d, "alice", &exec_id, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["inputs"], json!({"n": 21}));
    let out = result(
        &d,
        "alice",
        run["nodes"]["double"]["result_ref"].as_str().unwrap(),
    )
    .await;
    assert_eq!(out, json!(42));

    // Runs are listed per caller.
    let alice_seed = start_run(&d, "alice", "flight-search", json!({"city": "Oslo"})).await;
    let bob_run = start_run(&d, "bob", "flight-search", json!({"city": "Rome"})).await;
    wait_run(&d, "alice", &alice_seed, T).await;
    wait_run(&d, "bob", &bob_run, T).await;
    let listed = |who: &'static str| {
        let d = &d;
        async move {
            let r = get(&format!("{}/api/v1/runs", d.api), Some(who)).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.body["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    assert!(r["status"].is_string() && r["tag"].is_string(), "{r}");
                    r["run_id"].as_str().unwrap().to_owned()
                })
                .collect::<BTreeSet<String>>()
        }
    };
    assert_eq!(
        listed("alice").await,
        BTreeSet::from([exec_id.clone(), alice_seed.clone()])
    );
    assert_eq!(listed("bob").await, BTreeSet::from([bob_run.clone()]));
    assert!(listed("carol").await.is_empty());

    // Another user's run does not exist for bob.
    for path in [
        format!("/api/v1/runs/{exec_id}"),
        format!("/api/v1/runs/{exec_id}/events"),
    ] {
        let r = get(&format!("{}{path}", d.api), Some("bob")).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert!(r.body["error"]["message"].is_string(), "{}", r.text);
        assert!(!r.text.contains("alice"), "{}", r.text);
    }
    let r = post(
        &format!("{}/api/v1/runs/{exec_id}/cancel", d.api),
        Some("bob"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    // ... and alice still sees it unchanged.
    let r = get(&format!("{}/api/v1/runs/{exec_id}", d.api), Some("alice")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed");

    // Delete: 204, then 404 everywhere.
    let r = request("DELETE", &url, Some("alice"), None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = request("DELETE", &url, Some("alice"), None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("crud"));
    let r = get(&url, Some("alice")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = post(
        &format!("{url}/execute"),
        Some("alice"),
        &json!({"inputs": {}}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = get(&format!("{}/api/v1/workflows", d.api), Some("alice")).await;
    assert_eq!(
        r.body,
        json!({"workflows": [
            {"tag": "flight-branch", "scope": "shared"},
            {"tag": "flight-prices", "scope": "shared"},
            {"tag": "flight-search", "scope": "shared"},
            {"tag": "flight-trip", "scope": "shared"}
        ]})
    );
    // A run keeps the snapshot it was accepted with.
    let r = get(&format!("{}/api/v1/runs/{exec_id}", d.api), Some("alice")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["tag"], "crud");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn delay_node_waits_and_transforms_read_inputs() {
    const WAIT_MS: u64 = 100;
    let (redis, d) = start(&[]).await;
    register(
        &d,
        "greeter",
        &json!({"tag": "greet", "nodes": [
            {"id": "shout", "kind": "transform",
             "filter": "{name: (.inputs.name | ascii_upcase), age: .inputs.age}"},
            {"id": "wait", "kind": "delay", "ms": WAIT_MS},
            {"id": "hello", "kind": "transform", "depends_on": ["shout", "wait"],
             "filter": "\"hello \\(.nodes.shout.name), \\(.inputs.age + 1) next year (\\(.nodes.wait))\""}
        ]}),
    )
    .await;
    let mut sub = Sub::new(&redis, &keys::channel("greeter")).await;
    let run_id = start_run(&d, "greeter", "greet", json!({"name": "bob", "age": 41})).await;
    let ev = sub.take(5, T).await;
    assert_eq!(
        types(&ev),
        [
            "workflow_started",
            "node_completed",
            "node_completed",
            "node_completed",
            "workflow_completed"
        ],
        "{ev:#?}"
    );
    assert_contiguous_seq(&ev);
    assert_eq!(ev[0]["entry_nodes"], 2);
    let by_node: HashMap<&str, &Value> = ev
        .iter()
        .filter(|e| e["type"] == "node_completed")
        .map(|e| (e["node_id"].as_str().unwrap(), e))
        .collect();
    // The delay really waited: it cannot complete sooner than WAIT_MS after
    // the run started (a lower bound only).
    let started = ev[0]["ts_ms"].as_u64().unwrap();
    let waited = by_node["wait"]["ts_ms"].as_u64().unwrap();
    assert!(
        waited >= started + WAIT_MS,
        "delay finished {} ms after the start",
        waited - started
    );
    assert_eq!(ev[3]["node_id"], "hello", "hello runs after both parents");
    assert_eq!(ev[3]["counter"], 0);

    let shout = result(
        &d,
        "greeter",
        by_node["shout"]["result_ref"].as_str().unwrap(),
    )
    .await;
    assert_eq!(shout, json!({"name": "BOB", "age": 41}));
    let wait = result(
        &d,
        "greeter",
        by_node["wait"]["result_ref"].as_str().unwrap(),
    )
    .await;
    assert_eq!(wait, Value::Null);
    let hello = result(
        &d,
        "greeter",
        by_node["hello"]["result_ref"].as_str().unwrap(),
    )
    .await;
    assert_eq!(hello, json!("hello BOB, 42 next year (null)"));

    let run = wait_run(&d, "greeter", &run_id, T).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["inputs"], json!({"name": "bob", "age": 41}));
    assert_no_panic(&d);
}

/// A transform whose filter never ends must fail by its `timeout_ms` and
/// must not stall other runs or the API.
#[actix_rt::test]
/// Regression: jq used to run on the actors' thread, so a runaway filter
/// stalled every run, the Publisher and the API's Redis connection.
async fn a_runaway_transform_times_out_without_stalling_other_runs() {
    let (redis, d) = start(&[]).await;
    register(
        &d,
        "spinner",
        &json!({"tag": "spin", "nodes": [
            {"id": "spin", "kind": "transform", "filter": "last(range(1e15))", "timeout_ms": 300}
        ]}),
    )
    .await;
    let mut sub = Sub::new(&redis, &keys::channel("spinner")).await;
    let spin = start_run(&d, "spinner", "spin", json!({})).await;
    // Its node starts right after workflow_started is published.
    let started = sub.next(T).await.expect("workflow_started");
    assert_eq!(started["type"], "workflow_started");
    let other = start_run(&d, "other", "flight-search", json!({"city": "NYC"})).await;
    let run = wait_run(&d, "other", &other, T).await;
    assert_eq!(run["status"], "completed");
    let run = wait_run(&d, "spinner", &spin, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    let ev = sub.take(2, T).await;
    assert_eq!(types(&ev), ["node_failed", "workflow_failed"], "{ev:#?}");
    assert!(
        ev[0]["error"].as_str().unwrap().contains("timed out"),
        "{ev:#?}"
    );
    assert_no_panic(&d);
}

// ---- helpers ----

fn types(ev: &[Value]) -> Vec<&str> {
    ev.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Groups events by run, keeping arrival order within each run.
fn group_by_run(ev: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in ev {
        m.entry(e["run_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e.clone());
    }
    m
}

/// Asserts `seq` is 1, 2, ... N in order, with a timestamp and an event id each.
fn assert_contiguous_seq(ev: &[Value]) {
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "event {i}: {e}");
        assert!(e["timestamp"].as_u64().unwrap() > 1_600_000_000, "{e}");
        assert!(e["event_id"].is_string(), "{e}");
    }
}

/// A result's stored output, read as its owner.
async fn result(d: &Daemon, user: &str, result_ref: &str) -> Value {
    let r = get(
        &format!("{}/api/v1/results/{result_ref}", d.api),
        Some(user),
    )
    .await;
    assert_eq!(r.status, 200, "{result_ref}: {}", r.text);
    r.body
}

/// One pass over `GET /api/v1/runs` with `limit`, following `next_cursor`;
/// `during` runs between pages. Returns (run id, created_ms) in list order.
async fn list_all(
    d: &Daemon,
    user: &str,
    limit: usize,
    mut during: impl AsyncFnMut(usize),
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let mut url = format!("{}/api/v1/runs?limit={limit}", d.api);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = get(&url, Some(user)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let runs = r.body["runs"].as_array().unwrap();
        assert!(runs.len() <= limit, "{} runs for limit {limit}", runs.len());
        for run in runs {
            out.push((
                run["run_id"].as_str().unwrap().to_owned(),
                run["created_ms"].as_u64().unwrap(),
            ));
        }
        during(page).await;
        match &r.body["next_cursor"] {
            Value::Null => break,
            Value::String(c) => {
                assert!(!runs.is_empty(), "an empty page with a next cursor");
                cursor = Some(c.clone());
            }
            other => panic!("next_cursor {other}"),
        }
    }
    out
}

/// Issue 11 (4): `GET /api/v1/runs` had no cursor: older runs could not be
/// listed. Pages cover every run exactly once, newest first, whatever the
/// page size, while runs are created, and with runs sharing a millisecond.
#[actix_rt::test]
async fn run_pages_cover_every_run_once_while_runs_are_created() {
    // Hundreds of runs posted at once: above the default rate limit.
    let (_redis, d) = start(&["--max-runs-per-sec-per-user", "100000"]).await;
    let user = "lister";
    register(
        &d,
        user,
        &json!({"tag": "tiny", "nodes": [{"id": "a", "kind": "delay", "ms": 0}]}),
    )
    .await;
    let mut existing: Vec<String> = Vec::new();
    // Posted 25 at a time: many share a millisecond.
    for _ in 0..12 {
        let batch = (0..25).map(|_| start_run(&d, user, "tiny", json!({})));
        existing.extend(join_all(batch).await);
    }
    for limit in [1, 7, 50, 299, 300, 1000] {
        let before: BTreeSet<String> = existing.iter().cloned().collect();
        let mut created = Vec::new();
        let listed = list_all(&d, user, limit, async |page| {
            if page % 5 == 0 {
                created.push(start_run(&d, user, "tiny", json!({})).await);
            }
        })
        .await;
        let ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "limit {limit}: a run listed twice");
        for id in &before {
            assert!(unique.contains(id.as_str()), "limit {limit}: {id} skipped");
        }
        // Only runs that existed, or were created during the pass, are listed.
        assert!(unique
            .iter()
            .all(|id| before.contains(*id) || created.iter().any(|c| c == id)));
        assert!(
            listed.windows(2).all(|w| w[0].1 >= w[1].1),
            "limit {limit}: not newest first"
        );
        existing.extend(created);
    }
    // Someone else's list is empty, whatever cursor they pass.
    let first = get(&format!("{}/api/v1/runs?limit=2", d.api), Some(user)).await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let other = get(
        &format!("{}/api/v1/runs?limit=2&cursor={cursor}", d.api),
        Some("someone-else"),
    )
    .await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(other.body["runs"], json!([]));
    assert_eq!(other.body["next_cursor"], Value::Null);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_bad_limit_or_cursor_is_a_400_naming_it() {
    let (_redis, d) = start(&[]).await;
    start_run(&d, "lin", "flight-search", json!({"city": "Lima"})).await;
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("limit=99999999999999999999999", "invalid_limit"),
        ("limit=", "invalid_limit"),
        ("cursor=", "invalid_cursor"),
        ("cursor=abc", "invalid_cursor"),
        ("cursor=%00", "invalid_cursor"),
        ("cursor=1:2", "invalid_cursor"),
        ("cursor=0000000000000001:not-a-uuid", "invalid_cursor"),
        (
            "cursor=%2B000000000000001:6f1c0b9e-3f4e-4a57-9a59-1f3a3b0c9d11",
            "invalid_cursor",
        ),
    ] {
        let r = get(&format!("{}/api/v1/runs?{query}", d.api), Some("lin")).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert_eq!(r.body["error"]["code"], code, "{query}: {}", r.text);
        let field = code.trim_start_matches("invalid_");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(field),
            "{query}: {}",
            r.text
        );
    }
    let r = get(&format!("{}/api/v1/runs?limit=1000", d.api), Some("lin")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["runs"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["next_cursor"], Value::Null);
    assert_no_panic(&d);
}
