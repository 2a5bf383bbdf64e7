//! The access pages' HTML: the form, one request (status, diff, the review form), and the list
//! with the audit log. maud escapes every value.

use maud::{Markup, html};

use super::*;

/// The form, with `errors` above it.
pub(super) fn form(v: &FormView, token: &str, errors: &[String]) -> Markup {
    let input = &v.input;
    let team = |t: &Option<String>| {
        html! { @if let Some(t) = t { " " span.muted { "team " (t) } } }
    };
    html! {
        h1 { "Request access" }
        @if !errors.is_empty() {
            div.error {
                p { "The request was not sent:" }
                ul { @for e in errors { li { pre { (e) } } } }
            }
        }
        form method="post" action="/access" class="card" {
            input type="hidden" name="csrf" value=(token);
            // Enter in a text field submits this (off-screen) button, not "Select all".
            button type="submit" class="default-submit" tabindex="-1" aria-hidden="true" { "Request access" }
            label { "Caller " input type="text" name="from" value=(input.from) maxlength=(MAX_FIELD); (team(&v.caller_team)) }
            label { "Callee " input type="text" name="to" value=(input.to) maxlength=(MAX_FIELD); (team(&v.callee_team)) }
            label { "Environment " input type="text" name="env" value=(input.env) maxlength="63"; }
            fieldset {
                legend { "Endpoints" }
                @if v.offered.is_empty() {
                    p.muted { "No endpoints to offer: name a declared callee." }
                }
                @for (rpc, description) in &v.offered {
                    label {
                        input type="checkbox" name="rpc" value=(rpc) checked[input.rpcs.contains(rpc)];
                        " " code { (rpc) } " " span.muted { (description) }
                    }
                }
                label {
                    "Another endpoint "
                    input type="text" name="rpc" value="" maxlength=(MAX_FIELD) placeholder="GET /v1/things/{id}";
                }
                button type="submit" name="select" value="all" class="secondary" { "Select all" }
            }
            label { "Why (optional) " textarea name="reason" rows="3" { (input.reason) } }
            fieldset {
                legend { "Ephemeral environments" }
                label {
                    input type="radio" name="ephemeral" value="shared" checked[input.ephemeral != "copy"];
                    " share the stable copy of the callee"
                }
                label {
                    input type="radio" name="ephemeral" value="copy" checked[input.ephemeral == "copy"];
                    " start a fresh copy of the callee in each environment"
                }
            }
            @if !matches!(input.ephemeral.as_str(), "" | "shared" | "copy") {
                // Keep what was sent visible even though it is not one of the choices.
                p.muted { "You sent ephemeral mode " code { (input.ephemeral) } "." }
            }
            @if let Some(decision) = &v.decision {
                p.decision { (decision) }
            }
            button type="submit" { "Request access" }
        }
    }
}

/// What one request's page shows.
pub(super) struct RequestView<'a> {
    pub(super) request: &'a AccessRequest,
    pub(super) audit: &'a [AuditEntry],
    pub(super) reviewer: Reviewer,
    pub(super) dev_mode: bool,
}

/// `GET /access/{id}`, with `messages` (a refused review) above the request.
pub(super) fn request(v: &RequestView<'_>, token: &str, messages: &[String]) -> Markup {
    let r = v.request;
    let id = r.id;
    let decided = r.decided_by.as_deref().unwrap_or_default();
    let comment = r.comment.as_deref().unwrap_or_default();
    let requested_by = match &r.requester_email {
        Some(e) => format!("{} <{e}>", r.requester),
        None => r.requester.clone(),
    };
    // An immediate grant was decided by policy; only a review involves the callee's team.
    let team_label = if r.status == Status::Granted {
        "Callee's team"
    } else {
        "Reviewed by team"
    };
    let row = |label: &str, value: &str| html! { tr { th { (label) } td { (value) } } };
    let dev_hint = html! {
        @if v.dev_mode { " Dev mode: " a href="/dev/act-as" { "act as one of them" } "." }
    };
    html! {
        h1 {
            "Access request #" (id) " "
            span class={ "pill status-" (r.status.as_str()) } { (r.status.as_str()) }
        }
        @for m in messages { p.error { (m) } }
        @match r.status {
            Status::Granted => p.ok {
                "Granted: " (r.caller) " may now call " (r.callee) ". The grant is in "
                code { (r.file) } "."
            },
            Status::Approved => p.ok {
                "Approved by " (decided) ": " (r.caller) " may now call " (r.callee)
                ". The grant is in " code { (r.file) } "."
            },
            Status::Rejected => p.error { "Rejected by " (decided) "." },
            Status::Pending => p {
                "Waiting for a member of team " (r.reviewer_team) " to review it."
            },
        }
        table {
            (row("Requested by", &requested_by))
            (row("When", &when(r.created_unix_ms)))
            (row("Caller", &r.caller))
            (row("Callee", &r.callee))
            (row("Endpoints", &r.rpcs.join(", ")))
            (row("Why", if r.reason.is_empty() { "(none given)" } else { &r.reason }))
            (row("Environment", &r.environment))
            (row("Ephemeral environments", &r.ephemeral))
            (row(team_label, &r.reviewer_team))
            @if let Some(b) = &r.branch { (row("Review branch", b)) }
            @if let Some(c) = &r.commit { (row("Commit", c)) }
            @if !decided.is_empty() { (row("Decided by", decided)) }
            @if !comment.is_empty() { (row("Comment", comment)) }
        }
        @for note in &r.notes { p.error { (note) } }
        @if !r.content.is_empty() {
            h2 { "The change" }
            pre.diff { (diff(&r.file, &r.content)) }
        }
        @if r.status == Status::Pending {
            @match v.reviewer {
                Reviewer::Yes => form method="post" action={ "/access/" (id) "/approve" } class="card" {
                    input type="hidden" name="csrf" value=(token);
                    label { "Comment " textarea name="comment" rows="2" {} }
                    button type="submit" { "Approve" }
                    " "
                    button type="submit" formaction={ "/access/" (id) "/reject" } { "Reject" }
                },
                Reviewer::Requester => p.muted {
                    "You asked for this access: another member of team " (r.reviewer_team)
                    " decides." (dev_hint)
                },
                Reviewer::NotMember => p.muted {
                    "Only members of team " (r.reviewer_team)
                    " can approve or reject this request." (dev_hint)
                },
            }
        }
        h2 { "History" }
        (audit_table(v.audit))
    }
}

/// The grant file as a unified diff against nothing.
fn diff(file: &str, content: &str) -> String {
    let lines: Vec<&str> = content.lines().collect();
    let mut diff = format!(
        "--- /dev/null\n+++ b/{file}\n@@ -0,0 +1,{} @@\n",
        lines.len()
    );
    for l in lines {
        diff.push('+');
        diff.push_str(l);
        diff.push('\n');
    }
    diff
}

/// `GET /access`.
pub(super) fn list(list: &[AccessRequest], audit: &[AuditEntry]) -> Markup {
    html! {
        h1 { "Access requests" }
        @if list.is_empty() {
            p.muted {
                "No requests yet. Denials link to the form; or "
                a href="/access/new" { "request access" } "."
            }
        } @else {
            table {
                tr {
                    th { "#" } th { "Status" } th { "Caller → callee" } th { "Endpoints" }
                    th { "Requested by" } th { "When" }
                }
                @for r in list {
                    tr {
                        td { a href={ "/access/" (r.id) } { (r.id) } }
                        td { span.pill { (r.status.as_str()) } }
                        td { (r.caller) " → " (r.callee) }
                        td { (r.rpcs.join(", ")) }
                        td { (r.requester) }
                        td { (when(r.created_unix_ms)) }
                    }
                }
            }
        }
        h2 { "Audit log" }
        (audit_table(audit))
    }
}

fn audit_table(audit: &[AuditEntry]) -> Markup {
    html! {
        @if audit.is_empty() {
            p.muted { "Nothing recorded yet." }
        } @else {
            table.audit {
                tr { th { "When" } th { "Who" } th { "What" } th { "Request" } th { "Details" } }
                @for a in audit {
                    tr {
                        td { (when(a.at_unix_ms)) }
                        td { (a.actor) }
                        td { (a.action) }
                        td { a href={ "/access/" (a.request_id) } { "#" (a.request_id) } }
                        td { (a.detail) }
                    }
                }
            }
        }
    }
}

pub(super) fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
