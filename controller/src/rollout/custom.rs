//! Checks with a custom PromQL `query` (Prometheus provider only).
//!
//! The judge's sequential tests need counts (requests, failures, a histogram); a custom query
//! gives one number per look. So such a check is a plain comparison, the way Flagger and Argo
//! Rollouts judge metrics — without the anytime-valid guarantee — and to keep one noisy look
//! from rolling a release back it fails only after [`CONSECUTIVE_LOOKS`] consecutive
//! violations:
//!
//! - `threshold: {min, max}`: the canary's value must stay within the bounds;
//! - `relative: {margin}`: the query is also evaluated for the baseline (`{{version}}` is then
//!   the stable version), and the canary may be worse by at most the margin: percentage points
//!   lower for `successRate`, percent higher for `latency`, percent lower for `requestRate`.
//!
//! A look where the query returns nothing (no series yet) is not a violation and does not
//! count. Checks without `query` are left to the judge; with the Prometheus provider the judge
//! no longer sees checks that have one (if none is left, it applies its defaults, so the
//! golden signals are always watched).

use std::time::Duration;

use sluice_policy::resources::{AbsoluteThreshold, Analysis, MetricCheck, Signal};

use super::judge::{Comparison, Evidence};
use super::prometheus::{PrometheusSource, QueryVars, render};

/// Consecutive violating looks that fail a custom check.
pub const CONSECUTIVE_LOOKS: u32 = 3;

/// The analysis the judge runs: with a Prometheus provider, the checks without `query`.
pub fn judged_analysis(analysis: &Analysis) -> Analysis {
    if analysis.provider.prometheus.is_none() {
        return analysis.clone();
    }
    let mut judged = analysis.clone();
    judged.metrics.retain(|m| m.query.is_none());
    judged
}

/// The checks evaluated here: those with `query`, when the provider is Prometheus.
pub fn custom_checks(analysis: &Analysis) -> Vec<&MetricCheck> {
    if analysis.provider.prometheus.is_none() {
        return Vec::new();
    }
    analysis
        .metrics
        .iter()
        .filter(|m| m.query.is_some())
        .collect()
}

/// One look at one custom check.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The check's name.
    pub name: String,
    /// The canary's value, `None` when the query returned nothing.
    pub canary: Option<f64>,
    /// The baseline's value (relative checks only).
    pub baseline: Option<f64>,
}

/// The place a rollout's queries are evaluated for.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Service.
    pub service: &'a str,
    /// The canary version.
    pub canary: &'a str,
    /// The baseline version.
    pub baseline: &'a str,
    /// The analysis interval (`{{interval}}`).
    pub interval: Duration,
}

/// Evaluates every custom check once.
pub async fn read(
    source: &PrometheusSource,
    target: Target<'_>,
    checks: &[&MetricCheck],
) -> Result<Vec<Reading>, String> {
    let mut out = Vec::with_capacity(checks.len());
    for check in checks {
        let Some(query) = &check.query else { continue };
        let value = |version: &str| {
            let promql = render(
                query,
                &QueryVars {
                    namespace: target.namespace,
                    service: target.service,
                    version,
                    interval: target.interval,
                },
            );
            async move {
                let samples = source
                    .query(&promql, None)
                    .await
                    .map_err(|e| format!("check `{}`: {e}", check.name))?;
                let finite: Vec<f64> = samples
                    .iter()
                    .map(|s| s.value)
                    .filter(|v| v.is_finite())
                    .collect();
                Ok::<_, String>((!finite.is_empty()).then(|| finite.iter().sum()))
            }
        };
        let canary = value(target.canary).await?;
        let baseline = match check.relative {
            Some(_) => value(target.baseline).await?,
            None => None,
        };
        out.push(Reading {
            name: check.name.clone(),
            canary,
            baseline,
        });
    }
    Ok(out)
}

/// Whether a reading violates its check, with the evidence that says so. `None` when the
/// look tells nothing (no value).
pub fn judge(check: &MetricCheck, reading: &Reading, violations: u32) -> Option<(bool, Evidence)> {
    let canary = reading.canary?;
    let (violated, comparison, why) = if let Some(t) = &check.threshold {
        let low = t.min.is_some_and(|min| canary < min);
        let high = t.max.is_some_and(|max| canary > max);
        (
            low || high,
            Comparison::Threshold,
            describe_threshold(t, canary, low, high),
        )
    } else if let (Some(rel), Some(baseline)) = (&check.relative, reading.baseline) {
        let worse = match check.signal {
            Signal::SuccessRate => canary < baseline - rel.margin,
            Signal::Latency => canary > baseline * (1.0 + rel.margin / 100.0),
            Signal::RequestRate => canary < baseline * (1.0 - rel.margin / 100.0),
        };
        (
            worse,
            Comparison::Relative,
            format!(
                "canary {} vs baseline {} (margin {})",
                num(canary),
                num(baseline),
                num(rel.margin)
            ),
        )
    } else {
        return None;
    };
    let count = if violated { violations + 1 } else { 0 };
    let failed = count >= CONSECUTIVE_LOOKS;
    let explanation = format!(
        "{}: {why}{}; custom query, {count} of {CONSECUTIVE_LOOKS} consecutive looks in violation",
        check.name,
        if violated { " — violated" } else { "" },
    );
    Some((
        violated,
        Evidence {
            metric: check.name.clone(),
            signal: check.signal,
            comparison,
            failed,
            canary_value: Some(canary),
            baseline_value: reading.baseline,
            margin: check.relative.as_ref().map(|r| r.margin),
            floor: None,
            threshold: check.threshold.clone(),
            e_value: None,
            log_e_value: None,
            bound: None,
            canary_requests: 0,
            baseline_requests: 0,
            explanation,
        },
    ))
}

fn describe_threshold(t: &AbsoluteThreshold, value: f64, low: bool, high: bool) -> String {
    match (low, high, t.min, t.max) {
        (true, _, Some(min), _) => format!("canary {} < min {}", num(value), num(min)),
        (_, true, _, Some(max)) => format!("canary {} > max {}", num(value), num(max)),
        (_, _, Some(min), Some(max)) => {
            format!("canary {} within {}–{}", num(value), num(min), num(max))
        }
        (_, _, Some(min), None) => format!("canary {} ≥ min {}", num(value), num(min)),
        (_, _, None, Some(max)) => format!("canary {} ≤ max {}", num(value), num(max)),
        _ => format!("canary {}", num(value)),
    }
}

fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_policy::resources::{MetricProvider, PrometheusProvider, RelativeMargin};

    fn check(threshold: Option<AbsoluteThreshold>, relative: Option<f64>) -> MetricCheck {
        MetricCheck {
            name: "p99-db".into(),
            signal: Signal::Latency,
            quantile: None,
            relative: relative.map(|margin| RelativeMargin {
                margin,
                at_least: None,
            }),
            threshold,
            query: Some("histogram_quantile(0.99, x{version=\"{{version}}\"})".into()),
        }
    }

    fn reading(canary: Option<f64>, baseline: Option<f64>) -> Reading {
        Reading {
            name: "p99-db".into(),
            canary,
            baseline,
        }
    }

    #[test]
    fn only_prometheus_rollouts_take_custom_checks_out_of_the_judge() {
        let mut analysis = Analysis {
            metrics: vec![check(None, Some(20.0))],
            ..Analysis::default()
        };
        assert!(custom_checks(&analysis).is_empty());
        assert_eq!(judged_analysis(&analysis).metrics.len(), 1);
        analysis.provider = MetricProvider {
            prometheus: Some(PrometheusProvider {
                address: "http://127.0.0.1:9090".into(),
            }),
        };
        assert_eq!(custom_checks(&analysis).len(), 1);
        assert!(judged_analysis(&analysis).metrics.is_empty());
    }

    #[test]
    fn a_threshold_fails_after_consecutive_violations_only() {
        let c = check(
            Some(AbsoluteThreshold {
                min: None,
                max: Some(500.0),
            }),
            None,
        );
        let mut violations = 0;
        for look in 0..CONSECUTIVE_LOOKS {
            let (violated, evidence) =
                judge(&c, &reading(Some(612.0), None), violations).expect("a value");
            assert!(violated);
            violations += 1;
            assert_eq!(evidence.failed, look + 1 == CONSECUTIVE_LOOKS);
            assert!(
                evidence.explanation.contains("canary 612 > max 500"),
                "{}",
                evidence.explanation
            );
        }
        // A good look resets the count; no value is no look.
        let (violated, e) = judge(&c, &reading(Some(100.0), None), violations).expect("a value");
        assert!(!violated && !e.failed);
        assert!(judge(&c, &reading(None, None), 2).is_none());
    }

    #[test]
    fn relative_checks_compare_with_the_baseline_by_signal() {
        let latency = check(None, Some(20.0));
        assert!(
            !judge(&latency, &reading(Some(110.0), Some(100.0)), 0)
                .expect("v")
                .0
        );
        assert!(
            judge(&latency, &reading(Some(130.0), Some(100.0)), 0)
                .expect("v")
                .0
        );
        let success = MetricCheck {
            signal: Signal::SuccessRate,
            ..check(None, Some(0.5))
        };
        assert!(
            !judge(&success, &reading(Some(99.6), Some(99.9)), 0)
                .expect("v")
                .0
        );
        assert!(
            judge(&success, &reading(Some(98.0), Some(99.9)), 0)
                .expect("v")
                .0
        );
        // No baseline value yet: nothing to compare.
        assert!(judge(&success, &reading(Some(98.0), None), 0).is_none());
    }
}
