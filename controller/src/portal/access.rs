//! `/access/…`: the access-request form every denial links to, requests and their review, and
//! the audit log.
//!
//! | route | handler |
//! |---|---|
//! | `GET /access/new?from&to&rpc&env` | [`form`]: the form, pre-filled from the denial |
//! | `POST /access` | [`submit`] (or `select=all`: the form again with every endpoint ticked) |
//! | `GET /access` | [`list`]: requests, newest first, and the audit log |
//! | `GET /access/{id}` | [`request`]: status, the grant as a diff, the review form |
//! | `POST /access/{id}/approve`, `/reject` | [`approve`], [`reject`]: a review |
//!
//! The decision follows policy ([`decide`](decide::decide)): a grant applies at once when the
//! callee is `open`, the caller's team has `review: optional` and the requester is one of that
//! team; everything else is reviewed by the callee's team, never by the requester. `flow`
//! does the work (validation, the store, [`super::grants`], the team messages) and renders
//! nothing; `pages` is the HTML.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;
use maud::Markup;
use sluice_policy::PolicySet;
use sluice_policy::diagnostic::did_you_mean;
use sluice_policy::resources::{
    DEFAULT_NAMESPACE, ReviewRequirement, SecurityLevel, Severity, TeamMember, TeamSpec,
};
use sluice_policy::rpc::RpcPattern;
use sluice_policy::validate::ObjectRef;

use super::auth::CsrfKey;
use super::error::PortalError;
use super::extract::{CsrfToken, Form, Query};
use super::grants::{self, Grant, GrantError};
use super::page::page;
use super::server::Shared;
use super::store::{self as requests, AccessRequest, AuditEntry, Status};
use super::{Portal, User};
use crate::notify::{Notification, Notifier, targets_for_teams};
use crate::store::unix_ms;

mod apply;
mod decide;
mod flow;
mod pages;

use apply::*;
pub use decide::AccessFields;
use decide::*;
use flow::*;

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
    /// Dev mode (one machine): one person plays every part, so pages offer `/dev/act-as`
    /// where only another person could act, and the requester speaks for every team.
    pub dev_mode: bool,
}

/// `GET /access`.
pub async fn list(State(s): State<Shared>, user: User) -> Result<Markup, PortalError> {
    let store = s.portal.plane.store().clone();
    let (list, audit) = store
        .run(|s| Ok((requests::list(s)?, requests::audit(s, None, 200)?)))
        .await?;
    Ok(page(
        "Access requests",
        Some(&user),
        pages::list(&list, &audit),
    ))
}

/// `GET /access/new?from&to&rpc&env`: the form, pre-filled.
pub async fn form(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Query(fields): Query<AccessFields>,
) -> Response {
    let mut input = FormInput::from_fields(&fields);
    if input.ephemeral.is_empty() {
        input.ephemeral = "shared".into();
    }
    form_page(&s, &user, &token, input, &[], StatusCode::OK).await
}

/// `POST /access`.
pub async fn submit(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Form(fields): Form<AccessFields>,
) -> Response {
    let mut input = FormInput::from_fields(&fields);
    if fields.select == "all" {
        select_all(&s.portal, &mut input);
        return form_page(&s, &user, &token, input, &[], StatusCode::OK).await;
    }
    match flow::submit(&s.portal, &s.access, &user, &input).await {
        Ok(id) => Redirect::to(&format!("/access/{id}")).into_response(),
        Err(Refused::Form(errors, status)) => {
            form_page(&s, &user, &token, input, &errors, status).await
        }
        Err(Refused::Store(e)) => PortalError::Store(e).into_response(),
    }
}

async fn form_page(
    s: &Shared,
    user: &User,
    token: &CsrfToken,
    input: FormInput,
    errors: &[String],
    status: StatusCode,
) -> Response {
    let view = form_view(&s.portal, &s.access, user, input).await;
    let body = pages::form(&view, &token.0, errors);
    (status, page("Request access", Some(user), body)).into_response()
}

/// `GET /access/{id}`.
pub async fn request(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let id = id.parse().map_err(|_| PortalError::NoRequest)?;
    request_page(&s, &user, &token, id, &[], StatusCode::OK).await
}

/// A review's form: the optional comment.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ReviewFields {
    /// Why, in the reviewer's words.
    pub comment: String,
}

/// `POST /access/{id}/approve`.
pub async fn approve(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Path(id): Path<String>,
    Form(fields): Form<ReviewFields>,
) -> Result<Response, PortalError> {
    review(&s, &user, &token, &id, Verdict::Approve, &fields.comment).await
}

/// `POST /access/{id}/reject`.
pub async fn reject(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Path(id): Path<String>,
    Form(fields): Form<ReviewFields>,
) -> Result<Response, PortalError> {
    review(&s, &user, &token, &id, Verdict::Reject, &fields.comment).await
}

async fn review(
    s: &Shared,
    user: &User,
    token: &CsrfToken,
    id: &str,
    verdict: Verdict,
    comment: &str,
) -> Result<Response, PortalError> {
    let id = id.parse().map_err(|_| PortalError::NoRequest)?;
    match flow::review(&s.portal, &s.access, user, id, verdict, comment).await {
        Ok(()) => Ok(Redirect::to(&format!("/access/{id}")).into_response()),
        Err(ReviewError::NotFound) => Err(PortalError::NoRequest),
        Err(ReviewError::Store(e)) => Err(PortalError::Store(e)),
        Err(refused) => {
            let status = refused.status();
            request_page(s, user, token, id, &[refused.to_string()], status).await
        }
    }
}

/// The request's page, with `messages` above it (a refused review says why).
async fn request_page(
    s: &Shared,
    user: &User,
    token: &CsrfToken,
    id: i64,
    messages: &[String],
    status: StatusCode,
) -> Result<Response, PortalError> {
    let store = s.portal.plane.store().clone();
    let (request, audit) = store
        .run(move |s| Ok((requests::get(s, id)?, requests::audit(s, Some(id), 50)?)))
        .await?;
    let request = request.ok_or(PortalError::NoRequest)?;
    let reviewer = reviewer(&s.portal.plane.policy().set, &request, user);
    let view = pages::RequestView {
        request: &request,
        audit: &audit,
        reviewer,
        dev_mode: s.access.dev_mode,
    };
    let body = pages::request(&view, &token.0, messages);
    Ok((
        status,
        page(&format!("Access request #{id}"), Some(user), body),
    )
        .into_response())
}

#[cfg(test)]
mod tests;
