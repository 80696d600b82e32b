//! The store: everything flowcast keeps in Redis, and the only code that
//! speaks to Redis (besides the Subscriber's PubSub connection and the
//! benchmark tool, which is a client like any other).
//!
//! Actors and handlers call the functions here; they never spell a key, a
//! hash field, a status string or a command. The layout of the data is in
//! [`keys`] (with the key table); each Lua script is a file under `lua/`,
//! loaded by [`script`], with a typed reply next to its caller.
//!
//! Modules by concern:
//! - [`commit`]: the atomic commit of a run's state change and its events;
//! - [`runs`]: run records and their admission under the user's quotas
//!   (child runs included), the user's index, event lists, outputs, cancel requests;
//! - [`history`]: the per-user event history read by resuming sessions;
//! - [`requests`]: the run-request stream and its consumer group (an
//!   acknowledged request is deleted);
//! - [`leases`]: which runner process drives which run, its presence, and
//!   the crash-loop count;
//! - [`workflows`]: each user's own workflows and the shared catalogue;
//! - [`waits`]: one attempt of a `task`, `approval` or `signal` node, its
//!   deadlines, decisions and signals;
//! - [`tasks`]: task queues, claims and workers' reports, and the notices
//!   that wake long-polls and run actors.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};

pub mod commit;
pub mod history;
pub mod keys;
pub mod leases;
pub mod requests;
pub mod runs;
pub mod script;
pub mod tasks;
pub mod waits;
pub mod workflows;

pub use commit::{Commit, Outcome, Retention};
pub use runs::{NodeRecord, RunRecord};

/// How long connecting to Redis may take, for every connection the process
/// opens: an unreachable host must not leave anyone waiting on the OS's
/// connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An auto-reconnecting connection whose commands fail after
/// `response_timeout` (`None`: wait as long as the command takes, for
/// blocking reads).
pub async fn connect(
    client: &redis::Client,
    response_timeout: Option<Duration>,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client.clone(), config).await
}

/// True when Redis answers PING.
pub async fn ping<C: ConnectionLike + Send + Sync>(conn: &mut C) -> redis::RedisResult<()> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::keys::field;

    /// The scripts spell hash fields and statuses that the Rust side names in
    /// `keys::field` and `RunStatus`: they must agree.
    #[test]
    fn lua_scripts_use_the_fields_and_statuses_rust_names() {
        // Each script with the KEYS index of the run hash in it.
        let lua = [
            (include_str!("lua/commit.lua"), "1]"),
            (include_str!("lua/claim.lua"), "2]"),
            (include_str!("lua/enqueue.lua"), "1]"),
            (include_str!("lua/enqueue_child.lua"), "1]"),
            (include_str!("lua/release.lua"), "i + 1]"),
            (include_str!("lua/only_waiting.lua"), "2]"),
        ];
        let known = [
            field::STATUS,
            field::SEQ,
            field::WRITER,
            field::WRITER_FROM,
            field::RESUMED_AT_SEQ,
            field::RESUMES,
            field::CREATED_MS,
        ];
        for (src, run_hash) in lua {
            for cmd in ["'HGET', KEYS[", "'HSET', KEYS[", "'HDEL', KEYS["] {
                for part in src.split(cmd).skip(1).filter(|p| p.starts_with(run_hash)) {
                    // Every quoted field name up to the call's closing
                    // parenthesis (HSET/HDEL name several; variables are
                    // not quoted).
                    let line = part.split(')').next().unwrap_or("");
                    for f in line.split('\'').skip(1).step_by(2) {
                        assert!(known.contains(&f), "script names unknown field {f:?}");
                    }
                }
            }
            for st in ["completed", "failed", "cancelled"] {
                if src.contains(&format!("'{st}'")) {
                    let s = crate::counter::RunStatus::parse(st).expect("a status");
                    assert!(s.is_terminal(), "{st} is terminal in Lua but not in Rust");
                }
            }
        }
        assert!(
            include_str!("lua/commit.lua").contains(&format!("'HSET', KEYS[1], '{}'", field::SEQ))
        );
    }
}
