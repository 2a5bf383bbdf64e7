//! What a request may ask for, and what happens to it: the form's input, its validation
//! against the policy in force, and the seed's rule (granted at once, or reviewed).

use super::*;

/// What the form holds, exactly as typed (re-rendered on errors so nothing is lost).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FormInput {
    pub(super) from: String,
    pub(super) to: String,
    pub(super) env: String,
    pub(super) rpcs: Vec<String>,
    pub(super) reason: String,
    pub(super) ephemeral: String,
}

/// The form's fields as sent (`/access/new?…` names the same ones).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct AccessFields {
    /// The caller.
    pub from: String,
    /// The callee.
    pub to: String,
    /// The caller's environment.
    pub env: String,
    /// The endpoints (ticked boxes and the "another endpoint" box).
    pub rpc: Vec<String>,
    /// Why.
    pub reason: String,
    /// `shared` or `copy`.
    pub ephemeral: String,
    /// `all`: show the form again with every endpoint ticked.
    pub select: String,
}

impl FormInput {
    pub(super) fn from_fields(fields: &AccessFields) -> FormInput {
        let mut rpcs: Vec<String> = Vec::new();
        for v in &fields.rpc {
            if !v.trim().is_empty() && !rpcs.contains(v) {
                rpcs.push(v.trim().to_owned());
            }
        }
        FormInput {
            from: fields.from.trim().to_owned(),
            to: fields.to.trim().to_owned(),
            env: fields.env.trim().to_owned(),
            rpcs,
            // Browsers send CRLF for textarea line breaks; the grant file uses LF.
            reason: fields.reason.replace("\r\n", "\n").trim().to_owned(),
            ephemeral: fields.ephemeral.trim().to_owned(),
        }
    }
}

/// The decision the form announces and the submission follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Decision {
    pub(super) immediate: bool,
    pub(super) sentence: String,
    pub(super) reviewer_team: String,
}

/// The team owning `service`: `ns/team` as written, else in the service's namespace, else in
/// `default` (the lookup validation uses).
pub(super) fn team_of<'a>(
    set: &'a PolicySet,
    service: &ObjectRef,
) -> Option<(ObjectRef, &'a TeamSpec)> {
    let spec = &set.services.get(service)?.source.doc.spec;
    let candidates = if spec.team.contains('/') {
        vec![ObjectRef::parse_in(DEFAULT_NAMESPACE, &spec.team)]
    } else {
        vec![
            ObjectRef::new(&service.namespace, &spec.team),
            ObjectRef::new(DEFAULT_NAMESPACE, &spec.team),
        ]
    };
    candidates
        .into_iter()
        .find_map(|r| set.teams.get(&r).map(|t| (r, &t.doc.spec)))
}

pub(super) fn team_name(set: &PolicySet, service: &ObjectRef) -> String {
    set.services
        .get(service)
        .map(|s| s.source.doc.spec.team.clone())
        .unwrap_or_default()
}

/// Who asks, as far as the decision goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Asker<'a> {
    /// A user: an immediate grant needs them in the caller's team.
    User(&'a User),
    /// Dev mode: the person at the keyboard plays every part (and can edit the policy
    /// directory directly), so they speak for every team.
    DevMode,
}

/// Immediate when the callee is `open`, the caller's team does not require review, and the
/// asker is a member of the caller's team (a team's "no review" is for its own people).
pub(super) fn decide(
    set: &PolicySet,
    caller: &ObjectRef,
    callee: &ObjectRef,
    asker: Asker<'_>,
) -> Decision {
    let callee_team = team_name(set, callee);
    let review = |why: String| Decision {
        immediate: false,
        sentence: format!("Submitting sends a request to team {callee_team}: {why}."),
        reviewer_team: callee_team.clone(),
    };
    let security = set
        .services
        .get(callee)
        .map(|s| s.source.doc.spec.security)
        .unwrap_or(SecurityLevel::Restricted);
    if security == SecurityLevel::Restricted {
        return review(format!("{callee} is restricted"));
    }
    let caller_team = team_name(set, caller);
    match team_of(set, caller).map(|(_, t)| (t.review, t)) {
        Some((ReviewRequirement::Optional, team)) if !speaks_for(team, asker) => {
            let who = match asker {
                Asker::User(u) => u.name.as_str(),
                Asker::DevMode => "the dev user",
            };
            review(format!(
                "{who} is not a member of team {caller_team}, which owns {caller}"
            ))
        }
        Some((ReviewRequirement::Optional, _)) => Decision {
            immediate: true,
            sentence: format!(
                "Submitting grants access at once: {callee} is open and {caller_team} lets its \
                 services get access without review."
            ),
            reviewer_team: callee_team.clone(),
        },
        Some((ReviewRequirement::Required, _)) => review(format!(
            "team {caller_team} asks for review of its services' access"
        )),
        None => review(format!("team {caller_team} is not declared")),
    }
}

fn speaks_for(team: &TeamSpec, asker: Asker<'_>) -> bool {
    match asker {
        Asker::User(user) => is_member(team, user),
        Asker::DevMode => true,
    }
}

/// Whether `user` is in `team` (by name or email, case-insensitively).
pub(super) fn is_member(team: &TeamSpec, user: &User) -> bool {
    team.members.iter().any(|m| matches_member(m, user))
}

fn matches_member(m: &TeamMember, user: &User) -> bool {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    same(&m.name, &user.name)
        || same(&m.email, &user.name)
        || user.email.as_deref().is_some_and(|e| same(&m.email, e))
}

/// Whether `a` and `b` are the same person: a name or email in common, or both matching one
/// member of a team (`pat` with email `pat@shop.example` and `Pat Payments`).
pub(super) fn same_person(set: &PolicySet, a: &User, b: &User) -> bool {
    let ids = |u: &User| {
        let mut ids = vec![u.name.to_lowercase()];
        ids.extend(u.email.as_deref().map(str::to_lowercase));
        ids
    };
    let (ia, ib) = (ids(a), ids(b));
    ia.iter().any(|i| ib.contains(i))
        || set.teams.values().any(|t| {
            t.doc
                .spec
                .members
                .iter()
                .any(|m| matches_member(m, a) && matches_member(m, b))
        })
}

/// A declared service, or a message saying what is wrong.
pub(super) fn resolve(set: &PolicySet, label: &str, written: &str) -> Result<ObjectRef, String> {
    if written.is_empty() {
        return Err(format!("Say which service is the {label}."));
    }
    if written.len() > MAX_FIELD {
        return Err(format!("The {label} name is too long."));
    }
    let wanted = ObjectRef::parse_in(DEFAULT_NAMESPACE, written);
    if set.services.contains_key(&wanted) {
        return Ok(wanted);
    }
    let names: Vec<String> = set.services.keys().map(ToString::to_string).collect();
    let hint = match did_you_mean(written, &names) {
        Some(s) => format!(" Did you mean {s}?"),
        None if names.is_empty() => String::new(),
        None => format!(" Declared services: {}.", names.join(", ")),
    };
    Err(format!(
        "The {label} `{written}` is not a declared service.{hint}"
    ))
}

/// The ports `service` declares as opaque TCP (`protocol: tcp`), in declaration order: the
/// only ones a TCP grant can be asked for.
pub(super) fn tcp_ports(set: &PolicySet, service: &ObjectRef) -> Vec<u16> {
    set.services
        .get(service)
        .map(|s| {
            s.source
                .doc
                .spec
                .ports
                .iter()
                .filter(|p| p.protocol == sluice_policy::resources::Protocol::Tcp)
                .map(|p| p.port)
                .collect()
        })
        .unwrap_or_default()
}

/// Everything wrong with the input, and the parsed caller, callee and endpoints when right.
pub(super) struct Checked {
    pub(super) caller: ObjectRef,
    pub(super) callee: ObjectRef,
    pub(super) rpcs: Vec<String>,
    pub(super) environment: String,
}

pub(super) fn validate(set: &PolicySet, input: &FormInput) -> Result<Checked, Vec<String>> {
    let mut errors = Vec::new();
    let caller = resolve(set, "caller", &input.from)
        .map_err(|e| errors.push(e))
        .ok();
    let callee = resolve(set, "callee", &input.to)
        .map_err(|e| errors.push(e))
        .ok();
    let mut rpcs = Vec::new();
    if input.rpcs.is_empty() {
        errors.push("Tick at least one endpoint.".into());
    }
    if input.rpcs.len() > MAX_RPCS {
        errors.push(format!("At most {MAX_RPCS} endpoints per request."));
    }
    let endpoints = callee
        .as_ref()
        .and_then(|c| set.services.get(c))
        .map(|s| s.endpoints.clone());
    let tcp_ports = callee
        .as_ref()
        .map(|c| tcp_ports(set, c))
        .unwrap_or_default();
    for rpc in &input.rpcs {
        if rpc.len() > MAX_FIELD {
            errors.push("An endpoint is too long.".into());
            continue;
        }
        match RpcPattern::parse(rpc) {
            Err(e) => errors.push(format!(
                "`{rpc}` is not an endpoint: {}; {}.",
                e.reason, e.help
            )),
            Ok(RpcPattern::Tcp { port }) => {
                // Opaque TCP is granted per declared `tcp` port only: `tcp` (any port) would
                // also open ports added later, and a port declared HTTP or gRPC is never
                // opaque (the proxy refuses non-HTTP bytes there), so such a grant would be a
                // lie on the form.
                let Some(callee) = &callee else { continue };
                let offer = if tcp_ports.is_empty() {
                    format!("{callee} declares no port with `protocol: tcp`")
                } else {
                    format!(
                        "it declares {}",
                        tcp_ports
                            .iter()
                            .map(|p| format!("`tcp:{p}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                match port {
                    None => errors.push(format!(
                        "`{rpc}` would open every port of {callee} to opaque TCP; name one port: {offer}."
                    )),
                    Some(p) if !tcp_ports.contains(&p) => errors.push(format!(
                        "{callee} does not take opaque TCP on port {p}; {offer}."
                    )),
                    Some(p) => {
                        let canonical = format!("tcp:{p}");
                        if !rpcs.contains(&canonical) {
                            rpcs.push(canonical);
                        }
                    }
                }
            }
            Ok(pattern) => {
                if let (Some(endpoints), Some(callee)) = (&endpoints, &callee)
                    && !endpoints.iter().any(|e| pattern.is_covered_by(e))
                {
                    errors.push(format!(
                        "{callee} does not declare `{rpc}`; it declares {}.",
                        endpoints
                            .iter()
                            .map(|e| format!("`{e}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    continue;
                }
                let canonical = pattern.to_string();
                if !rpcs.contains(&canonical) {
                    rpcs.push(canonical);
                }
            }
        }
    }
    if input.reason.len() > MAX_REASON {
        errors.push(format!(
            "The reason is too long ({} bytes; at most {MAX_REASON}).",
            input.reason.len()
        ));
    }
    if input
        .reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        errors.push("The reason contains control characters.".into());
    }
    if !matches!(input.ephemeral.as_str(), "shared" | "copy") {
        errors.push(format!(
            "`{}` is not an ephemeral-environment mode: choose shared or copy.",
            input.ephemeral
        ));
    }
    let environment = if input.env.is_empty() {
        "stable".to_owned()
    } else {
        input.env.clone()
    };
    if environment.len() > 63
        || !environment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errors.push(format!(
            "`{environment}` is not an environment name (letters, digits, `-`, `_`, `.`; at \
             most 63)."
        ));
    }
    match (caller, callee) {
        (Some(caller), Some(callee)) if errors.is_empty() => Ok(Checked {
            caller,
            callee,
            rpcs,
            environment,
        }),
        _ => Err(errors),
    }
}
