//! The claims long-polling in this process, woken per user and queue.
//!
//! A claim that found nothing registers on one [`Notify`] per (user, queue)
//! it asked for and sleeps; [`Waiters::ready`] (fed by the `TASKS_READY`
//! notice of a new task, whichever process created it) wakes **one** of
//! them, which claims again. A thousand idle claims are a thousand parked
//! futures and one map entry per queue: no Redis connection, no timer
//! loop, no polling. tokio passes a wake-up on to another waiter when the
//! woken one is dropped (its client went away), so a task is not left
//! waiting behind a dead claim; and every claim tries Redis before it
//! sleeps, with its wake-ups armed first, so a task created in between is
//! never missed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type Key = (String, String);

struct Entry {
    notify: Arc<Notify>,
    watchers: usize,
}

/// The process's long-polling claims (cheap to clone).
#[derive(Clone, Default)]
pub struct Waiters {
    inner: Arc<Mutex<HashMap<Key, Entry>>>,
}

/// A claim's registration on its queues; dropping it unregisters.
struct Watch {
    waiters: Waiters,
    keys: Vec<Key>,
    notifies: Vec<Arc<Notify>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        for k in &self.keys {
            if let Some(e) = map.get_mut(k) {
                e.watchers -= 1;
                if e.watchers == 0 {
                    map.remove(k);
                }
            }
        }
    }
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic while holding the lock leaves a valid map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watch(&self, user: &str, queues: &[String]) -> Watch {
        let mut map = self.lock();
        let mut keys = Vec::with_capacity(queues.len());
        let mut notifies = Vec::with_capacity(queues.len());
        for q in queues {
            let k = (user.to_owned(), q.clone());
            let e = map.entry(k.clone()).or_insert_with(|| Entry {
                notify: Arc::new(Notify::new()),
                watchers: 0,
            });
            e.watchers += 1;
            notifies.push(e.notify.clone());
            keys.push(k);
        }
        drop(map);
        Watch {
            waiters: self.clone(),
            keys,
            notifies,
        }
    }

    /// A task became claimable on `user`'s `queue`: wakes one claim waiting
    /// on it, if any.
    pub fn ready(&self, user: &str, queue: &str) {
        let map = self.lock();
        if let Some(e) = map.get(&(user.to_owned(), queue.to_owned())) {
            e.notify.notify_one();
        }
    }

    /// Wakes every waiting claim (after notices may have been missed).
    pub fn wake_all(&self) {
        for e in self.lock().values() {
            e.notify.notify_waiters();
        }
    }

    /// Claims waiting now, counted once per queue they wait on.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|e| e.watchers).sum()
    }

    /// Calls `claim` until it finds something, `deadline` passes or
    /// `shutdown` fires, sleeping between calls until one of `user`'s
    /// `queues` is announced ready. Answers the last call's result (empty
    /// at the deadline).
    pub async fn claim_until<T, E, F, Fut>(
        &self,
        user: &str,
        queues: &[String],
        deadline: Instant,
        shutdown: &CancellationToken,
        mut claim: F,
    ) -> Result<Vec<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Vec<T>, E>>,
    {
        let watch = self.watch(user, queues);
        loop {
            // Armed before Redis is asked: a task announced while the claim
            // is on its way wakes this loop instead of being missed.
            let mut armed: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = watch
                .notifies
                .iter()
                .map(|n| Box::pin(n.notified()))
                .collect();
            for a in &mut armed {
                a.as_mut().enable();
            }
            let found = claim().await?;
            if !found.is_empty() || armed.is_empty() || Instant::now() >= deadline {
                return Ok(found);
            }
            tokio::select! {
                _ = futures_util::future::select_all(armed) => {}
                _ = tokio::time::sleep_until(deadline.into()) => return Ok(found),
                _ = shutdown.cancelled() => return Ok(found),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_ready_queue_wakes_one_waiting_claim_and_registrations_go_away() {
        let w = Waiters::default();
        let stock = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let never = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let claim = {
            let (w, stock, calls, never) = (w.clone(), stock.clone(), calls.clone(), never.clone());
            tokio::spawn(async move {
                w.claim_until(
                    "u",
                    &["q".to_owned(), "r".to_owned()],
                    deadline,
                    &never,
                    || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let n = stock.swap(0, Ordering::SeqCst);
                        async move { Ok::<_, ()>(vec![(); n]) }
                    },
                )
                .await
            })
        };
        while w.waiting() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another user's queue of the same name wakes nobody here.
        w.ready("v", "r");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        stock.store(2, Ordering::SeqCst);
        w.ready("u", "r");
        assert_eq!(claim.await.unwrap(), Ok(vec![(), ()]));
        assert_eq!(w.waiting(), 0);
        assert!(w.lock().is_empty());
    }

    #[tokio::test]
    async fn a_claim_ends_empty_at_its_deadline_or_at_shutdown() {
        let w = Waiters::default();
        let stop = CancellationToken::new();
        let soon = Instant::now() + Duration::from_millis(20);
        let r = w
            .claim_until("u", &["q".to_owned()], soon, &stop, || async {
                Ok::<Vec<()>, ()>(vec![])
            })
            .await;
        assert_eq!(r, Ok(vec![]));
        stop.cancel();
        let later = Instant::now() + Duration::from_secs(600);
        let r = w
            .claim_until("u", &["q".to_owned()], later, &stop, || async {
                Ok::<Vec<()>, ()>(vec![])
            })
            .await;
        assert_eq!(r, Ok(vec![]));
        assert_eq!(w.waiting(), 0);
    }
}
