//! Everything the portal refuses or fails at, and the one place each becomes a page.
//!
//! Handlers and layers return a [`PortalError`]; [`IntoResponse`] renders it in the portal's
//! layout, with the user's name in the header when the request has one.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use maud::{Markup, html};

use super::auth::{AuthError, CURRENT_USER};
use super::page::page;
use super::server::MAX_BODY;
use crate::web::host::WrongHost;

/// Which read-only area a wrong method was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnly {
    /// `/services…`.
    Services,
    /// `/rollouts…`: changed with `sluice rollout`.
    Rollouts,
    /// Elsewhere: only our forms post.
    Forms,
}

/// Why a portal request was not answered with what it asked for.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// No user (not from a trusted proxy, or the proxy named none).
    #[error(transparent)]
    NotSignedIn(#[from] AuthError),
    /// The `Host` header is not a name the portal serves.
    #[error("the portal does not answer to {}", .0.requested)]
    WrongHost(WrongHost),
    /// A form without the user's CSRF token.
    #[error("the form's security token is missing or not valid for this user")]
    BadToken,
    /// A form posted from another site's page.
    #[error("the form was submitted from another site")]
    OtherSite,
    /// A body over [`MAX_BODY`].
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// A query or form that does not decode.
    #[error("the request is malformed: {0}")]
    BadInput(String),
    /// No such request (`/access/…`).
    #[error("no such access request")]
    NoRequest,
    /// No such service page.
    #[error("no service page at {0}")]
    NoService(String),
    /// No route at all.
    #[error("no such page")]
    NotFound,
    /// A method the area does not take.
    #[error("method not allowed")]
    ReadOnly(ReadOnly),
    /// This controller runs no rollout engine.
    #[error("the rollout engine is not running")]
    NoRollouts,
    /// No such rollout.
    #[error("{0}")]
    NoRollout(String),
    /// This controller runs no environments.
    #[error("this controller runs no ephemeral environments")]
    NoEnvironments,
    /// No such environment.
    #[error("{0}")]
    NoEnvironment(String),
    /// An environment could not be made as asked (the message has the fix).
    #[error("{0}")]
    EnvRefused(String),
    /// The controller's store failed; nothing was changed.
    #[error("the store failed: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Something on our side that is not the user's doing (a chart that did not render).
    #[error("{0}")]
    Internal(String),
}

impl PortalError {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            PortalError::NotSignedIn(_) | PortalError::BadToken | PortalError::OtherSite => {
                StatusCode::FORBIDDEN
            }
            PortalError::WrongHost(_) => StatusCode::MISDIRECTED_REQUEST,
            PortalError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            PortalError::BadInput(_) => StatusCode::BAD_REQUEST,
            PortalError::NoRequest
            | PortalError::NoService(_)
            | PortalError::NotFound
            | PortalError::NoRollouts
            | PortalError::NoRollout(_)
            | PortalError::NoEnvironments
            | PortalError::NoEnvironment(_) => StatusCode::NOT_FOUND,
            PortalError::EnvRefused(_) => StatusCode::BAD_REQUEST,
            PortalError::ReadOnly(_) => StatusCode::METHOD_NOT_ALLOWED,
            PortalError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            PortalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The page's title and body.
    fn content(&self) -> (&'static str, Markup) {
        let refused = |why: &str| {
            html! {
                h1 { "Refused" }
                p.error { (why) " Nothing was changed. Go back, reload the page, and submit it again." }
            }
        };
        match self {
            PortalError::NotSignedIn(e) => (
                "Not signed in",
                html! { h1 { "Not signed in" } p.error { (e) } },
            ),
            PortalError::WrongHost(w) => (
                "Wrong host name",
                html! {
                    h1 { "Wrong host name" }
                    p.error {
                        "This portal answers to " (w.allowed) " only; this request was for "
                        code { (if w.requested.is_empty() { "no host" } else { &w.requested }) } "."
                    }
                    p {
                        "A page that makes your browser send another name to this address is how \
                         DNS rebinding attacks work, so the request is refused. If you reached the \
                         portal through a proxy, have it pass the original Host header, or set \
                         --portal-url to the address people use."
                    }
                },
            ),
            PortalError::BadToken => (
                "Refused",
                refused(
                    "The form's security token is missing or not valid for you (the portal may \
                     have restarted since the page was loaded).",
                ),
            ),
            PortalError::OtherSite => (
                "Refused",
                refused("The form was submitted from another site."),
            ),
            PortalError::TooLarge => (
                "Too large",
                html! {
                    h1 { "Request too large" }
                    p.error { "Forms are limited to " (MAX_BODY / 1024) " KiB." }
                },
            ),
            PortalError::BadInput(e) => (
                "Bad request",
                html! { h1 { "Bad request" } p.error { (e) } },
            ),
            PortalError::NoRequest => (
                "Not found",
                html! { h1 { "Not found" } p { a href="/access" { "All access requests" } } },
            ),
            PortalError::NoService(path) => (
                "Not found",
                html! {
                    h1 { "Not found" }
                    div.error { "There is no service page at " code { (path) } "." }
                    p { a href="/services" { "← All services" } }
                },
            ),
            PortalError::NotFound => (
                "Not found",
                html! {
                    h1 { "Not found" }
                    p { a href="/services" { "Services" } " · " a href="/access" { "Access requests" } }
                },
            ),
            PortalError::ReadOnly(ReadOnly::Services) => (
                "Method not allowed",
                html! { div.error { "Service pages are read-only: use GET." } },
            ),
            PortalError::ReadOnly(ReadOnly::Rollouts) => (
                "Read-only",
                html! {
                    h1 { "Read-only" }
                    p { "Rollouts are changed with " code { "sluice rollout" } "." }
                },
            ),
            PortalError::ReadOnly(ReadOnly::Forms) => (
                "Not allowed",
                html! { h1 { "Method not allowed" } p { "Use the forms on these pages." } },
            ),
            PortalError::NoRollouts => (
                "No rollouts",
                html! { h1 { "No rollouts" } p { "The rollout engine is not running." } },
            ),
            PortalError::NoRollout(e) => (
                "Not found",
                html! {
                    h1 { "Not found" }
                    p.error { (e) }
                    p { a href="/rollouts" { "All rollouts" } }
                },
            ),
            PortalError::NoEnvironments => (
                "No environments",
                html! { h1 { "No environments" } p { "This controller runs no ephemeral environments." } },
            ),
            PortalError::NoEnvironment(e) => (
                "Not found",
                html! {
                    h1 { "Not found" }
                    p.error { (e) }
                    p { a href="/environments" { "All environments" } }
                },
            ),
            PortalError::EnvRefused(e) => (
                "Refused",
                html! {
                    h1 { "The environment was not made" }
                    p.error { (e) }
                    p { "Nothing was started. Go back, fix the form, and submit it again." }
                },
            ),
            PortalError::Store(_) => (
                "Unavailable",
                html! {
                    h1 { "Unavailable" }
                    p.error {
                        "The controller's store cannot be used right now; its log has the \
                         details. Nothing was changed."
                    }
                },
            ),
            PortalError::Internal(_) => (
                "Error",
                html! {
                    h1 { "Something went wrong" }
                    p.error { "The controller's log has the details." }
                },
            ),
        }
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        if matches!(self, PortalError::Store(_) | PortalError::Internal(_)) {
            tracing::error!(error = %self, "portal: request failed");
        }
        let (title, body) = self.content();
        let user = CURRENT_USER.try_with(Clone::clone).ok();
        (self.status(), page(title, user.as_ref(), body)).into_response()
    }
}
