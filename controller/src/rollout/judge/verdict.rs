//! What the judge says: the verdict, why it is inconclusive, and the evidence behind a check.

use std::fmt;

use serde::Serialize;
use sluice_policy::resources::{AbsoluteThreshold, Signal};

use super::text::group;

/// What the judge says after the intervals seen so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "camelCase")]
pub enum Verdict {
    /// The step has its minimum canary traffic and no check fails.
    Pass,
    /// A check failed; the evidence says which and why.
    Fail(Box<Evidence>),
    /// Not enough data to pass (never a failure).
    Inconclusive(Pending),
}

/// Why a verdict is inconclusive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Pending {
    /// The canary has had no requests in this step.
    NoCanaryTraffic,
    /// The step has fewer canary requests than `minRequests`.
    #[serde(rename_all = "camelCase")]
    TooFewCanaryRequests {
        /// Canary requests in this step.
        requests: u64,
        /// `minRequests`.
        needed: u64,
    },
    /// A relative check has too little baseline traffic to compare with.
    #[serde(rename_all = "camelCase")]
    TooFewBaselineRequests {
        /// The check's name.
        metric: String,
        /// Baseline requests so far.
        requests: u64,
        /// What the check needs.
        needed: u64,
    },
    /// The baseline's latency quantile is beyond the histogram's highest bucket.
    #[serde(rename_all = "camelCase")]
    LatencyOutOfRange {
        /// The check's name.
        metric: String,
    },
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pending::NoCanaryTraffic => write!(f, "no canary traffic yet"),
            Pending::TooFewCanaryRequests { requests, needed } => write!(
                f,
                "{} canary requests in this step, {} needed",
                group(*requests),
                group(*needed)
            ),
            Pending::TooFewBaselineRequests {
                metric,
                requests,
                needed,
            } => write!(
                f,
                "{metric}: {} baseline requests to compare with, {} needed",
                group(*requests),
                group(*needed)
            ),
            Pending::LatencyOutOfRange { metric } => write!(
                f,
                "{metric}: the baseline's latency is beyond the histogram's highest bucket"
            ),
        }
    }
}

/// Which comparison a piece of evidence is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Comparison {
    /// Against the baseline, with the check's margin (a sequential test).
    Relative,
    /// Against the check's fixed threshold.
    Threshold,
}

/// One check's state: the values compared, the evidence, and a sentence saying it.
///
/// Values are in the policy's units: success rate in percent, latency in milliseconds,
/// request rate in requests per second.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The check's name, e.g. `errors`.
    pub metric: String,
    /// Its signal.
    pub signal: Signal,
    /// Relative (sequential test) or absolute threshold.
    pub comparison: Comparison,
    /// Whether this comparison fails the canary.
    pub failed: bool,
    /// The canary's value (over the rollout for sequential tests, over the recent window for
    /// request-rate bounds).
    pub canary_value: Option<f64>,
    /// The baseline's value over the same window.
    pub baseline_value: Option<f64>,
    /// The practical margin, in the policy's units (points or percent).
    pub margin: Option<f64>,
    /// For a relative latency check: the absolute floor in milliseconds (`relative.atLeast`):
    /// the canary is worse only when over both the margin and this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
    /// The absolute threshold.
    pub threshold: Option<AbsoluteThreshold>,
    /// The e-value: how many times likelier the data are under "worse than the margin" than
    /// under the best case for "within the margin".
    pub e_value: Option<f64>,
    /// Its natural logarithm (exact where the e-value is astronomically large).
    pub log_e_value: Option<f64>,
    /// The e-value that fails the check: `k / α` for `k` sequential tests.
    pub bound: Option<f64>,
    /// Canary requests behind the values.
    pub canary_requests: u64,
    /// Baseline requests behind the values.
    pub baseline_requests: u64,
    /// The sentence quoted in notifications and the CLI.
    pub explanation: String,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}
