//! Commit statistics a backend records and the metrics endpoint reads when scraped (a
//! backend never calls up into metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Statistics of the writer, for metrics and tests. The writer only records here; the
/// metrics endpoint reads them when scraped (the writer never calls up into metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Commits done.
    pub commits: AtomicU64,
    /// Jobs committed.
    pub jobs: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
    /// Total commit time in microseconds.
    pub commit_micros: AtomicU64,
    /// Times the store was reopened after a storage failure.
    pub reopens: AtomicU64,
    /// Commit durations in microseconds, fsync included (16 µs to 524 ms).
    pub commit_latency: Buckets<16>,
    /// Jobs per group commit (1 to 32768).
    pub batch_sizes: Buckets<1>,
}

/// How many buckets a [`Buckets`] has (the last also counts everything above it).
const BUCKETS: usize = 16;

/// A histogram of `u64` observations in buckets with upper bounds `BASE × 1, 2, 4, …, 2^15`
/// (in the unit observed), plus their count and sum: lock-free, for a writer thread that
/// must not wait for whoever reads it.
#[derive(Debug, Default)]
pub struct Buckets<const BASE: u64> {
    counts: [AtomicU64; BUCKETS],
    above: AtomicU64,
    sum: AtomicU64,
}

impl<const BASE: u64> Buckets<BASE> {
    /// Records one observation.
    pub fn observe(&self, value: u64) {
        let units = value.div_ceil(BASE);
        let index = if units <= 1 {
            0
        } else {
            (u64::BITS - (units - 1).leading_zeros()) as usize
        };
        match self.counts.get(index) {
            Some(count) => count.fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The upper bound of bucket `i`.
    pub fn bound(i: usize) -> u64 {
        BASE << i
    }

    /// `(sum, count, observations per bucket by its upper bound)`, `+Inf` last: each
    /// bucket's own count, not cumulative (prometheus-client's `encode_histogram`
    /// accumulates them as it writes).
    pub fn snapshot(&self) -> (u64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(BUCKETS + 1);
        for (i, count) in self.counts.iter().enumerate() {
            let n = count.load(Ordering::Relaxed);
            total += n;
            buckets.push((Self::bound(i) as f64, n));
        }
        let above = self.above.load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, above));
        (self.sum.load(Ordering::Relaxed), total + above, buckets)
    }
}
