//! A rollout's plan and records: its steps from the CanaryPolicy, its id, its events.

use super::*;

pub(super) fn event(at: i64, kind: &str, message: &str) -> Event {
    Event {
        at_unix_ms: at,
        kind: kind.to_owned(),
        message: message.to_owned(),
    }
}

/// `r-<yyyymmdd>-<4 hex>`.
pub(super) fn new_id(now_ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .map(|t| format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()))
        .unwrap_or_else(|_| "00000000".to_owned());
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    format!("r-{date}-{:02x}{:02x}", b[0], b[1])
}

/// The steps of a CanaryPolicy: its `steps`, or `stepWeight` up to `maxWeight`.
pub(super) fn plan(spec: &CanaryPolicySpec) -> Vec<StepPlan> {
    if !spec.steps.is_empty() {
        return spec
            .steps
            .iter()
            .map(|s| StepPlan {
                weight: s.weight,
                duration_ms: ms(s.duration.map_or(DEFAULT_STEP, |d| d.0)),
                confirm: s.confirm,
            })
            .collect();
    }
    let step = spec.step_weight.unwrap_or(10).max(1);
    let max = spec.max_weight.unwrap_or(50).clamp(1, 100);
    let duration = ms(spec.step_duration.map_or(DEFAULT_STEP, |d| d.0));
    let mut steps = Vec::new();
    let mut w = step.min(max);
    loop {
        steps.push(StepPlan {
            weight: w,
            duration_ms: duration,
            confirm: false,
        });
        if w >= max {
            break;
        }
        w = (w + step).min(max);
    }
    steps
}

/// A service's stable version as its policy says: the Route's heaviest backend, else its first
/// declared version. (A promotion recorded in the store, or an active rollout's baseline, comes
/// before this; callers check those first.)
pub fn policy_stable_version(set: &sluice_policy::PolicySet, key: &ObjectRef) -> Option<String> {
    if let Some(route) = set.routes.get(key)
        && let Some(b) = route.doc.spec.backends.iter().max_by_key(|b| b.weight)
    {
        return Some(b.version.clone());
    }
    set.services
        .get(key)
        .and_then(|s| s.source.doc.spec.versions.first().cloned())
}
