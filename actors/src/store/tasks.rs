//! Task queues and the worker protocol's writes: claims and reports.
//!
//! A user's tasks on one queue are a sorted set of wait ids by enqueue time
//! ([`keys::task_queue`]); the task itself is its wait record (see
//! [`waits`](super::waits)). [`claim`] pops the oldest tasks of the caller's
//! queues and gives each a fresh token and a lease (`lua/task_claim.lua`);
//! [`report`] takes a worker's heartbeat, completion or failure for a
//! claimed task only with its current token and before its lease lapsed
//! (`lua/task_report.lua`): a stale or repeated token changes nothing.
//!
//! [`notices`] is the one control subscription a runner process needs:
//! which queues got a task (to wake long-polling claims), which waits
//! changed (to wake their run actors), and which runs their owners asked
//! to cancel.

use std::sync::LazyLock;

use futures_util::StreamExt;
use redis::aio::ConnectionLike;

use super::keys;
use super::script::Lua;
use super::waits::WaitId;
use crate::error::{Error, Result};

static CLAIM: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/task_claim.lua")));
static REPORT: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/task_report.lua")));

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The task (its wait id).
    pub task_id: String,
    /// This attempt's token: every report must carry it.
    pub token: String,
    /// The run.
    pub run_id: String,
    /// The node.
    pub node_id: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The queue it came from.
    pub queue: String,
    /// Its input, JSON text.
    pub input: String,
    /// The lease, in ms: report within it.
    pub lease_ms: u64,
}

/// Claims up to `max` of `user`'s tasks from `queues`, in that order, for
/// `worker_id`.
pub async fn claim<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    queues: &[String],
    max: usize,
    worker_id: &str,
) -> Result<Vec<Claimed>> {
    if queues.is_empty() || max == 0 {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = queues.iter().map(|q| keys::task_queue(user, q)).collect();
    let mut args = vec![
        max.to_string(),
        keys::WAIT_PREFIX.to_owned(),
        keys::RUN_PREFIX.to_owned(),
        worker_id.to_owned(),
        keys::WAITS_SETTLED.to_owned(),
        user.to_owned(),
    ];
    args.extend((0..max).map(|_| uuid::Uuid::new_v4().simple().to_string()));
    let flat: Vec<String> = CLAIM.invoke(conn, &keys, &args).await?;
    flat.chunks(8)
        .map(|c| match c {
            [task_id, token, run_id, node_id, attempt, queue, input, lease_ms] => Ok(Claimed {
                task_id: task_id.clone(),
                token: token.clone(),
                run_id: run_id.clone(),
                node_id: node_id.clone(),
                attempt: attempt.parse().unwrap_or(0),
                queue: queue.clone(),
                input: input.clone(),
                lease_ms: lease_ms.parse().unwrap_or(0),
            }),
            other => Err(Error::Corrupt(format!("claim answered {other:?}"))),
        })
        .collect()
}

/// A worker's report on a claimed task.
#[derive(Debug, Clone, Copy)]
pub enum Report<'a> {
    /// Still at it: extends the lease, with progress (0..1) and a message
    /// if given.
    Heartbeat {
        /// From 0 to 1.
        progress: Option<f64>,
        /// What it is doing.
        message: Option<&'a str>,
    },
    /// Done, with this output (JSON text).
    Complete {
        /// The output.
        output: &'a str,
    },
    /// Failed.
    Fail {
        /// What went wrong.
        error: &'a str,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// What became of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// Taken; the lease runs this long from now.
    Taken {
        /// The lease, in ms.
        lease_ms: u64,
    },
    /// No such task of this user.
    Missing,
    /// Refused, nothing changed: the task is no longer this token's
    /// (`"token"`), its lease lapsed (`"expired"`), or it is in this state.
    Stale(String),
}

/// Applies a worker's report for `user`'s task `id`, if `token` is its
/// current one and its lease has not lapsed.
pub async fn report<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    id: &WaitId,
    token: &str,
    report: Report<'_>,
) -> Result<Reported> {
    let wid = id.to_string();
    let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
    let (what, payload, retryable, progress, message) = match report {
        Report::Heartbeat { progress, message } => ("heartbeat", "", false, progress, message),
        Report::Complete { output } => ("completed", output, false, None, None),
        Report::Fail { error, retryable } => ("failed", error, retryable, None, None),
    };
    let args = [
        user.to_owned(),
        token.to_owned(),
        what.to_owned(),
        payload.to_owned(),
        flag(retryable),
        flag(progress.is_some()),
        progress.map(|p| p.to_string()).unwrap_or_default(),
        flag(message.is_some()),
        message.unwrap_or_default().to_owned(),
        keys::WAITS_SETTLED.to_owned(),
        wid.clone(),
    ];
    let (code, detail): (String, String) = REPORT.invoke(conn, &[keys::wait(&wid)], &args).await?;
    Ok(match code.as_str() {
        "ok" => Reported::Taken {
            lease_ms: detail.parse().unwrap_or(0),
        },
        "missing" => Reported::Missing,
        _ => Reported::Stale(detail),
    })
}

/// A notice on the channels of work done outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `user`'s `queue` got a claimable task.
    Ready {
        /// The user.
        user: String,
        /// The queue.
        queue: String,
    },
    /// Something changed for a wait of this run (for this node, if known).
    Settled {
        /// The run.
        run_id: String,
        /// The node's index, when the notice names one wait.
        node: Option<usize>,
    },
    /// The run's owner asked to cancel it (`runs::request_cancel`).
    Cancel {
        /// The run.
        run_id: String,
    },
}

/// Subscribes [`keys::TASKS_READY`], [`keys::WAITS_SETTLED`] and
/// [`keys::CONTROL`] on a connection of its own (a runner process's one
/// control connection); the stream ends when that connection drops.
pub async fn notices(
    client: &redis::Client,
) -> Result<impl futures_util::Stream<Item = Notice> + Send> {
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(&[keys::TASKS_READY, keys::WAITS_SETTLED, keys::CONTROL])
        .await?;
    Ok(ps.into_on_message().filter_map(|m| {
        let notice = match (m.get_channel_name(), m.get_payload::<String>()) {
            (keys::TASKS_READY, Ok(p)) => serde_json::from_str::<(String, String)>(&p)
                .ok()
                .map(|(user, queue)| Notice::Ready { user, queue }),
            (keys::WAITS_SETTLED, Ok(p)) => {
                let (run_id, node) = WaitId::parse_notice(&p);
                Some(Notice::Settled {
                    run_id: run_id.to_owned(),
                    node,
                })
            }
            (keys::CONTROL, Ok(run_id)) => Some(Notice::Cancel { run_id }),
            _ => None,
        };
        futures_util::future::ready(notice)
    }))
}
