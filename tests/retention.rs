//! Retention: a finished run is kept for `--retention`, then it is gone
//! everywhere; outputs still held by a live run stay; the history is
//! trimmed by age; acknowledged run requests leave the request stream;
//! runs that end while they wait take their waits with them; and once
//! everything has expired, nothing is left behind.
//!
//! Issue 11 (4): nothing was ever deleted: no retention on run records,
//! outputs, event lists or histories, and the request stream kept every
//! acknowledged request.

use std::collections::BTreeSet;
use std::time::Duration;

use flowcast_actors::store::keys;
use serde_json::{json, Value};

use crate::support::*;

/// Generous deadline for what expires after a 2 s retention.
const EXPIRY: Duration = Duration::from_secs(30);

fn exists(conn: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(conn).unwrap() == 1
}

fn pttl(conn: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(conn).unwrap()
}

/// Every key in the Redis, sorted.
fn all_keys(conn: &mut redis::Connection) -> BTreeSet<String> {
    redis::cmd("KEYS").arg("*").query(conn).unwrap()
}

fn result_refs(view: &Value) -> Vec<String> {
    view["nodes"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n["result_ref"].as_str().map(String::from))
        .collect()
}

async fn status_of(url: &str, user: &str) -> u16 {
    get(url, Some(user)).await.status
}

/// Waits until node `node` of a live run has completed (its output stored).
async fn wait_node_completed(api: &str, user: &str, run: &str, node: &str) {
    let url = format!("{api}/api/v1/runs/{run}");
    wait_until_async(&format!("node {node} of {run}"), T, || async {
        get(&url, Some(user)).await.body["nodes"][node]["status"] == "completed"
    })
    .await;
}

/// Waits until `GET /api/v1/runs/{run}` answers 404.
async fn wait_gone(d: &Daemon, user: &str, run: &str) {
    let url = format!("{}/api/v1/runs/{run}", d.api);
    wait_until_async(&format!("run {run} to expire"), EXPIRY, || async {
        status_of(&url, user).await == 404
    })
    .await;
}

#[actix_rt::test]
async fn a_finished_run_is_gone_everywhere_after_the_retention() {
    let (redis, d) = start(&["--retention", "2s"]).await;
    let mut conn = redis.conn();
    let user = "rita";
    let run = start_run(&d, user, "flight-search", json!({"city": "Expiry"})).await;
    let view = wait_run(&d, user, &run, T).await;
    let refs = result_refs(&view);
    assert_eq!(refs.len(), 2, "{view}");
    let seen = run_events(&d, user, &run).await[3]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Ended: everything it left has an expiry of at most the retention, and
    // what only a live run needs is gone.
    for key in [keys::run(&run), keys::run_events(&run)]
        .into_iter()
        .chain(refs.iter().map(|r| keys::result(r)))
    {
        let ttl = pttl(&mut conn, &key);
        assert!(ttl > 0 && ttl <= 2000, "{key}: PTTL {ttl}");
    }
    for key in [keys::run_refs(&run), keys::owner(&run)]
        .into_iter()
        .chain(refs.iter().map(|r| keys::result_holders(r)))
    {
        assert!(!exists(&mut conn, &key), "{key} outlived the run");
    }

    wait_gone(&d, user, &run).await;
    let api = &d.api;
    assert_eq!(
        status_of(&format!("{api}/api/v1/runs/{run}/events"), user).await,
        404
    );
    assert_eq!(
        post(
            &format!("{api}/api/v1/runs/{run}/cancel"),
            Some(user),
            &json!({})
        )
        .await
        .status,
        404
    );
    for r in &refs {
        assert_eq!(
            status_of(&format!("{api}/api/v1/results/{r}"), user).await,
            404
        );
        assert!(!exists(&mut conn, &keys::result(r)), "{r}");
    }
    for key in [keys::run(&run), keys::run_events(&run)] {
        assert!(!exists(&mut conn, &key), "{key}");
    }
    let list = get(&format!("{api}/api/v1/runs"), Some(user)).await;
    assert_eq!(list.body["runs"], json!([]), "{}", list.text);
    assert_eq!(list.body["next_cursor"], Value::Null);
    // The user's keys go too: none of their runs is live.
    for key in [
        keys::user_runs(user),
        keys::user_ended(user),
        keys::user_results(user),
        keys::history(user),
    ] {
        wait_until(&format!("{key} to expire"), EXPIRY, || {
            !exists(&mut conn, &key)
        })
        .await;
    }
    // A client resuming from an event older than the retention is told that
    // what followed it may be gone.
    let mut ws = ws_connect(&d, &format!("/ws?username={user}&last_event_id={seen}")).await;
    let ev = ws_take(&mut ws, 1, T).await;
    assert_eq!(ev[0]["type"], "replay_gap", "{ev:?}");
    assert_eq!(ev[0]["oldest_available"], Value::Null);
    assert!(matches!(
        ws_next(&mut ws, Duration::from_millis(300)).await,
        WsEvent::Timeout
    ));
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn an_output_shared_with_a_live_run_stays_until_that_run_ends() {
    let (redis, d) = start(&["--retention", "2s"]).await;
    let mut conn = redis.conn();
    let filter = "{shared: \"an output two users' runs both produce\"}";
    let wf =
        json!({"tag": "keep-quick", "nodes": [{"id": "s", "kind": "transform", "filter": filter}]});
    register(&d, "ana", &wf).await;
    register(&d, "bo", &wf).await;
    register(
        &d,
        "ana",
        &json!({"tag": "keep-hold", "nodes": [
            {"id": "s", "kind": "transform", "filter": filter},
            {"id": "wait", "kind": "delay", "ms": 600000, "depends_on": ["s"]}
        ]}),
    )
    .await;
    let quick_a = start_run(&d, "ana", "keep-quick", json!({})).await;
    let view = wait_run(&d, "ana", &quick_a, T).await;
    let shared = result_refs(&view).pop().unwrap();
    let hold = start_run(&d, "ana", "keep-hold", json!({})).await;
    let url = format!("{}/api/v1/runs/{hold}", d.api);
    wait_node_completed(d.api.as_str(), "ana", &hold, "s").await;
    let quick_b = start_run(&d, "bo", "keep-quick", json!({})).await;
    wait_run(&d, "bo", &quick_b, T).await;

    // Both quick runs expire; the output lives on for the live run's owner.
    wait_gone(&d, "ana", &quick_a).await;
    wait_gone(&d, "bo", &quick_b).await;
    let result_url = format!("{}/api/v1/results/{shared}", d.api);
    let r = get(&result_url, Some("ana")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["shared"], "an output two users' runs both produce");
    assert_eq!(
        pttl(&mut conn, &keys::result(&shared)),
        -1,
        "no expiry while held"
    );
    let holders: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg(keys::result_holders(&shared))
        .query(&mut conn)
        .unwrap();
    assert_eq!(holders, [("ana".to_owned(), 1)]);
    // Not for bo, whose run holding it expired.
    assert_eq!(status_of(&result_url, "bo").await, 404);

    // The live run ends: the output is kept for the retention, then gone.
    let r = post(&format!("{url}/cancel"), Some("ana"), &json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_run(&d, "ana", &hold, T).await;
    assert!(!exists(&mut conn, &keys::result_holders(&shared)));
    let ttl = pttl(&mut conn, &keys::result(&shared));
    assert!(ttl > 0 && ttl <= 2000, "PTTL {ttl}");
    wait_gone(&d, "ana", &hold).await;
    wait_until("the output to expire", EXPIRY, || {
        !exists(&mut conn, &keys::result(&shared))
    })
    .await;
    assert_eq!(status_of(&result_url, "ana").await, 404);
    assert_no_panic(&d);
}

/// An active user's history keeps only the events of the retention
/// window (an idle user's expires as a whole, see above).
#[actix_rt::test]
async fn the_history_is_trimmed_by_age() {
    let (redis, d) = start(&["--retention", "2s"]).await;
    let mut conn = redis.conn();
    let user = "hal";
    let old = start_run(&d, user, "flight-search", json!({"city": "Before"})).await;
    wait_run(&d, user, &old, T).await;
    let first_id = run_events(&d, user, &old).await[0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The user stays active until the first run is gone, by which time its
    // events are older than the retention too.
    let url = format!("{}/api/v1/runs/{old}", d.api);
    let mut runs = 1;
    while status_of(&url, user).await != 404 {
        let r = start_run(&d, user, "flight-search", json!({"city": "During"})).await;
        wait_run(&d, user, &r, T).await;
        runs += 1;
        assert!(runs < 1000, "the first run never expired");
    }
    let last = start_run(&d, user, "flight-search", json!({"city": "After"})).await;
    wait_run(&d, user, &last, T).await;

    let ids: Vec<String> = {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::history(user))
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        reply.ids.into_iter().map(|e| e.id).collect()
    };
    let ttl = pttl(&mut conn, &keys::history(user));
    // Clients resuming from before the window, connected at once (the idle
    // history expires as a whole two seconds after the last event).
    let mut resumed = Vec::new();
    for after in ["0", first_id.as_str()] {
        resumed.push(ws_connect(&d, &format!("/ws?username={user}&last_event_id={after}")).await);
    }
    assert!(
        !ids.contains(&first_id),
        "the old run's events were trimmed"
    );
    assert!(
        ids.len() < 4 * (runs + 1),
        "{} of {} events kept",
        ids.len(),
        4 * (runs + 1)
    );
    assert!(ttl > 0 && ttl <= 2000, "history PTTL {ttl}");
    // They are told, then get what is left, in order.
    for ws in &mut resumed {
        let ev = ws_take(ws, 1 + ids.len(), T).await;
        assert_eq!(ev[0]["type"], "replay_gap", "{ev:?}");
        assert_eq!(ev[0]["oldest_available"], ids[0].as_str());
        let replayed: Vec<&str> = ev[1..]
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(replayed, ids);
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn acknowledged_requests_leave_the_request_stream() {
    let (redis, d) = start(&[]).await;
    let mut conn = redis.conn();
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(start_run(&d, "ray", "flight-search", json!({"city": format!("C{i}")})).await);
    }
    for id in &ids {
        wait_run(&d, "ray", id, T).await;
    }
    wait_until("the request stream to empty", T, || {
        redis::cmd("XLEN")
            .arg(keys::REQUESTS)
            .query::<u64>(&mut conn)
            .unwrap()
            == 0
    })
    .await;
    assert_eq!(pending_count(&mut conn), 0);
    assert_clean(&mut conn, &ids);
}

/// Every key kind: once the runs of several users (completed, failed,
/// cancelled) and their events have expired, only the workflows and the
/// (empty) request stream are left.
#[actix_rt::test]
async fn after_the_retention_nothing_is_left_behind() {
    let (redis, d) = start(&["--retention", "2s"]).await;
    let mut conn = redis.conn();
    let wf = json!({"tag": "gone-fail", "nodes": [
        {"id": "ok", "kind": "transform", "filter": "{a: 1}"},
        {"id": "bad", "kind": "transform", "filter": "error(\"no\")", "depends_on": ["ok"]}
    ]});
    register(&d, "uma", &wf).await;
    register(&d, "vic", &wf).await;
    register(
        &d,
        "vic",
        &json!({"tag": "gone-hold", "nodes": [
            {"id": "s", "kind": "transform", "filter": "{a: 1}"},
            {"id": "wait", "kind": "delay", "ms": 600000, "depends_on": ["s"]}
        ]}),
    )
    .await;
    let mut runs = Vec::new();
    for (user, tag) in [
        ("uma", "flight-search"),
        ("uma", "gone-fail"),
        ("vic", "flight-search"),
        ("vic", "gone-fail"),
    ] {
        runs.push((user, start_run(&d, user, tag, json!({"city": user})).await));
    }
    let hold = start_run(&d, "vic", "gone-hold", json!({})).await;
    for (user, run) in &runs {
        wait_run(&d, user, run, T).await;
    }
    let url = format!("{}/api/v1/runs/{hold}", d.api);
    wait_node_completed(d.api.as_str(), "vic", &hold, "s").await;
    let r = post(&format!("{url}/cancel"), Some("vic"), &json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    wait_run(&d, "vic", &hold, T).await;

    // What stays is configuration, not run data: the shared catalogue, the
    // users' own workflows, and the (empty) request stream.
    let want: BTreeSet<String> = [
        keys::WORKFLOWS.to_owned(),
        keys::REQUESTS.to_owned(),
        keys::user_workflows("uma"),
        keys::user_workflows("vic"),
    ]
    .into_iter()
    .collect();
    let deadline = std::time::Instant::now() + EXPIRY;
    loop {
        let left = all_keys(&mut conn);
        if left == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            left.difference(&want).collect::<Vec<_>>()
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_panic(&d);
}

/// Runs that end while they wait outside (cancelled with a task queued, a
/// task claimed, an approval asked, a signal kept for a later node; or
/// completed after its waits) take their waits with them: the queues
/// empty at once, a claimed task's worker is refused, and once the
/// retention is over no wait record, waits list or signals hash is left.
#[actix_rt::test]
async fn runs_that_end_while_waiting_leave_no_wait_behind() {
    let (redis, d) = start(&["--retention", "2s"]).await;
    let mut conn = redis.conn();
    register(
        &d,
        "wyn",
        &json!({"tag": "waits", "nodes": [
            {"id": "queued", "kind": "task", "queue": "idle"},
            {"id": "claimed", "kind": "task", "queue": "busy"},
            {"id": "gate", "kind": "approval"},
            {"id": "later", "kind": "signal", "name": "later", "depends_on": ["gate"]}
        ]}),
    )
    .await;
    let cancelled = start_run(&d, "wyn", "waits", json!({})).await;
    let claimed = claim_one(&d, "wyn", "busy").await;
    wait_event(&d, "wyn", &cancelled, "approval_required", T, |_| true).await;
    // Kept for `later`, which does not wait yet.
    let r = send_signal(&d, "wyn", &cancelled, "later", &json!({"n": 1})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(exists(&mut conn, &keys::run_signals(&cancelled)));
    assert!(exists(&mut conn, &keys::run_waits(&cancelled)));
    assert_eq!(
        pttl(&mut conn, &keys::run_signals(&cancelled)),
        -1,
        "kept while it runs"
    );

    let r = post(
        &format!("{}/api/v1/runs/{cancelled}/cancel", d.api),
        Some("wyn"),
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        wait_run(&d, "wyn", &cancelled, T).await["status"],
        "cancelled"
    );
    // Ended with the run, in its ending commit.
    assert!(!exists(&mut conn, &keys::task_queue("wyn", "idle")));
    assert!(!exists(&mut conn, &keys::run_waits(&cancelled)));
    assert!(pttl(&mut conn, &keys::run_signals(&cancelled)) > 0);
    let hb = post(
        &format!(
            "{}/api/v1/tasks/{}/complete",
            d.api,
            claimed["task_id"].as_str().unwrap()
        ),
        Some("wyn"),
        &json!({"token": claimed["token"], "output": 1}),
    )
    .await;
    assert_eq!(hb.status, 409, "{}", hb.text);
    let r = decide(&d, "wyn", &cancelled, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 409, "{}", r.text);

    // Another run of it, to its end: its waits end with it too.
    let completed = start_run(&d, "wyn", "waits", json!({})).await;
    wait_event(&d, "wyn", &completed, "approval_required", T, |_| true).await;
    for q in ["idle", "busy"] {
        let t = claim_one(&d, "wyn", q).await;
        complete(&d, "wyn", &t, json!(q)).await;
    }
    let r = decide(&d, "wyn", &completed, "gate", "approve", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send_signal(&d, "wyn", &completed, "later", &json!(2)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        wait_run(&d, "wyn", &completed, T).await["status"],
        "completed"
    );

    let want: BTreeSet<String> = [
        keys::WORKFLOWS.to_owned(),
        keys::REQUESTS.to_owned(),
        keys::user_workflows("wyn"),
    ]
    .into_iter()
    .collect();
    let deadline = std::time::Instant::now() + EXPIRY;
    loop {
        let left = all_keys(&mut conn);
        if left == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            left.difference(&want).collect::<Vec<_>>()
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_bad_retention_stops_the_start_naming_it() {
    let serve = |args: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowcast"));
        cmd.arg("serve")
            .args(["--redis-url", "redis://127.0.0.1:1"])
            .args(args)
            .env_remove("FLOWCAST_RETENTION");
        if let Some(v) = env {
            cmd.env("FLOWCAST_RETENTION", v);
        }
        cmd.output().unwrap()
    };
    for (args, env, bad) in [
        (&["--retention", "7x"][..], None, "7x"),
        (&["--retention", "0s"][..], None, "0s"),
        (&["--retention=-1d"][..], None, "-1d"),
        (
            &["--retention", "99999999999999999999d"][..],
            None,
            "99999999999999999999d",
        ),
        (&[][..], Some("forever"), "forever"),
    ] {
        let out = serve(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: started");
        assert!(
            err.contains("--retention") && err.contains(bad),
            "{bad}: {err}"
        );
    }
}
