//! Counting what a load did: each connection keeps its own [`Tally`] (no
//! sharing on the hot path), and the tallies are merged once at the end.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, from 1 µs to this bound; longer
/// ones are clamped to it (a benchmark run is far shorter).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Three significant digits: 0.1% resolution at every magnitude.
const SIGNIFICANT_DIGITS: u8 = 3;

/// What one connection (or all of them, merged) saw.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Correct replies received in the measurement window.
    pub ok: u64,
    /// Wrong replies, send and receive errors, and broken connections,
    /// counted over the whole run including the warm-up.
    pub errors: u64,
    /// UDP requests with no reply within the loss timeout (whole run).
    pub lost: u64,
    /// UDP replies that came after their request had been counted as lost.
    pub late: u64,
    /// Correct replies received over the whole run: warm-up, measurement,
    /// and (for a fixed UDP request) the drain after it, late ones included.
    /// Counted for fixed requests only, to check against a server's own
    /// count of what it answered.
    pub answered: u64,
    /// Latency of each correct reply in the window, in µs.
    pub latency: Histogram<u64>,
    /// The first error, to say what went wrong and not only how often.
    pub first_error: Option<String>,
}

impl Tally {
    pub fn new() -> Self {
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self { ok: 0, errors: 0, lost: 0, late: 0, answered: 0, latency, first_error: None }
    }

    /// Count one correct reply that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        self.ok += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.max(1));
    }

    /// Count one error, keeping its description if it is the first.
    pub fn error(&mut self, why: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why.to_string());
        }
    }

    /// Add `other`'s counts to these.
    pub fn merge(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.lost += other.lost;
        self.late += other.late;
        self.answered += other.answered;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        // Both histograms have the same bounds, so adding cannot fail.
        self.latency.add(&other.latency).expect("histograms with equal bounds add");
    }

    /// The latency at quantile `q` (0.99 for p99) in µs; 0 with no replies.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.latency.is_empty() { 0 } else { self.latency.value_at_quantile(q) }
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` for no values. NaNs sort last rather than panic.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if !n.is_multiple_of(2) => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn merged_tallies_add_counts_and_latencies() {
        let mut a = Tally::new();
        a.record(Duration::from_micros(100));
        a.errors = 1;
        let mut b = Tally::new();
        b.record(Duration::from_micros(300));
        b.lost = 2;
        b.answered = 3;
        a.merge(&b);
        assert_eq!((a.ok, a.errors, a.lost, a.answered), (2, 1, 2, 3));
        assert_eq!(a.latency.len(), 2);
        assert!(a.quantile_us(1.0) >= 300);
        assert_eq!(Tally::new().quantile_us(0.99), 0);
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_are_clamped_not_lost() {
        let mut t = Tally::new();
        t.record(Duration::from_nanos(10));
        t.record(Duration::from_secs(3600));
        assert_eq!(t.latency.len(), 2);
    }
}
