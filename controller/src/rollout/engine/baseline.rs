//! What a canary is judged against: a fresh copy of the stable version started beside it
//! (Kayenta's like-for-like baseline), or the stable version's long-running instances.
//!
//! A canary is a fresh process with a small share of traffic; the stable instances are warm
//! and busy. On a shared machine that alone makes the canary's latency a few milliseconds
//! worse (in the local mesh, 5% of 100 req/s left a healthy canary's p99 at twice the stable
//! one's). A copy of the stable version, started at the same moment with the same weight,
//! has the same age, the same share of traffic and the same neighbours, so what differs
//! between it and the canary is the code.
//!
//! The engine asks for a copy when the policy says `analysis.baseline: copy` (the default), the
//! runtime starts copies ([`EngineConfig::baseline_copies`]: `sluice up`), and the metric
//! source tells a copy's traffic apart (the proxies' reports do; Prometheus series carry no
//! role yet). The runtime starts an instance of the stable version with the role
//! [`BASELINE_ROLE`]; the rollout waits (`pending`) for it as for the canary, at most
//! [`COPY_WAIT`] after the canary is ready, then goes on against the stable instances and
//! says so. With a copy the split is `stable 100 - 2w / copy w / canary w` (the copy's
//! weight is capped at `100 - w`), and the judge sees copy and canary as equals.

use super::*;

pub(super) use sluice_policy::resources::BASELINE_ROLE;
use sluice_policy::resources::{Backend, BaselineSource};

/// How long a rollout waits for its baseline copy once the canary is ready.
pub(super) const COPY_WAIT: Duration = Duration::from_secs(30);

impl Engine {
    /// The baseline a new rollout starts with: waiting for a copy if one can be had, else the
    /// stable instances, with the reason when the policy asked for a copy.
    pub(super) fn initial_baseline(&self, r: &Rollout) -> Baseline {
        let stable = |why: &str| Baseline {
            kind: BaselineKind::Stable,
            copy_requested: false,
            instances: Vec::new(),
            description: format!("the running {} instances{why}", r.baseline_version),
        };
        if r.analysis.baseline == BaselineSource::Stable {
            return stable("");
        }
        if !self.config.baseline_copies {
            return stable(" (this runtime starts no baseline copies)");
        }
        if !self.metric_source(r).tells_roles_apart() {
            return stable(" (the Prometheus provider cannot tell a baseline copy apart yet)");
        }
        Baseline {
            kind: BaselineKind::Waiting,
            copy_requested: true,
            instances: Vec::new(),
            description: format!(
                "waiting for a fresh copy of {} beside the canary",
                r.baseline_version
            ),
        }
    }

    /// Whether the baseline is decided, deciding it if it can be: the copy has registered
    /// (judge against it), or [`COPY_WAIT`] passed since the rollout started waiting with the
    /// canary ready (judge against the stable instances).
    pub(super) fn baseline_settled(&self, r: &mut Rollout, now: i64) -> bool {
        if r.baseline.kind != BaselineKind::Waiting {
            return true;
        }
        let copies =
            self.plane
                .role_instances(&r.namespace, &r.service, &r.baseline_version, BASELINE_ROLE);
        if !copies.is_empty() {
            self.forget_copy_wait(&r.id);
            r.baseline.kind = BaselineKind::Copy;
            r.baseline.description = format!(
                "a fresh copy of {} ({}), with the canary's weight",
                r.baseline_version,
                copies.join(", ")
            );
            r.baseline.instances = copies;
            return true;
        }
        // The wait counts from the canary's readiness, which is when this is first asked.
        let since = *self
            .copy_wait_started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(r.id.clone())
            .or_insert(now);
        if elapsed_ms(since, now) < ms(COPY_WAIT) {
            return false;
        }
        self.forget_copy_wait(&r.id);
        r.baseline.kind = BaselineKind::Stable;
        r.baseline.description = format!(
            "the running {} instances (no fresh copy of {} registered within {})",
            r.baseline_version,
            r.baseline_version,
            humantime::format_duration(COPY_WAIT)
        );
        tracing::warn!(rollout = r.id, "{}", r.baseline.description);
        true
    }
}

impl Engine {
    fn forget_copy_wait(&self, id: &str) {
        self.copy_wait_started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

/// The copy's weight while `r` is judged against a copy: the canary's, capped so the stable
/// instances' share does not go negative.
pub(super) fn baseline_copy_weight(r: &Rollout) -> Option<u32> {
    (r.baseline.kind == BaselineKind::Copy).then(|| {
        let w = r.weight.min(100);
        w.min(100 - w)
    })
}

/// The canary's weight as the judge sees it: its share of the traffic that canary and
/// baseline together received (with a copy at the canary's weight, 50%).
pub(super) fn judged_weight(canary: u32, baseline_copy: Option<u32>) -> u32 {
    match baseline_copy {
        Some(b) if canary + b > 0 => {
            let w = f64::from(canary) * 100.0 / f64::from(canary + b);
            (w.round() as u32).clamp(1, 99)
        }
        _ => canary,
    }
}

/// A backend of the split proxies enforce.
pub(super) fn backend(version: &str, role: Option<&str>, weight: u32) -> Backend {
    Backend {
        version: version.to_owned(),
        weight,
        role: role.map(str::to_owned),
    }
}

/// The split of an active rollout: `stable 100 - w` and `canary w`, or with a copy
/// `stable 100 - w - c / copy c / canary w`. Zero weights are left out.
pub(super) fn rollout_split(r: &Rollout) -> Vec<Backend> {
    let w = r.weight.min(100);
    let copy = baseline_copy_weight(r).unwrap_or(0);
    [
        backend(&r.baseline_version, None, 100 - w - copy),
        backend(&r.baseline_version, Some(BASELINE_ROLE), copy),
        backend(&r.canary_version, None, w),
    ]
    .into_iter()
    .filter(|b| b.weight > 0)
    .collect()
}

/// The sentence of a failed analysis: every check that failed at that look, each with its
/// evidence (the most decisive first), so a canary failing two checks is said to fail both.
pub(super) fn failed_explanations(r: &Rollout, first: &crate::rollout::judge::Evidence) -> String {
    let mut sentences: Vec<String> = vec![first.explanation.clone()];
    for e in &r.failed_checks {
        if let Some(text) = e["explanation"].as_str()
            && !sentences.iter().any(|s| s == text)
        {
            sentences.push(text.to_owned());
        }
    }
    sentences.join("; and ")
}
