//! The messages a rollout sends: start, each step, waiting for confirmation, promotion and
//! rollback, built as [`Notification`]s with stable ids.
//!
//! The rollout controller owns *when* an event happens; this module owns *what is said* and
//! *how loudly*, so every channel gets the same facts and the severity filter of
//! `CanaryPolicy.spec.notify` ([`should_send`]) means the same thing everywhere. Ids are derived
//! from the rollout id and the event (`rollout/<id>/step/2`), so the same event re-announced
//! after a controller restart is recognised as a duplicate by the delivery log.

use sluice_policy::resources::NotifySettings;

use super::{Notification, Severity};

/// The rollout a message is about, and where people can look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutContext {
    /// Unique for this rollout (not reused by a later rollout of the same versions), e.g.
    /// `payments-v2-1790000000`.
    pub rollout_id: String,
    /// The service rolled out.
    pub service: String,
    /// The new version.
    pub canary_version: String,
    /// The stable version it is judged against.
    pub baseline_version: String,
    /// Which instances of it: "a fresh copy of v1 (payments-v1-baseline), with the canary's
    /// weight", or "the running v1 instances"; empty when unknown.
    pub baseline: String,
    /// The rollout's page in the portal.
    pub rollout_url: String,
    /// The chart as PNG, at a stable URL served by the controller (shown inline in Slack).
    pub chart_png_url: Option<String>,
    /// The same chart as SVG, for people opening it in a browser.
    pub chart_svg_url: Option<String>,
}

/// Why a rollout was rolled back: the failed check and its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct RollbackReason {
    /// The step (1-based) during which the analysis failed.
    pub step: u32,
    /// The canary weight of that step, in percent.
    pub weight: u32,
    /// The metric check's name, e.g. `errors`.
    pub metric: String,
    /// The canary's value.
    pub canary_value: f64,
    /// The baseline's value.
    pub baseline_value: f64,
    /// Unit of both values, e.g. `%` or `ms`.
    pub unit: String,
    /// The allowed margin.
    pub margin: f64,
    /// Unit of the margin, e.g. `points` or `%`.
    pub margin_unit: String,
    /// The judge's explanation of every failed check, e.g. `errors: canary success rate
    /// 94.2% vs baseline 99.89% (margin 0.5 points); evidence 626 ≥ 300 …`.
    pub evidence: String,
    /// Other metrics that failed at the same look (the headline names them all).
    pub also: Vec<FailedCheck>,
    /// The canary's last log lines (any number; the last 20 are sent, redacted).
    pub canary_logs: Vec<String>,
}

/// One failed check of a rollback, in the message's units.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedCheck {
    /// The metric check's name, e.g. `p99`.
    pub metric: String,
    /// The canary's value.
    pub canary_value: f64,
    /// The baseline's value.
    pub baseline_value: f64,
    /// Unit of both values.
    pub unit: String,
    /// The allowed margin.
    pub margin: f64,
    /// Unit of the margin.
    pub margin_unit: String,
    /// The judge's sentence.
    pub evidence: String,
}

impl RollbackReason {
    /// `errors` or `errors and p99`: what failed.
    pub fn metrics(&self) -> String {
        let mut names: Vec<&str> = vec![self.metric.as_str()];
        names.extend(self.also.iter().map(|c| c.metric.as_str()));
        match names.as_slice() {
            [one] => (*one).to_owned(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => String::new(),
        }
    }
}

/// Something that happened to a rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum RolloutEvent {
    /// The canary started receiving traffic.
    Started {
        /// How many steps the rollout has.
        steps: u32,
    },
    /// The rollout moved to a step.
    Step {
        /// 1-based.
        step: u32,
        /// Canary weight in percent.
        weight: u32,
    },
    /// The rollout waits at a step for `sluice rollout resume` or the portal.
    WaitingForConfirmation {
        /// 1-based.
        step: u32,
        /// Canary weight in percent.
        weight: u32,
    },
    /// The canary is now the stable version.
    Promoted,
    /// The analysis failed and traffic went back to the baseline.
    RolledBack(Box<RollbackReason>),
}

impl RolloutEvent {
    /// How loud the event is, as `NotifySettings.severity` documents: steps are `info`; start,
    /// confirmation waits and promotion `warning`; rollbacks `critical`.
    pub fn severity(&self) -> Severity {
        match self {
            RolloutEvent::Step { .. } => Severity::Info,
            RolloutEvent::Started { .. }
            | RolloutEvent::WaitingForConfirmation { .. }
            | RolloutEvent::Promoted => Severity::Warning,
            RolloutEvent::RolledBack(_) => Severity::Critical,
        }
    }

    /// The `kind` of the notification.
    pub fn kind(&self) -> &'static str {
        match self {
            RolloutEvent::Started { .. } => "rollout.started",
            RolloutEvent::Step { .. } => "rollout.step",
            RolloutEvent::WaitingForConfirmation { .. } => "rollout.waitingForConfirmation",
            RolloutEvent::Promoted => "rollout.promoted",
            RolloutEvent::RolledBack(_) => "rollout.rolledBack",
        }
    }

    fn id_suffix(&self) -> String {
        match self {
            RolloutEvent::Started { .. } => "started".to_owned(),
            RolloutEvent::Step { step, .. } => format!("step/{step}"),
            RolloutEvent::WaitingForConfirmation { step, .. } => format!("confirm/{step}"),
            RolloutEvent::Promoted => "promoted".to_owned(),
            RolloutEvent::RolledBack(_) => "rolled-back".to_owned(),
        }
    }
}

/// Whether a rollout with these settings announces an event of this severity.
pub fn should_send(settings: &NotifySettings, severity: Severity) -> bool {
    severity >= settings.severity
}

/// Builds the message for a rollout event.
pub fn rollout_notification(ctx: &RolloutContext, event: &RolloutEvent) -> Notification {
    let id = format!("rollout/{}/{}", ctx.rollout_id, event.id_suffix());
    let versions = format!("{} → {}", ctx.baseline_version, ctx.canary_version);
    let (title, text) = match event {
        RolloutEvent::Started { steps } => (
            format!("{} {}: rollout started", ctx.service, ctx.canary_version),
            format!(
                "{} {} is being rolled out over {steps} step(s), judged against {}.",
                ctx.service,
                ctx.canary_version,
                judged_against(ctx)
            ),
        ),
        RolloutEvent::Step { step, weight } => (
            format!(
                "{} {}: step {step} ({weight}%)",
                ctx.service, ctx.canary_version
            ),
            format!(
                "The canary now receives {weight}% of {}'s traffic.",
                ctx.service
            ),
        ),
        RolloutEvent::WaitingForConfirmation { step, weight } => (
            format!(
                "{} {}: waiting for confirmation at step {step} ({weight}%)",
                ctx.service, ctx.canary_version
            ),
            "The analysis passed. The rollout continues when someone resumes it from the \
             rollout page or with `sluice rollout resume`."
                .to_owned(),
        ),
        RolloutEvent::Promoted => (
            format!("{} {} promoted", ctx.service, ctx.canary_version),
            format!(
                "{} {} passed every step and now serves all traffic.",
                ctx.service, ctx.canary_version
            ),
        ),
        RolloutEvent::RolledBack(r) => {
            let mut values = vec![format!(
                "{}: canary {} vs baseline {} (margin {})",
                r.metric,
                with_unit(r.canary_value, &r.unit),
                with_unit(r.baseline_value, &r.unit),
                with_unit(r.margin, &r.margin_unit),
            )];
            values.extend(r.also.iter().map(|c| {
                format!(
                    "{}: canary {} vs baseline {} (margin {})",
                    c.metric,
                    with_unit(c.canary_value, &c.unit),
                    with_unit(c.baseline_value, &c.unit),
                    with_unit(c.margin, &c.margin_unit),
                )
            }));
            (
                format!(
                    "{} {} rolled back: {}",
                    ctx.service,
                    ctx.canary_version,
                    r.metrics()
                ),
                format!(
                    "{} failed at step {} ({}%): {}; judged against {}. All traffic is back on {}.",
                    r.metrics(),
                    r.step,
                    r.weight,
                    values.join("; "),
                    judged_against(ctx),
                    ctx.baseline_version
                ),
            )
        }
    };
    let mut n = Notification::new(id, event.kind(), event.severity(), title)
        .with_text(text)
        .with_field("service", ctx.service.as_str())
        .with_field("versions", versions);
    match event {
        RolloutEvent::Started { steps } => n = n.with_field("steps", steps.to_string()),
        RolloutEvent::Step { step, weight }
        | RolloutEvent::WaitingForConfirmation { step, weight } => {
            n = n
                .with_field("step", step.to_string())
                .with_field("weight", format!("{weight}%"));
        }
        RolloutEvent::Promoted => {}
        RolloutEvent::RolledBack(r) => {
            n = n
                .with_field("step", r.step.to_string())
                .with_field("weight", format!("{}%", r.weight))
                .with_field("metric", r.metrics())
                .with_field("canary", with_unit(r.canary_value, &r.unit))
                .with_field("baseline", with_unit(r.baseline_value, &r.unit))
                .with_field("margin", with_unit(r.margin, &r.margin_unit))
                .with_field("evidence", r.evidence.as_str());
            if !ctx.baseline.is_empty() {
                n = n.with_field("baseline used", ctx.baseline.as_str());
            }
            if !r.canary_logs.is_empty() {
                n = n.with_logs(&r.canary_logs);
            }
        }
    }
    n = n.with_link("rollout", ctx.rollout_url.as_str());
    if let Some(png) = &ctx.chart_png_url {
        n = n.with_link("chart", png.as_str());
        // Only the failure is worth a picture in the channel; other events link to the page.
        if matches!(event, RolloutEvent::RolledBack(_)) {
            n = n.with_image(png.as_str());
        }
    }
    if let Some(svg) = &ctx.chart_svg_url {
        n = n.with_link("chart (SVG)", svg.as_str());
    }
    n
}

/// What the canary is compared with, for a sentence: the baseline's description, else its
/// version.
fn judged_against(ctx: &RolloutContext) -> String {
    if ctx.baseline.is_empty() {
        ctx.baseline_version.clone()
    } else {
        ctx.baseline.clone()
    }
}

/// `95.2 %`, `412 ms`, `0.5 points`: at most three decimals, no trailing zeros.
fn with_unit(value: f64, unit: &str) -> String {
    let mut s = if value.is_finite() {
        format!("{value:.3}")
    } else {
        value.to_string()
    };
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    match unit {
        "" => s,
        "%" => format!("{s}%"),
        unit => format!("{s} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RolloutContext {
        RolloutContext {
            rollout_id: "payments-v2-1".into(),
            service: "payments".into(),
            canary_version: "v2".into(),
            baseline_version: "v1".into(),
            baseline: "a fresh copy of v1 (payments-v1-baseline), with the canary's weight".into(),
            rollout_url: "http://localhost:7070/rollouts/payments-v2-1".into(),
            chart_png_url: Some("http://localhost:7070/rollouts/payments-v2-1/chart.png".into()),
            chart_svg_url: None,
        }
    }

    #[test]
    fn ids_are_stable_and_severity_follows_settings() {
        let step = RolloutEvent::Step {
            step: 2,
            weight: 25,
        };
        assert_eq!(
            rollout_notification(&ctx(), &step).id,
            "rollout/payments-v2-1/step/2"
        );
        assert_eq!(
            rollout_notification(&ctx(), &step),
            rollout_notification(&ctx(), &step)
        );
        let warning = NotifySettings::default();
        assert!(!should_send(&warning, step.severity()));
        assert!(should_send(&warning, RolloutEvent::Promoted.severity()));
        let critical = NotifySettings {
            severity: Severity::Critical,
            ..NotifySettings::default()
        };
        assert!(!should_send(&critical, RolloutEvent::Promoted.severity()));
    }

    #[test]
    fn a_rollback_names_every_failed_metric_and_the_baseline() {
        let check = |metric: &str, c: f64, b: f64, unit: &str, margin: f64, mu: &str| FailedCheck {
            metric: metric.into(),
            canary_value: c,
            baseline_value: b,
            unit: unit.into(),
            margin,
            margin_unit: mu.into(),
            evidence: format!("{metric}: …"),
        };
        let p99 = check("p99", 61.0, 9.0, "ms", 20.0, "%");
        let reason = RollbackReason {
            step: 1,
            weight: 5,
            metric: "errors".into(),
            canary_value: 94.0,
            baseline_value: 99.9,
            unit: "%".into(),
            margin: 0.5,
            margin_unit: "points".into(),
            evidence: "errors: …; and p99: …".into(),
            also: vec![p99],
            canary_logs: Vec::new(),
        };
        let n = rollout_notification(&ctx(), &RolloutEvent::RolledBack(Box::new(reason)));
        assert_eq!(n.title, "payments v2 rolled back: errors and p99");
        let text = n.text.clone();
        assert!(
            text.starts_with(
                "errors and p99 failed at step 1 (5%): errors: canary 94% vs baseline 99.9% \
                 (margin 0.5 points); p99: canary 61 ms vs baseline 9 ms (margin 20%); judged \
                 against a fresh copy of v1 (payments-v1-baseline)"
            ),
            "{text}"
        );
        let field = |k: &str| {
            n.fields
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(field("metric").as_deref(), Some("errors and p99"));
        assert!(field("baseline used").is_some_and(|b| b.contains("fresh copy of v1")));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(with_unit(95.2, "%"), "95.2%");
        assert_eq!(with_unit(412.0, "ms"), "412 ms");
        assert_eq!(with_unit(0.5, "points"), "0.5 points");
        assert_eq!(with_unit(1.0 / 3.0, ""), "0.333");
        assert_eq!(with_unit(f64::NAN, "ms"), "NaN ms");
    }
}
