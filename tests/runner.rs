//! Runner identity, crash loops and fair share, against the real daemon:
//!
//! - two processes given one `--instance-id` never both drive a run (the
//!   lease names the process), yet a restart of an instance after kill -9
//!   takes its dead predecessor's runs over at once;
//! - a run that brings its runner down at every resumption is failed after
//!   3 resumptions without progress, through the normal commit path, and a
//!   graceful SIGTERM restart does not count as one;
//! - one user's flood of wide transform runs does not hold another user's
//!   small run back: it completes while most of the flood is still queued;
//! - the scripts behind these, driven directly on a real Redis: a commit is
//!   a duplicate only when it is the very same commit, and the claim counts
//!   resumptions without progress.
//!
//! No timing thresholds: outcomes and orderings, with generous deadlines.

use std::time::Duration;

use flowcast_actors::store::commit::{self, Commit, Outcome, Retention};
use flowcast_actors::store::keys;
use flowcast_actors::store::leases::{self, Claim, Holder};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::*;

const USER: &str = "runner-user";
/// Deadline for a batch of runs to finish.
const FINISH: Duration = Duration::from_secs(60);
/// A lease no test outlives: whatever is taken over under it was taken over
/// because its process was seen gone, not because the lease lapsed.
const LONG_LEASE_MS: &str = "600000";

/// `a → {x, y} → z`, delay nodes of `ms`.
fn diamond(tag: &str, ms: u64) -> Value {
    json!({"tag": tag, "nodes": [
        {"id": "a", "kind": "delay", "ms": ms},
        {"id": "x", "kind": "delay", "ms": ms, "depends_on": ["a"]},
        {"id": "y", "kind": "delay", "ms": ms / 2, "depends_on": ["a"]},
        {"id": "z", "kind": "delay", "ms": ms, "depends_on": ["x", "y"]},
    ]})
}

/// `start → width × node → end`, each node a clone of `node`.
fn wide(tag: &str, width: usize, node: Value) -> Value {
    let with = |id: String, deps: Vec<String>| {
        let mut n = node.clone();
        n["id"] = json!(id);
        if !deps.is_empty() {
            n["depends_on"] = json!(deps);
        }
        n
    };
    let mids: Vec<String> = (0..width).map(|i| format!("w{i}")).collect();
    let mut nodes = vec![with("start".into(), vec![])];
    nodes.extend(mids.iter().map(|m| with(m.clone(), vec!["start".into()])));
    nodes.push(with("end".into(), mids));
    json!({"tag": tag, "nodes": nodes})
}

/// Starts runs of the given workflows for `user` through `d`, concurrently.
async fn start_all<'a>(d: &Daemon, user: &str, wfs: &[&'a Value]) -> Vec<(String, &'a Value)> {
    let posts = wfs.iter().enumerate().map(|(i, wf)| async move {
        let tag = wf["tag"].as_str().unwrap();
        (start_run(d, user, tag, json!({"i": i})).await, *wf)
    });
    join_all(posts).await
}

/// Waits for every run to complete and checks its history exactly.
async fn assert_all_exact(d: &Daemon, user: &str, runs: &[(String, &Value)]) {
    for (id, wf) in runs {
        let run = wait_run(d, user, id, FINISH).await;
        assert_eq!(run["status"], "completed", "run {id}: {run}");
        assert_dag_history(id, &run_events(d, user, id).await, wf);
    }
}

/// A field of a run's hash.
fn run_field(conn: &mut redis::Connection, id: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(keys::run(id))
        .arg(field)
        .query(conn)
        .unwrap()
}

/// The seq from which the run's last writer wrote: 0 when one process
/// drove the run from its first commit to its last.
fn writer_from(conn: &mut redis::Connection, id: &str) -> u64 {
    run_field(conn, id, keys::field::WRITER_FROM)
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// 1. Runner identity
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn two_processes_with_one_instance_id_never_both_drive_a_run() {
    // Each run lasts longer than a sweep interval (5 s), so each process
    // sweeps while the other holds live runs: a process that took a lease
    // held "by its own id" would resume its twin's runs.
    let args = ["--instance-id", "twin"];
    let (redis, a) = start(&args).await;
    let mut conn = redis.conn();
    let diamond = diamond("twin-diamond", 2500);
    let wide = wide(
        "twin-wide",
        12,
        json!({"id": "-", "kind": "delay", "ms": 2000}),
    );
    register(&a, USER, &diamond).await;
    register(&a, USER, &wide).await;
    let mix: Vec<&Value> = (0..24)
        .map(|i| if i % 2 == 0 { &diamond } else { &wide })
        .collect();
    let mut runs = start_all(&a, USER, &mix).await;
    wait_until("the first runs running", FINISH, || {
        runs.iter()
            .all(|(id, _)| run_status(&mut conn, id) == "running")
    })
    .await;

    // The twin's first sweep sees every one of them leased "by twin".
    let b = Daemon::start(&redis, &args);
    wait_ready(&b).await;
    runs.extend(start_all(&b, USER, &mix).await);

    assert_all_exact(&b, USER, &runs).await;
    for (id, _) in &runs {
        assert_eq!(
            writer_from(&mut conn, id),
            0,
            "run {id} was not driven by one process from start to end"
        );
    }
    let ids: Vec<String> = runs.iter().map(|(id, _)| id.clone()).collect();
    assert_clean(&mut conn, &ids);
    let started = |m: &Metrics| m.value("flowcast_runs_total", &[("outcome", "started")]);
    let (ma, mb) = (scrape(&a).await, scrape(&b).await);
    assert_eq!(started(&ma) + started(&mb), runs.len() as f64);
    assert!(!a.logged("which is gone") && !b.logged("which is gone"));
    assert_no_panic(&a);
    assert_no_panic(&b);
}

#[actix_rt::test]
async fn a_restarted_instance_takes_over_from_its_dead_predecessor_at_once() {
    // Under a lease no test outlives, the only way for b to get a's runs is
    // to see a's process gone; while a lives, b leaves them alone.
    let args = ["--instance-id", "solo", "--lease-ms", LONG_LEASE_MS];
    let (redis, mut a) = start(&args).await;
    let mut conn = redis.conn();
    let wf = diamond("solo-diamond", 1500);
    register(&a, USER, &wf).await;
    let runs = start_all(&a, USER, &[&wf; 20]).await;
    let ids: Vec<String> = runs.iter().map(|(id, _)| id.clone()).collect();
    wait_until("runs running", FINISH, || {
        ids.iter().all(|id| run_status(&mut conn, id) == "running")
    })
    .await;

    let b = Daemon::start(&redis, &args);
    wait_ready(&b).await;
    // b has swept (at start) and the runs moved on under a meanwhile.
    let before = progress(&mut conn, &ids).0;
    wait_until("progress under a with b alive", FINISH, || {
        progress(&mut conn, &ids).0 > before
    })
    .await;
    let held: Vec<Option<String>> = ids.iter().map(|id| run_owner(&mut conn, id)).collect();
    let a_holder = held.iter().flatten().next().cloned().expect("a holds runs");
    assert!(
        held.iter().flatten().all(|h| *h == a_holder),
        "a live process lost runs to its twin: {held:?}"
    );
    assert!(
        progress(&mut conn, &ids).1 < ids.len(),
        "every run finished before the kill; nothing was tested"
    );

    a.kill9();
    let a_log = a.log_text();
    drop(a);
    assert_all_exact(&b, USER, &runs).await;
    assert!(b.logged("which is gone"), "{}", b.log_text());
    assert_clean(&mut conn, &ids);
    assert_no_panic_in(&a_log);
    assert_no_panic(&b);
}

// ---------------------------------------------------------------------------
// 2. Crash loops
// ---------------------------------------------------------------------------

/// The crash-loop count stored on the run (absent: none).
fn resumes(conn: &mut redis::Connection, id: &str) -> Option<u32> {
    run_field(conn, id, keys::field::RESUMES).and_then(|s| s.parse().ok())
}

/// Kills `d` with SIGKILL and starts the same instance again; returns the
/// new daemon once it has resumed `id` (its lease taken over, its actor
/// started), with the crash-loop count now `count`.
async fn crash_and_restart(
    redis: &Redis,
    mut d: Daemon,
    args: &[&str],
    id: &str,
    count: u32,
) -> Daemon {
    d.kill9();
    assert_no_panic(&d);
    drop(d);
    let d = Daemon::start(redis, args);
    let mut conn = redis.conn();
    wait_until(&format!("resumption {count} of {id}"), FINISH, || {
        d.logged(&format!("run {id}: resumed at seq")) && resumes(&mut conn, id) == Some(count)
    })
    .await;
    d
}

#[actix_rt::test]
async fn a_run_that_keeps_bringing_its_runner_down_is_failed_after_3_resumptions() {
    // A run that cannot progress honestly: two long delays, and the runner
    // killed right after each resumption, before either can finish.
    let args = [
        "--instance-id",
        "looping",
        "--lease-ms",
        LONG_LEASE_MS,
        "--drain-grace-ms",
        "1000",
    ];
    let wf = json!({"tag": "stuck", "nodes": [
        {"id": "n1", "kind": "delay", "ms": 600000},
        {"id": "n2", "kind": "delay", "ms": 600000},
        {"id": "n3", "kind": "delay", "ms": 0, "depends_on": ["n1", "n2"]},
    ]});
    let (redis, d) = start(&args).await;
    let mut conn = redis.conn();
    register(&d, USER, &wf).await;
    let id = start_run(&d, USER, "stuck", json!({})).await;
    wait_until("the run running and leased", FINISH, || {
        run_status(&mut conn, &id) == "running" && run_owner(&mut conn, &id).is_some()
    })
    .await;
    assert_eq!(
        resumes(&mut conn, &id),
        None,
        "starting a run is no resumption"
    );

    let d = crash_and_restart(&redis, d, &args, &id, 1).await;
    let mut d = crash_and_restart(&redis, d, &args, &id, 2).await;

    // A graceful restart lets go of the run and clears the count.
    d.signal("-TERM");
    let exit = d.wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|e| e.success()),
        "SIGTERM: {exit:?}; log:\n{}",
        d.log_text()
    );
    assert_no_panic(&d);
    drop(d);
    assert_eq!(run_owner(&mut conn, &id), None);
    assert_eq!(resumes(&mut conn, &id), None, "a drain is no crash");
    let d = Daemon::start(&redis, &args);
    wait_until("resumption after the drain", FINISH, || {
        d.logged(&format!("run {id}: resumed at seq")) && resumes(&mut conn, &id) == Some(1)
    })
    .await;

    // Resumed three times without progress since: still running.
    let d = crash_and_restart(&redis, d, &args, &id, 2).await;
    let d = crash_and_restart(&redis, d, &args, &id, 3).await;
    assert_eq!(run_status(&mut conn, &id), "running");
    assert_eq!(run_stored(&mut conn, &id).1, 1, "no progress was made");

    // The fourth resumption fails it instead.
    let mut d = d;
    d.kill9();
    drop(d);
    let d = Daemon::start(&redis, &args);
    let run = wait_run(&d, USER, &id, FINISH).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["counter"], 0, "{run}");
    assert_eq!(run["nodes"]["n1"]["status"], "failed", "{run}");
    assert_eq!(run["nodes"]["n2"]["status"], "cancelled", "{run}");

    let ev = run_events(&d, USER, &id).await;
    let ctx = serde_json::to_string_pretty(&ev).unwrap();
    assert_seq_and_ids(&id, &ev);
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["workflow_started", "node_failed", "workflow_failed"],
        "{ctx}"
    );
    let why = "resumed 3 times without progress and was stopped to break a crash loop";
    let (failed, end) = (&ev[1], &ev[2]);
    assert_eq!(failed["node_id"], "n1", "{ctx}");
    assert_eq!(failed["will_retry"], false, "{ctx}");
    assert_eq!(failed["counter"], 0, "{ctx}");
    assert!(failed["error"].as_str().unwrap().contains(why), "{ctx}");
    assert_eq!(end["failed_node"], "n1", "{ctx}");
    assert_eq!(end["cancelled_nodes"], json!(["n2"]), "{ctx}");
    assert_eq!(end["counter"], 0, "{ctx}");
    assert!(end["error"].as_str().unwrap().contains(why), "{ctx}");
    assert_clean(&mut conn, std::slice::from_ref(&id));

    // Over for good: another restart changes nothing.
    drop(d);
    let d = Daemon::start(&redis, &args);
    wait_ready(&d).await;
    assert_eq!(run_events(&d, USER, &id).await.len(), 3);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// 3. Fair share
// ---------------------------------------------------------------------------

#[actix_rt::test]
async fn a_small_run_is_not_held_back_by_another_users_flood() {
    const FLOOD_RUNS: usize = 30;
    const WIDTH: usize = 20;
    let (redis, d) = start(&[]).await;
    let mut conn = redis.conn();
    let flood = wide(
        "flood",
        WIDTH,
        json!({"id": "-", "kind": "transform", "filter": "[range(3000)] | add"}),
    );
    let small = json!({"tag": "small", "nodes": [
        {"id": "a", "kind": "transform", "filter": "{n: 1}"},
        {"id": "b", "kind": "transform", "filter": ".nodes.a.n + 1", "depends_on": ["a"]},
    ]});
    register(&d, "flooder", &flood).await;
    register(&d, "small-user", &small).await;
    let flood_nodes = FLOOD_RUNS * (WIDTH + 2);

    let floods = start_all(&d, "flooder", &vec![&flood; FLOOD_RUNS]).await;
    let flood_ids: Vec<String> = floods.iter().map(|(id, _)| id.clone()).collect();
    // Deep in the flood: its runs fanned out, thousands of nodes queued.
    wait_until("the flood fanned out", FINISH, || {
        progress(&mut conn, &flood_ids).0 >= FLOOD_RUNS
    })
    .await;
    let at_post = progress(&mut conn, &flood_ids).0;
    assert!(
        at_post < flood_nodes / 4,
        "the flood was nearly over before the small run was posted; nothing was tested"
    );

    let small_id = start_run(&d, "small-user", "small", json!({})).await;
    let mut at_done = 0;
    wait_until("the small run completed", FINISH, || {
        let done = is_terminal(&run_status(&mut conn, &small_id));
        at_done = progress(&mut conn, &flood_ids).0;
        done
    })
    .await;
    // First come, first served, the small run's nodes would have waited
    // behind every flood node queued before them (it then completes after
    // nearly all of them); served in turn, after a handful.
    assert!(
        at_done < flood_nodes / 2,
        "the small run completed only after {at_done} of the flood's {flood_nodes} nodes \
         ({at_post} were done when it was posted)"
    );

    // Nobody lost anything.
    assert_all_exact(&d, "small-user", &[(small_id.clone(), &small)]).await;
    assert_all_exact(&d, "flooder", &floods).await;
    let mut ids = flood_ids;
    ids.push(small_id);
    assert_clean(&mut conn, &ids);
    assert_no_panic(&d);
}

// ---------------------------------------------------------------------------
// 4. The scripts, on a real Redis
// ---------------------------------------------------------------------------

/// An async connection to a private Redis.
async fn aconn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A running run's hash, as a runner left it at `seq`.
fn running_run(conn: &mut redis::Connection, id: &str, seq: u64) {
    let _: () = redis::cmd("HSET")
        .arg(keys::run(id))
        .arg(keys::field::STATUS)
        .arg("running")
        .arg(keys::field::SEQ)
        .arg(seq)
        .query(conn)
        .unwrap();
}

/// A one-event commit by `writer` taking the run to `seq`.
fn commit_by(writer: &Holder, id: &str, seq: u64, ends: bool) -> Commit {
    let mut c = Commit::new(id, USER, seq);
    c.owner = Some(writer.to_string());
    c.lease_ms = Some(60_000);
    c.events
        .push(json!({"type": "probe", "run_id": id, "seq": seq, "by": writer.nonce}).to_string());
    if ends {
        c.set_status(flowcast_actors::counter::RunStatus::Completed);
        c.active = -1;
    }
    c
}

async fn apply(conn: &mut redis::aio::MultiplexedConnection, c: &Commit, retry: bool) -> Outcome {
    let mut sealed = c.clone().seal();
    sealed.retry = retry;
    let pipe = commit::pipeline([&sealed], &Retention::default());
    commit::send(conn, &pipe).await.unwrap()[0]
}

#[actix_rt::test]
async fn a_commit_is_a_duplicate_only_when_it_is_the_very_same_commit() {
    let redis = Redis::start();
    let (mut sync, mut conn) = (redis.conn(), aconn(&redis).await);
    let id = "dup-probe";
    running_run(&mut sync, id, 1);
    // Two processes given one instance id.
    let (p1, p2) = (Holder::new("same"), Holder::new("same"));

    let x = commit_by(&p1, id, 2, false);
    assert_eq!(apply(&mut conn, &x, false).await, Outcome::Applied(1));
    // Its retry (a lost reply) is a duplicate and changes nothing.
    assert_eq!(apply(&mut conn, &x, true).await, Outcome::Duplicate);
    assert_eq!(apply(&mut conn, &x, false).await, Outcome::Duplicate);
    // The twin's commit of another completion at the same seq is no
    // duplicate: refused while p1 holds the lease...
    let y = commit_by(&p2, id, 2, false);
    assert_eq!(apply(&mut conn, &y, false).await, Outcome::NotOwner);
    // ...and behind once the lease is gone: p2's view must be rebuilt.
    let _: () = redis::cmd("DEL")
        .arg(keys::owner(id))
        .query(&mut sync)
        .unwrap();
    assert_eq!(apply(&mut conn, &y, false).await, Outcome::Behind);
    assert_eq!(apply(&mut conn, &y, true).await, Outcome::Behind);

    // p1 goes on; an earlier commit of its streak, sent again, is a duplicate.
    let z = commit_by(&p1, id, 3, true);
    assert_eq!(apply(&mut conn, &z, false).await, Outcome::Applied(1));
    assert_eq!(apply(&mut conn, &x, true).await, Outcome::Duplicate);
    assert_eq!(apply(&mut conn, &z, true).await, Outcome::Duplicate);
    // The run has ended: anything else is refused as ended.
    assert_eq!(
        apply(&mut conn, &commit_by(&p2, id, 3, false), false).await,
        Outcome::Ended
    );
    assert_eq!(
        apply(&mut conn, &commit_by(&p2, id, 4, false), false).await,
        Outcome::Ended
    );
    let (st, seq, events) = run_stored(&mut sync, id);
    assert_eq!((st.as_str(), seq, events), ("completed", 3, 2));
    let stored: Vec<String> = redis::cmd("LRANGE")
        .arg(keys::run_events(id))
        .arg(0)
        .arg(-1)
        .query(&mut sync)
        .unwrap();
    assert!(stored.iter().all(|e| e.contains(&p1.nonce)), "{stored:?}");
}

#[actix_rt::test]
async fn claims_count_resumptions_without_progress_and_a_release_clears_them() {
    let redis = Redis::start();
    let (mut sync, mut conn) = (redis.conn(), aconn(&redis).await);
    let id = "claim-probe";
    let lease = Duration::from_secs(60);
    running_run(&mut sync, id, 4);
    let dead = Holder::new("inst");
    let _: () = redis::cmd("SET")
        .arg(keys::owner(id))
        .arg(dead.to_string())
        .query(&mut sync)
        .unwrap();

    // A live holder's lease is not taken; a dead one's is, when named.
    let me = Holder::new("inst");
    let shared = conn.clone();
    let claim = |me: &Holder, gone: Option<String>| {
        let (me, id) = (me.clone(), id.to_owned());
        let mut conn = shared.clone();
        async move {
            leases::claim(&mut conn, &id, &me, gone.as_deref(), lease)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(&me, None).await, Claim::NotOurs);
    assert_eq!(claim(&me, Some(dead.to_string())).await, Claim::Taken);
    assert_eq!(run_owner(&mut sync, id), Some(me.to_string()));
    // Claiming what is already ours is no resumption.
    assert_eq!(claim(&me, None).await, Claim::Taken);
    assert_eq!(
        run_field(&mut sync, id, keys::field::RESUMES).as_deref(),
        Some("1")
    );

    // Each next process resumes it at the same seq: 2, 3, then exhausted.
    let mut last = me;
    for want in [
        Claim::Taken,
        Claim::Taken,
        Claim::Exhausted,
        Claim::Exhausted,
    ] {
        let next = Holder::new("inst");
        assert_eq!(claim(&next, Some(last.to_string())).await, want);
        last = next;
    }
    // Progress (the stored seq moved) starts the count again.
    running_run(&mut sync, id, 5);
    let next = Holder::new("inst");
    assert_eq!(claim(&next, Some(last.to_string())).await, Claim::Taken);
    assert_eq!(
        run_field(&mut sync, id, keys::field::RESUMES).as_deref(),
        Some("1")
    );

    // A release (a drain) clears the count; someone else's release does nothing.
    leases::release(&mut conn, &[id.to_owned()], &Holder::new("inst"))
        .await
        .unwrap();
    assert_eq!(run_owner(&mut sync, id), Some(next.to_string()));
    leases::release(&mut conn, &[id.to_owned()], &next)
        .await
        .unwrap();
    assert_eq!(run_owner(&mut sync, id), None);
    assert_eq!(run_field(&mut sync, id, keys::field::RESUMES), None);
    assert_eq!(claim(&Holder::new("other"), None).await, Claim::Taken);
    assert_eq!(
        run_field(&mut sync, id, keys::field::RESUMES).as_deref(),
        Some("1")
    );

    // Never on a run that has ended.
    let _: () = redis::cmd("HSET")
        .arg(keys::run(id))
        .arg(keys::field::STATUS)
        .arg("failed")
        .query(&mut sync)
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(keys::owner(id))
        .query(&mut sync)
        .unwrap();
    assert_eq!(claim(&Holder::new("inst"), None).await, Claim::NotOurs);
}
