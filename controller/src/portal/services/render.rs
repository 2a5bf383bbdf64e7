//! The service pages' HTML: pure functions from the views `gather_index` and `gather_service`
//! build to markup, every value escaped.

use super::*;

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

pub(super) fn pill(text: &str) -> String {
    format!("<span class=\"pill\">{}</span>", escape(text))
}

pub(super) fn code_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("<code>{}</code>", escape(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn service_link(href: &str, name: &str) -> String {
    format!("<a href=\"{}\">{}</a>", escape(href), escape(name))
}

/// The `/services` body.
pub fn index_page(rows: &[IndexRow]) -> String {
    let mut out = String::from("<h1>Services</h1>");
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">The policy declares no MeshService yet.</p>");
        return out;
    }
    out.push_str(
        "<table><thead><tr><th>Service</th><th>Team</th><th>Security</th><th>Versions</th>\
<th>Instances</th><th>Requests/s</th><th>Success</th><th>Rollout</th></tr></thead><tbody>",
    );
    for r in rows {
        let description = r.description.as_deref().map_or_else(String::new, |d| {
            format!("<br><span class=\"muted\">{}</span>", escape(d))
        });
        let rollout = r.rollout.as_ref().map_or_else(
            || "<span class=\"muted\">—</span>".to_owned(),
            |(id, phase, canary, weight)| {
                format!(
                    "<a href=\"/rollouts/{}\">{}</a> {} {}%",
                    escape(id),
                    escape(canary),
                    pill(phase.as_str()),
                    weight
                )
            },
        );
        out.push_str(&format!(
            "<tr><td>{link}{description}</td><td>{team}</td><td>{security}</td><td>{versions}</td>\
<td>{instances}</td><td>{rate}</td><td>{success}</td><td>{rollout}</td></tr>",
            link = service_link(&service_href(&r.key), &r.key.to_string()),
            team = escape(&r.team),
            security = pill(r.security),
            versions = escape(&r.versions.join(", ")),
            instances = r.instances,
            rate = rate_text(r.rate),
            success = percent_text(r.success),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

/// The `/services/<name>` body.
pub fn service_page(v: &ServiceView) -> String {
    let mut out = String::with_capacity(8 * 1024);
    out.push_str("<p><a href=\"/services\">← All services</a></p>");
    out.push_str(&format!(
        "<h1>{name}</h1><p>Owned by <strong>{team}</strong> · {security}",
        name = escape(&v.key.to_string()),
        team = escape(&v.team),
        security = pill(v.security),
    ));
    if !v.versions.is_empty() {
        out.push_str(&format!(" · versions {}", escape(&v.versions.join(", "))));
    }
    if !v.ports.is_empty() {
        out.push_str(&format!(" · ports {}", escape(&v.ports.join(", "))));
    }
    out.push_str("</p>");
    if let Some(d) = &v.description {
        out.push_str(&format!("<p>{}</p>", escape(d)));
    }
    out.push_str(
        "<p class=\"muted\"><a href=\"#endpoints\">Endpoints</a> · <a href=\"#callers\">Who may call it</a> · \
<a href=\"#calls\">Whom it calls</a> · <a href=\"#traffic\">Live traffic</a> · <a href=\"#rollout\">Rollout</a> · \
<a href=\"#denials\">Recent denials</a> · <a href=\"#environments\">Environments</a></p>",
    );
    endpoints_section(&mut out, v);
    callers_section(&mut out, v);
    calls_section(&mut out, v);
    traffic_section(&mut out, v);
    rollout_section(&mut out, v);
    denials_section(&mut out, v);
    environments_section(&mut out, v);
    out
}

pub(super) fn endpoints_section(out: &mut String, v: &ServiceView) {
    out.push_str("<section class=\"card\" id=\"endpoints\"><h2>Endpoints</h2>");
    if v.endpoints.is_empty() {
        out.push_str("<p class=\"muted\">No endpoints declared.</p>");
    } else {
        out.push_str("<table><thead><tr><th>Endpoint</th><th>Description</th></tr></thead><tbody>");
        for (rpc, d) in &v.endpoints {
            out.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                escape(rpc),
                escape(d.as_deref().unwrap_or(""))
            ));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
}

pub(super) fn callers_section(out: &mut String, v: &ServiceView) {
    out.push_str("<section class=\"card\" id=\"callers\"><h2>Who may call it</h2>");
    if !v.has_policy {
        out.push_str(
            "<p class=\"muted\">No AccessPolicy names this service: the mesh's default policy \
decides every call.</p>",
        );
    } else if v.grants.is_empty() {
        out.push_str("<p class=\"muted\">No service is granted access.</p>");
    }
    if !v.grants.is_empty() {
        out.push_str(
            "<table><thead><tr><th>Callers</th><th>Endpoints</th><th>Reason</th>\
<th>Ephemeral</th><th>Rule</th></tr></thead><tbody>",
        );
        for g in &v.grants {
            let callers = g
                .callers
                .iter()
                .map(|(name, href)| match href {
                    Some(h) => service_link(h, name),
                    None if name == "*" => {
                        "<code>*</code> <span class=\"muted\">(any service)</span>".to_owned()
                    }
                    None => escape(name),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let audit = if g.mode == "audit" {
                format!(" {}", pill("audit"))
            } else {
                String::new()
            };
            out.push_str(&format!(
                "<tr><td>{callers}</td><td>{allow}</td><td>{reason}</td><td>{eph}</td>\
<td>{rule}<br><span class=\"muted\">{policy} · {file}</span>{audit}</td></tr>",
                allow = code_list(&g.allow),
                reason = escape(&g.reason),
                eph = pill(g.ephemeral),
                rule = escape(&g.rule),
                policy = escape(&g.policy),
                file = escape(&g.file),
            ));
        }
        out.push_str("</tbody></table>");
    }
    if !v.exemptions.is_empty() {
        out.push_str(
            "<h3>Without a mesh identity</h3><table><thead><tr><th>Endpoint</th><th>Reason</th>\
<th>Policy</th></tr></thead><tbody>",
        );
        for e in &v.exemptions {
            out.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}<br><span class=\"muted\">{}</span></td></tr>",
                escape(&e.rpc),
                escape(&e.reason),
                escape(&e.policy),
                escape(&e.file)
            ));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
}

pub(super) fn calls_section(out: &mut String, v: &ServiceView) {
    out.push_str("<section class=\"card\" id=\"calls\"><h2>Whom it calls</h2>");
    if v.calls.is_empty() {
        out.push_str("<p class=\"muted\">No other service grants it access.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>Service</th><th>Endpoints</th><th>Reason</th><th>Rule</th></tr>\
</thead><tbody>",
        );
        for c in &v.calls {
            let any = if c.via_any {
                " <span class=\"muted\">(granted to any service)</span>"
            } else {
                ""
            };
            out.push_str(&format!(
                "<tr><td>{link}{any}</td><td>{allow}</td><td>{reason}</td><td>{rule}<br>\
<span class=\"muted\">{policy}</span></td></tr>",
                link = service_link(&c.href, &c.service),
                allow = code_list(&c.allow),
                reason = escape(&c.reason),
                rule = escape(&c.rule),
                policy = escape(&c.policy),
            ));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
}

pub(super) fn traffic_section(out: &mut String, v: &ServiceView) {
    out.push_str("<section class=\"card\" id=\"traffic\"><h2>Live traffic</h2>");
    if v.traffic.is_empty() {
        out.push_str("<p class=\"muted\">No proxy has reported traffic for this service.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>Version</th><th>Environment</th><th>Requests/s</th>\
<th>Success</th><th>p99</th><th>Requests</th><th>Reporting</th></tr></thead><tbody>",
        );
        for t in &v.traffic {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&t.version),
                escape(&t.environment),
                rate_text(t.rate),
                percent_text(t.success),
                ms_text(t.p99_ms),
                t.requests,
                t.reporting
            ));
        }
        out.push_str(
            "</tbody></table><p class=\"muted\">Requests/s is measured between two views of \
this page; reload to update it. Success rate and p99 cover every request reported.</p>",
        );
    }
    out.push_str("</section>");
}

pub(super) fn rollout_section(out: &mut String, v: &ServiceView) {
    out.push_str("<section class=\"card\" id=\"rollout\"><h2>Rollout</h2>");
    match &v.rollouts {
        Rollouts::NotRunning => {
            out.push_str("<p class=\"muted\">Rollouts are not enabled on this controller.</p>");
        }
        Rollouts::Unavailable(e) => {
            out.push_str(&format!(
                "<div class=\"error\">Rollouts could not be read: {}</div>",
                escape(e)
            ));
        }
        Rollouts::Listed(list) => {
            let current = list
                .iter()
                .find(|r| r.phase.is_active())
                .or_else(|| list.first());
            match current {
                None => out.push_str("<p class=\"muted\">This service has had no rollout.</p>"),
                Some(r) => rollout_card(out, r, v.now_unix_ms),
            }
            let earlier: Vec<&Rollout> = list
                .iter()
                .filter(|r| current.is_none_or(|c| c.id != r.id))
                .take(EARLIER_ROLLOUTS)
                .collect();
            if !earlier.is_empty() {
                out.push_str("<h3>Earlier</h3><ul>");
                for r in earlier {
                    out.push_str(&format!(
                        "<li><a href=\"/rollouts/{id}\">{id}</a> {base} → {canary} {phase} \
<span class=\"muted\">{when}</span></li>",
                        id = escape(&r.id),
                        base = escape(&r.baseline_version),
                        canary = escape(&r.canary_version),
                        phase = pill(r.phase.as_str()),
                        when = escape(&time_text(r.created_unix_ms)),
                    ));
                }
                out.push_str("</ul>");
            }
        }
    }
    out.push_str("</section>");
}

pub(super) fn rollout_card(out: &mut String, r: &Rollout, now_ms: i64) {
    let id = escape(&r.id);
    let steps = r
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let text = format!("{}%{}", s.weight, if s.confirm { " (confirm)" } else { "" });
            if i == r.step && r.phase.is_active() {
                format!("<strong>{text}</strong>")
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join(" → ");
    out.push_str(&format!(
        "<p><a href=\"/rollouts/{id}\">{id}</a> {phase} <strong>{base}</strong> → \
<strong>{canary}</strong>: canary at {weight}%, baseline at {baseline}%</p>\
<p class=\"muted\">Steps: {steps} · started by {by} {ago}</p>",
        phase = pill(r.phase.as_str()),
        base = escape(&r.baseline_version),
        canary = escape(&r.canary_version),
        weight = r.weight,
        baseline = 100u32.saturating_sub(r.weight),
        by = escape(&r.requested_by),
        ago = escape(&ago_text(r.created_unix_ms, now_ms)),
    ));
    if !r.decision.is_empty() {
        out.push_str(&format!("<p>Decision: {}</p>", escape(&r.decision)));
    }
    out.push_str(&format!(
        "<p><a href=\"/rollouts/{id}\"><img src=\"/rollouts/{id}/chart.svg\" \
alt=\"canary vs baseline: success rate and p99 latency\" style=\"max-width:100%\"></a></p>\
<p><a href=\"/rollouts/{id}\">Steps, evidence and decision →</a></p>"
    ));
}

pub(super) fn denials_section(out: &mut String, v: &ServiceView) {
    out.push_str("<section class=\"card\" id=\"denials\"><h2>Recent denials</h2>");
    match &v.denials {
        Err(e) => out.push_str(&format!(
            "<div class=\"error\">Denials could not be read: {}</div>",
            escape(e)
        )),
        Ok(rows) if rows.is_empty() => {
            out.push_str("<p class=\"muted\">No recent denied calls to this service.</p>");
        }
        Ok(rows) => {
            out.push_str(
                "<table><thead><tr><th>Caller</th><th>Call</th><th>Environment</th><th>Count</th>\
<th>Last seen</th><th></th></tr></thead><tbody>",
            );
            for d in rows {
                let caller = match &d.caller_href {
                    Some(h) => service_link(h, &d.caller),
                    None => escape(&d.caller),
                };
                let verdict = if d.verdict == "audit-deny" {
                    format!(" {}", pill("audit"))
                } else {
                    String::new()
                };
                let link = d.request_link.as_deref().map_or_else(
                    || {
                        if d.allowed_now {
                            pill("granted since")
                        } else {
                            String::new()
                        }
                    },
                    |l| {
                        format!(
                            "<a class=\"button\" href=\"{}\">Request access</a>",
                            escape(l)
                        )
                    },
                );
                out.push_str(&format!(
                    "<tr><td>{caller}</td><td><code>{rpc}</code>{verdict}</td><td>{env}</td>\
<td>{count}</td><td title=\"{abs}\">{ago}</td><td>{link}</td></tr>",
                    rpc = escape(&d.rpc),
                    env = escape(&d.environment),
                    count = d.count,
                    abs = escape(&time_text(d.last_seen_unix_ms)),
                    ago = escape(&ago_text(d.last_seen_unix_ms, v.now_unix_ms)),
                ));
            }
            out.push_str("</tbody></table>");
        }
    }
    out.push_str("</section>");
}

pub(super) fn environments_section(out: &mut String, v: &ServiceView) {
    out.push_str("<section class=\"card\" id=\"environments\"><h2>Environments</h2>");
    if let Some(s) = &v.stable_version {
        out.push_str(&format!(
            "<p>Stable version: <strong>{}</strong>",
            escape(s)
        ));
        if !v.addresses.is_empty() {
            out.push_str(&format!(" · dialled at {}", code_list(&v.addresses)));
        }
        out.push_str("</p>");
    }
    if v.environments.is_empty() {
        out.push_str("<p class=\"muted\">No instance is registered.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>Role</th><th>Version</th><th>Environment</th>\
<th>Instances</th></tr></thead><tbody>",
        );
        for e in &v.environments {
            let instances = e
                .instances
                .iter()
                .map(|(i, a)| format!("{} <code>{}</code>", escape(i), escape(a)))
                .collect::<Vec<_>>()
                .join("<br>");
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                pill(e.role),
                escape(&e.version),
                escape(&e.environment),
                instances
            ));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
}
