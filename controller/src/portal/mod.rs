//! The service portal: the access-request form every denial links to, its review path, and a
//! page per service. Server-rendered HTML, usable without JavaScript.
//!
//! Routing lives here; each area has its module: [`access`] (`/access/…`: the form, requests,
//! reviews, the audit log), [`services`] (`/services`, `/services/<name>`). [`html`] holds the
//! page layout and escaping every page uses. [`server`] serves it all (`--portal`), [`auth`]
//! says who is asking and checks forms' CSRF tokens, [`grants`] writes grants into the policy
//! directory (and git), [`store`] keeps requests and the audit log. The guide is
//! `docs/portal.md`.

pub mod access;
pub mod auth;
pub mod grants;
pub mod html;
pub mod server;
pub mod services;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::rollout::engine::Engine;
use crate::server::state::ControlPlane;

/// An HTTP answer.
pub type Answer = Response<Full<Bytes>>;

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
}
