//! Size limits on what user code can make the daemon write: a node's error
//! text is cut to 4 KiB in its events and its record, no event is over
//! 16 KiB, and a run that fails with a huge error leaves Redis's memory, the
//! daemon and other users' live streams as they were.

use flowcast_actors::store::keys;
use serde_json::{json, Value};

use crate::support::*;

/// Largest event, as JSON (DESIGN: "no event is over 16 KiB").
const MAX_EVENT_BYTES: usize = 16 * 1024;

fn used_memory(redis: &Redis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[actix_rt::test]
async fn a_huge_error_is_cut_and_no_event_is_over_16_kib() {
    let (redis, d) = start(&[]).await;
    let pid = d.pid();
    register(
        &d,
        "shouter",
        &json!({"tag": "shout", "nodes": [
            {"id": "a", "kind": "delay", "ms": 0},
            {"id": "loud", "kind": "transform", "depends_on": ["a"],
             "filter": "error(\"x\" * 2000000)"},
            {"id": "sib", "kind": "delay", "ms": 60000, "depends_on": ["a"]}
        ]}),
    )
    .await;
    // Another user's live stream, through the shared Subscriber.
    let mut other = ws_connect(&d, "/ws?username=bystander").await;
    let mut raw = Sub::new(&redis, &keys::channel("shouter")).await;
    let before = used_memory(&redis);

    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(start_run(&d, "shouter", "shout", json!({})).await);
    }
    for id in &runs {
        let view = wait_run(&d, "shouter", id, T).await;
        assert_eq!(view["status"], "failed", "{view}");
        let err = view["nodes"]["loud"]["error"].as_str().unwrap();
        assert!(
            err.len() <= 4096 + 16,
            "record error is {} bytes",
            err.len()
        );
        assert!(err.ends_with("... (cut)"), "{}", &err[err.len() - 20..]);
        assert_eq!(view["nodes"]["sib"]["status"], "cancelled", "{view}");
        let events = run_events(&d, "shouter", id).await;
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "workflow_started",
                "node_completed",
                "node_failed",
                "workflow_failed"
            ]
        );
        for e in &events {
            let len = serde_json::to_string(e).unwrap().len();
            assert!(len <= MAX_EVENT_BYTES, "{} is {len} bytes", e["type"]);
        }
        let failed = &events[3];
        assert_eq!(failed["failed_node"], "loud");
        assert!(failed["error"].as_str().unwrap().starts_with("\"xxxx"));
    }
    // What PubSub carried is what was stored: 4 events a run, all small.
    let published = raw.take(4 * runs.len(), T).await;
    assert_eq!(published.len(), 4 * runs.len());
    for e in &published {
        assert!(serde_json::to_string(e).unwrap().len() <= MAX_EVENT_BYTES);
    }
    // 5 runs with 2 MB errors each would add tens of MB; a few KB each is
    // what the limits allow (a coarse bound: allocator slack included).
    let after = used_memory(&redis);
    assert!(
        after < before + 4 * 1024 * 1024,
        "Redis grew from {before} to {after} bytes"
    );

    // The bystander's stream is intact and live.
    let id = start_run(&d, "bystander", "flight-search", json!({"city": "Oslo"})).await;
    let seen = ws_take(&mut other, 4, T).await;
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert!(seen.iter().all(|e| e["run_id"] == id.as_str()));
    assert_eq!(seen[3]["type"], "workflow_completed");
    assert_eq!(d.pid(), pid);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_failure_that_cancels_thousands_of_nodes_stays_under_16_kib() {
    let (_redis, d) = start(&[]).await;
    let long = "w".repeat(100);
    let mut nodes = vec![json!({"id": "root", "kind": "delay", "ms": 0})];
    for i in 0..2000 {
        nodes.push(
            json!({"id": format!("{long}{i}"), "kind": "delay", "ms": 60000,
                          "depends_on": ["root"]}),
        );
    }
    nodes.push(
        json!({"id": "boom", "kind": "transform", "depends_on": ["root"], "filter": "error(\"no\")"}),
    );
    register(&d, "crowd", &json!({"tag": "many", "nodes": nodes})).await;
    let id = start_run(&d, "crowd", "many", json!({})).await;
    let view = wait_run(&d, "crowd", &id, T).await;
    assert_eq!(view["status"], "failed");
    let events = run_events(&d, "crowd", &id).await;
    let failed: &Value = events.last().unwrap();
    assert_eq!(failed["type"], "workflow_failed");
    assert!(serde_json::to_string(failed).unwrap().len() <= MAX_EVENT_BYTES);
    let listed = failed["cancelled_nodes"].as_array().unwrap().len() as u64;
    assert!(listed > 0);
    assert_eq!(
        listed + failed["cancelled_not_listed"].as_u64().unwrap(),
        2000,
        "every cancelled node is listed or counted"
    );
    let cancelled = view["nodes"]
        .as_object()
        .unwrap()
        .values()
        .filter(|n| n["status"] == "cancelled")
        .count();
    assert_eq!(cancelled, 2000);
}
