//! The traffic book: every version's golden signals (requests, failures, latency histogram),
//! aggregated from the proxies' `ReportTraffic` calls, for canary analysis and display.
//!
//! Each proxy fronts one workload of one (namespace, service, version, environment), and
//! reports its inbound totals cumulative since it started. The book keeps the latest report of
//! every proxy process (by `proxy_id`) under its version's key, and a version's totals are the
//! sum over its proxies. Counters of one process only grow; when they do not (a new
//! `proxy_started_unix_ms`, or counters going down), the process was replaced, so its last
//! values are folded into the key's **base** before the new ones are kept: a key's totals
//! never decrease, which is what a rollout comparing "since the step began" needs.
//!
//! Histograms from different proxies are merged as step functions on the union of their
//! bounds: at a bound a proxy does not have, its count at the nearest lower bound is used,
//! which can only under-count fast responses (latency reads conservatively high). Proxies of
//! one build all share the same bounds, so in practice nothing is lost.
//!
//! In memory only, behind a `std::sync::Mutex`: reports arrive about once a second per proxy
//! and reads are a rollout's few per step, so there is no hot path to shard for. After a
//! controller restart the book starts empty and proxies refill it within one interval; a
//! rollout must take its own baseline (totals at the step's start) rather than assume zero.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// An instance counts as reporting for this long after its last report.
pub const REPORTING_WINDOW: Duration = Duration::from_secs(10);

/// A proxy silent for this long is folded into its key's base and forgotten, so the book does
/// not grow with every proxy that ever ran. Long enough that a proxy cut off for a while
/// comes back to its own entry (were it forgotten, its values would count twice).
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How many earlier process start times of one `proxy_id` are remembered, so that a delayed
/// report from a replaced process is recognised and ignored rather than taken for yet another
/// restart.
const RETIRED_STARTS: usize = 4;

/// A version of a service in an environment: what canary analysis compares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionKey {
    /// The service's namespace.
    pub namespace: String,
    /// The service.
    pub service: String,
    /// The version, e.g. `v2`.
    pub version: String,
    /// `stable`, or an ephemeral environment.
    pub environment: String,
    /// Empty for the version's ordinary instances; `baseline` for a rollout's fresh copy of
    /// the stable version, whose traffic is judged apart from the long-running instances'.
    pub role: String,
}

/// One validated traffic report (see `ReportTraffic` in `mesh.proto`).
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceReport {
    /// Whose traffic it is.
    pub key: VersionKey,
    /// The reporting proxy process.
    pub proxy_id: String,
    /// When that process started (Unix ms): a new value is a new process.
    pub proxy_started_unix_ms: i64,
    /// When the proxy read the numbers (Unix ms, the proxy's clock): orders one process's
    /// reports.
    pub sent_unix_ms: i64,
    /// Inbound responses since the process started.
    pub requests: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Cumulative `(le seconds, count)`, bounds strictly ascending and finite, no +Inf.
    pub latency: Vec<(f64, u64)>,
}

/// A version's cumulative totals, over every proxy that ever reported for it since the
/// controller started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VersionTotals {
    /// Inbound responses.
    pub requests: u64,
    /// Of those, failures (5xx, gRPC errors).
    pub failures: u64,
    /// Cumulative `(le seconds, count)`, ascending; the +Inf bucket is `requests`.
    pub latency: Vec<(f64, u64)>,
    /// Proxies that reported in the last [`REPORTING_WINDOW`].
    pub instances: usize,
    /// When the controller last received a report for this version (Unix ms, the
    /// controller's clock), or 0 if never.
    pub last_report_unix_ms: i64,
}

impl VersionTotals {
    /// The share of requests that did not fail, or `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| self.requests.saturating_sub(self.failures) as f64 / self.requests as f64)
    }

    /// The `q` quantile (0 to 1) of latency in seconds, interpolated linearly within the
    /// bucket it falls in, as Prometheus' `histogram_quantile` does: the first bucket starts at
    /// 0, and a quantile beyond the last finite bound is that bound. `None` without requests or
    /// buckets.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.latency, self.requests, q)
    }
}

/// `histogram_quantile` over cumulative `buckets` (without +Inf) and `total` observations.
pub fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> Option<f64> {
    if total == 0 || q.is_nan() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            let (lo, below) = lower;
            let within = count.saturating_sub(below);
            if within == 0 {
                return Some(le);
            }
            return Some(lo + (le - lo) * (rank - below as f64) / within as f64);
        }
        lower = (le, count);
    }
    // In the +Inf bucket: Prometheus answers the highest finite bound (none: no answer).
    buckets.last().map(|&(le, _)| le)
}

/// Cumulative counts: one process's, or a sum of several.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counts {
    requests: u64,
    failures: u64,
    latency: Vec<(f64, u64)>,
}

impl Counts {
    /// The count at the largest bound not above `le` (0 below the first): the histogram as a
    /// step function, which is what makes sums over different bounds consistent.
    fn at(&self, le: f64) -> u64 {
        let i = self.latency.partition_point(|&(b, _)| b <= le);
        i.checked_sub(1)
            .and_then(|i| self.latency.get(i))
            .map_or(0, |&(_, n)| n)
    }

    fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        if self.latency.is_empty() {
            self.latency.clone_from(&other.latency);
            return;
        }
        let same_bounds = self.latency.len() == other.latency.len()
            && self
                .latency
                .iter()
                .zip(&other.latency)
                .all(|(a, b)| a.0 == b.0);
        if same_bounds {
            for (a, b) in self.latency.iter_mut().zip(&other.latency) {
                a.1 = a.1.saturating_add(b.1);
            }
            return;
        }
        let mut bounds: Vec<f64> = self
            .latency
            .iter()
            .chain(&other.latency)
            .map(|&(le, _)| le)
            .collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        self.latency = bounds
            .into_iter()
            .map(|le| (le, self.at(le).saturating_add(other.at(le))))
            .collect();
    }

    /// Whether `self` can be a later reading of the same counters as `earlier`.
    fn grew_from(&self, earlier: &Counts) -> bool {
        self.requests >= earlier.requests
            && self.failures >= earlier.failures
            && self.latency.len() == earlier.latency.len()
            && self
                .latency
                .iter()
                .zip(&earlier.latency)
                .all(|(now, then)| now.0 == then.0 && now.1 >= then.1)
    }
}

/// The latest report of one proxy process.
#[derive(Debug)]
struct Instance {
    started_unix_ms: i64,
    sent_unix_ms: i64,
    counts: Counts,
    seen: Instant,
    /// Start times of processes this `proxy_id` had before, newest last.
    retired: Vec<i64>,
}

/// One key's state.
#[derive(Debug, Default)]
struct Version {
    /// Folded values of processes that were replaced or forgotten.
    base: Counts,
    instances: HashMap<String, Instance>,
    last_report_unix_ms: i64,
}

impl Version {
    fn totals(&self, now: Instant) -> VersionTotals {
        let mut sum = self.base.clone();
        for i in self.instances.values() {
            sum.add(&i.counts);
        }
        VersionTotals {
            requests: sum.requests,
            failures: sum.failures,
            latency: sum.latency,
            instances: self
                .instances
                .values()
                .filter(|i| now.saturating_duration_since(i.seen) <= REPORTING_WINDOW)
                .count(),
            last_report_unix_ms: self.last_report_unix_ms,
        }
    }

    fn record(&mut self, r: InstanceReport, now: Instant) {
        let counts = Counts {
            requests: r.requests,
            failures: r.failures,
            latency: r.latency,
        };
        let Some(i) = self.instances.get_mut(&r.proxy_id) else {
            self.instances.insert(
                r.proxy_id,
                Instance {
                    started_unix_ms: r.proxy_started_unix_ms,
                    sent_unix_ms: r.sent_unix_ms,
                    counts,
                    seen: now,
                    retired: Vec::new(),
                },
            );
            return;
        };
        if i.retired.contains(&r.proxy_started_unix_ms) {
            // A late report from a process this id already replaced: already folded.
            return;
        }
        let same_process = i.started_unix_ms == r.proxy_started_unix_ms;
        if same_process && r.sent_unix_ms < i.sent_unix_ms {
            // Overtaken by a newer report: its numbers are already included.
            return;
        }
        if !(same_process && counts.grew_from(&i.counts)) {
            // A new process (or counters reset): what the old one counted stays counted.
            self.base.add(&i.counts);
            if !same_process {
                i.retired.push(i.started_unix_ms);
                if i.retired.len() > RETIRED_STARTS {
                    i.retired.remove(0);
                }
            }
            i.started_unix_ms = r.proxy_started_unix_ms;
        }
        i.sent_unix_ms = r.sent_unix_ms;
        i.counts = counts;
        i.seen = now;
    }

    /// Folds proxies silent for [`FORGET_AFTER`] into the base.
    fn forget_silent(&mut self, now: Instant) {
        let base = &mut self.base;
        self.instances.retain(|_, i| {
            let keep = now.saturating_duration_since(i.seen) < FORGET_AFTER;
            if !keep {
                base.add(&i.counts);
            }
            keep
        });
    }
}

/// Every version's traffic, from the proxies' reports. Cheap to share (`&self` everywhere).
#[derive(Debug, Default)]
pub struct TrafficBook {
    versions: Mutex<HashMap<VersionKey, Version>>,
}

impl TrafficBook {
    /// An empty book.
    pub fn new() -> Self {
        TrafficBook::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<VersionKey, Version>> {
        // Plain bookkeeping; a panic mid-update cannot leave it worse than one report stale.
        self.versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a report received now.
    pub fn record(&self, report: InstanceReport) {
        self.record_at(report, Instant::now(), unix_ms(SystemTime::now()));
    }

    /// Records a report received at `now` (`now_unix_ms` on the controller's clock).
    pub fn record_at(&self, report: InstanceReport, now: Instant, now_unix_ms: i64) {
        let mut versions = self.lock();
        let v = versions.entry(report.key.clone()).or_default();
        v.last_report_unix_ms = v.last_report_unix_ms.max(now_unix_ms);
        v.record(report, now);
        v.forget_silent(now);
    }

    /// The totals of one version's ordinary instances now; zeros when nothing was reported.
    pub fn totals(
        &self,
        namespace: &str,
        service: &str,
        version: &str,
        environment: &str,
    ) -> VersionTotals {
        self.role_totals(namespace, service, version, environment, "")
    }

    /// The totals of one version's instances with `role` (empty: the ordinary ones) now.
    pub fn role_totals(
        &self,
        namespace: &str,
        service: &str,
        version: &str,
        environment: &str,
        role: &str,
    ) -> VersionTotals {
        self.totals_at(
            &VersionKey {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
                version: version.to_owned(),
                environment: environment.to_owned(),
                role: role.to_owned(),
            },
            Instant::now(),
        )
    }

    /// The totals of `key` as of `now` (which decides [`VersionTotals::instances`]).
    pub fn totals_at(&self, key: &VersionKey, now: Instant) -> VersionTotals {
        self.lock()
            .get(key)
            .map(|v| v.totals(now))
            .unwrap_or_default()
    }

    /// Every version's totals, sorted by key, for display.
    pub fn all(&self) -> Vec<(VersionKey, VersionTotals)> {
        let now = Instant::now();
        let sorted: BTreeMap<VersionKey, VersionTotals> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.totals(now)))
            .collect();
        sorted.into_iter().collect()
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 4] = [0.005, 0.01, 0.1, 1.0];

    fn key(version: &str) -> VersionKey {
        VersionKey {
            namespace: "default".into(),
            service: "payments".into(),
            version: version.into(),
            environment: "stable".into(),
            role: String::new(),
        }
    }

    fn report(
        proxy: &str,
        started: i64,
        sent: i64,
        requests: u64,
        failures: u64,
    ) -> InstanceReport {
        // Every response in the 10 ms bucket, except failures, which are slow (1 s).
        let fast = requests - failures;
        InstanceReport {
            key: key("v2"),
            proxy_id: proxy.into(),
            proxy_started_unix_ms: started,
            sent_unix_ms: sent,
            requests,
            failures,
            latency: vec![
                (BOUNDS[0], 0),
                (BOUNDS[1], fast),
                (BOUNDS[2], fast),
                (BOUNDS[3], requests),
            ],
        }
    }

    fn totals(book: &TrafficBook, now: Instant) -> VersionTotals {
        book.totals_at(&key("v2"), now)
    }

    #[test]
    fn unknown_versions_are_zero() {
        let book = TrafficBook::new();
        assert_eq!(
            book.totals("default", "payments", "v9", "stable"),
            VersionTotals::default()
        );
        book.record(report("a", 1, 1, 5, 1));
        let other = book.totals("default", "payments", "v1", "stable");
        assert_eq!((other.requests, other.instances), (0, 0));
        assert_eq!(other.success_rate(), None);
        assert_eq!(other.quantile(0.5), None);
    }

    #[test]
    fn sums_instances_and_keeps_the_latest_report_of_each() {
        let book = TrafficBook::new();
        let t0 = Instant::now();
        book.record_at(report("a", 1, 10, 10, 1), t0, 1_000);
        book.record_at(report("b", 1, 10, 20, 2), t0, 1_001);
        // Cumulative: a's second report replaces its first, it does not add to it.
        book.record_at(report("a", 1, 20, 15, 1), t0, 1_002);
        let t = totals(&book, t0);
        assert_eq!((t.requests, t.failures), (35, 3));
        assert_eq!(
            t.latency,
            vec![(0.005, 0), (0.01, 32), (0.1, 32), (1.0, 35)]
        );
        assert_eq!(t.instances, 2);
        assert_eq!(t.last_report_unix_ms, 1_002);
        let rate = t.success_rate().expect("requests");
        assert!((rate - 32.0 / 35.0).abs() < 1e-12);
        // A delayed older report of `a` changes nothing.
        book.record_at(report("a", 1, 15, 12, 1), t0, 1_003);
        assert_eq!(totals(&book, t0).requests, 35);
    }

    #[test]
    fn a_restarted_proxy_is_folded_and_totals_never_decrease() {
        let book = TrafficBook::new();
        let t0 = Instant::now();
        book.record_at(report("a", 100, 10, 50, 5), t0, 1);
        // Same id, new process: counting again from zero.
        book.record_at(report("a", 200, 20, 3, 0), t0, 2);
        let t = totals(&book, t0);
        assert_eq!((t.requests, t.failures), (53, 5));
        assert_eq!(t.latency.last(), Some(&(1.0, 53)));
        assert_eq!(t.instances, 1, "one process is reporting");
        // A late report from the old process is not a third process.
        book.record_at(report("a", 100, 11, 51, 5), t0, 3);
        assert_eq!(totals(&book, t0).requests, 53);
        book.record_at(report("a", 200, 30, 4, 0), t0, 4);
        assert_eq!(totals(&book, t0).requests, 54);
        // Counters going down under the same start time: a reset, folded too.
        book.record_at(report("a", 200, 40, 1, 1), t0, 5);
        let t = totals(&book, t0);
        assert_eq!((t.requests, t.failures), (55, 6));
    }

    #[test]
    fn never_decreases_whatever_the_order_of_reports() {
        // Interleaved, repeated, delayed and restarted reports from three proxies.
        let book = TrafficBook::new();
        let t0 = Instant::now();
        let reports = [
            report("a", 1, 1, 5, 0),
            report("b", 1, 1, 7, 1),
            report("a", 1, 3, 9, 2),
            report("a", 1, 2, 6, 1),
            report("c", 5, 1, 1, 0),
            report("b", 2, 4, 0, 0),
            report("b", 1, 2, 8, 1),
            report("a", 1, 3, 9, 2),
            report("b", 2, 5, 4, 4),
            report("c", 6, 2, 0, 0),
            report("c", 5, 3, 2, 0),
        ];
        let mut last = VersionTotals::default();
        for (n, r) in reports.into_iter().enumerate() {
            book.record_at(r, t0, n as i64);
            let t = totals(&book, t0);
            assert!(t.requests >= last.requests, "requests after report {n}");
            assert!(t.failures >= last.failures, "failures after report {n}");
            for &(le, count) in &last.latency {
                let now = t
                    .latency
                    .iter()
                    .find(|&&(b, _)| b == le)
                    .map_or(0, |&(_, c)| c);
                assert!(now >= count, "bucket {le} after report {n}");
            }
            last = t;
        }
    }

    #[test]
    fn merges_different_bounds_conservatively() {
        let book = TrafficBook::new();
        let t0 = Instant::now();
        let mut a = report("a", 1, 1, 10, 0);
        a.latency = vec![(0.01, 4), (0.1, 10)];
        let mut b = report("b", 1, 1, 10, 0);
        b.latency = vec![(0.005, 1), (0.05, 6), (0.1, 9), (1.0, 10)];
        book.record_at(a, t0, 1);
        book.record_at(b, t0, 1);
        let t = totals(&book, t0);
        assert_eq!(
            t.latency,
            vec![
                (0.005, 1), // a has nothing at or below 5 ms
                (0.01, 5),  // b's 5 ms count stands in for 10 ms
                (0.05, 10), // a's 10 ms count stands in for 50 ms
                (0.1, 19),
                (1.0, 20), // a's last bound stands in beyond it
            ]
        );
        assert!(t.latency.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn instances_count_only_recent_reporters_and_silent_ones_are_folded() {
        let book = TrafficBook::new();
        let t0 = Instant::now();
        book.record_at(report("a", 1, 1, 10, 0), t0, 1);
        book.record_at(report("b", 1, 1, 10, 0), t0 + Duration::from_secs(20), 2);
        let later = t0 + Duration::from_secs(25);
        let t = totals(&book, later);
        assert_eq!((t.requests, t.instances), (20, 1));
        // A day later `a` is forgotten, its traffic is not.
        let day = t0 + FORGET_AFTER + Duration::from_secs(1);
        book.record_at(report("b", 1, 2, 11, 0), day, 3);
        let t = totals(&book, day);
        assert_eq!((t.requests, t.instances), (21, 1));
        assert_eq!(
            book.lock().get(&key("v2")).map(|v| v.instances.len()),
            Some(1)
        );
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        // 100 requests: 50 at or under 10 ms, 90 at or under 100 ms, all under 1 s.
        let buckets = [(0.01, 50), (0.1, 90), (1.0, 100)];
        let q = |q| quantile(&buckets, 100, q).expect("requests");
        assert!((q(0.5) - 0.01).abs() < 1e-12);
        assert!(
            (q(0.25) - 0.005).abs() < 1e-12,
            "the first bucket starts at 0"
        );
        assert!((q(0.7) - 0.055).abs() < 1e-12);
        assert!((q(0.99) - 0.91).abs() < 1e-12);
        // Beyond the last finite bound: that bound.
        assert_eq!(quantile(&buckets, 200, 0.99), Some(1.0));
        assert_eq!(quantile(&buckets, 0, 0.5), None);
        assert_eq!(quantile(&[], 3, 0.5), None);
    }

    #[test]
    fn all_lists_every_version_sorted() {
        let book = TrafficBook::new();
        let mut r = report("a", 1, 1, 1, 0);
        r.key = key("v1");
        book.record(r);
        book.record(report("b", 1, 1, 2, 0));
        let all = book.all();
        let versions: Vec<&str> = all.iter().map(|(k, _)| k.version.as_str()).collect();
        assert_eq!(versions, ["v1", "v2"]);
        assert_eq!(all[1].1.requests, 2);
    }
}
