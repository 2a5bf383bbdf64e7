//! The environment pages' maud templates. Every value is escaped by maud, in the SVG too: a
//! service or environment name comes from policy or a form.

use std::collections::BTreeMap;
use std::time::Duration;

use maud::{Markup, html};

use super::Graph;
use crate::env::{CopyView, EnvironmentView, Origin};
use crate::portal::page::pill;

fn ago(now_ms: i64, at_ms: i64) -> String {
    let secs = u64::try_from((now_ms - at_ms).max(0) / 1000).unwrap_or(0);
    if secs == 0 {
        return "just now".into();
    }
    let text = humantime::format_duration(Duration::from_secs(secs)).to_string();
    format!("{} ago", text.split(' ').next().unwrap_or(&text))
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn cost(v: &EnvironmentView) -> String {
    match (v.usage.cost_per_day, &v.usage.currency) {
        (Some(c), Some(cur)) => format!("{c:.2} {cur}/day"),
        (Some(c), None) => format!("{c:.2}/day"),
        _ => "no prices in Mesh".into(),
    }
}

fn origin(c: &CopyView) -> &'static str {
    match c.origin {
        Origin::Service => "the service",
        Origin::Run => "sluice env run",
        Origin::Dependency => "copied dependency",
    }
}

fn last_used(v: &EnvironmentView, now_ms: i64) -> String {
    v.last_request_unix_ms
        .map_or_else(|| "never".to_owned(), |at| ago(now_ms, at))
}

/// `/environments`.
pub fn list_markup(envs: &[EnvironmentView], now_ms: i64) -> Markup {
    html! {
        h1 { "Environments" }
        p.muted {
            "Copies of a service with their dependencies, reached by the W3C baggage member "
            code { "sluice-env=NAME" } ". Make one from a service's page or with "
            code { "sluice env create" } "; each is deleted when idle."
        }
        @if envs.is_empty() {
            p.muted { "No environment." }
        } @else {
            (table(envs, now_ms))
        }
    }
}

fn table(envs: &[EnvironmentView], now_ms: i64) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Name" } th { "Copies" } th { "Shared" } th { "Requests (1 h)" }
                th { "Last used" } th { "Resources" } th { "Open" }
            } }
            tbody {
                @for v in envs {
                    tr {
                        td {
                            a href={ "/environments/" (v.name) } { (v.name) } " " (pill(&v.state))
                            br; span.muted { "by " (v.created_by) ", " (ago(now_ms, v.created_unix_ms)) }
                        }
                        td { (v.copies.iter().map(|c| c.service.as_str()).collect::<Vec<_>>().join(", ")) }
                        td { (v.shared.join(", ")) }
                        td { (v.requests_last_hour) }
                        td { (last_used(v, now_ms)) }
                        td {
                            (format!("{:.1}", v.usage.cpu_seconds)) " CPU-s · " (mib(v.usage.peak_rss_bytes))
                            br; span.muted { (cost(v)) }
                        }
                        td { @if let Some(url) = &v.url { a href=(url) { (url) } } }
                    }
                }
            }
        }
    }
}

/// The "Ephemeral environments" section of a service page: its environments and the button.
pub fn service_section(
    namespace: &str,
    service: &str,
    versions: &[String],
    envs: &[EnvironmentView],
    token: &str,
    now_ms: i64,
) -> Markup {
    html! {
        section.card #ephemeral {
            h2 { "Ephemeral environments" }
            @if envs.is_empty() {
                p.muted { "No environment has a copy of " (service) "." }
            } @else {
                (table(envs, now_ms))
            }
            form method="post" action="/environments" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="service" value=(service);
                input type="hidden" name="namespace" value=(namespace);
                label {
                    "Name (a DNS label, e.g. " code { "pr-1" } ") "
                    input type="text" name="name" required pattern="[a-z0-9]([a-z0-9-]*[a-z0-9])?" maxlength="63";
                }
                @if !versions.is_empty() {
                    label {
                        "Version "
                        select name="version" {
                            option value="" { "stable's" }
                            @for v in versions { option value=(v) { (v) } }
                        }
                    }
                }
                label {
                    "Delete after this long without requests (e.g. " code { "2h" } "; empty: the Mesh's) "
                    input type="text" name="idle_timeout" maxlength="16";
                }
                button type="submit" { "New environment with " (service) "'s dependencies" }
            }
        }
    }
}

/// `/environments/{name}`.
pub fn page_markup(v: &EnvironmentView, graph: &Graph, token: &str, now_ms: i64) -> Markup {
    html! {
        p { a href="/environments" { "← All environments" } }
        h1 { "Environment " (v.name) " " (pill(&v.state)) }
        p {
            "Made for " a href={ "/services/" (v.service) } { (v.service) }
            " by " (v.created_by) ", " (ago(now_ms, v.created_unix_ms))
            @if let Some(url) = &v.url { " · open " a href=(url) { (url) } }
        }
        p.muted {
            "Requests carrying the baggage member " code { "sluice-env=" (v.name) }
            " reach its copies; everything else is stable's."
        }
        section.card {
            h2 { "Who calls whom" }
            (graph_svg(graph))
            p.muted { "Green: the environment's own copies. Grey: shared with stable. A solid arrow is a call granted with " code { "ephemeral: copy" } "." }
        }
        section.card {
            h2 { "Copies" }
            table {
                thead { tr { th { "Instance" } th { "Why" } th { "State" } th { "Address" } th { "CPU-s" } th { "Peak memory" } } }
                tbody {
                    @for c in &v.copies {
                        tr {
                            td { (c.instance) " " span.muted { (c.version) } }
                            td { (origin(c)) }
                            td { (pill(&c.state)) " " span.muted { (c.detail) } }
                            td { @if let Some(a) = &c.address { code { (a) } } }
                            td { (format!("{:.1}", c.cpu_seconds)) }
                            td { (mib(c.peak_rss_bytes)) }
                        }
                    }
                }
            }
            p { "Shared with stable: " @if v.shared.is_empty() { "nothing" } @else { (v.shared.join(", ")) } }
        }
        section.card {
            h2 { "Use" }
            p {
                (v.requests_last_hour) " requests in the last hour (" (v.requests_total) " in all) · last used "
                (last_used(v, now_ms))
            }
            p {
                (format!("{:.1}", v.usage.cpu_seconds)) " CPU-seconds · " (mib(v.usage.peak_rss_bytes))
                " peak memory · " (cost(v))
            }
            p {
                "Deleted after " (humantime::format_duration(Duration::from_millis(v.idle_timeout_ms)))
                " without requests"
                @if let Some(at) = v.idle_deadline_unix_ms {
                    " (in " (humantime::format_duration(Duration::from_secs(u64::try_from((at - now_ms).max(0) / 1000).unwrap_or(0)))) ")"
                } @else { " (held by " code { "sluice env run" } ")" }
                "."
            }
            form method="post" action={ "/environments/" (v.name) "/delete" } {
                input type="hidden" name="csrf" value=(token);
                button.secondary type="submit" { "Delete " (v.name) " now" }
            }
        }
    }
}

/// After a delete.
pub fn deleted_markup(v: &EnvironmentView) -> Markup {
    html! {
        h1 { "Environment " (v.name) " deleted" }
        p.ok {
            "Removed: " (v.copies.iter().map(|c| c.instance.as_str()).collect::<Vec<_>>().join(", "))
            ". Stable is untouched."
        }
        p { a href={ "/services/" (v.service) } { "Back to " (v.service) } }
    }
}

const NODE_W: i64 = 150;
const NODE_H: i64 = 36;
const COL: i64 = 210;
const ROW: i64 = 60;
const PAD: i64 = 20;

/// Columns by call depth (the longest chain of calls leading to a service, so callers stand
/// left of callees; a cycle stops growing after as many rounds as there are services), rows
/// by name.
fn layout(g: &Graph) -> BTreeMap<&str, (i64, i64)> {
    let mut depth: BTreeMap<&str, i64> = g.nodes.keys().map(|n| (n.as_str(), 0)).collect();
    for _ in 0..g.nodes.len() {
        let mut changed = false;
        for e in &g.edges {
            let d = depth.get(e.from.as_str()).copied().unwrap_or(0) + 1;
            if let Some(t) = depth.get_mut(e.to.as_str())
                && *t < d
                && d < g.nodes.len() as i64
            {
                *t = d;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<i64, i64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (n, d) in depth {
        let row = rows.entry(d).or_insert(0);
        out.insert(n, (PAD + d * COL, PAD + *row * ROW));
        *row += 1;
    }
    out
}

/// The graph as SVG: a box per service (green for copies), an arrow per call.
pub fn graph_svg(g: &Graph) -> Markup {
    let at = layout(g);
    let width = at
        .values()
        .map(|(x, _)| x + NODE_W + PAD)
        .max()
        .unwrap_or(PAD);
    let height = at
        .values()
        .map(|(_, y)| y + NODE_H + PAD)
        .max()
        .unwrap_or(PAD);
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) } role="img"
            aria-label="Who calls whom in this environment" {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#57606a";
                }
            }
            @for e in &g.edges {
                @if let (Some((x1, y1)), Some((x2, y2))) = (at.get(e.from.as_str()), at.get(e.to.as_str())) {
                    line x1=(x1 + NODE_W) y1=(y1 + NODE_H / 2) x2=(x2) y2=(y2 + NODE_H / 2)
                        stroke=(if e.copy { "#1a7f37" } else { "#8c959f" })
                        stroke-width="2"
                        stroke-dasharray=(if e.copy { "none" } else { "5 4" })
                        marker-end="url(#arrow)" {
                        title { (e.from) " → " (e.to) (if e.copy { " (copy)" } else { " (shared)" }) }
                    }
                }
            }
            @for (name, copy) in &g.nodes {
                @if let Some((x, y)) = at.get(name.as_str()) {
                    g class=(if *copy { "copy" } else { "shared" }) {
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6"
                            fill=(if *copy { "#dafbe1" } else { "#f6f8fa" })
                            stroke=(if *copy { "#1a7f37" } else { "#8c959f" })
                            stroke-width=(if *name == g.root { "3" } else { "1" });
                        text x=(x + NODE_W / 2) y=(y + NODE_H / 2 + 5) text-anchor="middle"
                            font-size="14" fill="#1f2328" {
                            (name) (if *copy { " (copy)" } else { "" })
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
    use crate::env::graph::Edge;

    fn edge(from: &str, to: &str, copy: bool) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            copy,
        }
    }

    fn shop() -> Graph {
        Graph {
            nodes: BTreeMap::from([
                ("frontend".into(), false),
                ("checkout".into(), true),
                ("catalog".into(), true),
                ("payments".into(), false),
            ]),
            edges: vec![
                edge("frontend", "checkout", false),
                edge("frontend", "catalog", false),
                edge("checkout", "catalog", true),
                edge("checkout", "payments", false),
            ],
            root: "checkout".into(),
        }
    }

    #[test]
    fn callers_stand_left_of_callees_and_copies_are_marked() {
        let g = shop();
        let at = layout(&g);
        assert!(at["frontend"].0 < at["checkout"].0);
        assert!(at["checkout"].0 < at["catalog"].0);
        assert!(at["checkout"].0 < at["payments"].0);
        let svg = graph_svg(&shop()).into_string();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains(">catalog (copy)</text>"), "{svg}");
        assert!(svg.contains(">payments</text>"), "{svg}");
        assert_eq!(svg.matches("<line").count(), 4);
        assert_eq!(svg.matches("class=\"copy\"").count(), 2);
    }

    #[test]
    fn a_cycle_is_laid_out_and_names_are_escaped() {
        let g = Graph {
            nodes: BTreeMap::from([("a".into(), true), ("<b>".into(), false)]),
            edges: vec![edge("a", "<b>", false), edge("<b>", "a", true)],
            root: "a".into(),
        };
        let svg = graph_svg(&g).into_string();
        assert!(svg.contains("&lt;b&gt;"), "{svg}");
        assert!(!svg.contains("<b>"), "{svg}");
    }
}
