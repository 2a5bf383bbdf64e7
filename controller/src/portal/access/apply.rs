//! Applying a request: the grant file (and its git commit or review branch), the commit
//! message, and the messages to the teams.

use super::*;

pub(super) fn grant_of<'a>(
    request: &'a AccessRequest,
    user: &'a User,
    at: SystemTime,
) -> Result<GrantOwned<'a>, GrantError> {
    Ok(GrantOwned {
        caller: ObjectRef::parse_in(DEFAULT_NAMESPACE, &request.caller),
        callee: ObjectRef::parse_in(DEFAULT_NAMESPACE, &request.callee),
        request,
        user,
        at,
    })
}

/// A [`Grant`] with its service references owned.
pub(super) struct GrantOwned<'a> {
    pub(super) caller: ObjectRef,
    pub(super) callee: ObjectRef,
    pub(super) request: &'a AccessRequest,
    pub(super) user: &'a User,
    pub(super) at: SystemTime,
}

impl GrantOwned<'_> {
    pub(super) fn grant(&self) -> Grant<'_> {
        Grant {
            caller: &self.caller,
            callee: &self.callee,
            rpcs: &self.request.rpcs,
            reason: &self.request.reason,
            ephemeral: &self.request.ephemeral,
            requester: self.user,
            request_id: self.request.id,
            at: self.at,
        }
    }
}

/// The requester as recorded.
pub(super) fn requester(request: &AccessRequest) -> User {
    User {
        name: request.requester.clone(),
        email: request.requester_email.clone(),
    }
}

/// Writes the grant (and commits it in a git work tree); returns the request with the file,
/// content, commit and any notes filled in. `reviewer` is set for approvals.
pub(super) fn apply(
    dir: &std::path::Path,
    mut request: AccessRequest,
    user: &User,
    reviewer: Option<(&User, &str)>,
    at: SystemTime,
) -> Result<AccessRequest, GrantError> {
    let requester = requester(&request);
    let owned = grant_of(&request, &requester, at)?;
    let planned = grants::plan(dir, &owned.grant())?;
    let written = grants::write(dir, &planned)?;
    request.file = planned.file.clone();
    request.content = planned.content.clone();
    if let Some(top) = grants::git_toplevel(dir) {
        let message = commit_message(&request, reviewer);
        match grants::commit(&top, &written, &message, user) {
            Ok(id) => request.commit = Some(id),
            Err(e) => request
                .notes
                .push(format!("The grant file was written but not committed: {e}")),
        }
        if let Some(branch) = request.branch.clone()
            && let Err(e) = grants::delete_branch(&top, &branch)
        {
            request
                .notes
                .push(format!("The review branch {branch} was not deleted: {e}"));
        }
    }
    Ok(request)
}

/// Records the planned grant for review: a branch in a git work tree, else only the store.
pub(super) fn draft(
    dir: &std::path::Path,
    mut request: AccessRequest,
    user: &User,
    at: SystemTime,
) -> Result<AccessRequest, GrantError> {
    let owned = grant_of(&request, user, at)?;
    let planned = grants::plan(dir, &owned.grant())?;
    request.file = planned.file.clone();
    request.content = planned.content.clone();
    if let Some(top) = grants::git_toplevel(dir) {
        let branch = format!("sluice/access-{}", request.id);
        let message = commit_message(&request, None);
        match grants::draft_branch(
            &top,
            &dir.join(&planned.file),
            &planned.content,
            &branch,
            &message,
            user,
        ) {
            Ok(_) => request.branch = Some(branch),
            Err(e) => request.notes.push(format!(
                "No review branch was created ({e}); the request waits in the controller's store."
            )),
        }
    }
    Ok(request)
}

pub(super) fn commit_message(request: &AccessRequest, reviewer: Option<(&User, &str)>) -> String {
    let mut m = format!(
        "Grant {} access to {}: {}\n\nRequested by {}{} through the Sluice portal (request #{}).\n",
        request.caller,
        request.callee,
        request.rpcs.join(", "),
        request.requester,
        request
            .requester_email
            .as_deref()
            .map(|e| format!(" <{e}>"))
            .unwrap_or_default(),
        request.id,
    );
    let why = if request.reason.is_empty() {
        "(none given)"
    } else {
        &request.reason
    };
    let _ = write!(
        m,
        "Why: {why}\nEphemeral environments: {}\n",
        request.ephemeral
    );
    if let Some((who, comment)) = reviewer {
        let _ = write!(m, "Approved by {}", who.name);
        if !comment.is_empty() {
            let _ = write!(m, ": {comment}");
        }
        m.push('\n');
    }
    m
}

pub(super) fn summary(request: &AccessRequest) -> String {
    format!(
        "{} → {}: {}",
        request.caller,
        request.callee,
        request.rpcs.join(", ")
    )
}

/// Who hears about it.
pub(super) enum Both {
    /// The caller's and the callee's teams.
    Teams,
    /// The caller's team only (the requester's side, for rejections).
    Requester,
}

pub(super) fn notify(
    state: &AccessState,
    set: &PolicySet,
    request: &AccessRequest,
    kind: &str,
    title: String,
    text: String,
    to: Both,
) {
    let Some(notifier) = &state.notifier else {
        return;
    };
    let caller = ObjectRef::parse_in(DEFAULT_NAMESPACE, &request.caller);
    let callee = ObjectRef::parse_in(DEFAULT_NAMESPACE, &request.callee);
    let mut teams: Vec<&TeamSpec> = team_of(set, &caller).map(|(_, t)| t).into_iter().collect();
    if matches!(to, Both::Teams)
        && let Some((_, t)) = team_of(set, &callee)
    {
        teams.push(t);
    }
    let reason = if request.reason.is_empty() {
        "(none given)".to_owned()
    } else {
        request.reason.clone()
    };
    let mut n = Notification::new(
        format!("access/{}/{kind}", request.id),
        kind,
        Severity::Info,
        title,
    )
    .with_text(text)
    .with_field("caller", &request.caller)
    .with_field("callee", &request.callee)
    .with_field("rpcs", request.rpcs.join(", "))
    .with_field("reason", reason)
    .with_field("requested by", &request.requester)
    .with_field("environment mode", &request.ephemeral)
    .with_field("environment", &request.environment);
    if let Some(who) = &request.decided_by {
        n = n.with_field("reviewed by", who);
    }
    if let Some(comment) = request.comment.as_deref().filter(|c| !c.is_empty()) {
        n = n.with_field("comment", comment);
    }
    let link = format!(
        "{}/access/{}",
        state.public_url.trim_end_matches('/'),
        request.id
    );
    n = n.with_link("request", link);
    // The notifier logs a full queue itself; the audit log has the event either way.
    let _ = notifier.submit(n, targets_for_teams(teams));
}
