//! The bench message: a JSON event stamped with its send time.
//!
//! `{"type":"bench","run_id":B,"u":U,"seq":S,"g":G,"ts_us":T,"pad":"…"}`:
//! `type` and `run_id` make it pass flowcast's fan-out like any event (it is
//! parsed for routing there, never rewritten); `run_id` is the bench
//! process's id, so that concurrent bench processes ignore each other's
//! messages; `u` is the user index (a frame on another user's connection is
//! a tenancy leak), `seq` the message's number within its user (loss and
//! duplicates), `g` its number within the run (closed-loop completion), and
//! `ts_us` the wall-clock send time in µs, compared with the receipt time on
//! the same machine for latency. `pad` brings the text to the asked size.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Microseconds since the Unix epoch (the clock both ends share).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What a receiver reads back from a bench message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp<'a> {
    /// The publishing bench process.
    #[serde(rename = "run_id", borrow)]
    pub bench: &'a str,
    /// User index.
    pub u: usize,
    /// Number within the user.
    pub seq: u64,
    /// Number within the run.
    pub g: u64,
    /// Send time, µs since the epoch.
    pub ts_us: u64,
}

impl<'a> Stamp<'a> {
    /// Reads a received frame; `None` if it is not a bench message.
    pub fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// Writes the message into `out` (cleared first), padded to exactly
    /// `size` bytes when that leaves room for the pad field (sizes below
    /// about 100 bytes give the unpadded message). `bench` must need no JSON escaping (bench ids are hex).
    pub fn write(&self, size: usize, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            r#"{{"type":"bench","run_id":"{}","u":{},"seq":{},"g":{},"ts_us":{}"#,
            self.bench, self.u, self.seq, self.g, self.ts_us
        );
        const PAD: &str = r#","pad":""#;
        let tail = PAD.len() + 2;
        if out.len() + tail <= size {
            out.push_str(PAD);
            let n = size - out.len() - 2;
            out.extend(std::iter::repeat_n('x', n));
            out.push('"');
        }
        out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp<'static> {
        Stamp {
            bench: "b1f2",
            u: 3,
            seq: 41,
            g: 1234,
            ts_us: 1_700_000_000_123_456,
        }
    }

    #[test]
    fn round_trips_and_pads_to_size() {
        let mut s = String::new();
        for size in [0, 10, 100, 256, 4096] {
            stamp().write(size, &mut s);
            if size >= 100 {
                assert_eq!(s.len(), size);
            }
            assert_eq!(Stamp::parse(&s), Some(stamp()));
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["type"], "bench");
        }
    }

    #[test]
    fn passes_flowcast_event_routing() {
        let mut s = String::new();
        stamp().write(64, &mut s);
        let meta: flowcast_actors::event::EventMeta = serde_json::from_str(&s).unwrap();
        assert_eq!(meta.kind, "bench");
        assert_eq!(meta.run_id.as_deref(), Some("b1f2"));
    }

    #[test]
    fn rejects_other_frames() {
        assert_eq!(Stamp::parse("not json"), None);
        assert_eq!(
            Stamp::parse(r#"{"type":"node_completed","run_id":"r"}"#),
            None
        );
        assert_eq!(
            Stamp::parse(r#"{"run_id":"b","u":0,"seq":-1,"g":0,"ts_us":1}"#),
            None
        );
    }

    #[test]
    fn clock_is_plausible() {
        let t = now_us();
        assert!(t > 1_600_000_000_000_000);
        assert!(now_us() >= t);
    }
}
