//! A log-bucketed latency histogram, HdrHistogram-like: every power of two is
//! cut into [`SUB_BUCKETS`] equal buckets, so a recorded value is known to
//! within 1/128 (< 0.8%) of itself, from 1 ns to `u64::MAX` ns, in a fixed
//! 58 KiB. Recording is an index computation and an increment; histograms of
//! different threads merge by adding counts.

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 7;
/// Buckets per power of two: the relative precision is 1 / this.
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Enough buckets for any u64: values below `SUB_BUCKETS` are exact, then one
/// group of `SUB_BUCKETS` per further power of two up to 2^63.
const BUCKETS: usize = ((64 - SUB_BITS) as usize + 1) * SUB_BUCKETS as usize;

/// A histogram of durations in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    /// Count per bucket; see [`bucket_of`].
    counts: Vec<u64>,
    /// Values recorded.
    total: u64,
    /// Sum of the recorded values, ns (saturating).
    sum_ns: u64,
    /// Smallest and largest recorded value, ns, exact.
    min_ns: u64,
    /// See `min_ns`.
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0, sum_ns: 0, min_ns: u64::MAX, max_ns: 0 }
    }
}

/// The bucket that holds `v`.
fn bucket_of(v: u64) -> usize {
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let index = u64::from(shift + 1) * SUB_BUCKETS + (v >> shift) - SUB_BUCKETS;
    index as usize
}

/// The smallest value bucket `i` holds, and its width.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB_BUCKETS {
        return (i, 1);
    }
    let shift = i / SUB_BUCKETS - 1;
    let low = (i % SUB_BUCKETS + SUB_BUCKETS) << shift;
    (low, 1 << shift)
}

impl Histogram {
    /// Records one value, in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Records a duration.
    pub fn record_duration(&mut self, d: std::time::Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded, ns (0 when empty).
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The mean, ns (0 when empty).
    pub fn mean_ns(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1), ns: the middle of the bucket that
    /// holds the ceil(q * count)-th smallest value, clamped to the exact min
    /// and max; the exact min or max for the first or last rank. 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        // The extremes are known exactly.
        if rank == 1 {
            return self.min_ns;
        }
        if rank >= self.total {
            return self.max_ns;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    /// The usual summary, in microseconds.
    pub fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            count: self.total,
            mean_us: self.mean_ns() / 1000.0,
            p50_us: us(self.quantile_ns(0.50)),
            p90_us: us(self.quantile_ns(0.90)),
            p99_us: us(self.quantile_ns(0.99)),
            p999_us: us(self.quantile_ns(0.999)),
            max_us: us(self.max_ns),
        }
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest value, µs (exact).
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, width) = bucket_range(i);
            assert_eq!(low, next, "bucket {i}");
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(low + (width - 1)), i);
            next = low.wrapping_add(width);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, exact) in [(0.5, 50_000_000.0), (0.9, 90_000_000.0), (0.999, 99_900_000.0)] {
            let got = h.quantile_ns(q) as f64;
            assert!((got - exact).abs() / exact < 0.01, "q {q}: {got} vs {exact}");
        }
        assert_eq!(h.max_ns(), 100_000_000);
        assert_eq!(h.quantile_ns(1.0), 100_000_000);
        assert_eq!(h.quantile_ns(0.0), 1000);
        assert!((h.mean_ns() - 50_000_500.0).abs() < 1.0);
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(10);
        b.record(1_000_000);
        b.record(5);
        a.merge(&b);
        assert_eq!((a.count(), a.max_ns(), a.quantile_ns(0.0)), (3, 1_000_000, 5));
        assert_eq!(Histogram::default().summary(), Summary::default());
    }
}
