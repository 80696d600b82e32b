//! Delivery accounting: what was expected, what arrived, what was lost or
//! duplicated, and which messages are still in flight.
//!
//! Every published message adds to `expected` the number of this process's
//! connections that were subscribed to its user at publish time. Each
//! connection keeps a [`Seen`] set of the per-user sequence numbers it
//! received: the first receipt of a number is a delivery, any later one a
//! duplicate. Loss is `expected - delivered`.
//!
//! For the closed-loop publisher the ledger also tracks, per message, how
//! many deliveries are still outstanding, in a ring of slots indexed by the
//! global message number; a message is *complete* when its last expected
//! delivery arrives, and the publisher keeps at most a window of incomplete
//! messages. A message that never completes (lost somewhere) is *retired*
//! after a stall timeout, so a loss cannot stop the run.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::Notify;

/// Bits of a slot holding the outstanding delivery count; the rest hold the
/// message number.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Highest per-user sequence number a [`Seen`] set accepts (bounds its memory).
pub const MAX_SEQ: u64 = 1 << 26;

/// The per-connection set of received sequence numbers.
#[derive(Debug, Default)]
pub struct Seen {
    bits: Vec<u64>,
}

impl Seen {
    /// Marks `seq` received. `Some(true)` the first time, `Some(false)` for a
    /// duplicate, `None` if `seq` is out of range.
    pub fn insert(&mut self, seq: u64) -> Option<bool> {
        if seq >= MAX_SEQ {
            return None;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << bit;
        let new = self.bits[word] & mask == 0;
        self.bits[word] |= mask;
        Some(new)
    }
}

/// Counts shared by the publisher and every connection.
pub struct Ledger {
    expected: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    foreign: AtomicU64,
    misrouted: AtomicU64,
    garbled: AtomicU64,
    /// `(message << COUNT_BITS) | outstanding`, one per in-flight message;
    /// empty when the publisher does not wait for completions.
    slots: Box<[AtomicU64]>,
    completed: AtomicU64,
    retired: AtomicU64,
    /// Woken when a message completes.
    pub progress: Notify,
}

/// The final counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Deliveries owed: Σ over messages of the subscribed connections.
    pub expected: u64,
    /// Distinct (connection, message) receipts.
    pub delivered: u64,
    /// `expected - delivered` (negative would mean a counting error).
    pub lost: i64,
    /// Receipts of a message the connection already had.
    pub duplicates: u64,
    /// Messages of another bench process (ignored).
    pub foreign: u64,
    /// Messages of this bench that reached a connection of another user.
    pub misrouted: u64,
    /// Frames that were not a bench message.
    pub garbled: u64,
}

impl Ledger {
    /// A ledger; `window > 0` enables completion tracking for up to that
    /// many in-flight messages.
    pub fn new(window: usize) -> Self {
        let slots = if window == 0 {
            0
        } else {
            (window * 4).next_power_of_two().max(1024)
        };
        Self {
            expected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            garbled: AtomicU64::new(0),
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            completed: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            progress: Notify::new(),
        }
    }

    fn slot(&self, msg: u64) -> Option<&AtomicU64> {
        if self.slots.is_empty() {
            return None;
        }
        Some(&self.slots[(msg as usize) & (self.slots.len() - 1)])
    }

    /// Message `msg` is about to be published to a user with `subscribers`
    /// connections of this process.
    pub fn published(&self, msg: u64, subscribers: u64) {
        self.expected.fetch_add(subscribers, Ordering::Relaxed);
        if let Some(slot) = self.slot(msg) {
            if subscribers == 0 {
                self.completed.fetch_add(1, Ordering::Relaxed);
            } else {
                let count = subscribers.min(COUNT_MASK);
                let old = slot.swap((msg << COUNT_BITS) | count, Ordering::AcqRel);
                if old & COUNT_MASK != 0 {
                    // Still incomplete a whole ring later: it is lost.
                    self.retired.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The publish of `msg` failed: nobody will receive it.
    pub fn unpublished(&self, msg: u64, subscribers: u64) {
        self.expected.fetch_sub(subscribers, Ordering::Relaxed);
        if subscribers > 0 {
            self.retire(msg);
        }
    }

    /// A connection received bench message `msg` of its own user; `new` is
    /// what its [`Seen`] set said.
    pub fn received(&self, msg: u64, new: bool) {
        if !new {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.slot(msg) else {
            return;
        };
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            if cur >> COUNT_BITS != msg || cur & COUNT_MASK == 0 {
                return; // retired, or a slot reused long after
            }
            match slot.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur & COUNT_MASK == 1 {
            self.completed.fetch_add(1, Ordering::Relaxed);
            self.progress.notify_one();
        }
    }

    /// Gives up on `msg` if it is still incomplete. True if it was.
    pub fn retire(&self, msg: u64) -> bool {
        let Some(slot) = self.slot(msg) else {
            return false;
        };
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            if cur >> COUNT_BITS != msg || cur & COUNT_MASK == 0 {
                return false;
            }
            match slot.compare_exchange_weak(
                cur,
                msg << COUNT_BITS,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.retired.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Retires every incomplete message among the last ring of messages
    /// before `published` (a stalled window). Returns how many.
    pub fn retire_stalled(&self, published: u64) -> u64 {
        let from = published.saturating_sub(self.slots.len() as u64);
        (from..published).filter(|&m| self.retire(m)).count() as u64
    }

    /// Messages `0..published` neither complete nor retired.
    pub fn in_flight(&self, published: u64) -> u64 {
        published.saturating_sub(
            self.completed.load(Ordering::Relaxed) + self.retired.load(Ordering::Relaxed),
        )
    }

    /// Messages given up on.
    pub fn retired(&self) -> u64 {
        self.retired.load(Ordering::Relaxed)
    }

    /// A frame from another bench process.
    pub fn foreign(&self) {
        self.foreign.fetch_add(1, Ordering::Relaxed);
    }

    /// A bench message on a connection of the wrong user.
    pub fn misrouted(&self) {
        self.misrouted.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame that is not a bench message.
    pub fn garbled(&self) {
        self.garbled.fetch_add(1, Ordering::Relaxed);
    }

    /// True once every expected delivery arrived.
    pub fn settled(&self) -> bool {
        self.delivered.load(Ordering::Relaxed) >= self.expected.load(Ordering::Relaxed)
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        let expected = self.expected.load(Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        Counts {
            expected,
            delivered,
            lost: expected as i64 - delivered as i64,
            duplicates: self.duplicates.load(Ordering::Relaxed),
            foreign: self.foreign.load(Ordering::Relaxed),
            misrouted: self.misrouted.load(Ordering::Relaxed),
            garbled: self.garbled.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_tells_first_receipts_from_duplicates() {
        let mut s = Seen::default();
        assert_eq!(s.insert(0), Some(true));
        assert_eq!(s.insert(1000), Some(true));
        assert_eq!(s.insert(0), Some(false));
        assert_eq!(s.insert(1000), Some(false));
        assert_eq!(s.insert(999), Some(true));
        assert_eq!(s.insert(MAX_SEQ), None);
    }

    #[test]
    fn loss_is_expected_minus_distinct_deliveries() {
        let l = Ledger::new(0);
        // Two messages to a user with 3 connections, one to a user with none.
        l.published(0, 3);
        l.published(1, 3);
        l.published(2, 0);
        let mut conns = [Seen::default(), Seen::default(), Seen::default()];
        for (c, seqs) in conns.iter_mut().zip([&[0u64, 1][..], &[0, 1, 1], &[1]]) {
            for &s in seqs {
                l.received(s, c.insert(s).unwrap());
            }
        }
        let c = l.counts();
        assert_eq!(
            (c.expected, c.delivered, c.lost, c.duplicates),
            (6, 5, 1, 1)
        );
        assert!(!l.settled());
    }

    #[test]
    fn a_failed_publish_is_not_expected() {
        let l = Ledger::new(8);
        l.published(0, 5);
        l.unpublished(0, 5);
        assert_eq!(l.counts().expected, 0);
        assert_eq!(l.in_flight(1), 0);
        assert!(l.settled());
    }

    #[test]
    fn a_message_completes_with_its_last_delivery() {
        let l = Ledger::new(4);
        l.published(0, 2);
        l.published(1, 1);
        assert_eq!(l.in_flight(2), 2);
        l.received(0, true);
        assert_eq!(l.in_flight(2), 2);
        l.received(0, false); // a duplicate does not count
        assert_eq!(l.in_flight(2), 2);
        l.received(1, true);
        assert_eq!(l.in_flight(2), 1);
        l.received(0, true);
        assert_eq!(l.in_flight(2), 0);
        assert!(l.settled());
    }

    #[test]
    fn retiring_unblocks_the_window_once() {
        let l = Ledger::new(4);
        l.published(7, 2);
        assert!(l.retire(7));
        assert!(!l.retire(7));
        assert_eq!(l.in_flight(1), 0);
        // A late delivery still counts as delivered but completes nothing.
        l.received(7, true);
        assert_eq!(l.in_flight(1), 0);
        assert_eq!(l.counts().delivered, 1);
        assert_eq!(l.retired(), 1);
    }

    #[test]
    fn a_reused_slot_ignores_the_old_message() {
        let l = Ledger::new(1); // 1024 slots
        l.published(3, 1);
        l.received(3, true);
        l.published(3 + 1024, 1);
        l.received(3, true); // stale: must not complete message 1027
        assert_eq!(l.in_flight(2), 1);
        l.received(3 + 1024, true);
        assert_eq!(l.in_flight(2), 0);
    }

    #[test]
    fn an_incomplete_message_overwritten_a_ring_later_is_retired() {
        let l = Ledger::new(1); // 1024 slots
        l.published(5, 2);
        l.received(5, true);
        for m in 6..=5 + 1024 {
            l.published(m, 1);
            l.received(m, true);
        }
        // 1025 messages: 1024 complete, message 5 retired when its slot was reused.
        assert_eq!(l.retired(), 1);
        assert_eq!(l.in_flight(1025), 0);
    }

    #[test]
    fn a_stalled_window_is_retired_whole() {
        let l = Ledger::new(4);
        for m in 0..4 {
            l.published(m, 1);
        }
        l.received(2, true);
        assert_eq!(l.retire_stalled(4), 3);
        assert_eq!(l.in_flight(4), 0);
        assert_eq!(l.retire_stalled(4), 0);
    }

    #[test]
    fn other_frames_are_counted_apart() {
        let l = Ledger::new(0);
        l.foreign();
        l.misrouted();
        l.garbled();
        let c = l.counts();
        assert_eq!((c.foreign, c.misrouted, c.garbled, c.lost), (1, 1, 1, 0));
    }
}
