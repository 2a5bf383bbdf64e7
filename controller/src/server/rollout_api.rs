//! The rollout routes of the admin API: the JSON API `sluice rollout` and the local runner
//! use, and for browsers the rollout page a notification links to and its chart (rendered by
//! [`crate::portal::rollouts`]).
//!
//! | route | answer |
//! |---|---|
//! | `GET /rollouts[?service=NAME]` | [`RolloutList`] JSON, newest first (the list page for browsers) |
//! | `POST /rollouts` | start one ([`StartRequest`] JSON) → `201` + the rollout |
//! | `GET /rollouts/{id}` | [`RolloutDetail`] JSON, or with `Accept: text/html` the page |
//! | `POST /rollouts/{id}/{action}` | `pause`, `resume`, `promote`, `abort`: the rollout after it |
//! | `GET /rollouts/{id}/chart.png`, `chart.svg` | canary vs baseline over the rollout |
//!
//! `{id}` may also be a service name (namespace `default`): its newest rollout. Errors are
//! `{"error": "…"}` ([`ApiErrorBody`]) with 400, 404, 409 (the phase does not allow it), 413 or
//! 503 (the store failed).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};

use super::admin::{AdminError, AdminState, Query, pretty};
use crate::portal::rollouts::{detail_page, list_page, png, svg, wants_html};
use crate::rollout::engine::{Engine, RolloutError};
#[allow(unused_imports)] // named in the OpenAPI attributes
use crate::rollout::model::{
    Action, ApiErrorBody, Rollout, RolloutDetail, RolloutList, StartRequest,
};

/// The largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// `?service=NAME`.
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this service's rollouts (namespace `default`).
    pub service: Option<String>,
}

/// Every rollout, newest first.
#[utoipa::path(
    get, path = "/rollouts", tag = "rollouts", params(ListParams),
    responses(
        (status = 200, description = "Newest first (`text/html` for browsers)", body = RolloutList),
        (status = 400, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    )
)]
pub async fn list(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<ListParams>,
) -> Result<Response, AdminError> {
    let rollouts = run(engine(&s)?, move |e| {
        e.list(q.service.as_deref().map(|s| ("default", s)))
    })
    .await?;
    Ok(if wants_html(&headers) {
        list_page(&rollouts).into_response()
    } else {
        pretty(StatusCode::OK, &RolloutList { rollouts })
    })
}

/// Starts a rollout of `service` to `version`, following its CanaryPolicy.
#[utoipa::path(
    post, path = "/rollouts", tag = "rollouts", request_body = StartRequest,
    responses(
        (status = 201, description = "Started", body = Rollout),
        (status = 400, description = "Unknown service, undeclared version, no CanaryPolicy", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
        (status = 413, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    )
)]
pub async fn start(
    State(s): State<AdminState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    // Any content type: `curl -d '{…}'` says it is a form.
    let body = body.map_err(|_| AdminError::TooLarge(MAX_BODY))?;
    let start: StartRequest = serde_json::from_slice(&body).map_err(|e| {
        AdminError::BadRequest(format!(
            "the body is not a valid request: {e}; expected {{\"service\": \"payments\", \"version\": \"v2\"}}"
        ))
    })?;
    let engine = engine(&s)?;
    let rollout = engine.start_rollout(start).await?;
    Ok(pretty(StatusCode::CREATED, &rollout))
}

/// One rollout (or a service's newest) with its events and points.
#[utoipa::path(
    get, path = "/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "A rollout id, or a service name: its newest rollout")),
    responses(
        (status = 200, description = "The rollout (`text/html` for browsers: the rollout page)", body = RolloutDetail),
        (status = 404, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    )
)]
pub async fn get(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let detail = detail(engine(&s)?, id).await?;
    Ok(if wants_html(&headers) {
        detail_page(&detail).into_response()
    } else {
        pretty(StatusCode::OK, &detail)
    })
}

/// Canary vs baseline over the rollout, as SVG.
#[utoipa::path(
    get, path = "/rollouts/{id}/chart.svg", tag = "rollouts",
    params(("id" = String, Path, description = "A rollout id or a service name")),
    responses(
        (status = 200, description = "The chart", content_type = "image/svg+xml", body = String),
        (status = 404, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    )
)]
pub async fn chart_svg(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    Ok(svg(&detail(engine(&s)?, id).await?))
}

/// The same chart as PNG, for chat messages.
#[utoipa::path(
    get, path = "/rollouts/{id}/chart.png", tag = "rollouts",
    params(("id" = String, Path, description = "A rollout id or a service name")),
    responses(
        (status = 200, description = "The chart", content_type = "image/png", body = Vec<u8>),
        (status = 404, body = ApiErrorBody), (status = 503, body = ApiErrorBody),
    )
)]
pub async fn chart_png(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    png(detail(engine(&s)?, id).await?)
        .await
        .map_err(AdminError::Internal)
}

/// Pauses, resumes (also confirms a step), promotes or aborts a rollout.
#[utoipa::path(
    post, path = "/rollouts/{id}/{action}", tag = "rollouts",
    params(
        ("id" = String, Path, description = "A rollout id, or a service name: its newest rollout"),
        ("action" = Action, Path, description = "What to do"),
    ),
    responses(
        (status = 200, description = "The rollout after the action", body = Rollout),
        (status = 404, description = "No such rollout or action", body = ApiErrorBody),
        (status = 409, description = "The phase does not allow it", body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    )
)]
pub async fn act(
    State(s): State<AdminState>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    let action = Action::parse(&action).ok_or_else(|| {
        AdminError::NotFound(format!(
            "no action `{action}`: use pause, resume, promote or abort"
        ))
    })?;
    let rollout = engine(&s)?.act("default", &id, action).await?;
    Ok(pretty(StatusCode::OK, &rollout))
}

fn engine(s: &AdminState) -> Result<Arc<Engine>, AdminError> {
    s.engine
        .clone()
        .ok_or_else(|| AdminError::NotFound("the rollout engine is not running".to_owned()))
}

async fn detail(engine: Arc<Engine>, id: String) -> Result<RolloutDetail, AdminError> {
    run(engine, move |e| e.detail(e.find("default", &id)?)).await
}

/// Runs an engine read (SQLite) off the async workers.
async fn run<T: Send + 'static>(
    engine: Arc<Engine>,
    f: impl FnOnce(&Engine) -> Result<T, RolloutError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
        .map_err(AdminError::from)
}
