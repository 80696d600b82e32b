//! The run-request stream and its consumer group: how queued runs reach
//! runners.
//!
//! Requests are read by the `runners` group, so several runner instances
//! share them; a request is acknowledged by the commit that initialises its
//! run (see `commit`). Requests left pending by a dead consumer are claimed
//! by another once they have been idle long enough ([`claim_stale`]). An
//! acknowledged request is deleted from the stream (XDEL next to every
//! XACK), so the stream holds only requests still to be done.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;

use super::keys;
use crate::error::{Error, Result};

/// A run request read from the stream.
#[derive(Debug, Clone)]
pub struct Request {
    /// The stream entry id (acknowledged once the run is initialised).
    pub entry_id: String,
    /// The run, `None` for a malformed entry (acknowledged and dropped).
    pub run_id: Option<String>,
}

/// Where a read starts.
#[derive(Debug, Clone)]
pub enum From {
    /// This consumer's own pending entries after this id ("0": all).
    Pending(String),
    /// New entries, blocking up to this long for one.
    New(Duration),
}

/// Makes sure the run-request stream and its consumer group exist.
pub async fn ensure_group<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys::REQUESTS)
        .arg(keys::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other.map_err(Error::from),
    }
}

/// Reads up to `count` requests for `consumer`.
pub async fn read<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    consumer: &str,
    from: &From,
    count: usize,
) -> redis::RedisResult<Vec<Request>> {
    let mut opts = StreamReadOptions::default()
        .group(keys::GROUP, consumer)
        .count(count);
    let id = match from {
        From::Pending(after) => after.clone(),
        From::New(block) => {
            opts = opts.block(block.as_millis() as usize);
            ">".to_owned()
        }
    };
    let reply: Option<StreamReadReply> =
        conn.xread_options(&[keys::REQUESTS], &[id], &opts).await?;
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|e| Request {
            run_id: e.get(keys::REQUEST_RUN_ID),
            entry_id: e.id,
        })
        .collect())
}

/// True when the error says the group is missing (the stream was deleted).
pub fn is_missing_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Acknowledges and deletes a request that needs no run (malformed, or its
/// run is gone or already initialised).
pub async fn ack<C: ConnectionLike + Send + Sync>(conn: &mut C, entry_id: &str) -> Result<()> {
    redis::pipe()
        .atomic()
        .xack(keys::REQUESTS, keys::GROUP, &[entry_id])
        .ignore()
        .xdel(keys::REQUESTS, &[entry_id])
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Claims for `consumer` up to `count` requests other consumers left pending
/// for at least `idle`.
pub async fn claim_stale<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    consumer: &str,
    idle: Duration,
    count: usize,
) -> Result<Vec<Request>> {
    let reply: StreamAutoClaimReply = conn
        .xautoclaim_options(
            keys::REQUESTS,
            keys::GROUP,
            consumer,
            idle.as_millis() as u64,
            "0",
            StreamAutoClaimOptions::default().count(count),
        )
        .await?;
    Ok(reply
        .claimed
        .into_iter()
        .map(|e| Request {
            run_id: e.get(keys::REQUEST_RUN_ID),
            entry_id: e.id,
        })
        .collect())
}

/// Age of a stream entry from its id (`ms-seq`).
pub fn entry_age(entry_id: &str) -> Duration {
    let ms: u64 = entry_id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(crate::event::now_ms().saturating_sub(ms))
}
