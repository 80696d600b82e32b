//! Work done outside the daemon: `task` nodes worked by the user's workers
//! over HTTP, `approval` nodes decided by people, `signal` nodes completed by
//! a posted payload.
//!
//! The pieces, and where the rest lives:
//! - [`spec`]: the three node kinds as users write them;
//! - `store::waits` / `store::tasks`: the durable side — one wait record per
//!   attempt, the per-user queues, claims, reports, decisions, signals, all
//!   atomic Lua scripts;
//! - `run::outside` (inside the run actor): starting an attempt's wait,
//!   watching it, and applying its one outcome to the counter;
//! - [`Waiters`]: the claims long-polling in this process, woken per
//!   user and queue;
//! - [`listen`]: the process's one subscription to the notices that wake
//!   both: a task became claimable (→ [`Waiters`]), a wait changed (→ the
//!   runner, which tells the run actor holding that run).
//!
//! Why accounting is exact whatever workers do: an attempt's outcome is
//! decided once, in Redis, by the first of its worker's report (checked
//! against the attempt's token), its lease's expiry, its deadline, a
//! decision or a signal; everything later is refused (409) and changes
//! nothing. The run actor applies that outcome through the counter and one
//! seq-guarded commit, like any node's; see `run::outside` for how a
//! resumed actor tells an applied outcome from one still to apply.

mod listener;
pub mod spec;
mod waiters;

pub use listener::listen;
pub use waiters::Waiters;
