//! What the engine tells people: team messages for each rollout event (with the canary's
//! last log lines and the failed check), and the chart drawn from a rollout's points.

use super::*;
use crate::notify::rollout::FailedCheck;

impl Engine {
    pub(super) fn canary_logs(&self, r: &Rollout) -> Vec<String> {
        let Some(dir) = &self.config.workload_logs else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        for instance in self
            .plane
            .instances(&r.namespace, &r.service, &r.canary_version)
        {
            // Instance names are validated labels, so this stays inside `dir`.
            let path = dir.join(format!("{instance}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                lines.extend(text.lines().map(str::to_owned));
            }
        }
        let skip = lines.len().saturating_sub(LOG_LINES);
        lines.split_off(skip)
    }

    pub(super) fn context(&self, r: &Rollout) -> RolloutContext {
        let base = self.config.public_url.trim_end_matches('/');
        RolloutContext {
            rollout_id: r.id.clone(),
            service: r.service.clone(),
            canary_version: r.canary_version.clone(),
            baseline_version: r.baseline_version.clone(),
            baseline: r.baseline.description.clone(),
            rollout_url: format!("{base}/rollouts/{}", r.id),
            chart_png_url: Some(format!("{base}/rollouts/{}/chart.png", r.id)),
            chart_svg_url: Some(format!("{base}/rollouts/{}/chart.svg", r.id)),
        }
    }

    /// Sends `event` to the service's team and the policy's `notify.teams`, if loud enough.
    pub(super) fn notify(&self, r: &Rollout, event: &RolloutEvent) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let policy = self.plane.policy();
        let key = ObjectRef::new(r.namespace.clone(), r.service.clone());
        let settings: NotifySettings = policy
            .set
            .canaries
            .get(&key)
            .map(|c| c.doc.spec.notify.clone())
            .unwrap_or_default();
        if !should_send(&settings, event.severity()) {
            return;
        }
        let mut teams: Vec<String> = policy
            .set
            .services
            .get(&key)
            .map(|s| vec![s.source.doc.spec.team.clone()])
            .unwrap_or_default();
        teams.extend(settings.teams.iter().cloned());
        teams.dedup();
        let specs: Vec<_> = teams
            .iter()
            .filter_map(|t| {
                policy
                    .set
                    .teams
                    .get(&ObjectRef::new(r.namespace.clone(), t.clone()))
                    .or_else(|| policy.set.teams.get(&ObjectRef::new("default", t.clone())))
                    .map(|c| c.doc.spec.clone())
            })
            .collect();
        let message = rollout_notification(&self.context(r), event);
        if let Err(e) = notifier.notify_teams(message, specs.iter()) {
            tracing::warn!(rollout = r.id, error = %e, "notification not queued");
        }
    }

    /// Re-sends a finished rollout's final message (deduplicated by id).
    pub(super) fn announce_final(&self, r: &Rollout) {
        match r.phase {
            Phase::Promoted => self.notify(r, &RolloutEvent::Promoted),
            Phase::RolledBack => {
                let at_weight = r.steps.get(r.step).map_or(0, |s| s.weight);
                if r.failed_check.is_some() || !r.failed_checks.is_empty() {
                    let reason = rollback_reason(r, at_weight, self.canary_logs(r));
                    self.notify(r, &RolloutEvent::RolledBack(Box::new(reason)));
                }
            }
            _ => {}
        }
    }
}

pub(super) fn unit_of(signal: &str) -> (&'static str, &'static str) {
    match signal {
        "successRate" => ("%", "points"),
        "latency" => ("ms", "%"),
        _ => ("req/s", "%"),
    }
}

/// Why `r` was rolled back: its failed checks (every one that failed at that look, the most
/// decisive first; older rollouts stored only `failed_check`).
pub(super) fn rollback_reason(
    r: &Rollout,
    weight: u32,
    canary_logs: Vec<String>,
) -> RollbackReason {
    let mut checks: Vec<FailedCheck> = r.failed_checks.iter().map(failed_check).collect();
    if checks.is_empty()
        && let Some(e) = &r.failed_check
    {
        checks.push(failed_check(e));
    }
    // One check per metric in the headline (a p99 failing its margin and its threshold is
    // one metric); every sentence stays in the evidence.
    let mut metrics: Vec<FailedCheck> = Vec::new();
    for c in &checks {
        if !metrics.iter().any(|m| m.metric == c.metric) {
            metrics.push(c.clone());
        }
    }
    let first = metrics.first().cloned().unwrap_or_else(|| FailedCheck {
        metric: "analysis".to_owned(),
        canary_value: f64::NAN,
        baseline_value: f64::NAN,
        unit: String::new(),
        margin: 0.0,
        margin_unit: String::new(),
        evidence: String::new(),
    });
    RollbackReason {
        step: u32::try_from(r.step + 1).unwrap_or(u32::MAX),
        weight,
        metric: first.metric.clone(),
        canary_value: first.canary_value,
        baseline_value: first.baseline_value,
        unit: first.unit.clone(),
        margin: first.margin,
        margin_unit: first.margin_unit.clone(),
        evidence: checks
            .iter()
            .map(|c| c.evidence.as_str())
            .collect::<Vec<_>>()
            .join("; and "),
        also: metrics.into_iter().skip(1).collect(),
        canary_logs,
    }
}

fn failed_check(e: &serde_json::Value) -> FailedCheck {
    let signal = e["signal"].as_str().unwrap_or_default();
    let (unit, margin_unit) = unit_of(signal);
    FailedCheck {
        metric: e["metric"].as_str().unwrap_or("analysis").to_owned(),
        canary_value: e["canaryValue"].as_f64().unwrap_or(f64::NAN),
        baseline_value: e["baselineValue"].as_f64().unwrap_or(f64::NAN),
        unit: unit.to_owned(),
        margin: e["margin"].as_f64().unwrap_or(0.0),
        margin_unit: margin_unit.to_owned(),
        evidence: e["explanation"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Rollouts' chart data: success rate and p99 per interval, canary and baseline.
pub fn chart(detail: &crate::rollout::model::RolloutDetail) -> crate::rollout::chart::RolloutChart {
    use crate::rollout::chart::{Annotation, AnnotationKind, ChartPoint, RolloutChart};
    let r = &detail.rollout;
    let pct = |c: &Counts| c.failure_rate().map(|f| 100.0 * (1.0 - f));
    let p99 = |c: &Counts| c.quantile(0.99).map(|s| s * 1000.0);
    let points = detail
        .points
        .iter()
        .map(|p| ChartPoint {
            t_unix_ms: u64::try_from(p.at_unix_ms).unwrap_or(0),
            canary_success_pct: pct(&p.canary),
            baseline_success_pct: pct(&p.baseline),
            canary_p99_ms: p99(&p.canary),
            baseline_p99_ms: p99(&p.baseline),
            canary_weight: p.weight,
        })
        .collect();
    let annotations = detail
        .events
        .iter()
        .filter_map(|e| {
            let kind = match e.kind.as_str() {
                "rolled-back" => AnnotationKind::Rollback,
                "promoted" => AnnotationKind::Promotion,
                "waiting-confirmation" => AnnotationKind::Confirmation,
                "failed" | "aborted" => AnnotationKind::Failure,
                _ => return None,
            };
            Some(Annotation {
                t_unix_ms: u64::try_from(e.at_unix_ms).unwrap_or(0),
                kind,
                label: e.kind.clone(),
            })
        })
        .collect();
    RolloutChart {
        service: r.service.clone(),
        canary_version: r.canary_version.clone(),
        baseline_version: r.baseline_version.clone(),
        subtitle: Some(r.decision.clone()),
        points,
        annotations,
    }
}
