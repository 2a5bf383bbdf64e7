//! The checks of each kind on its own (the Mesh, a Team, a MeshService, backends, a
//! CanaryPolicy) and the small parsers they share; `validate.rs` ties them to the set.

use std::collections::HashMap;

use super::{Ctx, ObjectRef, is_dns_label, label_help, resolve_team, team_suggestion};
use crate::diagnostic::did_you_mean;
use crate::resources::{
    Backend, CanaryPolicySpec, MeshServiceSpec, MeshSpec, Port, Protocol, TeamSpec,
};
use crate::rpc::RpcPattern;

pub(super) fn parse_rpc(ctx: &mut Ctx<'_>, field: &str, text: &str) -> Option<RpcPattern> {
    match RpcPattern::parse(text) {
        Ok(p) => Some(p),
        Err(e) => {
            ctx.error("invalid-rpc", field, e.to_string(), Some(e.help));
            None
        }
    }
}

pub(super) fn check_url(ctx: &mut Ctx<'_>, field: &str, url: &str) {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty())
        && !url.contains(char::is_whitespace);
    if !ok {
        ctx.error(
            "invalid-url",
            field,
            format!("`{url}` is not an http(s) URL"),
            Some("write a full URL, e.g. `https://hooks.slack.com/services/…`".into()),
        );
    }
}

pub(super) fn check_mesh(ctx: &mut Ctx<'_>, spec: &MeshSpec) {
    if let Some(t) = spec.environments.idle_timeout
        && t.0 < std::time::Duration::from_secs(1)
    {
        ctx.error(
            "out-of-range",
            "spec.environments.idleTimeout",
            format!("an idle timeout of {t} would delete environments as they start"),
            Some("use at least `1s`; the default is `30m`".into()),
        );
    }
    if let Some(p) = &spec.environments.prices {
        for (field, price) in [("coreHour", p.core_hour), ("gbHour", p.gb_hour)] {
            if !price.is_finite() || price < 0.0 {
                ctx.error(
                    "out-of-range",
                    &format!("spec.environments.prices.{field}"),
                    format!("`{price}` is not a price"),
                    Some("write a number of 0 or more, e.g. `0.04`".into()),
                );
            }
        }
        let c = &p.currency;
        if c.is_empty() || c.len() > 8 || !c.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            ctx.error(
                "invalid-name",
                "spec.environments.prices.currency",
                format!("`{c}` is not a currency code"),
                Some("write a code such as `EUR` or `USD`".into()),
            );
        }
    }
    let td = &spec.trust_domain;
    if td.is_empty() || !td.split('.').all(is_dns_label) {
        ctx.error(
            "invalid-name",
            "spec.trustDomain",
            format!("`{td}` is not a valid trust domain"),
            Some("use a DNS name such as `shop.local`".into()),
        );
    }
    check_url(ctx, "spec.accessRequestUrl", &spec.access_request_url);
    let mut rest = spec.access_request_url.as_str();
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            ctx.error(
                "invalid-template",
                "spec.accessRequestUrl",
                "unclosed `{` in the link template".to_owned(),
                Some(
                    "placeholders are `{caller}`, `{service}`, `{rpc}` and `{environment}`".into(),
                ),
            );
            break;
        };
        let name = &after[..end];
        if !crate::link::PLACEHOLDERS.contains(&name) {
            let help = match did_you_mean(name, crate::link::PLACEHOLDERS) {
                Some(s) => format!("did you mean `{{{s}}}`?"),
                None => {
                    "placeholders are `{caller}`, `{service}`, `{rpc}` and `{environment}`".into()
                }
            };
            ctx.error(
                "invalid-template",
                "spec.accessRequestUrl",
                format!("unknown placeholder `{{{name}}}` in the link template"),
                Some(help),
            );
        }
        rest = &after[end + 1..];
    }
}

pub(super) fn check_team(ctx: &mut Ctx<'_>, spec: &TeamSpec) {
    let mut emails: HashMap<&str, usize> = HashMap::new();
    for (i, m) in spec.members.iter().enumerate() {
        let field = format!("spec.members[{i}].email");
        let valid = m.email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && host.contains('.') && !m.email.contains(' ')
        });
        if !valid {
            ctx.error(
                "invalid-email",
                &field,
                format!("`{}` is not an email address", m.email),
                None,
            );
        }
        if let Some(first) = emails.insert(m.email.as_str(), i) {
            ctx.error(
                "duplicate",
                &field,
                format!("`{}` is listed twice", m.email),
                Some(format!("remove it here or at spec.members[{first}]")),
            );
        }
    }
    for (i, c) in spec.channels.iter().enumerate() {
        let base = format!("spec.channels[{i}]");
        match (&c.slack, &c.webhook) {
            (Some(url), None) => check_url(ctx, &format!("{base}.slack"), url),
            (None, Some(url)) => check_url(ctx, &format!("{base}.webhook"), url),
            _ => ctx.error(
                "invalid-channel",
                &base,
                "a channel needs exactly one of `slack` or `webhook`".to_owned(),
                Some("split it into two channels".into()),
            ),
        }
    }
}

pub(super) fn check_service(ctx: &mut Ctx<'_>, spec: &MeshServiceSpec) -> Vec<RpcPattern> {
    let mut ports = HashMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}].port");
        if p.port == 0 {
            ctx.error(
                "invalid-port",
                &field,
                "port 0 is not a port".to_owned(),
                Some("use 1-65535".into()),
            );
        }
        if let Some(first) = ports.insert(p.port, i) {
            ctx.error(
                "duplicate",
                &field,
                format!("port {} is declared twice", p.port),
                Some(format!("remove it here or at spec.ports[{first}]")),
            );
        }
    }
    let mut versions = HashMap::new();
    for (i, v) in spec.versions.iter().enumerate() {
        let field = format!("spec.versions[{i}]");
        if !is_dns_label(v) {
            ctx.error(
                "invalid-name",
                &field,
                format!("`{v}` is not a valid version name"),
                Some(label_help(v)),
            );
        }
        if let Some(first) = versions.insert(v.as_str(), i) {
            ctx.error(
                "duplicate",
                &field,
                format!("version `{v}` is declared twice"),
                Some(format!("remove it here or at spec.versions[{first}]")),
            );
        }
    }
    let mut out: Vec<RpcPattern> = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        let field = format!("spec.endpoints[{i}].rpc");
        if let Some(p) = parse_rpc(ctx, &field, &e.rpc) {
            if let Some(first) = out.iter().position(|q| *q == p) {
                ctx.error(
                    "duplicate",
                    &field,
                    format!("endpoint `{p}` is declared twice"),
                    Some(format!("remove it here or at spec.endpoints[{first}]")),
                );
            }
            out.push(p);
        }
    }
    out
}

pub(super) fn check_backends(
    ctx: &mut Ctx<'_>,
    field: &str,
    backends: &[Backend],
    versions: &[String],
    service: &str,
) {
    if backends.is_empty() {
        return;
    }
    let mut total: u64 = 0;
    for (i, b) in backends.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if !versions.contains(&b.version) && !service.is_empty() {
            // No "did you mean": an unknown version is usually a new one, not a typo.
            let help = if versions.is_empty() {
                format!("declare it in MeshService `{service}` under `spec.versions`")
            } else {
                format!(
                    "`{service}` declares {}; add `{}` to its `spec.versions` to route to it",
                    versions.join(", "),
                    b.version
                )
            };
            ctx.error(
                "unknown-version",
                &format!("{f}.version"),
                format!("`{service}` declares no version `{}`", b.version),
                Some(help),
            );
        }
        if b.weight > 100 {
            ctx.error(
                "invalid-weight",
                &format!("{f}.weight"),
                format!("weight {} is over 100", b.weight),
                Some("weights are percentages".into()),
            );
        }
        if let Some(role) = b.role.as_deref()
            && role != crate::resources::BASELINE_ROLE
        {
            ctx.error(
                "invalid-value",
                &format!("{f}.role"),
                format!("unknown role `{role}`"),
                Some(format!(
                    "the only role is `{}` (a rollout's fresh copy of the stable version); \
                     leave `role` out for the version's ordinary instances",
                    crate::resources::BASELINE_ROLE
                )),
            );
        }
        if backends[..i]
            .iter()
            .any(|o| o.version == b.version && o.role == b.role)
        {
            ctx.error(
                "duplicate",
                &format!("{f}.version"),
                format!("version `{}` is listed twice", b.version),
                Some("list each version once and add up its weight".into()),
            );
        }
        total += u64::from(b.weight);
    }
    if total != 100 {
        ctx.error(
            "invalid-weight",
            field,
            format!("weights add up to {total}, not 100"),
            Some("make the weights add up to 100 (they are percentages)".into()),
        );
    }
}

pub(super) fn check_canary(
    ctx: &mut Ctx<'_>,
    spec: &CanaryPolicySpec,
    ns: &str,
    teams: &[ObjectRef],
) {
    let generated = spec.step_weight.is_some() || spec.max_weight.is_some();
    match (spec.steps.is_empty(), generated) {
        (false, true) => ctx.error(
            "conflict",
            "spec.steps",
            "both `steps` and `stepWeight`/`maxWeight` are set".to_owned(),
            Some("keep `steps`, or remove it and keep `stepWeight` with `maxWeight`".into()),
        ),
        (true, false) => ctx.error(
            "missing-field",
            "spec",
            "no steps: give `steps`, or `stepWeight` and `maxWeight`".to_owned(),
            Some("e.g. `steps: [{weight: 5}, {weight: 25}, {weight: 50}]`".into()),
        ),
        _ => {}
    }
    if generated {
        match (spec.step_weight, spec.max_weight) {
            (Some(s), Some(m)) => {
                if !(1..=100).contains(&s) {
                    ctx.error(
                        "invalid-weight",
                        "spec.stepWeight",
                        format!("stepWeight {s} is outside 1-100"),
                        None,
                    );
                }
                if !(1..=100).contains(&m) {
                    ctx.error(
                        "invalid-weight",
                        "spec.maxWeight",
                        format!("maxWeight {m} is outside 1-100"),
                        None,
                    );
                }
                if s > m {
                    ctx.error(
                        "invalid-weight",
                        "spec.stepWeight",
                        format!("stepWeight {s} is larger than maxWeight {m}"),
                        None,
                    );
                }
            }
            (Some(_), None) => ctx.error(
                "missing-field",
                "spec.stepWeight",
                "`stepWeight` needs `maxWeight`".into(),
                Some("add `maxWeight:`".into()),
            ),
            (None, Some(_)) => ctx.error(
                "missing-field",
                "spec.maxWeight",
                "`maxWeight` needs `stepWeight`".into(),
                Some("add `stepWeight:`".into()),
            ),
            (None, None) => {}
        }
    }
    let mut last = 0;
    for (i, step) in spec.steps.iter().enumerate() {
        let f = format!("spec.steps[{i}].weight");
        if !(1..=100).contains(&step.weight) {
            ctx.error(
                "invalid-weight",
                &f,
                format!("weight {} is outside 1-100", step.weight),
                None,
            );
        } else if step.weight <= last {
            ctx.error(
                "invalid-weight",
                &f,
                format!(
                    "weight {} does not rise above the previous step's {last}",
                    step.weight
                ),
                Some("each step must send more traffic to the canary than the one before".into()),
            );
        }
        last = last.max(step.weight);
    }
    let a = &spec.analysis;
    if !(a.alpha > 0.0 && a.alpha < 0.5) {
        ctx.error(
            "invalid-value",
            "spec.analysis.alpha",
            format!("alpha {} is outside (0, 0.5)", a.alpha),
            Some("0.01 means a 1% chance of rolling back a healthy canary".into()),
        );
    }
    let mut names = HashMap::new();
    for (i, m) in a.metrics.iter().enumerate() {
        let base = format!("spec.analysis.metrics[{i}]");
        if let Some(first) = names.insert(m.name.as_str(), i) {
            ctx.error(
                "duplicate",
                &format!("{base}.name"),
                format!("metric `{}` is checked twice", m.name),
                Some(format!("rename it, or merge with metrics[{first}]")),
            );
        }
        if m.relative.is_none() && m.threshold.is_none() {
            ctx.error(
                "missing-field",
                &base,
                format!("metric `{}` checks nothing", m.name),
                Some("add `relative: {margin: …}` and/or `threshold: {min|max: …}`".into()),
            );
        }
        if let Some(q) = m.quantile {
            if m.signal != crate::resources::Signal::Latency {
                ctx.error(
                    "invalid-value",
                    &format!("{base}.quantile"),
                    "`quantile` only applies to `latency`".into(),
                    None,
                );
            } else if !(q > 0.0 && q < 1.0) {
                ctx.error(
                    "invalid-value",
                    &format!("{base}.quantile"),
                    format!("quantile {q} is outside (0, 1)"),
                    Some("e.g. 0.99 for p99".into()),
                );
            }
        }
        if let Some(r) = &m.relative
            && !(r.margin >= 0.0 && r.margin.is_finite())
        {
            ctx.error(
                "invalid-value",
                &format!("{base}.relative.margin"),
                format!("margin {} must be zero or more", r.margin),
                None,
            );
        }
        if let Some(r) = &m.relative
            && r.at_least.is_some()
            && m.signal != crate::resources::Signal::Latency
        {
            ctx.error(
                "invalid-value",
                &format!("{base}.relative.atLeast"),
                "`atLeast` only applies to `latency`".into(),
                Some("for a success rate the margin is already absolute (points)".into()),
            );
        }
        if let Some(t) = &m.threshold {
            match (t.min, t.max) {
                (None, None) => ctx.error(
                    "missing-field",
                    &format!("{base}.threshold"),
                    "the threshold sets neither `min` nor `max`".into(),
                    None,
                ),
                (Some(lo), Some(hi)) if lo > hi => ctx.error(
                    "invalid-value",
                    &format!("{base}.threshold"),
                    format!("min {lo} is above max {hi}"),
                    None,
                ),
                _ => {}
            }
        }
    }
    if let Some(p) = &a.provider.prometheus {
        check_url(ctx, "spec.analysis.provider.prometheus.address", &p.address);
    }
    for (i, t) in spec.notify.teams.iter().enumerate() {
        let team = resolve_team(ns, t, teams);
        if !teams.contains(&team) {
            ctx.error(
                "unknown-team",
                &format!("spec.notify.teams[{i}]"),
                format!("no Team `{team}` is declared"),
                Some(team_suggestion(t, teams)),
            );
        }
    }
}

/// What a callee declares: the RPC surface a grant is checked against.
pub(super) struct Surface<'a> {
    pub(super) endpoints: &'a [RpcPattern],
    pub(super) ports: &'a [Port],
    pub(super) callee: Option<&'a ObjectRef>,
}

/// Warns when a grant or exemption matches nothing the callee declares: usually a typo, and
/// the portal could never offer it. A TCP grant is checked against the declared `ports`
/// instead, and one for a port declared HTTP or gRPC has no effect (the proxy never opens such
/// a port to opaque TCP), which is said too.
pub(super) fn warn_undeclared(
    ctx: &mut Ctx<'_>,
    field: &str,
    pattern: &RpcPattern,
    surface: &Surface<'_>,
) {
    let callee = surface
        .callee
        .map_or_else(|| "the service".to_owned(), ToString::to_string);
    if let RpcPattern::Tcp { port } = pattern {
        let declared = |p: u16| surface.ports.iter().find(|d| d.port == p);
        if let Some(p) = port {
            match declared(*p) {
                Some(d) if d.protocol != Protocol::Tcp => ctx.warning(
                    "tcp-to-http-port",
                    field,
                    format!(
                        "port {p} of {callee} is declared `{}`, and the proxy never opens it to \
                         opaque TCP: `{pattern}` has no effect",
                        protocol_name(d.protocol)
                    ),
                    Some(format!(
                        "grant the port's HTTP or gRPC endpoints instead, or declare port {p} \
                         with `protocol: tcp`"
                    )),
                ),
                None if !surface.ports.is_empty() => ctx.warning(
                    "undeclared-port",
                    field,
                    format!("`{pattern}` names no port that {callee} declares"),
                    Some(format!(
                        "add `{{ port: {p}, protocol: tcp }}` to the MeshService's `ports`, or \
                         fix the port"
                    )),
                ),
                _ => {}
            }
        }
        return;
    }
    let declared = surface.endpoints;
    if declared.is_empty() || declared.iter().any(|e| e.overlaps(pattern)) {
        return;
    }
    ctx.warning(
        "undeclared-endpoint",
        field,
        format!("`{pattern}` matches no endpoint that {callee} declares"),
        Some("add it to the MeshService's `endpoints`, or fix the pattern".into()),
    );
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
    }
}
