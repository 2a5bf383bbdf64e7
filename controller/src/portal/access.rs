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

/// What the form holds, exactly as typed (re-rendered on errors so nothing is lost).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FormInput {
    from: String,
    to: String,
    env: String,
    rpcs: Vec<String>,
    reason: String,
    ephemeral: String,
}

impl FormInput {
    fn from_fields(fields: &[(String, String)]) -> FormInput {
        let mut rpcs: Vec<String> = Vec::new();
        for (k, v) in fields {
            if k == "rpc" && !v.trim().is_empty() && !rpcs.contains(v) {
                rpcs.push(v.trim().to_owned());
            }
        }
        let get = |name: &str| field(fields, name).unwrap_or_default().trim().to_owned();
        FormInput {
            from: get("from"),
            to: get("to"),
            env: get("env"),
            rpcs,
            // Browsers send CRLF for textarea line breaks; the grant file uses LF.
            reason: field(fields, "reason")
                .unwrap_or_default()
                .replace("\r\n", "\n")
                .trim()
                .to_owned(),
            ephemeral: get("ephemeral"),
        }
    }
}

/// The decision the form announces and the submission follows.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Decision {
    immediate: bool,
    sentence: String,
    reviewer_team: String,
}

/// The team owning `service`: `ns/team` as written, else in the service's namespace, else in
/// `default` (the lookup validation uses).
fn team_of<'a>(set: &'a PolicySet, service: &ObjectRef) -> Option<(ObjectRef, &'a TeamSpec)> {
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

fn team_name(set: &PolicySet, service: &ObjectRef) -> String {
    set.services
        .get(service)
        .map(|s| s.source.doc.spec.team.clone())
        .unwrap_or_default()
}

/// Immediate when the callee is `open` and the caller's team does not require review.
fn decide(set: &PolicySet, caller: &ObjectRef, callee: &ObjectRef) -> Decision {
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
    match team_of(set, caller).map(|(_, t)| t.review) {
        Some(ReviewRequirement::Optional) => Decision {
            immediate: true,
            sentence: format!(
                "Submitting grants access at once: {callee} is open and {caller_team} lets its \
                 services get access without review."
            ),
            reviewer_team: callee_team.clone(),
        },
        Some(ReviewRequirement::Required) => review(format!(
            "team {caller_team} asks for review of its services' access"
        )),
        None => review(format!("team {caller_team} is not declared")),
    }
}

/// A declared service, or a message saying what is wrong.
fn resolve(set: &PolicySet, label: &str, written: &str) -> Result<ObjectRef, String> {
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

/// Everything wrong with the input, and the parsed caller, callee and endpoints when right.
struct Checked {
    caller: ObjectRef,
    callee: ObjectRef,
    rpcs: Vec<String>,
    environment: String,
}

fn validate(set: &PolicySet, input: &FormInput) -> Result<Checked, Vec<String>> {
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

fn grant_of<'a>(
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
struct GrantOwned<'a> {
    caller: ObjectRef,
    callee: ObjectRef,
    request: &'a AccessRequest,
    user: &'a User,
    at: SystemTime,
}

impl GrantOwned<'_> {
    fn grant(&self) -> Grant<'_> {
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
fn requester(request: &AccessRequest) -> User {
    User {
        name: request.requester.clone(),
        email: request.requester_email.clone(),
    }
}

/// Writes the grant (and commits it in a git work tree); returns the request with the file,
/// content, commit and any notes filled in. `reviewer` is set for approvals.
fn apply(
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
fn draft(
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

fn commit_message(request: &AccessRequest, reviewer: Option<(&User, &str)>) -> String {
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

fn summary(request: &AccessRequest) -> String {
    format!(
        "{} → {}: {}",
        request.caller,
        request.callee,
        request.rpcs.join(", ")
    )
}

/// Who hears about it.
enum Both {
    /// The caller's and the callee's teams.
    Teams,
    /// The caller's team only (the requester's side, for rejections).
    Requester,
}

fn notify(
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

/// `GET /access/<id>` (and the same page with `messages` after a refused review).
async fn request_page(
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
async fn list_page(portal: &Portal, user: &User) -> Answer {
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

fn audit_table(audit: &[AuditEntry]) -> String {
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

fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
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
mod tests {
    use super::*;

    #[test]
    fn forms_decode_like_browsers_send_them() {
        let fields = parse_form("rpc=GET+%2Fv1%2Fproducts%2F%7Bid%7D&reason=a%26b&x&bad=%zz%4");
        assert_eq!(fields[0], ("rpc".into(), "GET /v1/products/{id}".into()));
        assert_eq!(fields[1], ("reason".into(), "a&b".into()));
        assert_eq!(fields[2], ("x".into(), String::new()));
        assert_eq!(fields[3], ("bad".into(), "%zz%4".into()));
    }

    fn shop() -> PolicySet {
        PolicySet::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy"),
        )
        .expect("the shop's policy")
    }

    #[test]
    fn the_decision_follows_security_and_review() {
        let set = shop();
        let d = decide(
            &set,
            &ObjectRef::new("default", "checkout"),
            &ObjectRef::new("default", "catalog"),
        );
        assert!(d.immediate, "{d:?}");
        assert_eq!(
            d.sentence,
            "Submitting grants access at once: catalog is open and storefront lets its services \
             get access without review."
        );
        let d = decide(
            &set,
            &ObjectRef::new("default", "checkout"),
            &ObjectRef::new("default", "payments"),
        );
        assert!(!d.immediate);
        assert_eq!(
            d.sentence,
            "Submitting sends a request to team payments: payments is restricted."
        );
    }

    #[test]
    fn validation_names_every_problem() {
        let set = shop();
        let input = FormInput {
            from: "chekout".into(),
            to: "payments".into(),
            env: "pr 1".into(),
            rpcs: vec!["nonsense".into(), "GET /v1/nothing".into()],
            reason: "x".repeat(MAX_REASON + 1),
            ephemeral: "sometimes".into(),
        };
        let Err(errors) = validate(&set, &input) else {
            panic!("accepted");
        };
        let all = errors.join("\n");
        for want in [
            "`chekout` is not a declared service. Did you mean checkout?",
            "`nonsense` is not an endpoint",
            "payments does not declare `GET /v1/nothing`",
            "The reason is too long",
            "`sometimes` is not an ephemeral-environment mode",
            "`pr 1` is not an environment name",
        ] {
            assert!(all.contains(want), "{want} missing from {all}");
        }
    }

    #[test]
    fn membership_matches_name_or_email() {
        let set = shop();
        let (_, team) =
            team_of(&set, &ObjectRef::new("default", "payments")).expect("payments' team");
        let user = |name: &str, email: Option<&str>| User {
            name: name.into(),
            email: email.map(str::to_owned),
        };
        assert!(is_member(team, &user("pat payments", None)));
        assert!(is_member(team, &user("pat", Some("PAT@shop.example"))));
        assert!(is_member(team, &user("sam@shop.example", None)));
        assert!(!is_member(team, &user("ernie", Some("ernie@shop.example"))));
    }
}
