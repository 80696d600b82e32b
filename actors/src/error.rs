//! The runtime crate's error type.
//!
//! Callers at the HTTP edge map each variant to a status code once (see
//! `flowcast-web`'s `ApiError`); nothing here knows about HTTP.

use thiserror::Error;

/// Everything that can go wrong inside the runtime.
#[derive(Debug, Error)]
pub enum Error {
    /// A workflow failed validation; the message names the node (and cycle).
    #[error("{0}")]
    InvalidWorkflow(String),
    /// A caller's input was malformed; the message names the field.
    #[error("{0}")]
    InvalidInput(String),
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The daemon is shutting down and accepts no new work.
    #[error("shutting down")]
    ShuttingDown,
}

/// Result alias for the runtime crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
