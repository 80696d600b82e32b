//! A user's event history: the capped stream every event is appended to,
//! read by sessions that resume with `last_event_id`.
//!
//! Entry ids (`ms-seq`) are the events' `event_id`s; the stored payload lacks
//! its own id, which [`read`] splices in, as the commit script does for live
//! events.

use std::collections::HashMap;

use redis::aio::ConnectionLike;

use super::keys;
use crate::error::Result;

/// Parses a stream id `ms-seq`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// True when stream id `a` comes after `b` (unparsable ids never do).
pub fn id_after(a: &str, b: &str) -> bool {
    match (parse_id(a), parse_id(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Events of a user's history after `after` (exclusive), as complete JSON
/// texts with `event_id`, oldest first; at most `count`.
pub async fn read<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    after: &str,
    count: usize,
) -> Result<Vec<(String, String)>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys::history(user))
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .filter_map(|e| {
            let p: String = e.get("e")?;
            let full = format!("{},\"event_id\":\"{}\"}}", p.strip_suffix('}')?, e.id);
            Some((e.id, full))
        })
        .collect())
}

/// The id of the newest event in a user's history (`None` while empty):
/// where a stream that starts live stands, so that it can resume from there.
pub async fn newest<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
) -> Result<Option<String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys::history(user))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply.ids.into_iter().next().map(|e| e.id))
}

/// Whether events after `after` may have been trimmed from a user's
/// history: true when entries were trimmed and the oldest entry still held
/// comes after `after`. Returns that oldest id.
pub async fn gap<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    after: &str,
) -> Result<Option<String>> {
    let info: redis::Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys::history(user))
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        // No history yet: nothing can be missing.
        Err(e) if e.code() == Some("ERR") => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let map: HashMap<String, redis::Value> = redis::from_redis_value(info).unwrap_or_default();
    let num = |k: &str| -> u64 {
        map.get(k)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or(0)
    };
    if num("entries-added") <= num("length") {
        return Ok(None);
    }
    let first: Option<String> = match map.get("first-entry") {
        Some(redis::Value::Array(e)) if !e.is_empty() => redis::from_redis_value(e[0].clone()).ok(),
        _ => None,
    };
    Ok(first.filter(|f| id_after(f, after)))
}
