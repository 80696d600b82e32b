//! The Publisher: the single writer of run state and events to Redis.
//!
//! Run actors and the runner hand it [`Publish`] messages; it applies each
//! [`Commit`] with the commit script (see `store::commit`) and answers once the
//! change is in Redis. Commits arrive sealed (serialised by their makers,
//! see [`publish`]), so nothing a run produces, however large, is encoded
//! on this actor's thread; it runs on a thread of its own, apart from the
//! run actors and the fan-out. Whatever arrives while a write is in flight is sent as
//! the next pipeline, so under load one round trip carries many commits, and
//! idle it adds no delay. Order is kept: commits leave in the order they
//! arrived, and a failed pipeline is retried whole, in order, with
//! exponential backoff until Redis answers again; the script's seq guard makes
//! the retry of a commit that did land change nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::store::commit::{self, Commit, Outcome, Retention, Sealed};
/// Most commits in one pipeline.
pub const MAX_BATCH: usize = 512;
/// Retry delays after a failed write.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Apply a commit; answered when it is durable in Redis (or the Publisher stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The change, serialised by its maker.
    pub commit: Sealed,
    /// Where the outcome goes.
    pub done: oneshot::Sender<Outcome>,
}

/// Answered once every commit received before it has been written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush {
    /// Fired when the queue ahead of it is empty.
    pub done: oneshot::Sender<()>,
}

enum Item {
    Commit(Box<Publish>),
    Flush(oneshot::Sender<()>),
}

/// The Publisher actor.
pub struct Publisher {
    conn: ConnectionManager,
    retention: Retention,
    queue: VecDeque<Item>,
    writing: bool,
    /// A failed write is waiting for its retry: send nothing before it.
    backing_off: bool,
    backoff: Backoff,
    metrics: Metrics,
}

impl Publisher {
    /// A Publisher writing through `conn`; what commits leave behind is
    /// kept as `retention` says (history cap, how long ended runs stay).
    pub fn new(conn: ConnectionManager, retention: Retention, metrics: Metrics) -> Self {
        Self {
            conn,
            retention,
            queue: VecDeque::new(),
            writing: false,
            backing_off: false,
            backoff: BACKOFF,
            metrics,
        }
    }

    /// Sends the queued commits as one pipeline, unless one is in flight.
    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.writing {
            return;
        }
        // Flush markers at the head have nothing ahead of them.
        while let Some(Item::Flush(_)) = self.queue.front() {
            if let Some(Item::Flush(done)) = self.queue.pop_front() {
                let _ = done.send(());
            }
        }
        if self.backing_off {
            // New commits wait for the scheduled retry instead of
            // hammering an unreachable Redis.
            return;
        }
        let n = self
            .queue
            .iter()
            .take(MAX_BATCH)
            .take_while(|i| matches!(i, Item::Commit(_)))
            .count();
        if n == 0 {
            return;
        }
        let retry = self.backoff.failed_since_reset();
        for item in self.queue.iter_mut().take(n) {
            if let Item::Commit(p) = item {
                p.commit.retry |= retry;
            }
        }
        let pipe = commit::pipeline(
            self.queue.iter().take(n).filter_map(|i| match i {
                Item::Commit(p) => Some(&p.commit),
                Item::Flush(_) => None,
            }),
            &self.retention,
        );
        self.writing = true;
        let mut conn = self.conn.clone();
        let started = Instant::now();
        async move { commit::send(&mut conn, &pipe).await }
            .into_actor(self)
            .map(move |r, act, ctx| {
                act.writing = false;
                match r {
                    Ok(outcomes) => {
                        act.backoff.reset();
                        act.metrics
                            .publish_latency
                            .observe(started.elapsed().as_secs_f64());
                        for o in outcomes {
                            if let Some(Item::Commit(p)) = act.queue.pop_front() {
                                if let Outcome::Applied(k) = o {
                                    act.metrics.events_published.inc_by(k as u64);
                                }
                                let _ = p.done.send(o);
                            }
                        }
                        act.write(ctx);
                    }
                    Err(e) => {
                        let wait = act.backoff.next_delay();
                        log::warn!(
                            "publisher: write of {n} commits failed ({e}); retrying in {wait:?}"
                        );
                        act.metrics
                            .redis_errors
                            .with_label_values(&["publisher"])
                            .inc();
                        act.backing_off = true;
                        ctx.run_later(wait, |act, ctx| {
                            act.backing_off = false;
                            act.write(ctx)
                        });
                    }
                }
            })
            .spawn(ctx);
    }
}

/// Commits arrive with `do_send`, which ignores the mailbox bound: the
/// Publisher never refuses one; its queue is `queue`.
impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // After a restart, resume what was queued.
        self.write(ctx);
    }
}

impl Supervised for Publisher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        log::warn!(
            "publisher restarting with {} queued commits",
            self.queue.len()
        );
        // The restart dropped the write in flight and the retry timer.
        self.writing = false;
        self.backing_off = false;
    }
}

impl Handler<Publish> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        self.queue.push_back(Item::Commit(Box::new(msg)));
        self.write(ctx);
    }
}

impl Handler<Flush> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: Flush, ctx: &mut Self::Context) {
        self.queue.push_back(Item::Flush(msg.done));
        self.write(ctx);
    }
}

/// Seals a commit on the caller's thread (the Publisher's thread only
/// copies bytes), queues it at once (so commits keep the order of the
/// calls) and returns a future that resolves when it is durable; `None` if
/// the Publisher is gone.
pub fn publish(
    publisher: &Addr<Publisher>,
    commit: Commit,
) -> impl std::future::Future<Output = Option<Outcome>> {
    let (done, rx) = oneshot::channel();
    publisher.do_send(Publish {
        commit: commit.seal(),
        done,
    });
    async move { rx.await.ok() }
}
