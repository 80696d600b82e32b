//! flowcast the daemon, as a library: [`serve`] runs it with a
//! [`config::ServeConfig`] until a shutdown token fires. The `flowcast`
//! binary parses the command line into that config and fires the token on
//! SIGTERM/SIGINT; the runtime itself lives in the `flowcast-actors` and
//! `flowcast-web` crates.

pub mod config;
pub mod serve;

pub use serve::serve;
