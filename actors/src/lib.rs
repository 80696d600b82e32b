//! flowcast's runtime: the workflow model, the counter, and the actors that
//! run workflows and carry their events.
//!
//! # Layout
//!
//! Pure logic, no I/O:
//! - [`workflow`]: the workflow JSON model and its validation into a [`workflow::Dag`];
//! - [`counter`]: the pending-node counter state machine (with skips);
//! - [`foreach`]: the items inside a `foreach` node's token;
//! - [`jq`]: jq filters (jaq) for `transform` and `http` nodes and for
//!   control flow (`when`, `foreach`, a child's `inputs`): the restricted
//!   language, its pre-parse limits and validation;
//! - [`result`]: canonical JSON and `sha256:` result refs;
//! - [`event`]: the event payloads (the seed's, plus flowcast's);
//! - [`user`]: username validation;
//! - [`egress`]: where `http` nodes may connect (`--http-allow`);
//! - [`outside::spec`]: the `task`, `approval` and `signal` node kinds;
//! - [`fair`]: the fair share of node execution among users (round-robin permits).
//!
//! Redis:
//! - [`store`]: the only code that speaks to Redis: key layout, Lua scripts,
//!   commits, runs, history, requests, leases, workflows;
//! - [`registry`]: the operator's catalogue of workflow files;
//! - [`backoff`]: the retry policy of every loop that talks to Redis.
//!
//! Processes:
//! - [`jq::pool`]: sandboxed evaluator processes the runner runs filters in,
//!   killed at a node's deadline;
//! - [`jq::worker`]: such a process's loop (`flowcast jq-worker`).
//!
//! Actors (runner half; the Runner and the run actors share one thread, the
//! Publisher has its own, so neither stalls the other or the fan-out):
//! - [`runner::Runner`]: consumes run requests, initialises runs, resumes orphans;
//! - [`run::RunActor`]: one per run; executes nodes ([`node`]) and drives the counter;
//!   `http` nodes go through [`http_node::HttpClient`], which enforces [`egress`];
//!   each attempt first takes a permit of its user's fair share ([`fair`]);
//!   `workflow` nodes start and wait for child runs ([`child`]);
//! - [`publisher::Publisher`]: the single writer of state and events.
//!
//! Work done outside the daemon ([`outside`]): [`outside::Waiters`], the
//! process's long-polling claims, and [`outside::listen`], the subscription
//! that wakes them and the run actors waiting on workers, people and signals.
//!
//! Actors (fan-out half):
//! - [`subscriber::Subscriber`]: the process's one PubSub connection;
//! - [`fanout::Fanout`]: one per user with live sessions; forwards frames to them;
//! - [`replay`]: the paged replay of a user's history to a resuming client,
//!   shared by the transports (WebSocket, SSE).
//!
//! [`metrics`] holds the Prometheus metrics every actor updates.

pub mod backoff;
pub mod child;
pub mod counter;
pub mod egress;
pub mod error;
pub mod event;
pub mod fair;
pub mod fanout;
pub mod foreach;
pub mod http_node;
pub mod jq;
pub mod metrics;
pub mod node;
pub mod outside;
pub mod publisher;
pub mod registry;
pub mod replay;
pub mod result;
pub mod run;
pub mod runner;
pub mod store;
pub mod subscriber;
pub mod user;
pub mod workflow;

pub use error::{Error, Result};
