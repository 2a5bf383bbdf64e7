//! The judge's behaviour on seeded simulated traffic, and its arithmetic on edge cases.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_policy::resources::{Analysis, MetricCheck, RelativeMargin, Signal};

use super::text::*;
use super::*;

const FIVE_SECONDS: Duration = Duration::from_secs(5);

/// A version's behaviour: failure rate, and log-normal latency (median, σ of the log).
#[derive(Clone, Copy)]
struct Version {
    failure_rate: f64,
    median_s: f64,
    sigma: f64,
}

const HEALTHY: Version = Version {
    failure_rate: 0.001,
    median_s: 0.05,
    sigma: 0.6,
};

fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// One interval: `rps` requests per second for 5 s split by `weight` percent.
fn interval(
    rng: &mut SmallRng,
    rps: u64,
    weight: u32,
    canary: Version,
    baseline: Version,
) -> (Counts, Counts) {
    let (mut c, mut b) = (Counts::empty(), Counts::empty());
    for _ in 0..rps * 5 {
        let to_canary = rng.random::<f64>() < f64::from(weight) / 100.0;
        let (v, counts) = if to_canary {
            (canary, &mut c)
        } else {
            (baseline, &mut b)
        };
        let latency = v.median_s * (v.sigma * normal(rng)).exp();
        counts.record(latency, rng.random::<f64>() < v.failure_rate);
    }
    (c, b)
}

/// The shop's payments analysis, read from the shipped policy
/// (`examples/shop/policy/payments/rollout.yaml`), so these tests judge what users run and
/// break when it drifts.
fn shop_analysis() -> Analysis {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
    let set = sluice_policy::PolicySet::load(&dir)
        .unwrap_or_else(|e| panic!("the shop's policy ({}) loads: {e}", dir.display()));
    let compiled = set.compile();
    let canary = compiled
        .canaries()
        .values()
        .find(|c| c.doc.spec.service == "payments")
        .expect("the shop has a CanaryPolicy for payments");
    canary.doc.spec.analysis.clone()
}

#[test]
fn the_shop_analysis_is_what_these_tests_assume() {
    // errors within 0.5 points; p99 within 20% and 5 ms of the baseline, and under 500 ms.
    let a = shop_analysis();
    let names: Vec<_> = a.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["errors", "p99"]);
    let p99 = &a.metrics[1];
    let relative = p99.relative.as_ref().expect("p99 is relative");
    assert_eq!(relative.margin, 20.0);
    assert_eq!(relative.latency_floor(), Duration::from_millis(5));
    assert_eq!(p99.threshold.as_ref().and_then(|t| t.max), Some(500.0));
}

/// Runs a rollout through 5%, 25%, 50% (6, 12, 24 intervals); returns the interval at which
/// the judge failed, if it did.
fn rollout(seed: u64, canary: Version, baseline: Version, analysis: &Analysis) -> Option<usize> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut judge = Judge::new(analysis);
    let mut t = 0;
    for (weight, intervals) in [(5, 6), (25, 12), (50, 24)] {
        judge.begin_step();
        for _ in 0..intervals {
            let (c, b) = interval(&mut rng, 100, weight, canary, baseline);
            judge.observe(&c, &b, FIVE_SECONDS, weight);
            t += 1;
            if matches!(judge.verdict(), Verdict::Fail(_)) {
                return Some(t);
            }
        }
        if judge.verdict() != Verdict::Pass {
            panic!("step at {weight}% did not pass: {:?}", judge.verdict());
        }
    }
    None
}

#[test]
fn healthy_canaries_are_not_rolled_back() {
    let analysis = shop_analysis();
    let mut failed = 0;
    for seed in 0..60 {
        let base = Version {
            failure_rate: [0.001, 0.005, 0.01, 0.02][seed as usize % 4],
            ..HEALTHY
        };
        failed += usize::from(rollout(seed, base, base, &analysis).is_some());
    }
    assert_eq!(failed, 0, "false rollbacks out of 60 healthy rollouts");
}

#[test]
fn a_canary_with_5_percent_errors_fails_within_a_minute() {
    let analysis = shop_analysis();
    let bad = Version {
        failure_rate: 0.05,
        ..HEALTHY
    };
    for seed in 100..110 {
        let at = rollout(seed, bad, HEALTHY, &analysis).expect("the bad canary fails");
        assert!(at <= 12, "seed {seed}: failed only after {at} intervals");
    }
}

#[test]
fn the_failure_names_the_metric_with_both_values() {
    let bad = Version {
        failure_rate: 0.05,
        ..HEALTHY
    };
    let mut rng = SmallRng::seed_from_u64(7);
    let mut judge = Judge::new(&shop_analysis());
    for _ in 0..24 {
        let (c, b) = interval(&mut rng, 100, 5, bad, HEALTHY);
        judge.observe(&c, &b, FIVE_SECONDS, 5);
    }
    let Verdict::Fail(e) = judge.verdict() else {
        panic!("expected a failure, got {:?}", judge.verdict());
    };
    assert_eq!(e.metric, "errors");
    assert_eq!(e.signal, Signal::SuccessRate);
    assert!(e.canary_value.expect("canary value") < 97.0);
    assert!(e.baseline_value.expect("baseline value") > 99.5);
    // Three sequential tests (errors, p99 relative, p99 ≤ 500 ms) share α = 0.01.
    assert!(e.e_value.expect("e-value") >= 300.0);
    assert_eq!(e.bound, Some(300.0));
    assert!(
        e.explanation.starts_with("errors: canary success rate ")
            && e.explanation.contains("(margin 0.5 points); evidence ")
            && e.explanation
                .contains("≥ 300 (α = 0.01 over 3 checks) after "),
        "{}",
        e.explanation
    );
    let json = serde_json::to_value(judge.verdict()).expect("serialises");
    assert_eq!(json["verdict"], "fail");
    assert_eq!(json["detail"]["metric"], "errors");
}

#[test]
fn no_traffic_is_inconclusive_never_failure() {
    let mut judge = Judge::new(&shop_analysis());
    assert_eq!(
        judge.verdict(),
        Verdict::Inconclusive(Pending::NoCanaryTraffic)
    );
    for _ in 0..1000 {
        judge.observe(&Counts::empty(), &Counts::empty(), FIVE_SECONDS, 5);
    }
    assert_eq!(
        judge.verdict(),
        Verdict::Inconclusive(Pending::NoCanaryTraffic)
    );
    // Baseline traffic alone changes nothing.
    let mut rng = SmallRng::seed_from_u64(1);
    let (_, b) = interval(&mut rng, 100, 0, HEALTHY, HEALTHY);
    judge.observe(&Counts::empty(), &b, FIVE_SECONDS, 5);
    assert_eq!(
        judge.verdict(),
        Verdict::Inconclusive(Pending::NoCanaryTraffic)
    );
}

#[test]
fn a_pass_needs_min_requests_in_the_step() {
    let mut rng = SmallRng::seed_from_u64(2);
    let mut judge = Judge::new(&shop_analysis());
    let (c, b) = interval(&mut rng, 100, 5, HEALTHY, HEALTHY);
    judge.observe(&c, &b, FIVE_SECONDS, 5);
    assert!(matches!(
        judge.verdict(),
        Verdict::Inconclusive(Pending::TooFewCanaryRequests { needed: 100, .. })
    ));
    for _ in 0..6 {
        let (c, b) = interval(&mut rng, 100, 5, HEALTHY, HEALTHY);
        judge.observe(&c, &b, FIVE_SECONDS, 5);
    }
    assert_eq!(judge.verdict(), Verdict::Pass);
    judge.begin_step();
    assert_eq!(
        judge.verdict(),
        Verdict::Inconclusive(Pending::NoCanaryTraffic)
    );
}

#[test]
fn a_canary_worse_by_less_than_the_margin_is_not_failed() {
    // 0.3 points worse than baseline with a 0.5 point margin, over 100,000 canary requests.
    let mut rng = SmallRng::seed_from_u64(3);
    let mut judge = Judge::new(&shop_analysis());
    let base = Version {
        failure_rate: 0.01,
        ..HEALTHY
    };
    let canary = Version {
        failure_rate: 0.013,
        ..HEALTHY
    };
    for _ in 0..400 {
        let (c, b) = interval(&mut rng, 100, 50, canary, base);
        judge.observe(&c, &b, FIVE_SECONDS, 50);
    }
    assert_eq!(judge.verdict(), Verdict::Pass, "{:?}", judge.evidence());
    // The same canary, 1.5 points worse, fails.
    let mut judge = Judge::new(&shop_analysis());
    let worse = Version {
        failure_rate: 0.025,
        ..HEALTHY
    };
    for _ in 0..400 {
        let (c, b) = interval(&mut rng, 100, 50, worse, base);
        judge.observe(&c, &b, FIVE_SECONDS, 50);
    }
    assert!(matches!(judge.verdict(), Verdict::Fail(_)));
}

#[test]
fn a_latency_regression_fails_on_the_relative_check() {
    // Twice as slow, with a p99 (≈ 400 ms) still under the 500 ms threshold.
    let slow = Version {
        median_s: 0.1,
        ..HEALTHY
    };
    let at = rollout(11, slow, HEALTHY, &shop_analysis()).expect("the slow canary fails");
    assert!(at <= 18, "failed only after {at} intervals");
    let mut rng = SmallRng::seed_from_u64(11);
    let mut judge = Judge::new(&shop_analysis());
    while !matches!(judge.verdict(), Verdict::Fail(_)) {
        let (c, b) = interval(&mut rng, 100, 25, slow, HEALTHY);
        judge.observe(&c, &b, FIVE_SECONDS, 25);
    }
    let e = judge.failure().expect("failed");
    assert_eq!(
        (e.metric.as_str(), e.comparison),
        ("p99", Comparison::Relative)
    );
    assert!(e.explanation.starts_with("p99: canary p99 latency "), "{e}");
}

#[test]
fn an_absolute_threshold_fails_only_with_min_requests() {
    // Everything takes 800 ms; the baseline is just as slow, so only the threshold fails.
    let slow = Version {
        failure_rate: 0.0,
        median_s: 0.8,
        sigma: 0.1,
    };
    let mut rng = SmallRng::seed_from_u64(4);
    let mut judge = Judge::new(&shop_analysis());
    let mut seen = 0;
    loop {
        let (c, b) = interval(&mut rng, 100, 5, slow, slow);
        seen += c.requests;
        judge.observe(&c, &b, FIVE_SECONDS, 5);
        if seen < 100 {
            assert!(
                !matches!(judge.verdict(), Verdict::Fail(_)),
                "failed at {seen}"
            );
        } else {
            break;
        }
    }
    let Verdict::Fail(e) = judge.verdict() else {
        panic!("expected the threshold to fail: {:?}", judge.verdict());
    };
    assert_eq!(e.comparison, Comparison::Threshold);
    assert!(e.canary_value.expect("value") > 500.0);
    assert!(
        e.explanation
            .contains("against a maximum of 500 ms: 100% of canary requests took over 500 ms"),
        "{e}"
    );
}

#[test]
fn a_canary_that_takes_too_little_traffic_fails_the_rate_check() {
    let analysis = Analysis {
        metrics: vec![MetricCheck {
            name: "rate".into(),
            signal: Signal::RequestRate,
            quantile: None,
            relative: Some(RelativeMargin {
                margin: 20.0,
                at_least: None,
            }),
            threshold: None,
            query: None,
        }],
        ..Analysis::default()
    };
    let mut judge = Judge::new(&analysis);
    let mut rng = SmallRng::seed_from_u64(5);
    for _ in 0..20 {
        let (c, b) = interval(&mut rng, 100, 25, HEALTHY, HEALTHY);
        judge.observe(&c, &b, FIVE_SECONDS, 25);
    }
    assert_eq!(judge.verdict(), Verdict::Pass, "{:?}", judge.evidence());
    // Told it has 25% but receiving 10%.
    for _ in 0..20 {
        let (c, b) = interval(&mut rng, 100, 10, HEALTHY, HEALTHY);
        judge.observe(&c, &b, FIVE_SECONDS, 25);
    }
    assert!(matches!(judge.verdict(), Verdict::Fail(_)));
}

#[test]
fn empty_metrics_mean_the_documented_defaults() {
    let judge = Judge::new(&Analysis::default());
    let names: Vec<_> = judge
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.signal, c.margin))
        .collect();
    assert_eq!(
        names,
        [
            ("errors", Signal::SuccessRate, Some(1.0)),
            ("p99", Signal::Latency, Some(50.0))
        ]
    );
    assert_eq!(judge.bound, 200.0);
}

#[test]
fn degenerate_input_never_panics_or_fails() {
    let mut analysis = shop_analysis();
    analysis.alpha = f64::NAN;
    analysis.min_requests = 0;
    let mut judge = Judge::new(&analysis);
    let weird = [
        Counts::default(),
        Counts {
            requests: 5,
            failures: 9,
            latency_buckets: vec![(f64::NAN, 3), (0.1, 10), (0.05, 2), (f64::INFINITY, 5)],
        },
        Counts {
            requests: u64::MAX,
            failures: u64::MAX,
            latency_buckets: vec![],
        },
    ];
    for c in &weird {
        for b in &weird {
            judge.observe(c, b, Duration::ZERO, 0);
            judge.observe(c, b, FIVE_SECONDS, 100);
            let _ = judge.verdict();
            for e in judge.evidence() {
                assert!(e.log_e_value.is_none_or(|v| !v.is_nan()), "{e:?}");
            }
        }
    }
}

#[test]
fn counts_read_like_prometheus() {
    let c = Counts {
        requests: 100,
        failures: 3,
        latency_buckets: vec![(0.1, 50), (0.2, 90), (0.5, 100)],
    };
    // histogram_quantile(0.5) = 0.1; 0.95 is half-way through the (0.2, 0.5] bucket.
    assert_eq!(c.quantile(0.5), Some(0.1));
    assert!((c.quantile(0.95).expect("q") - 0.35).abs() < 1e-12);
    assert!((c.exceeding(0.35) - 5.0).abs() < 1e-9);
    assert!((c.exceeding(0.1) - 50.0).abs() < 1e-9);
    assert_eq!(c.exceeding(1.0), 0.0);
    assert_eq!(c.failure_rate(), Some(0.03));
    let later = Counts {
        requests: 150,
        failures: 4,
        latency_buckets: vec![(0.1, 80), (0.2, 130), (0.5, 150)],
    };
    let d = later.delta(&c);
    assert_eq!((d.requests, d.failures), (50, 1));
    assert_eq!(d.latency_buckets, vec![(0.1, 30), (0.2, 40), (0.5, 50)]);
    // A restarted proxy's counters start again from zero.
    assert_eq!(c.delta(&later).requests, 100);
    assert_eq!(Counts::empty().quantile(0.99), None);
}

#[test]
fn numbers_read_well() {
    assert_eq!(group(1_240), "1,240");
    assert_eq!(group(12), "12");
    assert_eq!(evidence_value(1240f64.ln()), "1,240");
    assert_eq!(evidence_value(0.3f64.ln()), "0.3");
    assert_eq!(evidence_value(3.1e9f64.ln()), "3.1e9");
    assert_eq!(percent(Some(94.8)), "94.8%");
    assert_eq!(percent(Some(99.9)), "99.9%");
    assert_eq!(percent(Some(99.999)), "99.99%");
    assert_eq!(millis(Some(0.612)), "612 ms");
    assert_eq!(quantile_label(0.999), "p99.9");
}

#[test]
fn against_a_copy_a_canary_with_5_percent_errors_fails_for_errors_only() {
    // The copy has the canary's traffic; the long-running instances the rest.
    let bad = Version {
        failure_rate: 0.05,
        ..HEALTHY
    };
    let mut rng = SmallRng::seed_from_u64(21);
    let mut judge = Judge::new(&shop_analysis());
    for _ in 0..40 {
        let (c, copy) = interval(&mut rng, 20, 50, bad, HEALTHY);
        let (_, stable) = interval(&mut rng, 80, 0, HEALTHY, HEALTHY);
        judge.observe_with_reference(&c, &copy, Some(&stable), FIVE_SECONDS, 50);
        if matches!(judge.verdict(), Verdict::Fail(_)) {
            break;
        }
    }
    let Verdict::Fail(e) = judge.verdict() else {
        panic!("a 5%-error canary passes: {:#?}", judge.evidence());
    };
    assert_eq!(e.metric, "errors");
    let metrics: Vec<_> = judge.failures().iter().map(|f| f.metric.as_str()).collect();
    assert_eq!(metrics, ["errors"]);
}
