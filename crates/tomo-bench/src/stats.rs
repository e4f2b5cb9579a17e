//! Latency figures from a set of samples: nearest-rank percentiles on a sorted `Vec` (a few
//! thousand samples; no histogram needed).

use std::time::Duration;

use serde::Serialize;

/// What one method measured, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Requests per second: samples over the wall time of the measured loop (all clients).
    pub requests_per_sec: f64,
    /// Tail over median: the "no stalls" figure.
    pub p99_over_p50: f64,
    /// How many samples fall in each of [`BUCKETS_MS`], then above the last.
    pub histogram: Vec<Bucket>,
}

/// Upper bounds of the histogram's buckets, ms.
pub const BUCKETS_MS: [f64; 7] = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0];

/// Samples at or below `le_ms` (and above the previous bound); `le_ms: None` is the rest.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub le_ms: Option<f64>,
    pub count: usize,
}

impl Summary {
    /// Figures of `samples` (non-empty) taken over `wall` of wall-clock time.
    pub fn of(mut samples: Vec<Duration>, wall: Duration) -> Self {
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let n = samples.len();
        let p50 = ms(percentile(&samples, 50.0));
        let p99 = ms(percentile(&samples, 99.0));
        let total: Duration = samples.iter().sum();
        Self {
            n,
            p50_ms: p50,
            p90_ms: ms(percentile(&samples, 90.0)),
            p99_ms: p99,
            max_ms: samples.last().copied().map(ms).unwrap_or(0.0),
            mean_ms: if n == 0 { 0.0 } else { ms(total) / n as f64 },
            requests_per_sec: if wall.is_zero() {
                0.0
            } else {
                n as f64 / wall.as_secs_f64()
            },
            p99_over_p50: if p50 > 0.0 { p99 / p50 } else { 0.0 },
            histogram: histogram(&samples),
        }
    }
}

/// Counts of sorted samples per bucket.
fn histogram(sorted: &[Duration]) -> Vec<Bucket> {
    let mut out = Vec::with_capacity(BUCKETS_MS.len() + 1);
    let mut below = 0;
    for le in BUCKETS_MS {
        let upto = sorted.partition_point(|d| d.as_secs_f64() * 1e3 <= le);
        out.push(Bucket {
            le_ms: Some(le),
            count: upto - below,
        });
        below = upto;
    }
    out.push(Bucket {
        le_ms: None,
        count: sorted.len() - below,
    });
    out
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at least `p` % of the
/// samples at or below it.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = ms(&(1..=100).collect::<Vec<_>>());
        for (p, want) in [(50.0, 50), (90.0, 90), (99.0, 99), (100.0, 100), (0.0, 1)] {
            assert_eq!(percentile(&s, p), Duration::from_millis(want), "p{p}");
        }
        assert_eq!(percentile(&ms(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summary_sorts_and_divides() {
        let s = Summary::of(ms(&[4, 1, 3, 2]), Duration::from_secs(2));
        assert_eq!((s.n, s.p50_ms, s.max_ms), (4, 2.0, 4.0));
        assert_eq!(s.mean_ms, 2.5);
        assert_eq!(s.requests_per_sec, 2.0);
        assert_eq!(s.p99_over_p50, 2.0);
        let counts: Vec<_> = s.histogram.iter().map(|b| b.count).collect();
        assert_eq!(counts, [0, 0, 1, 1, 2, 0, 0, 0]);
    }
}
