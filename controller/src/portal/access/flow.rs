//! What submitting and reviewing a request do, without a word of HTML: validate against the
//! policy in force, decide (at once or reviewed), record, write the grant (and its commit or
//! review branch), tell the teams. The handlers turn the outcomes into pages.

use super::*;

/// What the form shows besides what was typed: the teams, the endpoints on offer, and what
/// submitting will do.
pub(super) struct FormView {
    pub(super) input: FormInput,
    pub(super) caller_team: Option<String>,
    pub(super) callee_team: Option<String>,
    /// `(endpoint, description)`: the callee's declared endpoints, then calls recently denied
    /// to this caller, then anything else the input names (so nothing typed is lost).
    pub(super) offered: Vec<(String, String)>,
    pub(super) decision: Option<String>,
}

/// How the decision sees `user` (dev mode: as every team's member).
pub(super) fn asker<'a>(state: &AccessState, user: &'a User) -> Asker<'a> {
    if state.dev_mode {
        Asker::DevMode
    } else {
        Asker::User(user)
    }
}

pub(super) async fn form_view(
    portal: &Portal,
    state: &AccessState,
    user: &User,
    input: FormInput,
) -> FormView {
    let policy = portal.plane.policy();
    let set = &policy.set;
    let caller = resolve(set, "caller", &input.from).ok();
    let callee = resolve(set, "callee", &input.to).ok();
    let mut offered: Vec<(String, String)> = Vec::new();
    if let Some(spec) = callee
        .as_ref()
        .and_then(|c| set.services.get(c))
        .map(|s| &s.source.doc.spec)
    {
        for e in &spec.endpoints {
            offered.push((e.rpc.clone(), e.description.clone().unwrap_or_default()));
        }
        offered.extend(tcp_offers(spec));
    }
    if let (Some(caller), Some(callee)) = (&caller, &callee) {
        let store = portal.plane.store().clone();
        let (a, b) = (caller.clone(), callee.clone());
        let recent = store
            .run(move |s| {
                requests::recent_denied_rpcs(
                    s,
                    (&a.namespace, &a.name),
                    (&b.namespace, &b.name),
                    RECENT_DENIALS,
                )
            })
            .await
            .unwrap_or_default();
        for rpc in recent {
            if !offered.iter().any(|(r, _)| *r == rpc) {
                offered.push((rpc, "recently denied".into()));
            }
        }
    }
    for rpc in &input.rpcs {
        if !offered.iter().any(|(r, _)| r == rpc) {
            offered.push((rpc.clone(), String::new()));
        }
    }
    let decision = match (&caller, &callee) {
        (Some(caller), Some(callee)) => {
            Some(decide(set, caller, callee, asker(state, user)).sentence)
        }
        _ => None,
    };
    FormView {
        caller_team: caller.as_ref().map(|c| team_name(set, c)),
        callee_team: callee.as_ref().map(|c| team_name(set, c)),
        offered,
        decision,
        input,
    }
}

/// Adds every endpoint the callee declares to `input` ("Select all").
pub(super) fn select_all(portal: &Portal, input: &mut FormInput) {
    let policy = portal.plane.policy();
    let set = &policy.set;
    if let Some(spec) = resolve(set, "callee", &input.to)
        .ok()
        .and_then(|c| set.services.get(&c))
    {
        let declared = spec.source.doc.spec.endpoints.iter().map(|e| e.rpc.clone());
        let tcp = tcp_offers(&spec.source.doc.spec).map(|(rpc, _)| rpc);
        for rpc in declared.chain(tcp) {
            if !input.rpcs.contains(&rpc) {
                input.rpcs.push(rpc);
            }
        }
    }
}

/// `(tcp:PORT, description)` for each port the service declares as opaque TCP: a TCP grant is
/// asked for per port, like an endpoint.
fn tcp_offers(
    spec: &sluice_policy::resources::MeshServiceSpec,
) -> impl Iterator<Item = (String, String)> + '_ {
    spec.ports
        .iter()
        .filter(|p| p.protocol == sluice_policy::resources::Protocol::Tcp)
        .map(|p| {
            let name = p
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            (
                format!("tcp:{}", p.port),
                format!("opaque TCP connections to port {}{name}", p.port),
            )
        })
}

/// Why a submission was not recorded.
pub(super) enum Refused {
    /// Shown on the form, with this status; nothing was recorded.
    Form(Vec<String>, StatusCode),
    /// The store failed.
    Store(crate::store::StoreError),
}

/// `POST /access`: validates, records and applies (or drafts) the request; its id.
pub(super) async fn submit(
    portal: &Portal,
    state: &AccessState,
    user: &User,
    input: &FormInput,
) -> Result<i64, Refused> {
    let policy = portal.plane.policy();
    let set = &policy.set;
    let checked = validate(set, input).map_err(|e| Refused::Form(e, StatusCode::BAD_REQUEST))?;
    let Some(dir) = state.policy_dir.clone() else {
        return Err(Refused::Form(
            vec![
                "This controller runs without a policy directory (--policy), so it cannot write \
                 grants."
                    .to_owned(),
            ],
            StatusCode::SERVICE_UNAVAILABLE,
        ));
    };
    let decision = decide(set, &checked.caller, &checked.callee, asker(state, user));
    let now = SystemTime::now();
    let mut request = AccessRequest {
        id: 0,
        created_unix_ms: unix_ms(now),
        status: Status::Pending,
        requester: user.name.clone(),
        requester_email: user.email.clone(),
        caller: checked.caller.to_string(),
        callee: checked.callee.to_string(),
        rpcs: checked.rpcs.clone(),
        reason: input.reason.clone(),
        ephemeral: input.ephemeral.clone(),
        environment: checked.environment.clone(),
        reviewer_team: decision.reviewer_team.clone(),
        file: String::new(),
        content: String::new(),
        branch: None,
        commit: None,
        decided_by: None,
        decided_unix_ms: None,
        comment: None,
        notes: Vec::new(),
    };
    let _guard = state.lock.lock().await;
    // Check the grant against the policy before recording anything.
    let preview = {
        let (dir, request, user) = (dir.clone(), request.clone(), user.clone());
        blocking(move || grants::plan(&dir, &grant_of(&request, &user, now)?.grant())).await
    };
    if let Err(e) = preview {
        return Err(Refused::Form(vec![e.to_string()], StatusCode::BAD_REQUEST));
    }
    let store = portal.plane.store().clone();
    let audit = AuditEntry {
        at_unix_ms: unix_ms(now),
        request_id: 0,
        actor: user.name.clone(),
        action: if decision.immediate {
            "granted"
        } else {
            "requested"
        }
        .into(),
        detail: summary(&request),
    };
    request.id = {
        let (request, audit) = (request.clone(), audit.clone());
        store
            .run(move |s| requests::insert(s, &request, Some(&audit)))
            .await
            .map_err(Refused::Store)?
    };
    let outcome = {
        let (dir, request, user) = (dir.clone(), request.clone(), user.clone());
        let immediate = decision.immediate;
        blocking(move || {
            if immediate {
                apply(&dir, request, &user, None, now)
            } else {
                draft(&dir, request, &user, now)
            }
        })
        .await
    };
    match outcome {
        Ok(updated) => request = updated,
        Err(e) => request
            .notes
            .push(format!("The grant could not be written: {e}")),
    }
    if decision.immediate
        && request
            .notes
            .iter()
            .all(|n| !n.starts_with("The grant could"))
    {
        request.status = Status::Granted;
        request.decided_unix_ms = Some(unix_ms(SystemTime::now()));
    }
    {
        let request = request.clone();
        store
            .run(move |s| requests::save(s, &request))
            .await
            .map_err(Refused::Store)?;
    }
    let (kind, title, text) = if request.status == Status::Granted {
        (
            "access.granted",
            format!("{} may now call {}", request.caller, request.callee),
            format!(
                "{} granted {} access to {} through the portal; the policy change is live \
                 within a second.",
                user.name, request.caller, request.callee
            ),
        )
    } else {
        (
            "access.requested",
            format!("{} asks for access to {}", request.caller, request.callee),
            format!(
                "{} asks for {} to call {}. A member of team {} can approve or reject it.",
                user.name, request.caller, request.callee, request.reviewer_team
            ),
        )
    };
    notify(state, set, &request, kind, title, text, Both::Teams);
    Ok(request.id)
}

/// A reviewer's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Approve,
    Reject,
}

/// Why a review was refused; shown on the request's page.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReviewError {
    #[error("no such request")]
    NotFound,
    #[error("Only members of team {0} can approve or reject this request.")]
    NotMember(String),
    #[error("You asked for this access: another member of team {0} decides.")]
    OwnRequest(String),
    #[error("This request is already {0}.")]
    Decided(&'static str),
    #[error("The comment is too long (at most {MAX_REASON} bytes).")]
    LongComment,
    #[error("This controller runs without a policy directory (--policy).")]
    NoPolicyDir,
    #[error("The grant could not be applied: {0}")]
    Apply(GrantError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl ReviewError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ReviewError::NotFound => StatusCode::NOT_FOUND,
            ReviewError::NotMember(_) | ReviewError::OwnRequest(_) => StatusCode::FORBIDDEN,
            ReviewError::Decided(_) | ReviewError::Apply(_) => StatusCode::CONFLICT,
            ReviewError::LongComment => StatusCode::BAD_REQUEST,
            ReviewError::NoPolicyDir | ReviewError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Who may review `request`, seen from `user`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Reviewer {
    /// A member of the callee's team who did not ask: may approve or reject.
    Yes,
    /// Not a member of the callee's team.
    NotMember,
    /// The requester, under any of their names: never their own reviewer.
    Requester,
}

pub(super) fn reviewer(set: &PolicySet, request: &AccessRequest, user: &User) -> Reviewer {
    let callee = ObjectRef::parse_in(DEFAULT_NAMESPACE, &request.callee);
    if !team_of(set, &callee).is_some_and(|(_, t)| is_member(t, user)) {
        Reviewer::NotMember
    } else if same_person(set, &requester(request), user) {
        Reviewer::Requester
    } else {
        Reviewer::Yes
    }
}

/// `POST /access/<id>/approve|reject`.
pub(super) async fn review(
    portal: &Portal,
    state: &AccessState,
    user: &User,
    id: i64,
    verdict: Verdict,
    comment: &str,
) -> Result<(), ReviewError> {
    let store = portal.plane.store().clone();
    let _guard = state.lock.lock().await;
    let mut request = store
        .run(move |s| requests::get(s, id))
        .await?
        .ok_or(ReviewError::NotFound)?;
    let policy = portal.plane.policy();
    let set = &policy.set;
    match reviewer(set, &request, user) {
        Reviewer::Yes => {}
        Reviewer::NotMember => return Err(ReviewError::NotMember(request.reviewer_team)),
        Reviewer::Requester => return Err(ReviewError::OwnRequest(request.reviewer_team)),
    }
    if request.status != Status::Pending {
        return Err(ReviewError::Decided(request.status.as_str()));
    }
    let comment = comment.replace("\r\n", "\n").trim().to_owned();
    if comment.len() > MAX_REASON {
        return Err(ReviewError::LongComment);
    }
    let dir = state.policy_dir.clone().ok_or(ReviewError::NoPolicyDir)?;
    let now = SystemTime::now();
    request.decided_by = Some(user.name.clone());
    request.decided_unix_ms = Some(unix_ms(now));
    request.comment = Some(comment.clone());
    let (kind, title, text, to) = if verdict == Verdict::Approve {
        let applied = {
            let (dir, request, user, comment) =
                (dir.clone(), request.clone(), user.clone(), comment.clone());
            blocking(move || apply(&dir, request, &user, Some((&user, &comment)), now)).await
        };
        request = applied.map_err(ReviewError::Apply)?;
        request.status = Status::Approved;
        (
            "access.approved",
            format!("{} may now call {}", request.caller, request.callee),
            format!(
                "{} approved {}'s request for {} to call {}.",
                user.name, request.requester, request.caller, request.callee
            ),
            Both::Teams,
        )
    } else {
        if let (Some(branch), Some(top)) = (request.branch.clone(), grants::git_toplevel(&dir)) {
            let result = blocking(move || grants::delete_branch(&top, &branch)).await;
            if let Err(e) = result {
                request
                    .notes
                    .push(format!("The review branch was not deleted: {e}"));
            }
        }
        request.status = Status::Rejected;
        (
            "access.rejected",
            format!(
                "Access from {} to {} was not granted",
                request.caller, request.callee
            ),
            format!(
                "{} rejected {}'s request for {} to call {}.",
                user.name, request.requester, request.caller, request.callee
            ),
            Both::Requester,
        )
    };
    let audit = AuditEntry {
        at_unix_ms: unix_ms(now),
        request_id: id,
        actor: user.name.clone(),
        action: request.status.as_str().into(),
        detail: if comment.is_empty() {
            summary(&request)
        } else {
            format!("{} — {comment}", summary(&request))
        },
    };
    {
        let request = request.clone();
        store
            .run(move |s| requests::update(s, &request, &audit))
            .await?;
    }
    notify(state, set, &request, kind, title, text, to);
    Ok(())
}

/// Runs file and git work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GrantError> + Send + 'static,
) -> Result<T, GrantError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GrantError::Read(format!("the task failed: {e}")))?
}
