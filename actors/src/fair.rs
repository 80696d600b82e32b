//! Fair share of node execution among users.
//!
//! Node execution (jq evaluation, http requests, hashing outputs) is a
//! bounded resource shared by every user of a runner. Handed out first come,
//! first served, one user's flood of wide runs would queue thousands of
//! nodes ahead of another user's small run. A [`FairShare`] hands out a
//! fixed number of permits instead, and when they are all taken it queues
//! each request in its user's own FIFO queue and serves the queues
//! round-robin: a user waiting for a permit gets one after at most one grant
//! to each other waiting user, however many nodes those users have queued.
//! Within a user, nodes are served in the order they asked.
//!
//! The scheduler knows nothing of how a node executes: a run actor takes a
//! [`Permit`] for its user before an attempt and holds it for the attempt's
//! lifetime. The permit is released when it is dropped, so an attempt that
//! ends for any reason (completion, failure, timeout, cancellation: its
//! future is dropped) frees its slot at once; a request abandoned while
//! still queued is skipped, and a permit granted to a request nobody polls
//! any more comes back when the request is dropped.
//!
//! It is `Send` and lock-protected (a plain mutex: every critical section is
//! a few queue operations), so it does not care which threads its users
//! run on.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// A permit pool shared fairly among users.
#[derive(Clone)]
pub struct FairShare {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    /// Permits nobody holds.
    free: usize,
    /// Each waiting user's requests, oldest first.
    queues: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
    /// Users with queued requests, in the order they are served.
    turn: VecDeque<String>,
}

/// The right to execute one node attempt; released when dropped.
pub struct Permit {
    /// `None` once handed back (or for a permit of a pool that is gone).
    share: Option<Arc<Mutex<Inner>>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // The critical sections cannot panic half-way; a poisoned lock still
    // holds consistent queues.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FairShare {
    /// A pool of `permits` permits (at least one).
    pub fn new(permits: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                free: permits.max(1),
                queues: HashMap::new(),
                turn: VecDeque::new(),
            })),
        }
    }

    /// A permit for `user`, now if one is free, else in `user`'s turn. The
    /// request is queued at the call, not at the first poll, so requests of
    /// one user are served in call order.
    pub fn acquire(&self, user: &str) -> impl Future<Output = Permit> + 'static {
        let mut inner = lock(&self.inner);
        let granted = if inner.free > 0 && inner.turn.is_empty() {
            inner.free -= 1;
            Ok(Permit {
                share: Some(self.inner.clone()),
            })
        } else {
            let (tx, rx) = oneshot::channel();
            match inner.queues.get_mut(user) {
                Some(q) => q.push_back(tx),
                None => {
                    inner.queues.insert(user.to_owned(), VecDeque::from([tx]));
                    inner.turn.push_back(user.to_owned());
                }
            }
            Err(rx)
        };
        drop(inner);
        async move {
            match granted {
                Ok(p) => p,
                // The pool itself is gone (its queues dropped): nothing is
                // left to share, so the attempt runs unbounded.
                Err(rx) => rx.await.unwrap_or(Permit { share: None }),
            }
        }
    }

    /// Permits nobody holds.
    pub fn available(&self) -> usize {
        lock(&self.inner).free
    }

    /// Requests queued (including abandoned ones not yet skipped).
    pub fn queued(&self) -> usize {
        lock(&self.inner).queues.values().map(VecDeque::len).sum()
    }
}

/// The pools a runner shares among its users: compute (jq evaluation,
/// building inputs, hashing outputs) and io (http requests), so that slow
/// requests waiting on the network never hold the slots of CPU work.
#[derive(Clone)]
pub struct Shares {
    /// CPU work.
    pub compute: FairShare,
    /// Work that mostly waits on the network.
    pub io: FairShare,
}

impl Shares {
    /// Pools of `compute` and `io` permits.
    pub fn new(compute: usize, io: usize) -> Self {
        Self {
            compute: FairShare::new(compute),
            io: FairShare::new(io),
        }
    }
}

/// Hands `permit` to the next request in turn, or back to the pool.
fn pass_on(inner: &mut Inner, mut permit: Permit) {
    while let Some(user) = inner.turn.pop_front() {
        let Some(queue) = inner.queues.get_mut(&user) else {
            continue;
        };
        let next = queue.pop_front();
        if queue.is_empty() {
            inner.queues.remove(&user);
        } else {
            inner.turn.push_back(user);
        }
        if let Some(tx) = next {
            match tx.send(permit) {
                Ok(()) => return,
                // That request was abandoned: try the next.
                Err(p) => permit = p,
            }
        }
    }
    // Nobody waits: the permit goes back to the pool. Disarmed first, so
    // that dropping it here does not release it a second time.
    permit.share = None;
    inner.free += 1;
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(share) = self.share.take() {
            let mut inner = lock(&share);
            let permit = Permit {
                share: Some(share.clone()),
            };
            pass_on(&mut inner, permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::pin::Pin;

    type Waiting = Pin<Box<dyn Future<Output = Permit>>>;

    fn ask(f: &FairShare, user: &str) -> Waiting {
        Box::pin(f.acquire(user))
    }

    #[test]
    fn permits_are_granted_at_once_while_free() {
        let f = FairShare::new(2);
        let a = f.acquire("a").now_or_never().expect("free");
        let b = f.acquire("a").now_or_never().expect("free");
        assert_eq!(f.available(), 0);
        let mut third = ask(&f, "b");
        assert!(third.as_mut().now_or_never().is_none());
        drop(a);
        let c = third.as_mut().now_or_never();
        assert!(c.is_some(), "the freed permit goes to b");
        drop((b, c));
        assert_eq!(f.available(), 2);
    }

    /// Polls the waiting requests once, in order; takes out the first one
    /// granted, with its permit.
    fn next_grant<'a>(waiting: &mut Vec<(&'a str, Waiting)>) -> Option<(&'a str, Permit)> {
        for i in 0..waiting.len() {
            if let Some(p) = waiting[i].1.as_mut().now_or_never() {
                let (label, _) = waiting.remove(i);
                return Some((label, p));
            }
        }
        None
    }

    #[test]
    fn waiting_users_are_served_round_robin_each_in_fifo_order() {
        let f = FairShare::new(1);
        let mut held = f.acquire("flood").now_or_never().expect("free");
        let mut waiting: Vec<(&str, Waiting)> = [
            ("flood-1", "flood"),
            ("flood-2", "flood"),
            ("flood-3", "flood"),
            ("small-1", "small"),
            ("flood-4", "flood"),
            ("other-1", "other"),
            ("small-2", "small"),
        ]
        .into_iter()
        .map(|(label, user)| (label, ask(&f, user)))
        .collect();
        let mut order = Vec::new();
        while !waiting.is_empty() {
            // Nobody gets a permit while the only one is held...
            assert!(next_grant(&mut waiting).is_none());
            // ...and releasing it grants exactly one request.
            drop(held);
            let (label, permit) = next_grant(&mut waiting).expect("a grant");
            order.push(label);
            held = permit;
        }
        assert_eq!(
            order,
            ["flood-1", "small-1", "other-1", "flood-2", "small-2", "flood-3", "flood-4"]
        );
        drop(held);
        assert_eq!((f.available(), f.queued()), (1, 0));
    }

    #[test]
    fn abandoned_requests_are_skipped_and_no_permit_is_lost() {
        let f = FairShare::new(1);
        let p = f.acquire("a").now_or_never().expect("free");
        let gone = ask(&f, "b");
        let mut next = ask(&f, "c");
        drop(gone); // a cancelled node: its future dropped while queued
        drop(p);
        let q = next
            .as_mut()
            .now_or_never()
            .expect("c is served after b is skipped");
        drop(q);
        assert_eq!((f.available(), f.queued()), (1, 0));
    }

    #[test]
    fn a_permit_granted_but_never_taken_comes_back() {
        let f = FairShare::new(1);
        let p = f.acquire("a").now_or_never().expect("free");
        let waiting = ask(&f, "b");
        drop(p); // granted to b's request, which is never polled
        assert_eq!(f.available(), 0);
        drop(waiting);
        assert_eq!(f.available(), 1);
    }

    #[test]
    fn a_permit_is_released_when_its_attempt_is_cancelled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let f = FairShare::new(1);
            let share = f.clone();
            // An attempt holding its permit, stopped by its deadline.
            let attempt = async move {
                let _permit = share.acquire("a").await;
                std::future::pending::<()>().await;
            };
            let r = tokio::time::timeout(std::time::Duration::from_millis(1), attempt).await;
            assert!(r.is_err());
            assert_eq!(f.available(), 1);
        });
    }
}
