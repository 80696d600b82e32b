//! Replay of a user's history to a client that resumes with
//! `last_event_id`, page by page, for every transport (the WebSocket
//! session, SSE).
//!
//! Why pages: a client resuming from the start of a long history must not
//! make the daemon read that history into memory, nor queue it all for a
//! socket that drains slowly. A [`ReplayCursor`] reads one page at a time
//! (about [`PAGE_BYTES`], adapted to the events' size) and the transport
//! asks for the next page only once it has written the previous one and
//! its connection took it, so a session holds at most about one page
//! whatever the history's length, and many resuming clients cost many
//! pages, not many histories.
//!
//! No gap, no duplicate: the transport joins the user's Fanout *before* the
//! first page is read, so every event published after a read also arrives
//! live. Live frames that arrive during the replay are handed to
//! [`ReplayCursor::hold`], which keeps the newest of them (a bounded
//! window; one dropped from it is in history, and the replay reads on past
//! it). The replay ends when a page comes back short (history read to its
//! end) and nothing newer than the last replayed id was dropped; the held
//! frames newer than that id then follow, in order, and the transport goes
//! live.
//!
//! Before anything is sent, [`open`] checks the client's id against Redis's
//! clock (an id from the future is a client error, answered before the
//! upgrade) and says when events after it were already trimmed (a
//! `replay_gap` notice comes first). [`open_at_end`] is the replay of a
//! stream that starts live but tells its client where it stands (SSE): it
//! starts at the end of the history and covers only the join.

use std::collections::VecDeque;
use std::time::Duration;

use bytestring::ByteString;
use redis::aio::ConnectionLike;

use crate::error::{Error, Result};
use crate::fanout::{Filter, Frame, FrameData};
use crate::store::history::{self, Page, StreamId};

/// Target size of a page, in bytes of event text.
pub const PAGE_BYTES: usize = 64 * 1024;
/// Entries read per page, before the events' size is known.
const FIRST_PAGE: usize = 16;
/// Bounds of the entries read per page.
const MIN_PAGE: usize = 8;
const MAX_PAGE: usize = 512;

/// Parses a client's `last_event_id`: `ms-seq`, or `0` / `0-0` for the whole
/// history. The error names the value and what is expected.
pub fn parse_last_event_id(raw: &str) -> Result<StreamId, String> {
    if raw == "0" {
        return Ok(StreamId::ZERO);
    }
    StreamId::parse(raw).ok_or_else(|| {
        format!(
            "last_event_id {raw:?} is not an event id: expected ms-seq (like 1700000000000-0, \
             an event_id this server sent) or 0 for the whole history"
        )
    })
}

/// How a replay is bounded.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    /// Live frames held while history is replayed (the session's queue bound).
    pub hold_max: usize,
    /// `--retention`: events older than this may be gone.
    pub retention: Duration,
}

/// Checks `after` against `user`'s history and prepares the replay after
/// it. An id later than any this server can have sent is
/// [`Error::InvalidInput`] (a 4xx for the client); a Redis failure is
/// [`Error::Redis`].
pub async fn open<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    after: StreamId,
    filter: Filter,
    limits: ReplayLimits,
) -> Result<ReplayCursor> {
    let bounds = history::bounds(conn, user).await?;
    if bounds.is_future(after) {
        return Err(Error::InvalidInput(format!(
            "last_event_id {after} is later than any event of this server (its clock is at \
             {} ms); resume with an event_id you received, or 0",
            bounds.now_ms
        )));
    }
    let notice = bounds
        .gap_after(after, limits.retention)
        .map(|oldest| gap_notice(after, oldest));
    Ok(ReplayCursor::new(user, filter, after, notice, limits))
}

/// Prepares a replay from the end of `user`'s history as it stands now, for
/// a transport that starts live yet hands its client a position to resume
/// from (SSE's first `id:`): [`ReplayCursor::position`] is that position
/// (`0-0` while there is no history), and the replay sends what is
/// published between this read and the session's join, so that a client
/// resuming from the position misses nothing. Nothing after the end can
/// be gone: there is no `replay_gap` notice.
pub async fn open_at_end<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    user: &str,
    filter: Filter,
    limits: ReplayLimits,
) -> Result<ReplayCursor> {
    let bounds = history::bounds(conn, user).await?;
    let end = bounds.last.unwrap_or(StreamId::ZERO);
    Ok(ReplayCursor::new(user, filter, end, None, limits))
}

/// The `replay_gap` notice: events after `after` were trimmed, and replay
/// starts at `oldest` (`None`: nothing is left). It has no run and no
/// `event_id`, so every filter lets it through.
fn gap_notice(after: StreamId, oldest: Option<StreamId>) -> Frame {
    let text = serde_json::json!({
        "type": "replay_gap",
        "requested_after": after.to_string(),
        "oldest_available": oldest.map(|o| o.to_string()),
        "message": "events after last_event_id may be gone from history (trimmed by count or older than the retention); replay starts at oldest_available",
    })
    .to_string();
    Frame(std::sync::Arc::new(FrameData {
        text: ByteString::from(text),
        kind: ByteString::from_static("replay_gap"),
        run_id: ByteString::new(),
        event_id: ByteString::new(),
    }))
}

/// The next page to read: plain data, so a transport can move it into a
/// future while the cursor stays in its state.
#[derive(Debug, Clone)]
pub struct PageRequest {
    user: String,
    after: StreamId,
    count: usize,
}

impl PageRequest {
    /// Reads the page.
    pub async fn fetch<C: ConnectionLike + Send + Sync>(self, conn: &mut C) -> Result<Page> {
        history::read(conn, &self.user, self.after, self.count).await
    }
}

/// Where a replay stands: the last id read, the live frames held back, and
/// whether it is over. Built by [`open`].
pub struct ReplayCursor {
    user: String,
    filter: Filter,
    /// The last history id read.
    after: StreamId,
    /// Entries to read in the next page.
    count: usize,
    /// A `replay_gap` notice to send before the first page.
    notice: Option<Frame>,
    /// Live frames that arrived during the replay, oldest first.
    held: VecDeque<Frame>,
    hold_max: usize,
    /// The newest id dropped from `held`: the replay must read past it.
    dropped: Option<StreamId>,
    done: bool,
}

impl ReplayCursor {
    fn new(
        user: &str,
        filter: Filter,
        after: StreamId,
        notice: Option<Frame>,
        limits: ReplayLimits,
    ) -> Self {
        Self {
            user: user.to_owned(),
            filter,
            after,
            count: FIRST_PAGE,
            notice,
            held: VecDeque::new(),
            hold_max: limits.hold_max.max(1),
            dropped: None,
            done: false,
        }
    }

    /// The next page to read; `None` once the replay is over.
    pub fn request(&self) -> Option<PageRequest> {
        (!self.done).then(|| PageRequest {
            user: self.user.clone(),
            after: self.after,
            count: self.count,
        })
    }

    /// Takes a page read for [`ReplayCursor::request`]; returns the frames to
    /// send now, in order. When the page ends the replay
    /// ([`ReplayCursor::is_done`]), they end with the held live frames.
    pub fn apply(&mut self, page: Page) -> Vec<Frame> {
        let mut out: Vec<Frame> = self.notice.take().into_iter().collect();
        let full = page.read >= self.count;
        if let Some(last) = page.last {
            self.after = self.after.max(last);
        }
        if page.read > 0 {
            let avg = page.bytes.div_ceil(page.read).max(1);
            self.count = (PAGE_BYTES / avg).clamp(MIN_PAGE, MAX_PAGE);
        }
        for (_, text) in page.events {
            if let Some(f) = Frame::parse(ByteString::from(text)) {
                if self.filter.matches(&f.0) {
                    out.push(f);
                }
            }
        }
        let after = self.after;
        // Held frames the history already covered were just sent from it.
        self.held.retain(|f| id_of(f).is_none_or(|id| id > after));
        if !full && self.dropped.is_none_or(|d| d <= after) {
            self.done = true;
            out.extend(self.held.drain(..));
        }
        out
    }

    /// Keeps a live frame that arrived during the replay.
    pub fn hold(&mut self, frame: Frame) {
        if id_of(&frame).is_some_and(|id| id <= self.after) {
            return; // read from history already
        }
        if self.held.len() >= self.hold_max {
            if let Some(old) = self.held.pop_front() {
                // It is in history: the replay reads on past it.
                self.dropped = self.dropped.max(id_of(&old));
            }
        }
        self.held.push_back(frame);
    }

    /// True once history has been read to its end and the held frames were
    /// handed out: the transport is live from here on.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// After the replay: true for a live frame that the replay already sent
    /// from history (published before the last page was read, it reached
    /// the session after). Live frames come in history order, so once one
    /// is not, none after it is.
    pub fn is_replayed(&self, frame: &Frame) -> bool {
        id_of(frame).is_some_and(|id| id <= self.after)
    }

    /// The last history id read.
    pub fn position(&self) -> StreamId {
        self.after
    }

    /// Reads and applies the next page, for a transport that owns its cursor
    /// in a loop: `None` once the replay is over.
    pub async fn next<C: ConnectionLike + Send + Sync>(
        &mut self,
        conn: &mut C,
    ) -> Result<Option<Vec<Frame>>> {
        let Some(req) = self.request() else {
            return Ok(None);
        };
        let page = req.fetch(conn).await?;
        Ok(Some(self.apply(page)))
    }
}

/// A frame's history id (`None` for one published without it).
fn id_of(f: &Frame) -> Option<StreamId> {
    StreamId::parse(&f.0.event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(hold_max: usize) -> ReplayCursor {
        ReplayCursor {
            user: "u".into(),
            filter: Filter::default(),
            after: StreamId::ZERO,
            count: 3,
            notice: None,
            held: VecDeque::new(),
            hold_max,
            dropped: None,
            done: false,
        }
    }

    fn text(ms: u64) -> String {
        format!(r#"{{"type":"node_completed","run_id":"r","seq":{ms},"event_id":"{ms}-0"}}"#)
    }

    fn frame(ms: u64) -> Frame {
        Frame::parse(ByteString::from(text(ms))).unwrap()
    }

    fn page(ids: &[u64]) -> Page {
        let events: Vec<(StreamId, String)> = ids
            .iter()
            .map(|&ms| (StreamId { ms, seq: 0 }, text(ms)))
            .collect();
        Page {
            read: ids.len(),
            last: events.last().map(|e| e.0),
            bytes: events.iter().map(|e| e.1.len()).sum(),
            events,
        }
    }

    fn ids(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(|f| id_of(f).unwrap().ms).collect()
    }

    #[test]
    fn pages_then_held_live_frames_without_duplicates() {
        let mut c = cursor(16);
        c.hold(frame(4)); // published after the first read, also in history
        assert_eq!(ids(&c.apply(page(&[1, 2, 3]))), [1, 2, 3]);
        assert!(!c.is_done(), "a full page: read on");
        c.count = 3;
        c.hold(frame(5));
        c.hold(frame(2)); // older than what was read: dropped
        assert_eq!(ids(&c.apply(page(&[4]))), [4, 5]);
        assert!(c.is_done());
        assert!(c.request().is_none());
    }

    #[test]
    fn a_live_frame_that_arrives_after_the_page_that_held_it_is_not_sent_twice() {
        let mut c = cursor(16);
        assert_eq!(ids(&c.apply(page(&[1, 2]))), [1, 2]);
        assert!(c.is_done());
        // 2 was read from history; its live copy arrives only now.
        assert!(c.is_replayed(&frame(2)));
        assert!(!c.is_replayed(&frame(3)));
    }

    #[test]
    fn a_full_window_drops_its_oldest_and_the_replay_reads_past_them() {
        let mut c = cursor(2);
        for ms in [10, 11, 12, 13] {
            c.hold(frame(ms));
        }
        assert_eq!(c.dropped.map(|d| d.ms), Some(11));
        // History ends at 9 when read, but 10 and 11 were dropped: read again.
        assert_eq!(ids(&c.apply(page(&[9]))), [9]);
        assert!(!c.is_done());
        assert_eq!(ids(&c.apply(page(&[10, 11]))), [10, 11, 12, 13]);
        assert!(c.is_done());
    }

    #[test]
    fn filters_apply_to_history_and_pages_adapt_to_event_size() {
        let mut c = cursor(4);
        c.filter.run_id = Some("other".into());
        c.count = 2;
        let p = page(&[1, 2]);
        let avg = p.bytes / 2;
        assert!(c.apply(p).is_empty());
        assert_eq!(c.count, (PAGE_BYTES / avg).clamp(MIN_PAGE, MAX_PAGE));
        assert_eq!(c.position().ms, 2);
    }

    #[test]
    fn last_event_ids_parse_or_name_the_problem() {
        assert_eq!(parse_last_event_id("0"), Ok(StreamId::ZERO));
        assert_eq!(parse_last_event_id("0-0"), Ok(StreamId::ZERO));
        assert_eq!(parse_last_event_id("5-1"), Ok(StreamId { ms: 5, seq: 1 }));
        for bad in ["", "-1", "-1-0", "abc", "1.5-0", "5"] {
            let e = parse_last_event_id(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
