//! The service pages' HTML: pure functions from the views `gather_index` and `gather_service`
//! build to markup (maud escapes every value).

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::*;
use crate::portal::page::{STYLE, pill};

pub(super) fn rate_text(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
        None => "—".to_owned(),
    }
}

pub(super) fn percent_text(p: Option<f64>) -> String {
    p.map_or_else(|| "—".to_owned(), |p| format!("{:.2}%", p * 100.0))
}

pub(super) fn ms_text(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms < 10.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{ms:.0} ms"),
        None => "—".to_owned(),
    }
}

/// `2024-05-01 12:00:00 UTC`.
pub(super) fn time_text(unix_ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "—".to_owned(),
    }
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub(super) fn ago_text(then_ms: i64, now_ms: i64) -> String {
    let s = now_ms.saturating_sub(then_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn code_list(items: &[String]) -> Markup {
    html! {
        @for (i, item) in items.iter().enumerate() {
            @if i > 0 { ", " }
            code { (item) }
        }
    }
}

fn service_link(href: &str, name: &str) -> Markup {
    html! { a href=(href) { (name) } }
}

/// The `/services` body, as text (for tests).
pub fn index_page(rows: &[IndexRow]) -> String {
    index_markup(rows).into_string()
}

/// The `/services` body.
pub fn index_markup(rows: &[IndexRow]) -> Markup {
    html! {
        h1 { "Services" }
        @if rows.is_empty() {
            p.muted { "The policy declares no MeshService yet." }
        } @else {
            table {
                thead { tr {
                    th { "Service" } th { "Team" } th { "Security" } th { "Versions" }
                    th { "Instances" } th { "Requests/s" } th { "Success" } th { "Rollout" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            td {
                                (service_link(&service_href(&r.key), &r.key.to_string()))
                                @if let Some(d) = &r.description { br; span.muted { (d) } }
                            }
                            td { (r.team) }
                            td { (pill(r.security)) }
                            td { (r.versions.join(", ")) }
                            td { (r.instances) }
                            td { (rate_text(r.rate)) }
                            td { (percent_text(r.success)) }
                            td {
                                @match &r.rollout {
                                    Some((id, phase, canary, weight)) => {
                                        a href={ "/rollouts/" (id) } { (canary) } " "
                                        (pill(phase.as_str())) " " (weight) "%"
                                    }
                                    None => { span.muted { "—" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The `/services/<name>` body, as text (for tests).
pub fn service_page(v: &ServiceView) -> String {
    service_markup(v).into_string()
}

/// The `/services/<name>` body.
pub fn service_markup(v: &ServiceView) -> Markup {
    html! {
        p { a href="/services" { "← All services" } }
        h1 { (v.key.to_string()) }
        p {
            "Owned by " strong { (v.team) } " · " (pill(v.security))
            @if !v.versions.is_empty() { " · versions " (v.versions.join(", ")) }
            @if !v.ports.is_empty() { " · ports " (v.ports.join(", ")) }
        }
        @if let Some(d) = &v.description { p { (d) } }
        p.muted {
            a href="#endpoints" { "Endpoints" } " · " a href="#callers" { "Who may call it" } " · "
            a href="#calls" { "Whom it calls" } " · " a href="#traffic" { "Live traffic" } " · "
            a href="#rollout" { "Rollout" } " · " a href="#denials" { "Recent denials" } " · "
            a href="#environments" { "Environments" }
        }
        (endpoints_section(v))
        (callers_section(v))
        (calls_section(v))
        (traffic_section(v))
        (rollout_section(v))
        (denials_section(v))
        (environments_section(v))
    }
}

fn endpoints_section(v: &ServiceView) -> Markup {
    html! {
        section.card #endpoints {
            h2 { "Endpoints" }
            @if v.endpoints.is_empty() {
                p.muted { "No endpoints declared." }
            } @else {
                table {
                    thead { tr { th { "Endpoint" } th { "Description" } } }
                    tbody {
                        @for (rpc, d) in &v.endpoints {
                            tr { td { code { (rpc) } } td { (d.as_deref().unwrap_or("")) } }
                        }
                    }
                }
            }
        }
    }
}

fn callers_section(v: &ServiceView) -> Markup {
    html! {
        section.card #callers {
            h2 { "Who may call it" }
            @if !v.has_policy {
                p.muted {
                    "No AccessPolicy names this service: the mesh's default policy decides \
                     every call."
                }
            } @else if v.grants.is_empty() {
                p.muted { "No service is granted access." }
            }
            @if !v.grants.is_empty() {
                table {
                    thead { tr {
                        th { "Callers" } th { "Endpoints" } th { "Reason" } th { "Ephemeral" } th { "Rule" }
                    } }
                    tbody {
                        @for g in &v.grants {
                            tr {
                                td {
                                    @for (i, (name, href)) in g.callers.iter().enumerate() {
                                        @if i > 0 { ", " }
                                        @match href {
                                            Some(h) => { (service_link(h, name)) }
                                            None if name == "*" => {
                                                code { "*" } " " span.muted { "(any service)" }
                                            }
                                            None => { (name) }
                                        }
                                    }
                                }
                                td { (code_list(&g.allow)) }
                                td { (g.reason) }
                                td { (pill(g.ephemeral)) }
                                td {
                                    (g.rule) br;
                                    span.muted { (g.policy) " · " (g.file) }
                                    @if g.mode == "audit" { " " (pill("audit")) }
                                }
                            }
                        }
                    }
                }
            }
            @if !v.exemptions.is_empty() {
                h3 { "Without a mesh identity" }
                table {
                    thead { tr { th { "Endpoint" } th { "Reason" } th { "Policy" } } }
                    tbody {
                        @for e in &v.exemptions {
                            tr {
                                td { code { (e.rpc) } }
                                td { (e.reason) }
                                td { (e.policy) br; span.muted { (e.file) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn calls_section(v: &ServiceView) -> Markup {
    html! {
        section.card #calls {
            h2 { "Whom it calls" }
            @if v.calls.is_empty() {
                p.muted { "No other service grants it access." }
            } @else {
                table {
                    thead { tr { th { "Service" } th { "Endpoints" } th { "Reason" } th { "Rule" } } }
                    tbody {
                        @for c in &v.calls {
                            tr {
                                td {
                                    (service_link(&c.href, &c.service))
                                    @if c.via_any { " " span.muted { "(granted to any service)" } }
                                }
                                td { (code_list(&c.allow)) }
                                td { (c.reason) }
                                td { (c.rule) br; span.muted { (c.policy) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// How often the traffic fragment reloads itself, in seconds: soon after the first reading
/// (a rate needs two), then at a calm pace.
fn refresh_secs(rows: &[TrafficView]) -> u32 {
    if rows.iter().any(|t| t.rate.is_none()) {
        1
    } else {
        5
    }
}

fn traffic_section(v: &ServiceView) -> Markup {
    // Tall enough for the table and its note without a scroll bar.
    let rem = if v.traffic.is_empty() {
        4
    } else {
        7 + 3 * v.traffic.len()
    };
    html! {
        section.card #traffic {
            h2 { "Live traffic" }
            iframe.live src={ (service_href(&v.key)) "/traffic" } title={ "Live traffic of " (v.key.to_string()) }
                style={ "height:" (rem) "rem" } {}
        }
    }
}

/// The traffic fragment: its own small document (the service page frames it), reloading
/// itself with `<meta http-equiv=refresh>`.
pub fn traffic_fragment(key: &ObjectRef, rows: &[TrafficView]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(refresh_secs(rows));
                title { "Live traffic of " (key.to_string()) " · Sluice" }
                style { (PreEscaped(STYLE)) "body{background:#fff}" }
            }
            body {
                @if rows.is_empty() {
                    p.muted { "No proxy has reported traffic for this service." }
                } @else {
                    table {
                        thead { tr {
                            th { "Version" } th { "Environment" } th { "Requests/s" } th { "Success" }
                            th { "p99" } th { "Requests" } th { "Reporting" }
                        } }
                        tbody {
                            @for t in rows {
                                tr {
                                    td { (t.version) } td { (t.environment) } td { (rate_text(t.rate)) }
                                    td { (percent_text(t.success)) } td { (ms_text(t.p99_ms)) }
                                    td { (t.requests) } td { (t.reporting) }
                                }
                            }
                        }
                    }
                    p.muted {
                        "Live: requests/s between the last two readings, refreshed every "
                        (refresh_secs(rows)) " s. Success rate and p99 cover every request reported."
                    }
                }
            }
        }
    }
}

fn rollout_section(v: &ServiceView) -> Markup {
    html! {
        section.card #rollout {
            h2 { "Rollout" }
            @match &v.rollouts {
                Rollouts::NotRunning => {
                    p.muted { "Rollouts are not enabled on this controller." }
                }
                Rollouts::Unavailable(e) => {
                    div.error { "Rollouts could not be read: " (e) }
                }
                Rollouts::Listed(list) => {
                    @let current = list.iter().find(|r| r.phase.is_active()).or_else(|| list.first());
                    @match current {
                        None => { p.muted { "This service has had no rollout." } }
                        Some(r) => { (rollout_card(r, v.now_unix_ms)) }
                    }
                    @let earlier: Vec<&Rollout> = list
                        .iter()
                        .filter(|r| current.is_none_or(|c| c.id != r.id))
                        .take(EARLIER_ROLLOUTS)
                        .collect();
                    @if !earlier.is_empty() {
                        h3 { "Earlier" }
                        ul {
                            @for r in earlier {
                                li {
                                    a href={ "/rollouts/" (r.id) } { (r.id) } " "
                                    (r.baseline_version) " → " (r.canary_version) " "
                                    (pill(r.phase.as_str())) " "
                                    span.muted { (time_text(r.created_unix_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn rollout_card(r: &Rollout, now_ms: i64) -> Markup {
    html! {
        p {
            a href={ "/rollouts/" (r.id) } { (r.id) } " " (pill(r.phase.as_str())) " "
            strong { (r.baseline_version) } " → " strong { (r.canary_version) }
            ": canary at " (r.weight) "%, baseline at " (100u32.saturating_sub(r.weight)) "%"
        }
        p.muted {
            "Steps: "
            @for (i, s) in r.steps.iter().enumerate() {
                @if i > 0 { " → " }
                @let text = format!("{}%{}", s.weight, if s.confirm { " (confirm)" } else { "" });
                @if i == r.step && r.phase.is_active() { strong { (text) } } @else { (text) }
            }
            " · started by " (r.requested_by) " " (ago_text(r.created_unix_ms, now_ms))
        }
        @if !r.decision.is_empty() { p { "Decision: " (r.decision) } }
        p {
            a href={ "/rollouts/" (r.id) } {
                img src={ "/rollouts/" (r.id) "/chart.svg" }
                    alt="canary vs baseline: success rate and p99 latency" style="max-width:100%";
            }
        }
        p { a href={ "/rollouts/" (r.id) } { "Steps, evidence and decision →" } }
    }
}

fn denials_section(v: &ServiceView) -> Markup {
    html! {
        section.card #denials {
            h2 { "Recent denials" }
            @match &v.denials {
                Err(e) => { div.error { "Denials could not be read: " (e) } }
                Ok(rows) if rows.is_empty() => {
                    p.muted { "No recent denied calls to this service." }
                }
                Ok(rows) => {
                    table {
                        thead { tr {
                            th { "Caller" } th { "Call" } th { "Environment" } th { "Count" }
                            th { "Last seen" } th {}
                        } }
                        tbody {
                            @for d in rows {
                                tr {
                                    td {
                                        @match &d.caller_href {
                                            Some(h) => { (service_link(h, &d.caller)) }
                                            None => { (d.caller) }
                                        }
                                    }
                                    td {
                                        code { (d.rpc) }
                                        @if d.verdict == "audit-deny" { " " (pill("audit")) }
                                    }
                                    td { (d.environment) }
                                    td { (d.count) }
                                    td title=(time_text(d.last_seen_unix_ms)) {
                                        (ago_text(d.last_seen_unix_ms, v.now_unix_ms))
                                    }
                                    td {
                                        @if let Some(l) = &d.request_link {
                                            a.button href=(l) { "Request access" }
                                        } @else if d.allowed_now {
                                            (pill("granted since"))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn environments_section(v: &ServiceView) -> Markup {
    html! {
        section.card #environments {
            h2 { "Environments" }
            @if let Some(s) = &v.stable_version {
                p {
                    "Stable version: " strong { (s) }
                    @if !v.addresses.is_empty() { " · dialled at " (code_list(&v.addresses)) }
                }
            }
            @if v.environments.is_empty() {
                p.muted { "No instance is registered." }
            } @else {
                table {
                    thead { tr { th { "Role" } th { "Version" } th { "Environment" } th { "Instances" } } }
                    tbody {
                        @for e in &v.environments {
                            tr {
                                td { (pill(e.role)) }
                                td { (e.version) }
                                td { (e.environment) }
                                td {
                                    @for (i, (instance, address)) in e.instances.iter().enumerate() {
                                        @if i > 0 { br; }
                                        (instance) " " code { (address) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
