//! Rendering for `sluice rollout`: pure functions from the API's rollouts to the text people
//! read (status, progress bar, evidence lines, history, timeline) and the number formats they use.

use super::*;

pub fn page_link(raw: &Value) -> Option<String> {
    ["url", "page_url", "portal_url", "link"]
        .iter()
        .find_map(|key| raw.get(*key).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Rendering: pure functions of the rollout and the time.

/// `payments` for the default namespace, `shop/payments` otherwise.
pub(super) fn service_name(r: &Rollout) -> String {
    if r.namespace.is_empty() || r.namespace == "default" {
        r.service.clone()
    } else {
        format!("{}/{}", r.namespace, r.service)
    }
}

/// `payments  v1 → v2  progressing  step 2/3  25%`.
pub(super) fn header(r: &Rollout, paint: Paint) -> String {
    let code = match r.phase {
        Phase::Progressing | Phase::Promoted => Paint::GREEN,
        Phase::Pending | Phase::Paused | Phase::WaitingConfirmation => Paint::YELLOW,
        Phase::RolledBack | Phase::Aborted | Phase::Failed | Phase::Superseded => Paint::RED,
    };
    format!(
        "{}  {} → {}  {}  step {}/{}  {}%",
        service_name(r),
        r.baseline_version,
        r.canary_version,
        paint.paint(code, r.phase.as_str()),
        (r.step + 1).min(r.steps.len().max(1)),
        r.steps.len(),
        r.weight
    )
}

/// One line: `r-20250312-a1b2  payments  v1 → v2  progressing  step 1/3  5%`, and the decision
/// once it is over.
pub fn summary_line(r: &Rollout) -> String {
    let mut line = format!("{}  {}", r.id, header(r, Paint { enabled: false }));
    if !r.phase.is_active() && !r.decision.is_empty() {
        let _ = write!(line, "  · {}", r.decision);
    }
    line
}

/// The status view: header, progress bar, steps, one line per check, the decision.
pub fn render_status(r: &Rollout, link: Option<&str>, now: SystemTime, color: bool) -> String {
    let paint = Paint { enabled: color };
    let now_ms = unix_ms(now);
    let mut s = String::new();
    let _ = writeln!(s, "{}", header(r, paint));
    let _ = writeln!(s, "{}", progress_line(r, now_ms, paint));
    if !r.steps.is_empty() {
        let _ = writeln!(s, "steps  {}", steps_line(r));
    }
    let evidence: Vec<EvidenceView> = r.evidence.iter().map(EvidenceView::from_json).collect();
    for e in &evidence {
        s.push_str(&e.render(paint));
    }
    // The check that failed the canary, when the latest evidence no longer lists it.
    if let Some(failed) = r.failed_check.as_ref().map(EvidenceView::from_json)
        && !evidence
            .iter()
            .any(|e| e.metric == failed.metric && e.comparison == failed.comparison)
    {
        s.push_str(&failed.render(paint));
    }
    let started_by = if r.requested_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", r.requested_by)
    };
    let _ = writeln!(s, "baseline: {}", super::baseline_sentence(r));
    let _ = writeln!(
        s,
        "canary {} requests, baseline {} · {} · started {}{started_by}",
        group(r.canary_requests),
        group(r.baseline_requests),
        r.id,
        ago(now_ms, r.created_unix_ms)
    );
    if !r.decision.is_empty() {
        let _ = writeln!(s, "{}", r.decision);
    }
    let name = service_name(r);
    match r.phase {
        Phase::WaitingConfirmation => {
            let _ = writeln!(
                s,
                "next: `sluice rollout resume {name}` continues · `promote` skips the rest · \
                 `abort` rolls back"
            );
        }
        Phase::Paused => {
            let _ = writeln!(
                s,
                "next: `sluice rollout resume {name}` continues · `abort` rolls back"
            );
        }
        _ => {}
    }
    if let Some(link) = link {
        let _ = writeln!(s, "{link}");
    }
    s
}

/// `[■■■■■■■■□□□□□□□□□□] 25% of traffic · step 2 of 3 (1m, 38s left)`.
pub(super) fn progress_line(r: &Rollout, now_ms: i64, paint: Paint) -> String {
    let n = r.steps.len();
    let step_no = (r.step + 1).min(n.max(1));
    let step_ms = r.current_step().map_or(0, |s| s.duration_ms);
    // How far into the current step: until now, or until the end for a finished rollout.
    let until = r.finished_unix_ms.unwrap_or(now_ms);
    let elapsed_ms = u64::try_from(until - r.step_started_unix_ms).unwrap_or(0);
    let step_fraction = match r.phase {
        Phase::Pending => 0.0,
        Phase::WaitingConfirmation => 1.0,
        _ if step_ms == 0 => 1.0,
        _ => (elapsed_ms as f64 / step_ms as f64).min(1.0),
    };
    let fraction = match r.phase {
        Phase::Promoted => 1.0,
        _ if n == 0 => 0.0,
        _ => ((r.step.min(n - 1) as f64 + step_fraction) / n as f64).clamp(0.0, 1.0),
    };
    let filled = ((fraction * BAR_CELLS as f64).round() as usize).min(BAR_CELLS);
    let code = if r.phase.is_active() || r.phase == Phase::Promoted {
        Paint::GREEN
    } else {
        Paint::RED
    };
    let bar = format!(
        "[{}{}]",
        paint.paint(code, &"■".repeat(filled)),
        "□".repeat(BAR_CELLS - filled)
    );
    let step_ms_text = duration(Duration::from_millis(step_ms));
    let detail = match r.phase {
        Phase::Pending => {
            format!("step {step_no} of {n} (waiting for the canary's first instance)")
        }
        Phase::Progressing => {
            let left = step_ms.saturating_sub(elapsed_ms);
            if left == 0 {
                format!("step {step_no} of {n} ({step_ms_text}, due)")
            } else {
                format!(
                    "step {step_no} of {n} ({step_ms_text}, {} left)",
                    duration(Duration::from_millis(left))
                )
            }
        }
        Phase::Paused => format!("step {step_no} of {n} (paused)"),
        Phase::WaitingConfirmation => {
            format!("step {step_no} of {n} (passed; waiting for confirmation)")
        }
        Phase::Promoted => format!("promoted after {}", total_duration(r, now_ms)),
        Phase::RolledBack | Phase::Aborted | Phase::Failed | Phase::Superseded => format!(
            "stopped at step {step_no} of {n} after {}",
            total_duration(r, now_ms)
        ),
    };
    format!("{bar} {}% of traffic · {detail}", r.weight)
}

/// `5% 1m → [25% 1m] → 50% 5m confirm`: the plan, the current step in brackets.
pub(super) fn steps_line(r: &Rollout) -> String {
    r.steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut text = format!(
                "{}% {}",
                s.weight,
                duration(Duration::from_millis(s.duration_ms))
            );
            if s.confirm {
                text.push_str(" confirm");
            }
            if i == r.step && r.phase.is_active() {
                format!("[{text}]")
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// From start to the end (or to now, while it runs).
pub(super) fn total_duration(r: &Rollout, now_ms: i64) -> String {
    let end = r.finished_unix_ms.unwrap_or(now_ms);
    duration(Duration::from_millis(
        u64::try_from(end - r.created_unix_ms).unwrap_or(0),
    ))
}

/// One check's evidence, read leniently: the engine serializes
/// [`Evidence`](crate::rollout::judge::Evidence) in camelCase, and a snake_case spelling is
/// accepted too; whatever does not fit shows as the explanation alone rather than an error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct EvidenceView {
    metric: String,
    signal: String,
    comparison: String,
    failed: bool,
    #[serde(alias = "canaryValue")]
    canary_value: Option<f64>,
    #[serde(alias = "baselineValue")]
    baseline_value: Option<f64>,
    margin: Option<f64>,
    /// A relative latency check's absolute floor, ms.
    floor: Option<f64>,
    threshold: Option<ThresholdView>,
    #[serde(alias = "eValue")]
    e_value: Option<f64>,
    #[serde(alias = "logEValue")]
    log_e_value: Option<f64>,
    bound: Option<f64>,
    #[serde(alias = "canaryRequests")]
    canary_requests: Option<u64>,
    explanation: String,
    /// Not a field of the API: set when the entry could not be read as evidence.
    #[serde(skip)]
    unreadable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ThresholdView {
    min: Option<f64>,
    max: Option<f64>,
}

/// Which unit a check's values are in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    Percent,
    Millis,
    PerSecond,
}

impl EvidenceView {
    pub(super) fn from_json(v: &Value) -> EvidenceView {
        EvidenceView::deserialize(v).unwrap_or_else(|_| EvidenceView {
            metric: v
                .get("metric")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            explanation: v
                .get("explanation")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), str::to_owned),
            failed: v.get("failed").and_then(Value::as_bool).unwrap_or(false),
            unreadable: true,
            ..EvidenceView::default()
        })
    }

    fn unit(&self) -> Unit {
        let signal: String = self
            .signal
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match signal.as_str() {
            "latency" => Unit::Millis,
            "requestrate" => Unit::PerSecond,
            _ => Unit::Percent,
        }
    }

    /// No data behind it yet: neither values nor an e-value, or no canary requests.
    fn inconclusive(&self) -> bool {
        !self.failed
            && (self.canary_requests == Some(0)
                || (self.canary_value.is_none()
                    && self.e_value.is_none()
                    && self.log_e_value.is_none()))
    }

    fn value(&self, v: f64) -> String {
        match self.unit() {
            Unit::Percent => percent(v),
            Unit::Millis => millis(v),
            // Relative request-rate checks compare rates per weight point.
            Unit::PerSecond if self.comparison == "relative" => {
                format!("{} req/s per point", trim_float(round_to(v, 100.0)))
            }
            Unit::PerSecond => format!("{} req/s", trim_float(round_to(v, 100.0))),
        }
    }

    /// `✓ errors  canary 99.8%  baseline 99.9%  margin 0.5 pts  evidence 0.4 / 300`, and the
    /// explanation in full under a failed one.
    pub(super) fn render(&self, paint: Paint) -> String {
        let mark = if self.failed {
            paint.paint(Paint::RED, "✗")
        } else if self.unreadable || self.inconclusive() {
            paint.paint("\x1b[2m", "·")
        } else {
            paint.paint(Paint::GREEN, "✓")
        };
        if self.unreadable {
            return format!("{mark} {}  {}\n", self.metric, self.explanation);
        }
        let mut line = format!("{mark} {}", self.metric);
        match self.canary_value {
            Some(c) => {
                let _ = write!(line, "  canary {}", self.value(c));
            }
            None => line.push_str("  canary n/a"),
        }
        if let Some(b) = self.baseline_value {
            let _ = write!(line, "  baseline {}", self.value(b));
        }
        if let Some(m) = self.margin {
            let unit = if self.unit() == Unit::Percent {
                " pts"
            } else {
                "%"
            };
            let _ = write!(line, "  margin {}{unit}", trim_float(m));
            if let Some(floor) = self.floor.filter(|f| *f > 0.0) {
                let _ = write!(line, " (at least {} ms)", trim_float(floor));
            }
        }
        if let Some(t) = &self.threshold {
            if let Some(min) = t.min {
                let _ = write!(line, "  min {}", self.value(min));
            }
            if let Some(max) = t.max {
                let _ = write!(line, "  max {}", self.value(max));
            }
        }
        let log_e = self
            .log_e_value
            .or_else(|| self.e_value.filter(|e| *e > 0.0).map(f64::ln));
        if let (Some(log_e), Some(bound)) = (log_e, self.bound) {
            let _ = write!(
                line,
                "  evidence {} / {}",
                evidence_value(log_e),
                group(bound.round().max(0.0) as u64)
            );
        }
        line.push('\n');
        if self.failed && !self.explanation.is_empty() {
            let _ = writeln!(line, "    {}", self.explanation);
        }
        line
    }
}

/// The history table: one row per rollout, newest first.
pub fn render_history(rollouts: &[Rollout], now: SystemTime) -> String {
    if rollouts.is_empty() {
        return "no rollouts yet; start one with `sluice rollout start SERVICE --version V`\n"
            .to_owned();
    }
    let now_ms = unix_ms(now);
    let header = [
        "ID", "SERVICE", "VERSIONS", "PHASE", "STARTED", "DURATION", "DECISION",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 7]> = rollouts
        .iter()
        .map(|r| {
            let mut took = total_duration(r, now_ms);
            if r.phase.is_active() {
                took.push_str(" so far");
            }
            [
                r.id.clone(),
                service_name(r),
                format!("{} → {}", r.baseline_version, r.canary_version),
                r.phase.as_str().to_owned(),
                ago(now_ms, r.created_unix_ms),
                took,
                truncate(&r.decision, HISTORY_DECISION_CHARS),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// The events of one rollout, oldest first, each at its offset from the start.
pub fn render_timeline(d: &RolloutDetail, now: SystemTime) -> String {
    let r = &d.rollout;
    let mut s = format!(
        "{}  {}  {} → {}  {}, started {}\n",
        r.id,
        service_name(r),
        r.baseline_version,
        r.canary_version,
        r.phase,
        ago(unix_ms(now), r.created_unix_ms)
    );
    if d.events.is_empty() {
        s.push_str("  (no events yet)\n");
        return s;
    }
    let offsets: Vec<String> = d
        .events
        .iter()
        .map(|e| {
            let ms = u64::try_from(e.at_unix_ms - r.created_unix_ms).unwrap_or(0);
            format!("+{}", duration(Duration::from_millis(ms)))
        })
        .collect();
    let time_width = offsets.iter().map(|o| o.chars().count()).max().unwrap_or(0);
    let kind_width = d
        .events
        .iter()
        .map(|e| e.kind.chars().count())
        .max()
        .unwrap_or(0);
    for (offset, e) in offsets.iter().zip(&d.events) {
        let _ = writeln!(
            s,
            "  {offset:<time_width$}  {:<kind_width$}  {}",
            e.kind, e.message
        );
    }
    s
}

/// Columns padded to their widest cell (in characters: `→` is one column), two spaces apart.
pub(super) fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers and times for people (the judge's own helpers are private to it).

/// `1m 30s`, `45s`, `1h 5m`, `2d 3h`: the two largest non-zero units.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    let units = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let parts: Vec<String> = units
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `45s ago`, `2m ago`, `3h ago`, `2d ago`: one unit is enough for "when".
pub(super) fn ago(now_ms: i64, then_ms: i64) -> String {
    let secs = u64::try_from(now_ms - then_ms).unwrap_or(0) / 1000;
    match secs {
        0 => "just now".to_owned(),
        1..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `1,234,567`.
pub(super) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `0.01`, `0.5`, `20` (no trailing zeros).
pub(super) fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

pub(super) fn round_to(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

/// As the judge writes them: enough digits to tell 99.9% from 100%.
pub(super) fn percent(v: f64) -> String {
    if (99.0..100.0).contains(&v) {
        format!("{}%", trim_float((v * 100.0).floor() / 100.0))
    } else {
        format!("{}%", trim_float(round_to(v, 10.0)))
    }
}

/// Milliseconds: `4.20 ms`, `42.1 ms`, `212 ms`.
pub(super) fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{} ms", group(ms.round().max(0.0) as u64))
    }
}

/// An e-value: `0.4`, `12`, `1,240`, `3.1e9` (from its logarithm, exact when huge).
pub(super) fn evidence_value(log_e: f64) -> String {
    let e = log_e.exp();
    if e < 10.0 {
        format!("{e:.1}")
    } else if e < 1e6 {
        group(e.round() as u64)
    } else {
        let exponent = (log_e / 10f64.ln()).floor();
        let mantissa = (log_e - exponent * 10f64.ln()).exp();
        format!("{mantissa:.1}e{exponent}")
    }
}
