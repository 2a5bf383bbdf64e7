use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// How a new version of a service is rolled out: the traffic steps, the analysis that judges
/// each step, and what happens when it fails.
///
/// Either list `steps`, or give `stepWeight` and `maxWeight` (with `stepDuration`) for evenly
/// spaced steps.
///
/// ```yaml
/// apiVersion: sluice.dev/v1alpha1
/// kind: CanaryPolicy
/// metadata: { name: payments }
/// spec:
///   service: payments
///   steps:
///     - { weight: 5, duration: 30s }
///     - { weight: 25, duration: 1m }
///     - { weight: 50, duration: 1m, confirm: true }
///   analysis:
///     interval: 5s
///     minRequests: 100
///     metrics:
///       - { name: errors, signal: successRate, relative: { margin: 0.5 } }
///       - { name: p99, signal: latency, quantile: 0.99, threshold: { max: 500 } }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryPolicySpec {
    /// The service this policy rolls out: a MeshService name.
    pub service: String,
    /// Explicit steps. Weights must rise and stay within 1-100.
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    /// With `maxWeight`: add this much canary weight per step (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u32>,
    /// With `stepWeight`: the last canary weight before promotion (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u32>,
    /// With `stepWeight`: how long each generated step lasts. Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_duration: Option<Duration>,
    /// How canary and baseline are compared.
    #[serde(default)]
    pub analysis: Analysis,
    /// A rollout that makes no progress for this long (no traffic, canary never ready) fails.
    /// Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
    /// What to do when the analysis fails.
    #[serde(default)]
    pub on_failure: FailureAction,
    /// Who hears about the rollout, and how loudly.
    #[serde(default)]
    pub notify: NotifySettings,
}

/// One traffic step of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryStep {
    /// Canary weight in percent during this step (1-100).
    pub weight: u32,
    /// How long the step lasts while analysis runs. Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Wait for `sluice rollout resume` (or the portal) before leaving this step.
    #[serde(default)]
    pub confirm: bool,
}

/// The analysis settings ("the judge").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Analysis {
    /// How often metrics are collected and judged. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Canary requests needed before a step can pass. Less traffic is inconclusive, never a
    /// pass. Default 50.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// False-alarm probability of the sequential tests, over the whole rollout however often
    /// they look (0 < alpha < 0.5). Default 0.01.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The checks. Empty means the defaults: success rate no worse than baseline by 1 point,
    /// and p99 latency no worse than baseline by 50%.
    #[serde(default)]
    pub metrics: Vec<MetricCheck>,
    /// Where metrics come from. Default: collected by the controller from its proxies.
    #[serde(default)]
    pub provider: MetricProvider,
    /// What the canary is compared with. Default `copy`.
    #[serde(default)]
    pub baseline: BaselineSource,
}

/// What a canary is compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BaselineSource {
    /// A fresh copy of the stable version, started beside the canary with the canary's weight
    /// (Kayenta's like-for-like baseline: the same age, the same share of traffic, the same
    /// neighbours), where the runtime can start one (`sluice up` does); else, or when no copy
    /// starts within 30 s, the stable version's running instances.
    #[default]
    Copy,
    /// The stable version's running instances.
    Stable,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: None,
            min_requests: default_min_requests(),
            alpha: default_alpha(),
            metrics: Vec::new(),
            provider: MetricProvider::default(),
            baseline: BaselineSource::default(),
        }
    }
}

fn default_min_requests() -> u64 {
    50
}

fn default_alpha() -> f64 {
    0.01
}

/// One check of the canary against the baseline and/or an absolute bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricCheck {
    /// Name used in status output and notifications, e.g. `errors`.
    pub name: String,
    /// The golden signal checked.
    pub signal: Signal,
    /// For `latency`: the quantile compared (0 < q < 1). Default 0.99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// Compare with the baseline: the canary fails if it is worse by more than the margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<RelativeMargin>,
    /// Compare with a fixed bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<AbsoluteThreshold>,
    /// For the Prometheus provider: the PromQL query, with `{{service}}`, `{{version}}`,
    /// `{{namespace}}` and `{{interval}}` substituted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// A golden signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Signal {
    /// Share of requests that succeeded, in percent (5xx and gRPC errors fail).
    SuccessRate,
    /// Request latency in milliseconds at the check's quantile.
    Latency,
    /// Requests per second.
    RequestRate,
}

/// How much worse than the baseline the canary may be.
///
/// For `latency`, worse means over **both** the relative margin and the absolute floor:
/// `relative: { margin: 20, atLeast: 5ms }` accepts a canary p99 up to
/// `max(1.2 × baseline, baseline + 5 ms)`. Two instances of the same build differ by more than
/// 20% of a 2 ms p99 (a fresh process, a noisy neighbour on a shared core), and neither is
/// practically worse.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelativeMargin {
    /// The practical margin: percentage points for `successRate`, percent of the baseline for
    /// `latency` and `requestRate`.
    pub margin: f64,
    /// For `latency`: the least difference from the baseline that counts as worse, however
    /// small the baseline (default `5ms`; `0ms` turns the floor off). Not for other signals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<Duration>,
}

/// The latency floor of a relative check without `atLeast`: a p99 may be this much above the
/// baseline's before the margin counts. Sized for services answering in milliseconds, where
/// instances of one build differ by a millisecond or two.
pub const DEFAULT_LATENCY_FLOOR: Duration = Duration::from_millis(5);

impl RelativeMargin {
    /// The latency floor in force: `atLeast`, or [`DEFAULT_LATENCY_FLOOR`].
    pub fn latency_floor(&self) -> std::time::Duration {
        self.at_least.unwrap_or(DEFAULT_LATENCY_FLOOR).0
    }
}

/// A fixed bound. Success rate in percent, latency in milliseconds, request rate per second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbsoluteThreshold {
    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Where analysis metrics come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricProvider {
    /// Query this Prometheus instead of collecting from the proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusProvider>,
}

/// A Prometheus HTTP API to query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusProvider {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    pub address: String,
}

/// What a failed analysis does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailureAction {
    /// Send all traffic back to stable at once and stop the canary.
    #[default]
    Rollback,
    /// Keep the current weights and wait for a person.
    Pause,
}

/// Notification settings of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifySettings {
    /// Teams to notify besides the service's own team.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Least severity that is sent: `info` sends every step, `warning` only waits for
    /// confirmation, promotions and rollbacks, `critical` only rollbacks.
    #[serde(default)]
    pub severity: Severity,
}

/// Severity of a rollout event.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Every event, each step included.
    Info,
    /// Start, confirmation waits, promotion and rollback.
    #[default]
    Warning,
    /// Rollbacks only.
    Critical,
}
