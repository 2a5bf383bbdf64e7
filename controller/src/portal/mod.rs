//! The service portal: the access-request form every denial links to, its review path, a page
//! per service, and the rollout pages. Server-rendered HTML, usable without JavaScript.
//!
//! The folders mirror the routes: [`access`] (`/access/…`: the form, requests, reviews, the
//! audit log), [`services`] (`/services/…`), [`rollouts`] (`/rollouts/…`, read-only), [`environments`]
//! (`/environments/…`: ephemeral environments, made from a service page), [`dev`]
//! (`/dev/act-as`, dev mode only). Each holds short handlers, the domain code they call (which
//! renders nothing), and `pages.rs`, its maud templates.
//!
//! [`server`] has the route table and the layers every request goes through (host names,
//! security headers, the user, CSRF and Origin checks, body limits, the access log); [`error`]
//! is every refusal and the one place it becomes a page; [`page`] is the layout; [`extract`]
//! the extractors (the user, the CSRF token, typed queries and forms); [`auth`] says who is
//! asking; [`grants`] writes grants into the policy directory (and git); [`store`] keeps
//! requests and the audit log. The guide is `docs/portal.md`.

pub mod access;
pub mod auth;
pub mod dev;
pub mod environments;
pub mod error;
pub mod extract;
pub mod grants;
pub mod page;
pub mod rollouts;
pub mod server;
pub mod services;
pub mod store;

use std::sync::Arc;

use crate::rollout::engine::Engine;
use crate::server::state::ControlPlane;

/// Who is asking: from the trusted proxy's header, or the local dev user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name (`ernie`), as the authenticating proxy or dev mode says.
    pub name: String,
    /// Their email, when known (`X-Forwarded-Email`); team membership is matched on it or on
    /// the name.
    pub email: Option<String>,
}

/// What the portal's pages read and change.
pub struct Portal {
    /// Policy, registrations, traffic, the store.
    pub plane: Arc<ControlPlane>,
    /// Rollouts (for the service pages), when the engine runs.
    pub engine: Option<Arc<Engine>>,
    /// Ephemeral environments, when the controller runs them.
    pub envs: Option<Arc<crate::env::Environments>>,
}
