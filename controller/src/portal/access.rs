//! `/access/…`: the access-request form every denial links to, requests and their review, and
//! the audit log.
//!
//! | route | answer |
//! |---|---|
//! | `GET /access/new?from&to&rpc&env` | the form, pre-filled from the denial |
//! | `POST /access` | submit (or `select=all`: the form again with every endpoint ticked) |
//! | `GET /access` | requests, newest first, and the audit log |
//! | `GET /access/<id>` | one request: status, the grant as a diff, the review form |
//! | `POST /access/<id>/approve`, `/reject` | a review by a member of the callee's team |
//!
//! The decision follows policy: a grant applies at once when the callee is `open` and the
//! caller's team has `review: optional`; everything else is reviewed by the callee's team.
//! Grants are written by [`super::grants`]. Every POST carries the CSRF token of
//! [`super::auth`]; every value reaches the page through [`escape`].

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use sluice_policy::PolicySet;
use sluice_policy::diagnostic::did_you_mean;
use sluice_policy::resources::{
    DEFAULT_NAMESPACE, ReviewRequirement, SecurityLevel, Severity, TeamSpec,
};
use sluice_policy::rpc::RpcPattern;
use sluice_policy::validate::ObjectRef;

use super::auth::{CSRF_FIELD, CsrfKey, same_origin};
use super::grants::{self, Grant, GrantError};
use super::html::{escape, page};
use super::store::{self as requests, AccessRequest, AuditEntry, Status};
use super::{Answer, Portal, User};
use crate::notify::{Notification, Notifier, targets_for_teams};
use crate::store::unix_ms;

mod pages;
use pages::*;

mod decide;
use decide::*;

mod apply;
use apply::*;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest reason or review comment accepted, in bytes.
pub const MAX_REASON: usize = 4096;
/// The most endpoints one request may name.
pub const MAX_RPCS: usize = 64;
/// The longest endpoint, service or environment name accepted.
const MAX_FIELD: usize = 256;
/// Recently denied calls offered on the form.
const RECENT_DENIALS: i64 = 20;

/// What the access pages need besides the [`Portal`].
#[derive(Debug)]
pub struct AccessState {
    /// Where grants are written; without it nothing can be granted.
    pub policy_dir: Option<PathBuf>,
    /// The portal's base URL for links in notifications (`http://localhost:7070`).
    pub public_url: String,
    /// Sends the team messages.
    pub notifier: Option<Notifier>,
    /// Signs and checks the forms' CSRF tokens.
    pub csrf: CsrfKey,
    /// Serializes changes to the policy directory, so two grants never pick the same file.
    pub lock: tokio::sync::Mutex<()>,
    /// Dev mode (one machine): pages offer `/dev/act-as` where only another person could act.
    pub dev_mode: bool,
}

/// Handles a `/access…` request from `user`.
pub async fn handle(
    portal: &Portal,
    state: &AccessState,
    req: Request<Incoming>,
    user: &User,
) -> Answer {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<String> = path.split('/').skip(2).map(str::to_owned).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, []) => list_page(portal, user).await,
        (&Method::GET, ["new"]) => {
            let query = req.uri().query().unwrap_or_default();
            let fields = parse_form(query);
            let mut input = FormInput::from_fields(&fields);
            if input.ephemeral.is_empty() {
                input.ephemeral = "shared".into();
            }
            form_page(portal, state, user, &input, &[], StatusCode::OK).await
        }
        (&Method::GET, [id]) => match id.parse::<i64>() {
            Ok(id) => request_page(portal, state, user, id, &[], StatusCode::OK).await,
            Err(_) => not_found(user),
        },
        (&Method::POST, rest @ ([] | [_, "approve" | "reject"])) => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            let fields = match checked_form(state, req, user).await {
                Ok(fields) => fields,
                Err(answer) => return answer,
            };
            match rest.as_slice() {
                [id, action] => match id.parse::<i64>() {
                    Ok(id) => review(portal, state, user, id, action, &fields).await,
                    Err(_) => not_found(user),
                },
                _ => submit(portal, state, user, &fields).await,
            }
        }
        (_, [] | ["new"] | [_] | [_, _]) => page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            Some(user),
            "<h1>Method not allowed</h1><p>Use the forms on these pages.</p>",
        ),
        _ => not_found(user),
    }
}

fn not_found(user: &User) -> Answer {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        Some(user),
        "<h1>Not found</h1><p><a href=\"/access\">All access requests</a></p>",
    )
}

/// Reads a form body (at most [`MAX_BODY`]) and checks its CSRF token and origin.
pub(super) async fn checked_form(
    state: &AccessState,
    req: Request<Incoming>,
    user: &User,
) -> Result<Vec<(String, String)>, Answer> {
    let origin_ok = same_origin(req.headers());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Err(page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                Some(user),
                &format!(
                    "<h1>Request too large</h1><p class=\"error\">Forms are limited to {} KiB.</p>",
                    MAX_BODY / 1024
                ),
            ));
        }
    };
    let text = String::from_utf8_lossy(&body);
    let fields = parse_form(&text);
    let token = field(&fields, CSRF_FIELD).unwrap_or_default();
    if !origin_ok || !state.csrf.verify(user, token) {
        let why = if origin_ok {
            "The form's security token is missing or not valid for you (the portal may have \
             restarted since the page was loaded)."
        } else {
            "The form was submitted from another site."
        };
        return Err(page(
            StatusCode::FORBIDDEN,
            "Refused",
            Some(user),
            &format!(
                "<h1>Refused</h1><p class=\"error\">{why} Nothing was changed. Go back, reload \
                 the page, and submit it again.</p>"
            ),
        ));
    }
    Ok(fields)
}

/// Decodes `application/x-www-form-urlencoded` (also a query string): `+` is a space,
/// `%XX` a byte; invalid UTF-8 becomes U+FFFD rather than an error.
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The form, with `errors` above it.
async fn form_page(
    portal: &Portal,
    state: &AccessState,
    user: &User,
    input: &FormInput,
    errors: &[String],
    status: StatusCode,
) -> Answer {
    let policy = portal.plane.policy();
    let set = &policy.set;
    let caller = resolve(set, "caller", &input.from).ok();
    let callee = resolve(set, "callee", &input.to).ok();
    // Offered: the callee's declared endpoints, then calls recently denied to this caller, then
    // anything else the input names (so nothing typed is lost).
    let mut offered: Vec<(String, String)> = Vec::new();
    if let Some(spec) = callee
        .as_ref()
        .and_then(|c| set.services.get(c))
        .map(|s| &s.source.doc.spec)
    {
        for e in &spec.endpoints {
            offered.push((e.rpc.clone(), e.description.clone().unwrap_or_default()));
        }
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
    let mut body = String::from("<h1>Request access</h1>");
    if !errors.is_empty() {
        body.push_str("<div class=\"error\"><p>The request was not sent:</p><ul>");
        for e in errors {
            let _ = write!(body, "<li><pre>{}</pre></li>", escape(e));
        }
        body.push_str("</ul></div>");
    }
    let describe = |s: &Option<ObjectRef>| match s {
        Some(s) => format!(
            " <span class=\"muted\">team {}</span>",
            escape(&team_name(set, s))
        ),
        None => String::new(),
    };
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/access\" class=\"card\">\
<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{token}\">\
<button type=\"submit\" class=\"default-submit\" tabindex=\"-1\" aria-hidden=\"true\">Request access</button>\
<label>Caller <input type=\"text\" name=\"from\" value=\"{from}\" maxlength=\"{MAX_FIELD}\">{from_team}</label>\
<label>Callee <input type=\"text\" name=\"to\" value=\"{to}\" maxlength=\"{MAX_FIELD}\">{to_team}</label>\
<label>Environment <input type=\"text\" name=\"env\" value=\"{env}\" maxlength=\"63\"></label>\
<fieldset><legend>Endpoints</legend>",
        token = escape(&state.csrf.token(user)),
        from = escape(&input.from),
        to = escape(&input.to),
        env = escape(&input.env),
        from_team = describe(&caller),
        to_team = describe(&callee),
    );
    if offered.is_empty() {
        body.push_str("<p class=\"muted\">No endpoints to offer: name a declared callee.</p>");
    }
    for (rpc, description) in &offered {
        let checked = if input.rpcs.contains(rpc) {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<label><input type=\"checkbox\" name=\"rpc\" value=\"{v}\"{checked}> <code>{v}</code> \
<span class=\"muted\">{d}</span></label>",
            v = escape(rpc),
            d = escape(description),
        );
    }
    let _ = write!(
        body,
        "<label>Another endpoint <input type=\"text\" name=\"rpc\" value=\"\" maxlength=\"{MAX_FIELD}\" \
placeholder=\"GET /v1/things/{{id}}\"></label>\
<button type=\"submit\" name=\"select\" value=\"all\" class=\"secondary\">Select all</button></fieldset>\
<label>Why (optional) <textarea name=\"reason\" rows=\"3\">{reason}</textarea></label>\
<fieldset><legend>Ephemeral environments</legend>\
<label><input type=\"radio\" name=\"ephemeral\" value=\"shared\"{shared}> share the stable copy of the callee</label>\
<label><input type=\"radio\" name=\"ephemeral\" value=\"copy\"{copy}> start a fresh copy of the callee in each environment</label>\
</fieldset>",
        reason = escape(&input.reason),
        shared = if input.ephemeral == "copy" {
            ""
        } else {
            " checked"
        },
        copy = if input.ephemeral == "copy" {
            " checked"
        } else {
            ""
        },
    );
    if !matches!(input.ephemeral.as_str(), "" | "shared" | "copy") {
        // Keep what was sent visible even though it is not one of the choices.
        let _ = write!(
            body,
            "<p class=\"muted\">You sent ephemeral mode <code>{}</code>.</p>",
            escape(&input.ephemeral)
        );
    }
    if let (Some(caller), Some(callee)) = (&caller, &callee) {
        let decision = decide(set, caller, callee);
        let _ = write!(
            body,
            "<p class=\"decision\">{}</p>",
            escape(&decision.sentence)
        );
    }
    body.push_str("<button type=\"submit\">Request access</button></form>");
    page(status, "Request access", Some(user), &body)
}

/// `POST /access`.
async fn submit(
    portal: &Portal,
    state: &AccessState,
    user: &User,
    fields: &[(String, String)],
) -> Answer {
    let mut input = FormInput::from_fields(fields);
    let policy = portal.plane.policy();
    let set = &policy.set;
    if field(fields, "select") == Some("all") {
        if let Some(spec) = resolve(set, "callee", &input.to)
            .ok()
            .and_then(|c| set.services.get(&c))
        {
            for e in &spec.source.doc.spec.endpoints {
                if !input.rpcs.contains(&e.rpc) {
                    input.rpcs.push(e.rpc.clone());
                }
            }
        }
        return form_page(portal, state, user, &input, &[], StatusCode::OK).await;
    }
    let checked = match validate(set, &input) {
        Ok(c) => c,
        Err(errors) => {
            return form_page(
                portal,
                state,
                user,
                &input,
                &errors,
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    let Some(dir) = state.policy_dir.clone() else {
        let errors = [
            "This controller runs without a policy directory (--policy), so it \
                       cannot write grants."
                .to_owned(),
        ];
        return form_page(
            portal,
            state,
            user,
            &input,
            &errors,
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    };
    let decision = decide(set, &checked.caller, &checked.callee);
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
        return form_page(
            portal,
            state,
            user,
            &input,
            &[e.to_string()],
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let store = portal.plane.store().clone();
    let action = if decision.immediate {
        "granted"
    } else {
        "requested"
    };
    let audit = AuditEntry {
        at_unix_ms: unix_ms(now),
        request_id: 0,
        actor: user.name.clone(),
        action: action.into(),
        detail: summary(&request),
    };
    let inserted = {
        let (request, audit) = (request.clone(), audit.clone());
        store
            .run(move |s| requests::insert(s, &request, Some(&audit)))
            .await
    };
    request.id = match inserted {
        Ok(id) => id,
        Err(e) => return store_failed(user, &e),
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
    let saved = {
        let request = request.clone();
        store.run(move |s| requests::save(s, &request)).await
    };
    if let Err(e) = saved {
        return store_failed(user, &e);
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
    see_other(&format!("/access/{}", request.id))
}

/// Whether `user` is in `team` (by name or email, case-insensitively).
fn is_member(team: &TeamSpec, user: &User) -> bool {
    team.members.iter().any(|m| {
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        same(&m.name, &user.name)
            || same(&m.email, &user.name)
            || user.email.as_deref().is_some_and(|e| same(&m.email, e))
    })
}

/// `POST /access/<id>/approve|reject`.
async fn review(
    portal: &Portal,
    state: &AccessState,
    user: &User,
    id: i64,
    action: &str,
    fields: &[(String, String)],
) -> Answer {
    let store = portal.plane.store().clone();
    let _guard = state.lock.lock().await;
    let mut request = match store.run(move |s| requests::get(s, id)).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(user),
        Err(e) => return store_failed(user, &e),
    };
    let policy = portal.plane.policy();
    let set = &policy.set;
    let callee = ObjectRef::parse_in(DEFAULT_NAMESPACE, &request.callee);
    let team = team_of(set, &callee);
    let member = team.as_ref().is_some_and(|(_, t)| is_member(t, user));
    if !member {
        let msg = format!(
            "Only members of team {} can approve or reject this request.",
            request.reviewer_team
        );
        return request_page(portal, state, user, id, &[msg], StatusCode::FORBIDDEN).await;
    }
    if request.status != Status::Pending {
        let msg = format!("This request is already {}.", request.status.as_str());
        return request_page(portal, state, user, id, &[msg], StatusCode::CONFLICT).await;
    }
    let comment = field(fields, "comment")
        .unwrap_or_default()
        .replace("\r\n", "\n")
        .trim()
        .to_owned();
    if comment.len() > MAX_REASON {
        let msg = format!("The comment is too long (at most {MAX_REASON} bytes).");
        return request_page(portal, state, user, id, &[msg], StatusCode::BAD_REQUEST).await;
    }
    let Some(dir) = state.policy_dir.clone() else {
        let msg = "This controller runs without a policy directory (--policy).".to_owned();
        return request_page(
            portal,
            state,
            user,
            id,
            &[msg],
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    };
    let now = SystemTime::now();
    request.decided_by = Some(user.name.clone());
    request.decided_unix_ms = Some(unix_ms(now));
    request.comment = Some(comment.clone());
    let (kind, title, text, to) = if action == "approve" {
        let applied = {
            let (dir, request, user, comment) =
                (dir.clone(), request.clone(), user.clone(), comment.clone());
            blocking(move || apply(&dir, request, &user, Some((&user, &comment)), now)).await
        };
        match applied {
            Ok(updated) => request = updated,
            Err(e) => {
                let msg = format!("The grant could not be applied: {e}");
                return request_page(portal, state, user, id, &[msg], StatusCode::CONFLICT).await;
            }
        }
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
    let saved = {
        let request = request.clone();
        store
            .run(move |s| requests::update(s, &request, &audit))
            .await
    };
    if let Err(e) = saved {
        return store_failed(user, &e);
    }
    notify(state, set, &request, kind, title, text, to);
    see_other(&format!("/access/{id}"))
}

fn store_failed(user: &User, e: &crate::store::StoreError) -> Answer {
    tracing::error!(error = %e, "portal: the store failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        Some(user),
        "<h1>Unavailable</h1><p class=\"error\">The controller's store cannot be used right now; \
         its log has the details. Nothing was changed.</p>",
    )
}

fn see_other(location: &str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = hyper::header::HeaderValue::from_str(location) {
        response.headers_mut().insert(hyper::header::LOCATION, v);
    }
    response
}

/// Runs file and git work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GrantError> + Send + 'static,
) -> Result<T, GrantError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GrantError::Read(format!("the task failed: {e}")))?
}

#[cfg(test)]
mod tests;
