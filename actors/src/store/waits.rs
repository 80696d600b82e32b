//! Wait records: one attempt of a node whose work is done outside the
//! daemon (`task`, `approval`, `signal`), durable in Redis.
//!
//! A wait is created by its run actor when the attempt starts
//! (`lua/wait_create.lua`; creating it again is a no-op, so a resumed run
//! relaunching the same attempt finds it as it was), changed from outside
//! (a worker's report, `store::tasks`; a decision, [`decide`]; a signal,
//! [`signal`]) and brought up to date for its run actor by [`settle`],
//! which also applies the deadlines: a lapsed lease or timeout moves the
//! record to a final state in the same script that reports it. Every change
//! from a waiting state to a final one happens once, in one script, so
//! whatever reaches Redis first — the worker's completion or the lease's
//! expiry, a decision or the timeout — is the attempt's only outcome.
//!
//! Changes are announced on [`keys::WAITS_SETTLED`] (the wait's id) so the
//! actor holding the run, in whatever process, looks at once; new tasks on
//! [`keys::TASKS_READY`] so waiting claims wake up.
//!
//! A wait lives as long as its run: it is created only on a live run and
//! listed in the run's waits ([`keys::run_waits`]), and the commit that
//! ends the run cancels the open ones and gives every record the run's
//! expiry (see `store::commit`'s retention notes).

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;

use super::keys;
use super::script::Lua;
use crate::error::{Error, Result};

static CREATE: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/wait_create.lua")));
static SETTLE: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/wait_settle.lua")));
static DECIDE: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/approval_decide.lua")));
static SIGNAL: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/signal_send.lua")));

/// Names one attempt of one node of one run: `{run_id}.{node index}.{attempt}`
/// (a task's `task_id`). Attempts are numbered from 1, so relaunching an
/// attempt names the same wait.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WaitId {
    /// The run.
    pub run_id: String,
    /// The node's position in the workflow.
    pub node: usize,
    /// The attempt, from 1.
    pub attempt: u32,
}

impl WaitId {
    /// Parses a wait id: a UUID run id, a node index and an attempt.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let run_id = parts.next()?;
        let node = parts.next()?;
        let attempt = parts.next()?;
        if parts.next().is_some()
            || uuid::Uuid::parse_str(run_id).is_err()
            || run_id.len() != 36
            || !node.bytes().all(|b| b.is_ascii_digit())
            || !attempt.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Self {
            run_id: run_id.to_owned(),
            node: node.parse().ok()?,
            attempt: attempt.parse().ok().filter(|&a| a > 0)?,
        })
    }

    /// The run a [`keys::WAITS_SETTLED`] message is about, and the node if
    /// it names a wait.
    pub fn parse_notice(s: &str) -> (&str, Option<usize>) {
        match Self::parse(s) {
            Some(w) => (&s[..w.run_id.len()], Some(w.node)),
            None => (s, None),
        }
    }
}

impl fmt::Display for WaitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.run_id, self.node, self.attempt)
    }
}

/// What a wait waits for.
#[derive(Debug, Clone, Copy)]
pub enum WaitKind<'a> {
    /// A worker on `queue`.
    Task {
        /// The queue (the user's).
        queue: &'a str,
        /// The lease of a claim, in ms.
        lease_ms: u64,
    },
    /// The run owner's decision.
    Approval,
    /// A signal of this name.
    Signal {
        /// Its name.
        name: &'a str,
    },
}

impl WaitKind<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Task { .. } => "task",
            Self::Approval => "approval",
            Self::Signal { .. } => "signal",
        }
    }
}

/// Where a wait lives: its id, its run's owner and its kind (the keys of
/// its queue and signals follow from them).
#[derive(Debug, Clone, Copy)]
pub struct WaitRef<'a> {
    /// The attempt.
    pub id: &'a WaitId,
    /// The run's owner.
    pub user: &'a str,
    /// What it waits for.
    pub kind: WaitKind<'a>,
}

impl WaitRef<'_> {
    /// The record, the queue (or the record) and the signals hash (or the record).
    fn keys(&self) -> [String; 3] {
        let record = keys::wait(&self.id.to_string());
        let queue = match self.kind {
            WaitKind::Task { queue, .. } => keys::task_queue(self.user, queue),
            _ => record.clone(),
        };
        let signals = match self.kind {
            WaitKind::Signal { .. } => keys::run_signals(&self.id.run_id),
            _ => record.clone(),
        };
        [record, queue, signals]
    }
}

/// A wait as [`create`] found or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// False when it existed already (a relaunch of the same attempt).
    pub created: bool,
    /// When it was created, Unix ms (Redis's clock).
    pub created_ms: u64,
    /// When it times out, Unix ms.
    pub deadline_ms: Option<u64>,
}

/// Creates a wait (a task is queued and announced), or finds it as it is;
/// `None` if the run has ended (no wait is made then).
pub async fn create<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    w: WaitRef<'_>,
    node_id: &str,
    input_json: &str,
    timeout_ms: Option<u64>,
) -> Result<Option<Created>> {
    let [record, queue, _] = w.keys();
    let run = keys::run(&w.id.run_id);
    let listed = keys::run_waits(&w.id.run_id);
    let (queue_name, lease_ms, signal) = match w.kind {
        WaitKind::Task { queue, lease_ms } => (queue, lease_ms, ""),
        WaitKind::Approval => ("", 0, ""),
        WaitKind::Signal { name } => ("", 0, name),
    };
    let id = w.id.to_string();
    let ready = serde_json::json!([w.user, queue_name]).to_string();
    let args = [
        w.kind.name().to_owned(),
        w.user.to_owned(),
        w.id.run_id.clone(),
        node_id.to_owned(),
        w.id.attempt.to_string(),
        queue_name.to_owned(),
        signal.to_owned(),
        input_json.to_owned(),
        timeout_ms.unwrap_or(0).to_string(),
        lease_ms.to_string(),
        id,
        keys::TASKS_READY.to_owned(),
        ready,
    ];
    let (created, _state, created_ms, deadline): (i64, String, u64, u64) = CREATE
        .invoke(conn, &[record, queue, run, listed], &args)
        .await?;
    Ok((created >= 0).then_some(Created {
        created: created == 1,
        created_ms,
        deadline_ms: (deadline > 0).then_some(deadline),
    }))
}

/// The latest progress a worker reported on a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Reports so far (0: none).
    pub reports: u64,
    /// From 0 to 1, if reported.
    pub progress: Option<f64>,
    /// The worker's message, if any.
    pub message: Option<String>,
}

/// Where a wait is, for its run actor.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Still waiting; look again after `next_check` (a deadline or a
    /// lease), or when notified.
    Waiting {
        /// When a deadline or a lease runs out, if any.
        next_check: Option<Duration>,
        /// The latest progress report.
        progress: Progress,
    },
    /// Completed with this output (JSON text): a worker's, a decision, a signal.
    Completed {
        /// The output.
        output: String,
    },
    /// The worker failed it.
    Failed {
        /// Its error.
        error: String,
        /// Whether the worker said another attempt may succeed.
        retryable: bool,
    },
    /// The worker's lease lapsed.
    Expired {
        /// The worker that held it.
        worker_id: String,
        /// The lease, in ms.
        lease_ms: u64,
    },
    /// The node's `timeout_ms` passed.
    TimedOut {
        /// The deadline, Unix ms.
        deadline_ms: u64,
    },
    /// Cancelled (its run ended: the commit that ended it cancelled it).
    Cancelled,
    /// No such wait (expired long ago, or never created).
    Missing,
}

/// Brings a wait up to date (deadlines, lease, a buffered signal) and says
/// where it is.
pub async fn settle<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    w: WaitRef<'_>,
) -> Result<Settled> {
    let args = [w.id.to_string()];
    let reply: Vec<String> = SETTLE.invoke(conn, &w.keys(), &args).await?;
    let corrupt = || Error::Corrupt(format!("wait {}: settle answered {reply:?}", w.id));
    let Some(state) = reply.first() else {
        return Err(corrupt());
    };
    if state == "missing" {
        return Ok(Settled::Missing);
    }
    if reply.len() < 11 {
        return Err(corrupt());
    }
    let num = |i: usize| reply[i].parse::<i64>().unwrap_or(0);
    Ok(match state.as_str() {
        "waiting" => Settled::Waiting {
            next_check: u64::try_from(num(1)).ok().map(Duration::from_millis),
            progress: Progress {
                reports: num(5).max(0) as u64,
                progress: reply[6].parse().ok(),
                message: Some(reply[7].clone()).filter(|m| !m.is_empty()),
            },
        },
        "completed" => Settled::Completed {
            output: reply[2].clone(),
        },
        "failed" => Settled::Failed {
            error: reply[3].clone(),
            retryable: reply[4] == "1",
        },
        "expired" => Settled::Expired {
            worker_id: reply[9].clone(),
            lease_ms: num(10).max(0) as u64,
        },
        "timed_out" => Settled::TimedOut {
            deadline_ms: num(8).max(0) as u64,
        },
        "cancelled" => Settled::Cancelled,
        _ => return Err(corrupt()),
    })
}

/// What became of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Taken: it is the node's output.
    Taken,
    /// The approval is not waiting: it was decided, timed out or cancelled
    /// (the record's state).
    NotWaiting(String),
    /// No such wait.
    Missing,
}

/// Records a decision on a waiting approval (its output, JSON) once.
pub async fn decide<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    id: &WaitId,
    output_json: &str,
) -> Result<Decided> {
    let wid = id.to_string();
    let args = [
        output_json.to_owned(),
        keys::WAITS_SETTLED.to_owned(),
        wid.clone(),
    ];
    let reply: Vec<String> = DECIDE.invoke(conn, &[keys::wait(&wid)], &args).await?;
    Ok(match reply.first().map(String::as_str) {
        Some("ok") => Decided::Taken,
        Some("missing") => Decided::Missing,
        _ => Decided::NotWaiting(reply.get(1).cloned().unwrap_or_default()),
    })
}

/// What became of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// Recorded; the run's signal nodes of that name complete with it.
    Recorded,
    /// A signal of that name was posted to the run before.
    Duplicate,
    /// The run has finished.
    Ended,
    /// No such run.
    Missing,
}

/// Records a signal posted to a running run, once per name.
pub async fn signal<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
    name: &str,
    payload_json: &str,
) -> Result<Signalled> {
    let keys = [keys::run_signals(run_id), keys::run(run_id)];
    let args = [
        name.to_owned(),
        payload_json.to_owned(),
        keys::WAITS_SETTLED.to_owned(),
        run_id.to_owned(),
    ];
    let code: String = SIGNAL.invoke(conn, &keys, &args).await?;
    Ok(match code.as_str() {
        "ok" => Signalled::Recorded,
        "duplicate" => Signalled::Duplicate,
        "ended" => Signalled::Ended,
        _ => Signalled::Missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_ids_round_trip_and_refuse_junk() {
        let run = "6f1c1c5e-3b1e-4a53-9d7e-3c1f5f0b2a11";
        let w = WaitId::parse(&format!("{run}.3.2")).unwrap();
        assert_eq!((w.run_id.as_str(), w.node, w.attempt), (run, 3, 2));
        assert_eq!(w.to_string(), format!("{run}.3.2"));
        for bad in [
            "",
            "x.1.1",
            &format!("{run}.1"),
            &format!("{run}.1.0"),
            &format!("{run}.-1.1"),
            &format!("{run}.1.1.1"),
            &format!("{run}.1.+1"),
            &format!("{run}.1.99999999999"),
            &format!("{}.1.1", run.replace('-', "")),
        ] {
            assert_eq!(WaitId::parse(bad), None, "{bad}");
        }
        assert_eq!(WaitId::parse_notice(&format!("{run}.4.1")), (run, Some(4)));
        assert_eq!(WaitId::parse_notice(run), (run, None));
    }

    /// Every quoted word of the scripts is a Redis command, a field that
    /// `keys::wait_field` lists, or one of the states, kinds and reply codes
    /// this module decodes: a misspelt field cannot hide in a script.
    #[test]
    fn scripts_spell_only_listed_fields_and_states() {
        let lua = [
            include_str!("lua/wait_create.lua"),
            include_str!("lua/wait_settle.lua"),
            include_str!("lua/task_claim.lua"),
            include_str!("lua/task_report.lua"),
            include_str!("lua/approval_decide.lua"),
            include_str!("lua/signal_send.lua"),
        ];
        let words = [
            // wait states, kinds, run status, reply codes, flags
            "queued",
            "claimed",
            "waiting",
            "completed",
            "failed",
            "expired",
            "timed_out",
            "cancelled",
            "task",
            "approval",
            "signal",
            "status",
            "ok",
            "missing",
            "stale",
            "token",
            "not_waiting",
            "duplicate",
            "ended",
            "heartbeat",
            "1",
            "0",
            "",
        ];
        for src in lua {
            for line in src.lines().filter(|l| !l.trim_start().starts_with("--")) {
                for w in line.split('\'').skip(1).step_by(2) {
                    let ok = w.chars().all(|c| c.is_ascii_uppercase())
                        || keys::wait_field::ALL.contains(&w)
                        || words.contains(&w);
                    assert!(ok, "unknown word {w:?} in: {line}");
                }
            }
        }
    }
}
