//! The runner process's one control subscription: `TASKS_READY` wakes a
//! long-polling claim ([`Waiters::ready`]), `WAITS_SETTLED` tells the runner
//! which run has something to apply, and `CONTROL` forwards cancel requests
//! made through other instances (`runner::CancelRun`; missed ones are found
//! by the runner's sweep).
//!
//! Notices are PubSub messages, lost while the connection is down; so every
//! (re)subscription is followed by a wake-up of every waiting claim and a
//! look by every live run at all its waits, which finds whatever changed
//! meanwhile. The run actors' own timers (leases, deadlines) are the last
//! net. Reconnects back off like every Redis loop, reset once a notice
//! arrives on the new connection.

use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Waiters;
use crate::backoff::Backoff;
use crate::runner::{CancelRun, Runner, WaitsChanged};
use crate::store::tasks::{self, Notice};

const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Listens until `shutdown` fires, feeding `waiters` and, when this process
/// runs one, the runner.
pub async fn listen(
    client: redis::Client,
    waiters: Waiters,
    runner: Option<Addr<Runner>>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF;
    while !shutdown.is_cancelled() {
        match tasks::notices(&client).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                // Whatever was announced while unsubscribed is found now.
                waiters.wake_all();
                if let Some(r) = &runner {
                    r.do_send(WaitsChanged::everything());
                }
                loop {
                    let notice = tokio::select! {
                        n = stream.next() => n,
                        _ = shutdown.cancelled() => return,
                    };
                    let Some(notice) = notice else { break };
                    backoff.reset();
                    match notice {
                        Notice::Ready { user, queue } => waiters.ready(&user, &queue),
                        Notice::Settled { run_id, node } => {
                            if let Some(r) = &runner {
                                r.do_send(WaitsChanged {
                                    run_id: Some(run_id),
                                    node,
                                });
                            }
                        }
                        Notice::Cancel { run_id } => {
                            if let Some(r) = &runner {
                                r.do_send(CancelRun { run_id });
                            }
                        }
                    }
                }
                log::warn!("outside: the notice subscription dropped; resubscribing");
            }
            Err(e) => log::warn!("outside: cannot subscribe to task notices ({e})"),
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
