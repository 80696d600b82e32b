//! The Redis ceiling: how many node completions per second this Redis can
//! commit at all, so that the runner's rate reads as a fraction of the
//! physical limit of the set-up.
//!
//! It runs the runner's real commit script (`store::commit`) on synthetic
//! bench keys, with commits shaped like a node completion (the node's
//! record, the activated node's record, counter and status, the output
//! under its content address, one `node_completed` event appended to the
//! capped history stream and the run's list and PUBLISHed to a channel that
//! has a subscriber), pipelined exactly as the Publisher does: batches of
//! [`MAX_BATCH`], one pipeline in flight (the next one is built meanwhile).
//! The synthetic keys are deleted afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flowcast_actors::counter::{NodeStatus, RunStatus};
use flowcast_actors::event::{Event, EventBody};
use flowcast_actors::publisher::MAX_BATCH;
use flowcast_actors::store::commit::{self, Commit, Outcome, Sealed};
use flowcast_actors::store::{self, NodeRecord};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

/// Synthetic runs the commits rotate over.
const RUNS: u64 = 64;
/// Distinct node ids per synthetic run.
const NODES: u64 = 1000;

/// The measured ceiling.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceiling {
    /// Commits applied.
    pub commits: u64,
    /// Seconds measured.
    pub secs: f64,
    /// Commits (node completions) per second.
    pub commits_per_s: f64,
    /// Commits per pipeline.
    pub batch: usize,
    /// Events the channel's subscriber received.
    pub published_received: u64,
    /// Commits the script did not apply (should be 0).
    pub rejected: u64,
}

/// Builds synthetic completion number `k`.
fn completion(bench: &str, user: &str, k: u64, output: &(String, Vec<u8>)) -> Commit {
    let run_id = format!("bench-ceiling-{bench}-{}", k % RUNS);
    let step = k / RUNS;
    let seq = step + 1;
    let node_id = format!("n{}", step % NODES);
    let next_id = format!("n{}", (step + 1) % NODES);
    let (result_ref, bytes) = output;
    let mut c = Commit::new(&run_id, user, seq);
    c.owner = Some(format!("bench-ceiling-{bench}"));
    c.lease_ms = Some(15_000);
    c.store_result(
        result_ref.clone(),
        String::from_utf8_lossy(bytes).into_owned(),
    );
    c.set_node(
        &node_id,
        &NodeRecord {
            attempt: 1,
            result_ref: Some(result_ref.clone()),
            ..NodeRecord::with_status(NodeStatus::Completed)
        },
    );
    c.set_node(&next_id, &NodeRecord::with_status(NodeStatus::Active));
    c.set_counter(1);
    c.set_status(RunStatus::Running);
    c.events.push(
        Event::new(
            EventBody::NodeCompleted {
                run_id,
                node_id,
                status: "completed".into(),
                counter: 1,
                result_ref: result_ref.clone(),
            },
            seq,
        )
        .to_json(),
    );
    c
}

/// Measures for `secs` seconds on the Redis at `url`.
pub async fn measure(url: &str, secs: f64, history_max: u64) -> anyhow::Result<Ceiling> {
    super::template::loopback_target(url)?;
    let client = redis::Client::open(url).with_context(|| format!("{url:?} is not a Redis URL"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))?;
    let bench = super::bench_id();
    let user = format!("bench-ceiling-{bench}");

    // A live subscriber, as in production, so PUBLISH does its real work.
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(store::keys::channel(&user)).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let listener = tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while stream.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });

    let output = flowcast_actors::result::address(&Value::Null);
    let retention = commit::Retention {
        history_max,
        ..Default::default()
    };
    let build = |from: u64| {
        let batch: Vec<Sealed> = (from..from + MAX_BATCH as u64)
            .map(|k| completion(&bench, &user, k, &output).seal())
            .collect();
        commit::pipeline(&batch, &retention)
    };
    let deadline = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let (mut k, mut applied, mut rejected) = (0u64, 0u64, 0u64);
    let mut next = build(k);
    while started.elapsed() < deadline {
        let pipe = std::mem::replace(&mut next, redis::pipe());
        let mut c = conn.clone();
        let in_flight = tokio::spawn(async move { commit::send(&mut c, &pipe).await });
        k += MAX_BATCH as u64;
        next = build(k);
        let outcomes = in_flight.await??;
        for o in outcomes {
            if o == Outcome::Applied(1) {
                applied += 1;
            } else {
                rejected += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    listener.abort();

    let mut del = redis::pipe();
    for r in 0..RUNS {
        let run_id = format!("bench-ceiling-{bench}-{r}");
        del.del(store::keys::run(&run_id)).ignore();
        del.del(store::keys::run_events(&run_id)).ignore();
        del.del(store::keys::owner(&run_id)).ignore();
        del.del(store::keys::run_refs(&run_id)).ignore();
    }
    // The output (null) is shared with real runs: drop only the bench user's holds.
    del.hdel(store::keys::result_holders(&output.0), &user)
        .ignore();
    del.del(store::keys::history(&user)).ignore();
    del.del(store::keys::user_results(&user)).ignore();
    del.query_async::<()>(&mut conn).await?;
    if applied == 0 {
        bail!("the commit script applied nothing ({rejected} rejected)");
    }
    Ok(Ceiling {
        commits: applied,
        secs,
        commits_per_s: applied as f64 / secs,
        batch: MAX_BATCH,
        published_received: received.load(Ordering::Relaxed),
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_commits_look_like_a_node_completion() {
        let out = flowcast_actors::result::address(&Value::Null);
        let c = completion("b", "u", RUNS * 3 + 5, &out);
        assert_eq!(c.run_id, "bench-ceiling-b-5");
        assert_eq!(c.seq, 4);
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.results.len(), 2);
        let e: Value = serde_json::from_str(&c.events[0]).unwrap();
        assert_eq!(e["type"], "node_completed");
        assert_eq!(e["node_id"], "n3");
        // Consecutive commits of one run carry increasing seqs (none is a duplicate).
        assert!(completion("b", "u", RUNS * 4 + 5, &out).seq > c.seq);
    }
}
