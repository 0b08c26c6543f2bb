//! Latency histograms and their summaries.
//!
//! Samples are recorded in nanoseconds into an hdrhistogram with three
//! significant digits; summaries are reported in milliseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram tracks: 10 minutes. Longer samples are
/// clamped (and would mean the run is broken anyway).
const LATENCY_MAX_NANOS: u64 = 600_000_000_000;

/// A latency distribution.
#[derive(Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_NANOS, 3)
                .expect("constant bounds are valid"),
        }
    }
}

impl Latency {
    /// Records one sample.
    pub fn record_nanos(&mut self, nanos: u64) {
        self.histogram.saturating_record(nanos.max(1));
    }

    /// Adds another distribution (another shard's) into this one.
    pub fn merge(&mut self, other: &Latency) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with equal bounds add");
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let ms = |nanos: u64| nanos as f64 / 1e6;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1e6,
        }
    }
}

/// Percentiles of one distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// `count` per second over `secs`, or 0 for an empty interval.
pub fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_milliseconds_and_merges() {
        let mut a = Latency::default();
        for micros in 1..=1000u64 {
            a.record_nanos(micros * 1000);
        }
        let mut b = Latency::default();
        b.record_nanos(5_000_000_000);
        a.merge(&b);
        let summary = a.summary();
        assert_eq!(summary.count, 1001);
        assert!((summary.p50_ms - 0.5).abs() < 0.01, "{summary:?}");
        assert!((summary.max_ms - 5000.0).abs() < 5.0, "{summary:?}");
        assert_eq!(Latency::default().summary().count, 0);
    }
}
