//! The bench publisher: stamps messages and sends them to the fan-out
//! server's source, at a fixed rate or closed-loop.
//!
//! A pacer task numbers the messages (round-robin over users), records in
//! the [`Ledger`] how many connections each one owes a delivery to, stamps
//! the send time, and queues it; a few sender workers drain the queue:
//! to Redis (`PUBLISH channel message`, pipelined per batch) or over HTTP
//! (`POST` to a URL template, e.g. nchan's `/pub/{id}`, one request at a
//! time per keep-alive connection). A full queue slows the pacer down, so a
//! rate the sink cannot take shows as an achieved rate below the target.
//!
//! Closed-loop, the pacer keeps at most `window` messages in flight (not yet
//! received by every subscribed connection); a window that makes no progress
//! for the stall timeout is retired as lost, so the run always ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};

use super::ledger::Ledger;
use super::stamp::{now_us, Stamp};
use super::template::loopback_http;
use super::template::Template;
use crate::http::{split_url, HttpConn};

/// Most messages per Redis pipeline.
const MAX_BATCH: usize = 512;

/// How messages are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// This many messages per second in total.
    Rate(f64),
    /// As fast as delivered, with at most this many messages in flight.
    ClosedLoop(usize),
}

/// Where messages go.
pub enum Target {
    /// `PUBLISH` on a Redis server, to a channel template.
    Redis {
        /// The server.
        url: String,
        /// The channel of a user.
        channel: Template,
    },
    /// `POST` to a URL template.
    Http(Template),
}

/// What to publish.
pub struct Plan {
    /// Pacing.
    pub mode: Mode,
    /// Publish for this long at most.
    pub duration: Duration,
    /// And at most this many messages.
    pub max_messages: u64,
    /// Message size.
    pub payload_bytes: usize,
    /// User names, by index.
    pub users: Vec<String>,
    /// Sender workers (Redis connections or HTTP connections).
    pub workers: usize,
    /// Closed-loop: how long a window may make no progress before it is retired.
    pub stall: Duration,
    /// This bench process's id (stamped in every message).
    pub bench_id: String,
}

/// What the publisher did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Messages sent (including failed ones).
    pub published: u64,
    /// Messages whose send failed.
    pub errors: u64,
    /// The first send error.
    pub first_error: Option<String>,
    /// Closed-loop messages given up on after a stall.
    pub retired: u64,
    /// Seconds from the first to the last send.
    pub elapsed_s: f64,
    /// When the first message was stamped, µs since the epoch.
    #[serde(skip)]
    pub started_us: u64,
}

struct Job {
    msg: u64,
    user: usize,
    subscribers: u64,
    payload: String,
}

#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Errors {
    fn add(&self, n: u64, e: &dyn std::fmt::Display) {
        self.count.fetch_add(n, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            log::warn!("publish failed: {e}");
            *first = Some(e.to_string());
        }
    }
}

enum Sender {
    Redis {
        conn: redis::aio::MultiplexedConnection,
        channels: Arc<Vec<String>>,
    },
    Http {
        conn: HttpConn,
        paths: Arc<Vec<String>>,
    },
}

impl Sender {
    /// Sends a batch; returns how many failed (with the error).
    async fn send(&mut self, jobs: &[Job]) -> Result<(), (usize, Vec<usize>, String)> {
        match self {
            Self::Redis { conn, channels } => {
                let mut pipe = redis::pipe();
                for j in jobs {
                    pipe.cmd("PUBLISH")
                        .arg(&channels[j.user])
                        .arg(&j.payload)
                        .ignore();
                }
                pipe.query_async::<()>(conn)
                    .await
                    .map_err(|e| (jobs.len(), (0..jobs.len()).collect(), e.to_string()))
            }
            Self::Http { conn, paths } => {
                let mut failed = Vec::new();
                let mut last = String::new();
                for (i, j) in jobs.iter().enumerate() {
                    let body = Bytes::from(j.payload.clone());
                    match conn.request(Method::POST, &paths[j.user], &[], body).await {
                        Ok((s, _)) if s.is_success() => {}
                        Ok((s, b)) => {
                            failed.push(i);
                            last = format!("HTTP {s}: {}", String::from_utf8_lossy(&b));
                        }
                        Err(e) => {
                            failed.push(i);
                            last = format!("{e:#}");
                        }
                    }
                }
                if failed.is_empty() {
                    Ok(())
                } else {
                    Err((failed.len(), failed, last))
                }
            }
        }
    }
}

async fn senders(target: &Target, plan: &Plan) -> anyhow::Result<Vec<Sender>> {
    let mut out = Vec::new();
    match target {
        Target::Redis { url, channel } => {
            super::template::loopback_target(url)?;
            let client = redis::Client::open(url.as_str())
                .with_context(|| format!("{url:?} is not a Redis URL"))?;
            let channels: Arc<Vec<String>> =
                Arc::new(plan.users.iter().map(|u| channel.fill(u)).collect());
            for _ in 0..plan.workers {
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("cannot connect to Redis at {url}"))?;
                out.push(Sender::Redis {
                    conn,
                    channels: channels.clone(),
                });
            }
        }
        Target::Http(t) => {
            let first = t.fill(plan.users.first().map_or("x", |u| u.as_str()));
            let paths: Arc<Vec<String>> = Arc::new(
                plan.users
                    .iter()
                    .map(|u| split_url(&t.fill(u)).map(|(_, p)| p))
                    .collect::<anyhow::Result<_>>()?,
            );
            for _ in 0..plan.workers {
                out.push(Sender::Http {
                    conn: loopback_http(&first)?,
                    paths: paths.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Publishes per `plan` to `target`; `live[u]` is the number of this
/// process's connections subscribed to user `u` right now.
pub async fn run(
    target: &Target,
    plan: &Plan,
    live: Arc<Vec<AtomicU64>>,
    ledger: Arc<Ledger>,
) -> anyhow::Result<Outcome> {
    let senders = senders(target, plan).await?;
    let (tx, rx) = mpsc::channel::<Job>(MAX_BATCH * 2);
    let rx = Arc::new(Mutex::new(rx));
    let errors = Arc::new(Errors::default());
    let mut workers = Vec::new();
    for mut sender in senders {
        let (rx, errors, ledger) = (rx.clone(), errors.clone(), ledger.clone());
        workers.push(tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            loop {
                batch.clear();
                let n = rx.lock().await.recv_many(&mut batch, MAX_BATCH).await;
                if n == 0 {
                    return;
                }
                if let Err((n, failed, e)) = sender.send(&batch).await {
                    errors.add(n as u64, &e);
                    for i in failed {
                        ledger.unpublished(batch[i].msg, batch[i].subscribers);
                    }
                }
            }
        }));
    }

    let users = plan.users.len().max(1);
    let mut user_seq = vec![0u64; users];
    let started = Instant::now();
    let started_us = now_us();
    let mut msg = 0u64;
    let mut text = String::new();
    let mut new_job = |msg: u64, user_seq: &mut [u64]| {
        let user = (msg % users as u64) as usize;
        let seq = user_seq[user];
        user_seq[user] += 1;
        let subscribers = live[user].load(Ordering::Relaxed);
        ledger.published(msg, subscribers);
        Stamp {
            bench: &plan.bench_id,
            u: user,
            seq,
            g: msg,
            ts_us: now_us(),
        }
        .write(plan.payload_bytes, &mut text);
        Job {
            msg,
            user,
            subscribers,
            payload: text.clone(),
        }
    };
    loop {
        let elapsed = started.elapsed();
        if elapsed >= plan.duration || msg >= plan.max_messages {
            break;
        }
        let allowed = match plan.mode {
            Mode::Rate(rate) => {
                let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(plan.max_messages);
                if msg >= due {
                    let next = started + Duration::from_secs_f64(msg as f64 / rate);
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
                (due - msg).min(MAX_BATCH as u64 * 4)
            }
            Mode::ClosedLoop(window) => {
                let in_flight = ledger.in_flight(msg);
                if in_flight >= window as u64 {
                    let wait = plan.stall.min(plan.duration.saturating_sub(elapsed));
                    if tokio::time::timeout(wait, ledger.progress.notified())
                        .await
                        .is_err()
                        && started.elapsed() < plan.duration
                    {
                        let n = ledger.retire_stalled(msg);
                        log::warn!("closed loop stalled for {wait:?}: retired {n} messages");
                    }
                    continue;
                }
                (window as u64 - in_flight).min(plan.max_messages - msg)
            }
        };
        for _ in 0..allowed {
            let job = new_job(msg, &mut user_seq);
            msg += 1;
            if tx.send(job).await.is_err() {
                break;
            }
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let first_error = errors
        .first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        published: msg,
        errors: errors.count.load(Ordering::Relaxed),
        first_error,
        retired: ledger.retired(),
        elapsed_s,
        started_us,
    })
}
