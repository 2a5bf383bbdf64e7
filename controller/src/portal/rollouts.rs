//! `/rollouts/…` for people: the rollout page a notification links to (what was decided and
//! why, the steps, the evidence, the chart, the history), the list of rollouts, and the
//! charts. The admin API serves the same pages (its `/rollouts` answers HTML to browsers and
//! JSON to `sluice rollout`); here they are read-only: `sluice rollout` acts.
//!
//! | route | handler |
//! |---|---|
//! | `GET /rollouts` | [`list`] |
//! | `GET /rollouts/{id}` | [`page`] (the id may be a service: its newest rollout) |
//! | `GET /rollouts/{id}/chart.svg`, `chart.png` | [`chart_svg`], [`chart_png`] |

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::error::PortalError;
use super::extract::Query;
use super::server::Shared;
use crate::rollout::engine::{self, Engine, RolloutError};
use crate::rollout::model::{Phase, Rollout, RolloutDetail, RolloutList};

/// `?service=NAME`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ListQuery {
    /// Only this service's rollouts (namespace `default`).
    pub service: Option<String>,
}

/// `GET /rollouts`: the list page for browsers, [`RolloutList`] JSON otherwise.
pub async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, PortalError> {
    let engine = engine_of(&s)?;
    let rollouts = run(engine, move |e| {
        e.list(q.service.as_deref().map(|s| ("default", s)))
    })
    .await?;
    Ok(if wants_html(&headers) {
        list_page(&rollouts).into_response()
    } else {
        axum::Json(RolloutList { rollouts }).into_response()
    })
}

/// `GET /rollouts/{id}`: the page for browsers, [`RolloutDetail`] JSON otherwise.
pub async fn page(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let detail = detail(engine_of(&s)?, id).await?;
    Ok(if wants_html(&headers) {
        detail_page(&detail).into_response()
    } else {
        axum::Json(detail).into_response()
    })
}

/// `GET /rollouts/{id}/chart.svg`.
pub async fn chart_svg(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    Ok(svg(&detail(engine_of(&s)?, id).await?))
}

/// `GET /rollouts/{id}/chart.png`.
pub async fn chart_png(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    png(detail(engine_of(&s)?, id).await?)
        .await
        .map_err(PortalError::Internal)
}

fn engine_of(s: &Shared) -> Result<Arc<Engine>, PortalError> {
    s.portal.engine.clone().ok_or(PortalError::NoRollouts)
}

async fn detail(engine: Arc<Engine>, id: String) -> Result<RolloutDetail, PortalError> {
    run(engine, move |e| e.detail(e.find("default", &id)?)).await
}

/// Runs an engine read (SQLite) off the async workers.
async fn run<T: Send + 'static>(
    engine: Arc<Engine>,
    f: impl FnOnce(&Engine) -> Result<T, RolloutError> + Send + 'static,
) -> Result<T, PortalError> {
    match tokio::task::spawn_blocking(move || f(&engine)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(RolloutError::Store(e))) => Err(PortalError::Store(e)),
        Ok(Err(e)) => Err(PortalError::NoRollout(e.to_string())),
        Err(e) => Err(PortalError::Internal(e.to_string())),
    }
}

/// Whether the client asked for HTML (a browser) rather than JSON (`sluice rollout`).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The chart as SVG.
pub fn svg(d: &RolloutDetail) -> Response {
    let svg = crate::rollout::chart::render_svg(&engine::chart(d));
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

/// The chart as PNG (for chat messages, which cannot show SVG), rasterized off the async
/// workers: it takes a while.
pub async fn png(d: RolloutDetail) -> Result<Response, String> {
    let chart = engine::chart(&d);
    let png = tokio::task::spawn_blocking(move || crate::rollout::chart::render_png(&chart))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// The rollout pages' own look: they are linked from chat messages and stand alone.
const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
.phase{display:inline-block;padding:.1rem .6rem;border-radius:1rem;background:#eee}\
.rolled-back .phase,.failed .phase,.aborted .phase{background:#fde2e2;color:#9b1c1c}\
.promoted .phase{background:#dcf5e3;color:#1d6b3a}\
li.done{color:#1d6b3a} li.current{font-weight:700} li.todo{color:#888}\
tr.fail td{color:#9b1c1c;font-weight:600} td{padding:.2rem .6rem;vertical-align:top}\
img{max-width:100%;border:1px solid #eee} time{color:#777;font-size:.85rem}";

fn rfc3339(unix_ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0)),
    )
    .to_string()
}

/// The rollout page: what the decision was and why, the steps, the evidence, the chart and
/// the history. No JavaScript; it reloads itself every 5 s while the rollout runs.
pub fn detail_page(d: &RolloutDetail) -> Markup {
    let r = &d.rollout;
    let step_state = |i: usize| {
        if i < r.step || r.phase == Phase::Promoted {
            "done"
        } else if i == r.step && r.phase.is_active() {
            "current"
        } else {
            "todo"
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if r.phase.is_active() { meta http-equiv="refresh" content="5"; }
                title { (r.service) " " (r.baseline_version) " → " (r.canary_version) ": " (r.phase) }
                style { (PreEscaped(STYLE)) }
            }
            body class=(r.phase) {
                h1 {
                    (r.service) ": " (r.baseline_version) " → " (r.canary_version) " "
                    span.phase { (r.phase) }
                }
                p { (r.decision) }
                p {
                    "Canary weight now " (r.weight) "% · " (r.canary_requests) " canary and "
                    (r.baseline_requests) " baseline requests judged · rollout " code { (r.id) }
                }
                p.baseline { "Baseline: " (crate::rollout::cli::baseline_sentence(r)) }
                h2 { "Steps" }
                ol {
                    @for (i, s) in r.steps.iter().enumerate() {
                        li class=(step_state(i)) {
                            (s.weight) "% for "
                            (humantime::format_duration(std::time::Duration::from_millis(s.duration_ms)))
                            @if s.confirm { ", then confirm" }
                        }
                    }
                }
                h2 { "Evidence" }
                table {
                    @for v in &r.evidence {
                        tr class=(if v["failed"].as_bool().unwrap_or(false) { "fail" } else { "ok" }) {
                            td { (v["metric"].as_str().unwrap_or("")) }
                            td { (v["explanation"].as_str().unwrap_or("")) }
                        }
                    }
                }
                h2 { "Canary vs baseline" }
                img src={ "/rollouts/" (r.id) "/chart.svg" }
                    alt="success rate and p99 latency of canary and baseline";
                p {
                    a href={ "/rollouts/" (r.id) "/chart.png" } { "PNG" } " · "
                    a href={ "/rollouts/" (r.id) } type="application/json" { "JSON" }
                }
                h2 { "History" }
                ul {
                    @for ev in &d.events {
                        li { time { (rfc3339(ev.at_unix_ms)) } " " b { (ev.kind) } " " (ev.message) }
                    }
                }
            }
        }
    }
}

/// Every rollout, newest first, each linking to its page.
pub fn list_page(rollouts: &[Rollout]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Rollouts" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Rollouts" }
                @if rollouts.is_empty() {
                    p { "No rollout yet: " code { "sluice rollout start SERVICE --version V" } " starts one." }
                } @else {
                    table {
                        @for r in rollouts {
                            tr class=(r.phase) {
                                td { a href={ "/rollouts/" (r.id) } { (r.id) } }
                                td { (r.namespace) "/" (r.service) }
                                td { (r.baseline_version) " → " (r.canary_version) }
                                td { span.phase { (r.phase) } }
                                td { (r.weight) "%" }
                                td { time { (rfc3339(r.created_unix_ms)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::model::{Event, StepPlan};

    fn rollout(phase: Phase) -> Rollout {
        Rollout {
            id: "r-20240501-ab12".into(),
            namespace: "default".into(),
            service: "payments".into(),
            baseline_version: "v1".into(),
            canary_version: "v2<script>".into(),
            phase,
            step: 1,
            weight: 25,
            steps: vec![
                StepPlan {
                    weight: 5,
                    duration_ms: 60_000,
                    confirm: false,
                },
                StepPlan {
                    weight: 25,
                    duration_ms: 120_000,
                    confirm: true,
                },
            ],
            interval_ms: 1000,
            progress_deadline_ms: 600_000,
            policy: "payments".into(),
            analysis: Default::default(),
            on_failure: Default::default(),
            requested_by: "cli".into(),
            created_unix_ms: 0,
            updated_unix_ms: 0,
            step_started_unix_ms: 0,
            first_traffic_unix_ms: None,
            finished_unix_ms: None,
            decision: "rolled back: errors 94% < 99% & \"worse\"".into(),
            evidence: vec![serde_json::json!({
                "metric": "errors", "failed": true, "explanation": "canary 94% vs 99.8%"
            })],
            failed_check: None,
            failed_checks: Vec::new(),
            canary_requests: 412,
            baseline_requests: 3000,
            baseline: Default::default(),
        }
    }

    #[test]
    fn the_rollout_page_shows_decision_steps_evidence_chart_and_history() {
        let detail = RolloutDetail {
            rollout: rollout(Phase::RolledBack),
            events: vec![Event {
                at_unix_ms: 0,
                kind: "rolled-back".into(),
                message: "errors <b>".into(),
            }],
            points: Vec::new(),
        };
        let html = detail_page(&detail).into_string();
        assert!(html.contains("<body class=\"rolled-back\">"), "{html}");
        assert!(
            html.contains(
                "<h1>payments: v1 → v2&lt;script&gt; <span class=\"phase\">rolled-back</span></h1>"
            ),
            "{html}"
        );
        assert!(html.contains("<p>rolled back: errors 94% &lt; 99% &amp; &quot;worse&quot;</p>"));
        assert!(html.contains("<li class=\"done\">5% for 1m</li>"), "{html}");
        assert!(
            html.contains("<li class=\"todo\">25% for 2m, then confirm</li>"),
            "{html}"
        );
        assert!(
            html.contains("<tr class=\"fail\"><td>errors</td><td>canary 94% vs 99.8%</td></tr>")
        );
        assert!(html.contains("<img src=\"/rollouts/r-20240501-ab12/chart.svg\""));
        assert!(
            html.contains("<time>1970-01-01T00:00:00Z</time> <b>rolled-back</b> errors &lt;b&gt;")
        );
        assert!(!html.contains("<script>"));
        // Finished: no reload. Running: reloads every 5 s.
        assert!(!html.contains("http-equiv=\"refresh\""));
        let running = RolloutDetail {
            rollout: rollout(Phase::Progressing),
            events: Vec::new(),
            points: Vec::new(),
        };
        let html = detail_page(&running).into_string();
        assert!(
            html.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
            "{html}"
        );
        assert!(
            html.contains("<li class=\"current\">25% for 2m, then confirm</li>"),
            "{html}"
        );
    }

    #[test]
    fn the_list_links_every_rollout() {
        let html = list_page(&[rollout(Phase::Promoted)]).into_string();
        assert!(html.contains("<a href=\"/rollouts/r-20240501-ab12\">r-20240501-ab12</a>"));
        assert!(html.contains("v1 → v2&lt;script&gt;"));
        assert!(list_page(&[]).into_string().contains("No rollout yet"));
    }
}
