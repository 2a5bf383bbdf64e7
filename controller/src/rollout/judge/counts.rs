//! One version's cumulative sample, shaped like the proxy's Prometheus metrics, and what the
//! judge reads from it.

use serde::{Deserialize, Serialize};

/// The latency bucket bounds, in seconds, of the proxy's
/// `sluice_proxy_response_latency_seconds` histogram (plus `+Inf`).
pub const PROXY_LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A version's counters, cumulative as Prometheus gives them (or the increments of one
/// interval, as [`Counts::delta`] makes them).
///
/// `requests` is every response (`sluice_proxy_responses_total`, all classifications),
/// `failures` those classified `failure`. `latency_buckets` are `(upper bound in seconds,
/// cumulative count)` pairs in rising order, as in `_bucket{le=…}`; the `+Inf` bucket is
/// `requests` itself and need not be listed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Responses.
    pub requests: u64,
    /// Responses classified as failures.
    pub failures: u64,
    /// `(le, cumulative count)`, rising `le`, finite bounds only.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub latency_buckets: Vec<(f64, u64)>,
}

impl Counts {
    /// Counts with the proxy's latency buckets, all empty.
    pub fn empty() -> Counts {
        Counts {
            requests: 0,
            failures: 0,
            latency_buckets: PROXY_LATENCY_BUCKETS.iter().map(|&le| (le, 0)).collect(),
        }
    }

    /// Records one response (for tests and simulations).
    pub fn record(&mut self, latency_s: f64, failed: bool) {
        self.requests += 1;
        self.failures += u64::from(failed);
        for (le, count) in &mut self.latency_buckets {
            if latency_s <= *le {
                *count += 1;
            }
        }
    }

    /// Adds another sample (same bucket layout; buckets missing on one side count as 0).
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        if self.latency_buckets.is_empty() {
            self.latency_buckets = other.latency_buckets.clone();
            return;
        }
        for (le, count) in &mut self.latency_buckets {
            *count = count.saturating_add(other.bucket_count(*le).unwrap_or(0));
        }
    }

    /// The increments since `earlier`, the same series read one interval before. A counter that
    /// went backwards (the proxy restarted) counts from zero, as Prometheus' `increase` does.
    pub fn delta(&self, earlier: &Counts) -> Counts {
        let reset = self.requests < earlier.requests || self.failures < earlier.failures;
        let diff = |now: u64, then: u64| if reset { now } else { now.saturating_sub(then) };
        Counts {
            requests: diff(self.requests, earlier.requests),
            failures: diff(self.failures, earlier.failures),
            latency_buckets: self
                .latency_buckets
                .iter()
                .map(|&(le, n)| (le, diff(n, earlier.bucket_count(le).unwrap_or(0))))
                .collect(),
        }
    }

    fn bucket_count(&self, le: f64) -> Option<u64> {
        self.latency_buckets
            .iter()
            .find(|(b, _)| (*b - le).abs() <= 1e-12 * le.abs().max(1.0))
            .map(|&(_, n)| n)
    }

    /// Failures as a fraction of requests; `None` without requests.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures.min(self.requests) as f64 / self.requests as f64)
    }

    /// The cumulative distribution as `(bound, count)` points from `(0, 0)`, clean: finite
    /// positive rising bounds, counts made monotone and capped at `requests`.
    fn points(&self) -> Vec<(f64, f64)> {
        let mut points = vec![(0.0, 0.0)];
        let total = self.requests as f64;
        for &(le, n) in &self.latency_buckets {
            let (last_le, last_n) = points.last().copied().unwrap_or((0.0, 0.0));
            if le.is_finite() && le > last_le {
                points.push((le, (n as f64).clamp(last_n, total)));
            }
        }
        points
    }

    /// The `q` quantile of latency in seconds, interpolated linearly within its bucket like
    /// PromQL's `histogram_quantile` (and, like it, the highest finite bound when the quantile
    /// falls in `+Inf`). `None` without requests, without buckets, or for `q` outside (0, 1).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(q > 0.0 && q < 1.0) || self.requests == 0 || self.latency_buckets.is_empty() {
            return None;
        }
        let rank = q * self.requests as f64;
        let points = self.points();
        for pair in points.windows(2) {
            let ((lo, n_lo), (hi, n_hi)) = (pair[0], pair[1]);
            if n_hi >= rank {
                if n_hi <= n_lo {
                    return Some(hi);
                }
                return Some(lo + (hi - lo) * (rank - n_lo) / (n_hi - n_lo));
            }
        }
        points.last().map(|&(le, _)| le).filter(|&le| le > 0.0)
    }

    /// Estimated requests slower than `bound_s`: exact at a bucket bound, interpolated linearly
    /// within a bucket (the inverse of [`Counts::quantile`]), and everything in `+Inf` beyond
    /// the highest finite bound. Fractional on purpose: the judge's likelihoods accept it, and
    /// rounding to a bucket bound would blur a 20% margin into a factor of 2.5.
    pub fn exceeding(&self, bound_s: f64) -> f64 {
        let total = self.requests as f64;
        if self.requests == 0 || bound_s.is_nan() {
            return 0.0;
        }
        if bound_s <= 0.0 {
            return total;
        }
        let points = self.points();
        for pair in points.windows(2) {
            let ((lo, n_lo), (hi, n_hi)) = (pair[0], pair[1]);
            if bound_s <= hi {
                let below = n_lo + (n_hi - n_lo) * (bound_s - lo) / (hi - lo);
                return (total - below).max(0.0);
            }
        }
        let below = points.last().map_or(0.0, |&(_, n)| n);
        (total - below).max(0.0)
    }

    /// The highest finite bucket bound, beyond which latency can't be told apart.
    pub fn max_bound(&self) -> Option<f64> {
        self.points()
            .last()
            .map(|&(le, _)| le)
            .filter(|&le| le > 0.0)
    }
}
