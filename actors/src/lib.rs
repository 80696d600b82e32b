//! flowcast's runtime: the workflow model, the counter, and the actors that
//! run workflows and carry their events.
//!
//! # Layout
//!
//! Pure logic, no I/O:
//! - [`workflow`]: the workflow JSON model and its validation into a [`workflow::Dag`];
//! - [`counter`]: the pending-node counter state machine;
//! - [`jq`]: jq filters (jaq) for `transform` and `http` nodes;
//! - [`result`]: canonical JSON and `sha256:` result refs;
//! - [`event`]: the event payloads (the seed's, plus flowcast's);
//! - [`user`]: username validation;
//! - [`egress`]: where `http` nodes may connect (`--http-allow`).
//!
//! Redis:
//! - [`store`]: the only code that speaks to Redis: key layout, Lua scripts,
//!   commits, runs, history, requests, leases, workflows;
//! - [`registry`]: the operator's catalogue of workflow files;
//! - [`backoff`]: the retry policy of every loop that talks to Redis.
//!
//! Actors (runner half):
//! - [`runner::Runner`]: consumes run requests, initialises runs, resumes orphans;
//! - [`run::RunActor`]: one per run; executes nodes ([`node`]) and drives the counter;
//!   `http` nodes go through [`http_node::HttpClient`], which enforces [`egress`];
//! - [`publisher::Publisher`]: the single writer of state and events.
//!
//! Actors (fan-out half):
//! - [`subscriber::Subscriber`]: the process's one PubSub connection;
//! - [`fanout::Fanout`]: one per user with live sessions; forwards frames to them;
//! - [`replay`]: the paged replay of a user's history to a resuming client,
//!   shared by the transports (WebSocket, SSE).
//!
//! [`metrics`] holds the Prometheus metrics every actor updates.

pub mod backoff;
pub mod counter;
pub mod egress;
pub mod error;
pub mod event;
pub mod fanout;
pub mod http_node;
pub mod jq;
pub mod metrics;
pub mod node;
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
