//! `sluice policy explain DIR --from A --to B --rpc CALL`: the decision the proxy would make,
//! and why.
//!
//! The set is compiled exactly as the proxy compiles it ([`PolicySet::compile`]), so the answer
//! here is the answer in production. Beyond the verdict it tells what a product engineer needs
//! next: the rule that allowed the call and why that grant exists, or for a denial the link to
//! ask for access, whether that request will need review, and what the caller may already call.

use std::io::Write;

use serde::Serialize;
use sluice_policy::authz::{Caller, Decision, Verdict};
use sluice_policy::diagnostic::{did_you_mean, render};
use sluice_policy::resources::{ReviewRequirement, SecurityLevel};
use sluice_policy::rpc::{Rpc, RpcPattern};
use sluice_policy::validate::{CallerSelector, LoadError, ObjectRef};
use sluice_policy::{PolicySet, Snapshot};

use crate::{CliError, ExplainArgs, Format, Outcome, Paint, Terminal};

/// What `--from unauthenticated` means: a caller without a mesh identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// Everything `explain` reports; also the `--format json` output, so field names are part of
/// the CLI's contract with scripts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Explanation {
    caller: String,
    service: String,
    rpc: String,
    environment: String,
    /// Whether the call goes through (also when it is only audited).
    allowed: bool,
    /// `allow`, `audit-deny` or `deny`.
    verdict: &'static str,
    /// A stable code, e.g. `granted`, `no-rule-allows`.
    reason: &'static str,
    /// The decision in one sentence.
    explanation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
    /// Why the matching grant or exemption exists, as its author wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_reason: Option<String>,
    /// For calls that are (or would be) denied: where to ask for access.
    #[serde(skip_serializing_if = "Option::is_none")]
    access_request_url: Option<String>,
    /// For calls that are (or would be) denied: whether a request for access will be reviewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<String>,
    /// The declared endpoint of the service this call is, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    /// What the caller may already call on this service.
    already_granted: Vec<String>,
}

pub(crate) fn run(
    args: &ExplainArgs,
    terminal: Terminal,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let paint = Paint {
        enabled: terminal.use_color(args.color),
    };
    let set = match PolicySet::load(&args.dir) {
        Ok(set) => set,
        Err(LoadError::Read(e)) => return Err(e.into()),
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => {
            // The errors go to stderr: stdout is reserved for the answer, which there is none.
            for d in diagnostics.iter().filter(|d| d.is_error()) {
                writeln!(err, "{}", render(d, &sources, paint.diagnostic_style()))?;
            }
            return Err(CliError::PolicyInvalid);
        }
    };
    let snapshot = set.compile();
    let service = resolve_service(&snapshot, &args.to)?;
    let caller = if args.from == UNAUTHENTICATED {
        Caller::Unauthenticated
    } else {
        Caller::Service(resolve_service(&snapshot, &args.from)?)
    };
    let rpc = parse_call(&args.rpc)?;
    let mut decision = snapshot.decide(&caller, &service.namespace, &service.name, &rpc);
    // What the injected sidecar adds to the policy: the pod's kubelet probes.
    let probes = match &args.pod {
        Some(file) => crate::kubernetes::manifests::probes_of_service(file, &service.name)
            .map_err(CliError::Pod)?,
        None => Default::default(),
    };
    if decision.verdict != Verdict::Allow
        && let Some(probe) = probes.decide(args.port, &rpc)
    {
        decision = probe;
    }
    let explanation = explain(
        &set, &snapshot, &caller, &service, &rpc, &args.env, &decision,
    );
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &explanation).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Format::Human => print_human(out, &explanation, decision.verdict, paint)?,
    }
    Ok(if decision.is_allowed() {
        Outcome::Success
    } else {
        Outcome::Denied
    })
}

/// `payments` or `shop/payments`, which must be a declared service: explaining a call to a
/// typo would only ever say "denied by default".
fn resolve_service(snapshot: &Snapshot, written: &str) -> Result<ObjectRef, CliError> {
    let wanted = ObjectRef::parse_in(sluice_policy::resources::DEFAULT_NAMESPACE, written);
    if snapshot.service(&wanted.namespace, &wanted.name).is_some() {
        return Ok(wanted);
    }
    let declared: Vec<String> = snapshot
        .services()
        .keys()
        .map(ToString::to_string)
        .collect();
    let hint = match did_you_mean(written, &declared) {
        Some(s) => Some(format!("did you mean `{s}`?")),
        None if declared.is_empty() => None,
        None => Some(format!("declared services: {}", declared.join(", "))),
    };
    Err(CliError::UnknownService {
        name: written.to_owned(),
        hint,
    })
}

/// A concrete call (`GET /v1/charges/ch_1`), or an endpoint template as declared
/// (`GET /v1/charges/{id}`), which is explained for "any id": a `{param}` segment is matched
/// only by patterns that accept any value there, which is exactly the question asked.
fn parse_call(written: &str) -> Result<Rpc, CliError> {
    let concrete_error = match Rpc::parse(written) {
        Ok(rpc) => return Ok(rpc),
        Err(e) => e,
    };
    match RpcPattern::parse(written) {
        Ok(
            template @ RpcPattern::Http {
                method: Some(_),
                rest: false,
                ..
            },
        ) => {
            // The canonical form is `METHOD /path/{param}`: use its path as written.
            let canonical = template.to_string();
            match canonical.split_once(' ') {
                Some((method, path)) => Ok(Rpc::http(method, path)),
                None => Err(concrete_error.into()),
            }
        }
        _ => Err(concrete_error.into()),
    }
}

fn explain(
    set: &PolicySet,
    snapshot: &Snapshot,
    caller: &Caller,
    service: &ObjectRef,
    rpc: &Rpc,
    environment: &str,
    decision: &Decision,
) -> Explanation {
    let policies = || {
        set.access_policies
            .iter()
            .filter(move |p| &p.service == service)
    };
    let grant_reason = decision.policy.as_deref().and_then(|policy_name| {
        let policy = policies().find(|p| &*p.name == policy_name)?;
        let rule_name = decision.rule.as_deref()?;
        if let Some(rule) = policy.rules.iter().find(|r| &*r.name == rule_name) {
            return Some(rule.reason.clone());
        }
        // Exemptions are named `unauthenticated[N]`.
        let index: usize = rule_name
            .strip_prefix("unauthenticated[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        policy
            .unauthenticated
            .get(index)
            .map(|(_, why)| why.clone())
    });
    let already_granted: Vec<String> = match caller.identity() {
        None => Vec::new(),
        Some(identity) => policies()
            .flat_map(|p| &p.rules)
            .filter(|r| {
                r.from.iter().any(|c| match c {
                    CallerSelector::AnyService => true,
                    CallerSelector::Service(s) => s == identity,
                })
            })
            .flat_map(|r| r.allow.iter().map(ToString::to_string))
            .collect(),
    };
    let info = snapshot.service(&service.namespace, &service.name);
    // Opaque TCP names a port, which the service declares under `ports`, not `endpoints`.
    let endpoint = match rpc {
        Rpc::Tcp { port } => info
            .and_then(|i| i.ports.iter().find(|p| p.port == *port))
            .map(|p| {
                let protocol = serde_json::to_value(p.protocol)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("port {port} (declared `{protocol}`)")
            }),
        _ => info
            .and_then(|i| i.endpoints.iter().find(|e| e.matches(rpc)))
            .map(ToString::to_string),
    };
    let denied = decision.verdict != Verdict::Allow;
    let access_request_url = denied.then(|| {
        let offered = sluice_policy::link::offered_rpc(endpoint.as_deref(), &rpc.to_string());
        snapshot.access_request_link(caller, &service.to_string(), &offered, environment)
    });
    let review = if denied {
        review_needed(set, snapshot, caller, service)
    } else {
        None
    };
    Explanation {
        caller: caller.to_string(),
        service: service.to_string(),
        rpc: rpc.to_string(),
        environment: environment.to_owned(),
        allowed: decision.is_allowed(),
        verdict: decision.verdict.as_str(),
        reason: decision.reason.as_str(),
        explanation: decision.explain(),
        policy: decision.policy.as_deref().map(str::to_owned),
        rule: decision.rule.as_deref().map(str::to_owned),
        pattern: decision.pattern.as_deref().map(str::to_owned),
        grant_reason,
        access_request_url,
        review,
        endpoint,
        already_granted,
    }
}

/// Whether a request for this access will be reviewed, and by whom: restricted services always
/// review; open ones only when the caller's team asks for review.
fn review_needed(
    set: &PolicySet,
    snapshot: &Snapshot,
    caller: &Caller,
    service: &ObjectRef,
) -> Option<String> {
    let callee = snapshot.service(&service.namespace, &service.name)?;
    if callee.security == SecurityLevel::Restricted {
        return Some(format!(
            "required: `{service}` is restricted, so team `{}` reviews every grant",
            callee.team
        ));
    }
    let identity = caller.identity()?;
    let caller_team = &snapshot.service(&identity.namespace, &identity.name)?.team;
    let team = set
        .teams
        .get(&ObjectRef::new(&identity.namespace, caller_team))?;
    Some(match team.doc.spec.review {
        ReviewRequirement::Required => format!(
            "required: team `{caller_team}` asks for review of its services' grants; team `{}` \
             reviews",
            callee.team
        ),
        ReviewRequirement::Optional => format!(
            "not needed: `{service}` is open and team `{caller_team}` chose speed, so the grant \
             applies at once and is announced to team `{}`",
            callee.team
        ),
    })
}

fn print_human(
    out: &mut dyn Write,
    e: &Explanation,
    verdict: Verdict,
    paint: Paint,
) -> std::io::Result<()> {
    let (colour, word) = match verdict {
        Verdict::Allow => (Paint::GREEN, "allowed"),
        Verdict::AuditDeny => (Paint::YELLOW, "allowed (audit: would be denied)"),
        Verdict::Deny => (Paint::RED, "denied"),
    };
    writeln!(
        out,
        "{} → {}: {}  [environment {}]",
        e.caller, e.service, e.rpc, e.environment
    )?;
    writeln!(out, "{}", paint.paint(colour, word))?;
    // The verdict is on the line above; don't say "denied: denied".
    let why = e
        .explanation
        .strip_prefix("denied: ")
        .or_else(|| e.explanation.strip_prefix("allowed: "))
        .unwrap_or(&e.explanation);
    writeln!(out, "  why:      {why}")?;
    if let Some(why) = &e.grant_reason {
        writeln!(out, "  grant:    {why}")?;
    }
    if e.rpc.starts_with("tcp:") {
        writeln!(
            out,
            "  kind:     opaque TCP, decided once per connection; only `tcp` or `tcp:PORT` \
             grants it, never an HTTP rule"
        )?;
    }
    if e.reason == sluice_policy::authz::Reason::KubeletProbe.as_str() {
        writeln!(
            out,
            "  probe:    declared in the pod spec, so the injected sidecar lets the kubelet's \
             plain-text call through; no AccessPolicy needs an `unauthenticated` exemption for it"
        )?;
        return Ok(());
    }
    match &e.endpoint {
        Some(endpoint) => writeln!(out, "  endpoint: {endpoint}")?,
        None if e.rpc.starts_with("tcp:") => writeln!(
            out,
            "  endpoint: the port is not declared; add it to the service's `ports` with \
             `protocol: tcp`"
        )?,
        None => writeln!(
            out,
            "  endpoint: none declared matches; add it to the service's `endpoints` so the \
             access form offers it"
        )?,
    }
    if let Some(link) = &e.access_request_url {
        writeln!(out, "  request:  {link}")?;
    }
    if let Some(review) = &e.review {
        writeln!(out, "  review:   {review}")?;
    }
    if e.access_request_url.is_some() && !e.already_granted.is_empty() {
        writeln!(
            out,
            "  granted:  {} may already call {}",
            e.caller,
            e.already_granted.join(", ")
        )?;
    }
    Ok(())
}
