//! The one retry policy of every loop that talks to Redis (the Publisher's
//! writes, the Subscriber's reconnects, the runner's reads): exponential,
//! capped, and reset only once the connection has proved healthy by doing
//! useful work, so a server that accepts connections and then fails at once
//! is not hammered at the minimum delay.

use std::time::Duration;

/// Exponential backoff between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles per failure, never above `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// The delay the next failure would wait (for log lines).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// True when a failure happened since the last [`Backoff::reset`].
    pub fn failed_since_reset(&self) -> bool {
        self.next > self.min
    }

    /// The connection did useful work: start from `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(300));
        assert!(!b.failed_since_reset());
        let seen: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        assert!(b.failed_since_reset());
        b.reset();
        assert_eq!(b.peek(), ms(50));
        assert!(!b.failed_since_reset());
    }
}
