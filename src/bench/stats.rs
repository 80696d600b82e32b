//! Latency distribution: a lock-free log-linear histogram of microseconds
//! and the percentile summary the reports print.
//!
//! Values are bucketed with 128 sub-buckets per power of two, so every
//! reported percentile is within 0.8 % of the true value (exact below
//! 256 µs); the maximum is tracked exactly. Any number of tasks record into
//! one [`Histogram`] at once (one relaxed atomic add per value).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// log2 of the sub-buckets per power of two.
const SUB_BITS: u32 = 7;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Largest value kept as itself; larger ones are clamped (about 12 days in µs).
const MAX_VALUE: u64 = (1 << 40) - 1;
/// Buckets needed to cover `0..=MAX_VALUE`.
const BUCKETS: usize = bucket_of(MAX_VALUE) + 1;

/// The bucket holding `v` (`v <= MAX_VALUE`).
const fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    (shift as u64 * SUB + (v >> shift)) as usize
}

/// The largest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    let b = b as u64;
    if b < 2 * SUB {
        return b;
    }
    let shift = b / SUB - 1;
    let mantissa = b - shift * SUB;
    ((mantissa + 1) << shift) - 1
}

/// A concurrent histogram of non-negative integer values (µs here).
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, v: u64) {
        let v = v.min(MAX_VALUE);
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// Values recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1): the smallest recorded value (to
    /// bucket precision) with at least `q` of the values at or below it.
    /// 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let max = self.max.load(Ordering::Relaxed);
        let mut seen = 0;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_high(b).min(max);
            }
        }
        max
    }

    /// The summary printed in reports.
    pub fn summary(&self) -> Summary {
        let count = self.count();
        Summary {
            count,
            mean: if count == 0 {
                0.0
            } else {
                self.sum.load(Ordering::Relaxed) as f64 / count as f64
            },
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// Percentiles of one latency distribution, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

/// `n` events over `secs` seconds, as a rate (0 when no time passed).
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Formats µs as a short human value (`850 µs`, `12.3 ms`, `1.20 s`).
pub fn human_us(us: u64) -> String {
    match us {
        0..=9_999 => format!("{us} µs"),
        10_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut prev_high = None;
        for b in 0..BUCKETS {
            let high = bucket_high(b);
            if let Some(p) = prev_high {
                assert_eq!(bucket_of(p + 1), b, "value after bucket {} high", b - 1);
            }
            assert_eq!(bucket_of(high), b);
            prev_high = Some(high);
        }
        assert_eq!(bucket_high(BUCKETS - 1), MAX_VALUE);
    }

    #[test]
    fn small_values_are_exact() {
        let h = Histogram::new();
        for v in [0, 1, 7, 255] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.0), 0);
        assert_eq!(h.quantile(0.5), 1);
        assert_eq!(h.quantile(0.75), 7);
        assert_eq!(h.quantile(1.0), 255);
    }

    #[test]
    fn percentiles_of_a_uniform_range_are_within_one_percent() {
        let h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 100_000);
        for (got, want) in [
            (s.p50, 50_000),
            (s.p90, 90_000),
            (s.p99, 99_000),
            (s.p999, 99_900),
        ] {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.008, "got {got}, want {want}");
            assert!(
                got >= want,
                "a percentile never under-reports: {got} < {want}"
            );
        }
        assert_eq!(s.max, 100_000);
        assert!((s.mean - 50_000.5).abs() < 1e-6);
    }

    #[test]
    fn one_outlier_sets_max_and_the_top_percentile_only() {
        let h = Histogram::new();
        for _ in 0..999 {
            h.record(100);
        }
        h.record(5_000_000);
        let s = h.summary();
        assert_eq!((s.p50, s.p99), (100, 100));
        assert_eq!(s.p999, 100);
        assert_eq!(s.max, 5_000_000);
        assert_eq!(h.quantile(1.0), 5_000_000);
    }

    #[test]
    fn empty_and_huge_values() {
        let h = Histogram::new();
        assert_eq!(h.summary(), Summary::default());
        h.record(u64::MAX);
        assert_eq!(h.quantile(0.5), MAX_VALUE);
    }

    #[test]
    fn records_from_many_threads() {
        let h = std::sync::Arc::new(Histogram::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..10_000).for_each(|v| h.record(v)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(h.count(), 40_000);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(850), "850 µs");
        assert_eq!(human_us(12_345), "12.3 ms");
        assert_eq!(human_us(1_200_000), "1.20 s");
        assert_eq!(per_sec(10, 0.0), 0.0);
        assert_eq!(per_sec(10, 2.0), 5.0);
    }
}
