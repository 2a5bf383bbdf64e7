//! The read-only access pages: one request (status, diff, the review form for members of the
//! callee's team) and the list of requests with the audit log.

use super::*;

/// `GET /access/<id>` (and the same page with `messages` after a refused review).
pub(super) async fn request_page(
    portal: &Portal,
    state: &AccessState,
    user: &User,
    id: i64,
    messages: &[String],
    status: StatusCode,
) -> Answer {
    let store = portal.plane.store().clone();
    let found = store
        .run(move |s| Ok((requests::get(s, id)?, requests::audit(s, Some(id), 50)?)))
        .await;
    let (request, audit) = match found {
        Ok((Some(r), audit)) => (r, audit),
        Ok((None, _)) => return not_found(user),
        Err(e) => return store_failed(user, &e),
    };
    let mut body = format!(
        "<h1>Access request #{id} <span class=\"pill status-{s}\">{s}</span></h1>",
        s = request.status.as_str()
    );
    for m in messages {
        let _ = write!(body, "<p class=\"error\">{}</p>", escape(m));
    }
    let decided = request.decided_by.as_deref().unwrap_or_default();
    let comment = request.comment.as_deref().unwrap_or_default();
    let banner = match request.status {
        Status::Granted => format!(
            "<p class=\"ok\">Granted: {} may now call {}. The grant is in <code>{}</code>.</p>",
            escape(&request.caller),
            escape(&request.callee),
            escape(&request.file)
        ),
        Status::Approved => format!(
            "<p class=\"ok\">Approved by {}: {} may now call {}. The grant is in <code>{}</code>.</p>",
            escape(decided),
            escape(&request.caller),
            escape(&request.callee),
            escape(&request.file)
        ),
        Status::Rejected => format!("<p class=\"error\">Rejected by {}.</p>", escape(decided)),
        Status::Pending => format!(
            "<p>Waiting for a member of team {} to review it.</p>",
            escape(&request.reviewer_team)
        ),
    };
    body.push_str(&banner);
    let row = |label: &str, value: &str| {
        format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(label),
            escape(value)
        )
    };
    body.push_str("<table>");
    body.push_str(&row(
        "Requested by",
        &match &request.requester_email {
            Some(e) => format!("{} <{e}>", request.requester),
            None => request.requester.clone(),
        },
    ));
    body.push_str(&row("When", &when(request.created_unix_ms)));
    body.push_str(&row("Caller", &request.caller));
    body.push_str(&row("Callee", &request.callee));
    body.push_str(&row("Endpoints", &request.rpcs.join(", ")));
    body.push_str(&row(
        "Why",
        if request.reason.is_empty() {
            "(none given)"
        } else {
            &request.reason
        },
    ));
    body.push_str(&row("Environment", &request.environment));
    body.push_str(&row("Ephemeral environments", &request.ephemeral));
    // An immediate grant was decided by policy; only a review involves the callee's team.
    let team_label = if request.status == Status::Granted {
        "Callee's team"
    } else {
        "Reviewed by team"
    };
    body.push_str(&row(team_label, &request.reviewer_team));
    if let Some(b) = &request.branch {
        body.push_str(&row("Review branch", b));
    }
    if let Some(c) = &request.commit {
        body.push_str(&row("Commit", c));
    }
    if !decided.is_empty() {
        body.push_str(&row("Decided by", decided));
    }
    if !comment.is_empty() {
        body.push_str(&row("Comment", comment));
    }
    body.push_str("</table>");
    for note in &request.notes {
        let _ = write!(body, "<p class=\"error\">{}</p>", escape(note));
    }
    if !request.content.is_empty() {
        let lines: Vec<&str> = request.content.lines().collect();
        let mut diff = format!(
            "--- /dev/null\n+++ b/{}\n@@ -0,0 +1,{} @@\n",
            request.file,
            lines.len()
        );
        for l in lines {
            diff.push('+');
            diff.push_str(l);
            diff.push('\n');
        }
        let _ = write!(
            body,
            "<h2>The change</h2><pre class=\"diff\">{}</pre>",
            escape(&diff)
        );
    }
    if request.status == Status::Pending {
        let policy = portal.plane.policy();
        let callee = ObjectRef::parse_in(DEFAULT_NAMESPACE, &request.callee);
        let member = team_of(&policy.set, &callee).is_some_and(|(_, t)| is_member(t, user));
        if member {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/access/{id}/approve\" class=\"card\">\
<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{token}\">\
<label>Comment <textarea name=\"comment\" rows=\"2\"></textarea></label>\
<button type=\"submit\">Approve</button> \
<button type=\"submit\" formaction=\"/access/{id}/reject\">Reject</button></form>",
                token = escape(&state.csrf.token(user)),
            );
        } else {
            let _ = write!(
                body,
                "<p class=\"muted\">Only members of team {} can approve or reject this request.{}</p>",
                escape(&request.reviewer_team),
                if state.dev_mode {
                    " Dev mode: <a href=\"/dev/act-as\">act as one of them</a>."
                } else {
                    ""
                }
            );
        }
    }
    body.push_str("<h2>History</h2>");
    body.push_str(&audit_table(&audit));
    page(status, &format!("Access request #{id}"), Some(user), &body)
}

/// `GET /access`.
pub(super) async fn list_page(portal: &Portal, user: &User) -> Answer {
    let store = portal.plane.store().clone();
    let found = store
        .run(|s| Ok((requests::list(s)?, requests::audit(s, None, 200)?)))
        .await;
    let (list, audit) = match found {
        Ok(x) => x,
        Err(e) => return store_failed(user, &e),
    };
    let mut body = String::from("<h1>Access requests</h1>");
    if list.is_empty() {
        body.push_str(
            "<p class=\"muted\">No requests yet. Denials link to the form; or \
             <a href=\"/access/new\">request access</a>.</p>",
        );
    } else {
        body.push_str(
            "<table><tr><th>#</th><th>Status</th><th>Caller → callee</th><th>Endpoints</th>\
<th>Requested by</th><th>When</th></tr>",
        );
        for r in &list {
            let _ = write!(
                body,
                "<tr><td><a href=\"/access/{id}\">{id}</a></td><td><span class=\"pill\">{s}</span></td>\
<td>{caller} → {callee}</td><td>{rpcs}</td><td>{who}</td><td>{when}</td></tr>",
                id = r.id,
                s = r.status.as_str(),
                caller = escape(&r.caller),
                callee = escape(&r.callee),
                rpcs = escape(&r.rpcs.join(", ")),
                who = escape(&r.requester),
                when = escape(&when(r.created_unix_ms)),
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Audit log</h2>");
    body.push_str(&audit_table(&audit));
    page(StatusCode::OK, "Access requests", Some(user), &body)
}

pub(super) fn audit_table(audit: &[AuditEntry]) -> String {
    if audit.is_empty() {
        return "<p class=\"muted\">Nothing recorded yet.</p>".into();
    }
    let mut t = String::from(
        "<table class=\"audit\"><tr><th>When</th><th>Who</th><th>What</th><th>Request</th><th>Details</th></tr>",
    );
    for a in audit {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/access/{id}\">#{id}</a></td><td>{}</td></tr>",
            escape(&when(a.at_unix_ms)),
            escape(&a.actor),
            escape(&a.action),
            escape(&a.detail),
            id = a.request_id,
        );
    }
    t.push_str("</table>");
    t
}

pub(super) fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
