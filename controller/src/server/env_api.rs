//! The environment routes of the admin API: `sluice env` and the backends that run
//! environments' instances use them ([`crate::env`]).
//!
//! | route | answer |
//! |---|---|
//! | `GET /environments` | [`EnvironmentList`] |
//! | `POST /environments` | create one ([`CreateRequest`]) → `201` + [`EnvironmentView`] |
//! | `GET /environments/{name}` | [`EnvironmentView`] |
//! | `DELETE /environments/{name}` | [`Removed`] |
//! | `POST /environments/{name}/run` | start a `sluice env run` session ([`RunRequest`]) → [`RunStarted`] |
//! | `POST /environments/{name}/run/{service}/heartbeat` | renew it, restart the copy ([`Heartbeat`]) → [`EnvironmentView`] |
//! | `DELETE /environments/{name}/run/{service}` | end it → [`Removed`] |
//! | `POST /instances/sync` | a backend's report ([`SyncRequest`]) → [`SyncAnswer`] |
//!
//! **Every change needs the admin token**: `authorization: Bearer <token>` with the contents
//! of `STATE_DIR/admin.token` (mode 0600, see [`crate::env::api`]). A command given to
//! `create` or `run` is run by the backend (as root under `sluice up`), so reaching the
//! loopback port must not be enough; `sluice env` reads the file with the rights `sluice up`
//! needs anyway. Errors are `{"error": "…"}` with 400, 401, 404, 409, 413 or 503.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::admin::{AdminError, AdminState, pretty};
#[allow(unused_imports)] // named in the OpenAPI attributes
use crate::env::{
    CreateRequest, EnvError, EnvironmentList, EnvironmentView, Environments, Heartbeat, Removed,
    RunRequest, RunStarted, SyncAnswer, SyncRequest, Why,
};
#[allow(unused_imports)] // named in the OpenAPI attributes
use crate::rollout::model::ApiErrorBody;

/// The largest body of a change.
pub const MAX_BODY: usize = 64 * 1024;
/// The largest backend report (each instance brings its last log lines).
pub const MAX_SYNC_BODY: usize = 4 * 1024 * 1024;

/// The environments and the token their changes need.
#[derive(Clone)]
pub struct EnvRoutes {
    /// The environments.
    pub envs: Arc<Environments>,
    /// `STATE_DIR/admin.token`.
    pub token: Arc<str>,
}

impl From<EnvError> for AdminError {
    fn from(e: EnvError) -> Self {
        match e {
            EnvError::Invalid(m) => AdminError::BadRequest(m),
            EnvError::NotFound(m) => AdminError::NotFound(m),
            EnvError::Conflict(m) => AdminError::Conflict(m),
            EnvError::Store(e) => {
                tracing::error!(error = %e, "environments: store failed");
                AdminError::Unavailable(e.to_string())
            }
        }
    }
}

fn routes(s: &AdminState) -> Result<&EnvRoutes, AdminError> {
    s.envs
        .as_ref()
        .ok_or_else(|| AdminError::NotFound("this controller runs no environments".to_owned()))
}

/// The environments, once the request carries the admin token.
fn changing<'a>(s: &'a AdminState, headers: &HeaderMap) -> Result<&'a Environments, AdminError> {
    let r = routes(s)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if crate::env::api::authorized(given, &r.token) {
        Ok(&r.envs)
    } else {
        Err(AdminError::Unauthorized(
            "changing environments needs the controller's admin token (`authorization: Bearer \
             …` with the contents of STATE_DIR/admin.token); `sluice env` sends it when it can \
             read the state directory: run it with sudo, like `sluice up`"
                .to_owned(),
        ))
    }
}

fn json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, AdminError> {
    let body = body.map_err(|_| AdminError::TooLarge(limit))?;
    let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
    serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("the body is not the expected JSON: {e}")))
}

/// Every environment.
#[utoipa::path(
    get, path = "/environments", tag = "environments",
    responses((status = 200, description = "By name", body = EnvironmentList))
)]
pub async fn list(State(s): State<AdminState>) -> Result<Response, AdminError> {
    Ok(pretty(StatusCode::OK, &routes(&s)?.envs.list()))
}

/// Makes an environment: the service's copy and its `ephemeral: copy` dependencies.
#[utoipa::path(
    post, path = "/environments", tag = "environments", request_body = CreateRequest,
    responses(
        (status = 201, description = "Made; its copies are starting", body = EnvironmentView),
        (status = 400, description = "A bad name, an unknown service or version, a bad command", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 409, description = "The name is taken", body = ApiErrorBody),
        (status = 413, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    )
)]
pub async fn create(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let envs = changing(&s, &headers)?;
    let req: CreateRequest = json(body, MAX_BODY)?;
    Ok(pretty(StatusCode::CREATED, &envs.create(req).await?))
}

/// One environment.
#[utoipa::path(
    get, path = "/environments/{name}", tag = "environments",
    params(("name" = String, Path, description = "The environment")),
    responses(
        (status = 200, description = "The environment", body = EnvironmentView),
        (status = 404, body = ApiErrorBody),
    )
)]
pub async fn get(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    Ok(pretty(StatusCode::OK, &routes(&s)?.envs.get(&name)?))
}

/// Deletes an environment: every instance it started stops.
#[utoipa::path(
    delete, path = "/environments/{name}", tag = "environments",
    params(("name" = String, Path, description = "The environment")),
    responses(
        (status = 200, description = "Deleted", body = Removed),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    )
)]
pub async fn delete(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let envs = changing(&s, &headers)?;
    Ok(pretty(
        StatusCode::OK,
        &envs.delete(&name, Why::Asked).await?,
    ))
}

/// Starts a `sluice env run` session: the command becomes the service's copy.
#[utoipa::path(
    post, path = "/environments/{name}/run", tag = "environments", request_body = RunRequest,
    params(("name" = String, Path, description = "The environment (made if missing)")),
    responses(
        (status = 200, description = "Started", body = RunStarted),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 409, description = "A session runs that service already", body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    )
)]
pub async fn run_start(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let envs = changing(&s, &headers)?;
    let req: RunRequest = json(body, MAX_BODY)?;
    let (environment, created) = envs.start_run(&name, req).await?;
    Ok(pretty(
        StatusCode::OK,
        &RunStarted {
            environment,
            created,
        },
    ))
}

/// Keeps a session alive (every few seconds), and restarts its copy when asked.
#[utoipa::path(
    post, path = "/environments/{name}/run/{service}/heartbeat", tag = "environments",
    request_body = Heartbeat,
    params(
        ("name" = String, Path, description = "The environment"),
        ("service" = String, Path, description = "The session's service"),
    ),
    responses(
        (status = 200, description = "Renewed", body = EnvironmentView),
        (status = 401, body = ApiErrorBody),
        (status = 404, description = "The session is over", body = ApiErrorBody),
    )
)]
pub async fn heartbeat(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((name, service)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let envs = changing(&s, &headers)?;
    let beat: Heartbeat = json(body, MAX_BODY)?;
    Ok(pretty(
        StatusCode::OK,
        &envs.heartbeat(&name, &service, beat).await?,
    ))
}

/// Ends a session: its copy goes (a copy it replaced comes back), and the environment too if
/// the session made it.
#[utoipa::path(
    delete, path = "/environments/{name}/run/{service}", tag = "environments",
    params(
        ("name" = String, Path, description = "The environment"),
        ("service" = String, Path, description = "The session's service"),
    ),
    responses(
        (status = 200, description = "Ended", body = Removed),
        (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
    )
)]
pub async fn run_end(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((name, service)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    let envs = changing(&s, &headers)?;
    Ok(pretty(
        StatusCode::OK,
        &envs.end_run(&name, &service).await?,
    ))
}

/// A backend reports the environment instances it runs and gets those that should run.
#[utoipa::path(
    post, path = "/instances/sync", tag = "environments", request_body = SyncRequest,
    responses(
        (status = 200, description = "Every instance that should run", body = SyncAnswer),
        (status = 401, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
    )
)]
pub async fn sync(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let envs = changing(&s, &headers)?;
    let req: SyncRequest = json(body, MAX_SYNC_BODY)?;
    Ok(pretty(StatusCode::OK, &envs.sync(req)))
}
