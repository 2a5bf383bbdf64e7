//! `/environments/…`: ephemeral environments for people. The button on a service page makes
//! one (a version from policy, never a command: a command runs as root in `sluice up`, so only
//! `sluice env` with the admin token may give one); an environment's page shows its copies,
//! what it shares, its traffic and resource use, the link to open it, and the graph of who
//! calls whom in it (server-rendered SVG, no JavaScript), with its copies marked.
//!
//! | route | handler |
//! |---|---|
//! | `GET /environments` | [`list`] |
//! | `POST /environments` | [`create`]: the service page's form → the new environment's page |
//! | `GET /environments/{name}` | [`page`] |
//! | `GET /environments/{name}/graph.svg` | [`graph_svg`] |
//! | `POST /environments/{name}/delete` | [`delete`] |
//!
//! The domain is [`crate::env::Environments`]; the templates are [`pages`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::header;
use maud::Markup;

use super::User;
use super::error::PortalError;
use super::extract::{CsrfToken, Form};
use super::page::page as layout;
use super::server::Shared;
use crate::env::graph::{Edge, edges};
use crate::env::{CreateRequest, EnvError, EnvironmentView, Environments, Why};

pub mod pages;

/// The service page's "New environment" form.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct CreateFields {
    /// The environment's name.
    pub name: String,
    /// The service to copy.
    pub service: String,
    /// Its namespace (`default` when empty).
    pub namespace: String,
    /// The version to run (stable's when empty).
    pub version: String,
    /// The idle timeout (the Mesh's when empty).
    pub idle_timeout: String,
}

fn envs(s: &Shared) -> Result<&Arc<Environments>, PortalError> {
    s.portal.envs.as_ref().ok_or(PortalError::NoEnvironments)
}

fn refused(e: EnvError) -> PortalError {
    match e {
        EnvError::Invalid(m) | EnvError::Conflict(m) => PortalError::EnvRefused(m),
        EnvError::NotFound(m) => PortalError::NoEnvironment(m),
        EnvError::Store(e) => PortalError::Store(e),
    }
}

fn now_ms() -> i64 {
    crate::store::unix_ms(SystemTime::now())
}

/// `GET /environments`.
pub async fn list(State(s): State<Shared>, user: User) -> Result<Response, PortalError> {
    let list = envs(&s)?.list();
    Ok(layout(
        "Environments",
        Some(&user),
        pages::list_markup(&list.environments, now_ms()),
    )
    .into_response())
}

/// `POST /environments`: makes the environment and shows its page (its copies starting).
pub async fn create(
    State(s): State<Shared>,
    user: User,
    Form(f): Form<CreateFields>,
) -> Result<Response, PortalError> {
    let blank = |v: String| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    let req = CreateRequest {
        name: f.name.trim().to_owned(),
        service: f.service.trim().to_owned(),
        namespace: blank(f.namespace),
        version: blank(f.version),
        command: None,
        idle_timeout: blank(f.idle_timeout),
        created_by: user.name.clone(),
    };
    let view = envs(&s)?.create(req).await.map_err(refused)?;
    Ok(Redirect::to(&format!("/environments/{}", view.name)).into_response())
}

/// `GET /environments/{name}`.
pub async fn page(
    State(s): State<Shared>,
    user: User,
    token: CsrfToken,
    Path(name): Path<String>,
) -> Result<Response, PortalError> {
    let view = envs(&s)?.get(&name).map_err(refused)?;
    let graph = graph_of(&s, &view);
    Ok(layout(
        &format!("Environment {}", view.name),
        Some(&user),
        pages::page_markup(&view, &graph, &token.0, now_ms()),
    )
    .into_response())
}

/// `GET /environments/{name}/graph.svg`: the graph alone (to embed elsewhere).
pub async fn graph_svg(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, PortalError> {
    let view = envs(&s)?.get(&name).map_err(refused)?;
    let svg = pages::graph_svg(&graph_of(&s, &view)).into_string();
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// `POST /environments/{name}/delete`.
pub async fn delete(
    State(s): State<Shared>,
    user: User,
    Path(name): Path<String>,
) -> Result<Response, PortalError> {
    let removed = envs(&s)?.delete(&name, Why::Asked).await.map_err(refused)?;
    tracing::info!(
        environment = name,
        user = user.name,
        "portal: environment deleted"
    );
    let body: Markup = pages::deleted_markup(&removed.environment);
    Ok(layout("Environment deleted", Some(&user), body).into_response())
}

/// The environments of a service, for its page's section (with the "New environment" form).
pub fn service_section(s: &Shared, namespace: &str, service: &str, token: &str) -> Markup {
    let Some(envs) = s.portal.envs.as_ref() else {
        return maud::html! {};
    };
    let policy = s.portal.plane.policy();
    let versions = policy
        .set
        .services
        .get(&sluice_policy::validate::ObjectRef::new(namespace, service))
        .map(|svc| svc.source.doc.spec.versions.clone())
        .unwrap_or_default();
    pages::service_section(
        namespace,
        service,
        &versions,
        &envs.of_service(namespace, service),
        token,
        now_ms(),
    )
}

/// Who calls whom in an environment: every granted call from or to one of its copies, each
/// end marked copy or stable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Each service and whether the environment runs its own copy.
    pub nodes: BTreeMap<String, bool>,
    /// The calls (copied or shared).
    pub edges: Vec<Edge>,
    /// The service the environment was made for.
    pub root: String,
}

fn graph_of(s: &Shared, view: &EnvironmentView) -> Graph {
    let policy = s.portal.plane.policy();
    graph(&edges(&policy.set, &view.namespace), view)
}

/// The environment's part of the mesh's call graph.
pub fn graph(all: &[Edge], view: &EnvironmentView) -> Graph {
    let copies: BTreeSet<&str> = view.copies.iter().map(|c| c.service.as_str()).collect();
    let edges: Vec<Edge> = all
        .iter()
        .filter(|e| copies.contains(e.from.as_str()) || copies.contains(e.to.as_str()))
        .cloned()
        .collect();
    let mut nodes: BTreeMap<String, bool> = BTreeMap::new();
    for c in &copies {
        nodes.insert((*c).to_owned(), true);
    }
    for e in &edges {
        for n in [&e.from, &e.to] {
            nodes.entry(n.clone()).or_insert(false);
        }
    }
    Graph {
        nodes,
        edges,
        root: view.service.clone(),
    }
}
