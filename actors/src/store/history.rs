//! A user's event history: the stream every event is appended to (by the
//! commit script), read page by page by clients that resume with
//! `last_event_id` (see [`crate::replay`]).
//!
//! Entry ids (`ms-seq`, a [`StreamId`]) are the events' `event_id`s; the
//! stored payload lacks its own id, which [`read`] splices in, as the commit
//! script does for live events. The stream is capped by count
//! (`--history-max`, MAXLEN on every XADD) and by age (`--retention`: MINID
//! after every commit that appends), and the key itself expires
//! `--retention` after the user's last event, so an idle user's history
//! does not stay forever.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;

use super::keys;
use super::script::Lua;
use crate::error::Result;

static BOUNDS: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/history_bounds.lua")));

/// A stream entry id `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds since the Unix epoch (Redis's clock when it was added).
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };

    /// Parses `ms-seq` (two unsigned decimal numbers); nothing else (no sign,
    /// no spaces, no missing part) is an id.
    pub fn parse(s: &str) -> Option<Self> {
        fn number(s: &str) -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        }
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::parse(s).ok_or(())
    }
}

/// One page of a user's history.
#[derive(Debug, Default)]
pub struct Page {
    /// Events as complete JSON texts (with `event_id`), oldest first.
    pub events: Vec<(StreamId, String)>,
    /// Entries read, including any that were not events (skipped).
    pub read: usize,
    /// The id of the last entry read, if any: where the next page starts.
    pub last: Option<StreamId>,
    /// Bytes of the events' texts.
    pub bytes: usize,
}

/// Up to `count` entries of a user's history after `after` (exclusive).
pub async fn read<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    after: StreamId,
    count: usize,
) -> Result<Page> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys::history(user))
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let mut page = Page {
        read: reply.ids.len(),
        ..Page::default()
    };
    for e in reply.ids {
        let Some(id) = StreamId::parse(&e.id) else {
            continue;
        };
        page.last = Some(id);
        let Some(p) = e.get::<String>(keys::HISTORY_FIELD) else {
            continue;
        };
        let Some(body) = p.strip_suffix('}') else {
            continue;
        };
        let full = format!("{body},\"event_id\":\"{id}\"}}");
        page.bytes += full.len();
        page.events.push((id, full));
    }
    Ok(page)
}

/// What a replay needs to know about a user's history before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Redis's clock, Unix ms: no event can have a later id (unless the
    /// clock stepped back, which [`Bounds::last`] covers).
    pub now_ms: u64,
    /// The last id the stream generated (`None`: no stream).
    pub last: Option<StreamId>,
    /// Its oldest entry still held (`None`: empty).
    pub first: Option<StreamId>,
    /// Entries were trimmed from it (by count or age).
    pub trimmed: bool,
}

impl Bounds {
    /// True when `id` cannot be an event the client saw: later than Redis's
    /// clock and than every id the stream generated.
    pub fn is_future(&self, id: StreamId) -> bool {
        id.ms > self.now_ms && self.last.is_none_or(|l| id > l)
    }

    /// Where replay after `after` starts when events after it may be gone:
    /// `Some(oldest id held)` (`Some(None)`: nothing is held), `None` when
    /// the history holds everything after `after`. Events are gone when the
    /// stream was trimmed past `after` (by count or age), and may be when
    /// `after` is older than the retention `keep` (the whole stream of an
    /// idle user expires) and the stream does not reach back to it. `0-0`
    /// asks for whatever is held: only trimming counts for it.
    pub fn gap_after(&self, after: StreamId, keep: Duration) -> Option<Option<StreamId>> {
        if self.first.is_some_and(|f| f <= after) {
            return None;
        }
        let trimmed =
            self.trimmed && (self.first.is_some() || self.last.is_some_and(|l| l > after));
        let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        let aged_out = after != StreamId::ZERO && after.ms.saturating_add(keep_ms) < self.now_ms;
        (trimmed || aged_out).then_some(self.first)
    }
}

impl redis::FromRedisValue for Bounds {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (now_ms, last, first, trimmed): (u64, String, String, i64) =
            redis::FromRedisValue::from_redis_value(v)?;
        Ok(Self {
            now_ms,
            last: StreamId::parse(&last),
            first: StreamId::parse(&first),
            trimmed: trimmed == 1,
        })
    }
}

/// Redis's clock and the extent of a user's history, in one script call.
pub async fn bounds<C: ConnectionLike + Send + Sync>(conn: &mut C, user: &str) -> Result<Bounds> {
    let no_args: [&str; 0] = [];
    Ok(BOUNDS
        .invoke(conn, &[keys::history(user)], &no_args)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly_and_order_numerically() {
        let id = StreamId::parse("1700000000000-5").unwrap();
        assert_eq!((id.ms, id.seq), (1_700_000_000_000, 5));
        assert_eq!(id.to_string(), "1700000000000-5");
        assert_eq!(StreamId::parse("007-01").unwrap().to_string(), "7-1");
        for bad in [
            "",
            "0",
            "5",
            "-1-0",
            "1--1",
            "+5-0",
            "5-+1",
            " 5-0",
            "5-0 ",
            "a-b",
            "5-",
            "-5",
            "99999999999999999999-0",
            "18446744073709551615-18446744073709551616",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
        let max = StreamId::parse("18446744073709551615-18446744073709551615").unwrap();
        assert_eq!((max.ms, max.seq), (u64::MAX, u64::MAX));
        assert!(StreamId::parse("10-0").unwrap() > StreamId::parse("9-99").unwrap());
        assert!(StreamId::parse("9-10").unwrap() > StreamId::parse("9-9").unwrap());
    }

    #[test]
    fn bounds_tell_future_ids_and_gaps() {
        let id = |s| StreamId::parse(s).unwrap();
        let b = Bounds {
            now_ms: 1000,
            last: Some(id("900-0")),
            first: Some(id("500-0")),
            trimmed: true,
        };
        assert!(!b.is_future(id("1000-7")));
        assert!(b.is_future(id("1001-0")));
        assert!(b.is_future(id("18446744073709551615-18446744073709551615")));
        // A clock that stepped back: ids up to the last generated one are real.
        let stepped = Bounds { now_ms: 800, ..b };
        assert!(!stepped.is_future(id("900-0")));
        assert!(stepped.is_future(id("900-1")));

        let keep = Duration::from_millis(100);
        assert_eq!(b.gap_after(StreamId::ZERO, keep), Some(Some(id("500-0"))));
        assert_eq!(b.gap_after(id("500-0"), keep), None);
        assert_eq!(b.gap_after(id("950-0"), keep), None, "held from before it");
        let whole = Bounds {
            trimmed: false,
            ..b
        };
        assert_eq!(whole.gap_after(StreamId::ZERO, keep), None);
        assert_eq!(
            whole.gap_after(id("950-0"), keep),
            None,
            "recent: nothing aged out"
        );
        // Older than the retention and the stream starts after it: its
        // events may have expired with an idle user's whole stream.
        assert_eq!(whole.gap_after(id("300-0"), keep), Some(Some(id("500-0"))));
        let none = Bounds {
            last: None,
            first: None,
            trimmed: false,
            ..b
        };
        assert_eq!(none.gap_after(id("300-0"), keep), Some(None));
        assert_eq!(none.gap_after(StreamId::ZERO, keep), None);
        let emptied = Bounds { first: None, ..b };
        assert_eq!(emptied.gap_after(id("899-0"), keep), Some(None));
        assert_eq!(emptied.gap_after(id("950-0"), keep), None);
    }
}
