//! The admin API: HTTP/1.1 on loopback (`--admin`, port 0 by default; the bound address is
//! written to `STATE_DIR/admin.addr`). `sluice status` and `sluice rollout` are its clients,
//! and `GET /openapi.json` describes it (OpenAPI 3.1, generated from these handlers and the
//! types they answer with).
//!
//! It listens on loopback only by default: the rollout actions (start, pause, promote, abort)
//! are as powerful as the CLI, and anyone who can reach the port can use them. So that a web
//! page cannot use them through a visitor's browser, only IP addresses, loopback names and
//! `--public-url`'s host are served (DNS rebinding), and a change (anything but GET) carrying
//! another site's `Origin` is refused (CSRF).
//!
//! Errors are `{"error": "…"}` ([`ApiErrorBody`]) everywhere.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::request::Parts;
use http::{Method, StatusCode, header};
use serde::Serialize;
use tower::ServiceBuilder;
use utoipa::OpenApi as _;

use super::state::ControlPlane;
use super::{env_api, rollout_api};
use crate::rollout::engine::{Engine, RolloutError};
use crate::rollout::model::ApiErrorBody;
use crate::status::StatusReport;
use crate::web::host::{AllowedHosts, HostCheck, WrongHost};
use crate::web::{self, AccessLog};

/// The paths the CLI calls: the router and the clients name them from here.
pub mod paths {
    /// `GET`: [`crate::status::StatusReport`].
    pub const STATUS: &str = "/status";
    /// `GET` the list, `POST` a start.
    pub const ROLLOUTS: &str = "/rollouts";
}

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Policy, registrations, traffic, the store.
    pub plane: Arc<ControlPlane>,
    /// Rollouts, when the engine runs.
    pub engine: Option<Arc<Engine>>,
    /// Ephemeral environments, when they run.
    pub envs: Option<super::env_api::EnvRoutes>,
}

/// The admin API: every route, in one table.
pub fn router(state: AdminState, hosts: AllowedHosts) -> Router {
    let layers = ServiceBuilder::new()
        .layer(from_fn_with_state(
            AccessLog {
                surface: "admin",
                quiet: true,
            },
            web::access_log,
        ))
        .layer(from_fn_with_state(
            HostCheck {
                hosts: Arc::new(hosts),
                refuse: |w: WrongHost| AdminError::WrongHost(w).into_response(),
                // HTTP/1.0 tools may send none; browsers always do.
                allow_missing: true,
            },
            web::host::allow,
        ))
        .layer(map_response(web::security_headers))
        .layer(from_fn(same_origin_changes))
        .layer(DefaultBodyLimit::max(rollout_api::MAX_BODY));
    Router::new()
        .route(paths::STATUS, get(status))
        .route("/traffic", get(traffic))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route(
            paths::ROLLOUTS,
            get(rollout_api::list).post(rollout_api::start),
        )
        .route("/rollouts/{id}", get(rollout_api::get))
        .route("/rollouts/{id}/chart.svg", get(rollout_api::chart_svg))
        .route("/rollouts/{id}/chart.png", get(rollout_api::chart_png))
        .route("/rollouts/{id}/{action}", post(rollout_api::act))
        .route(
            "/environments",
            get(env_api::list)
                .post(env_api::create)
                .layer(DefaultBodyLimit::max(env_api::MAX_BODY)),
        )
        .route(
            "/environments/{name}",
            get(env_api::get).delete(env_api::delete),
        )
        .route(
            "/environments/{name}/run",
            post(env_api::run_start).layer(DefaultBodyLimit::max(env_api::MAX_BODY)),
        )
        .route(
            "/environments/{name}/run/{service}/heartbeat",
            post(env_api::heartbeat),
        )
        .route(
            "/environments/{name}/run/{service}",
            axum::routing::delete(env_api::run_end),
        )
        .route(
            "/instances/sync",
            post(env_api::sync).layer(DefaultBodyLimit::max(env_api::MAX_SYNC_BODY)),
        )
        .fallback(|| async {
            AdminError::NotFound(
                "not found: see GET /openapi.json for what this endpoint serves".to_owned(),
            )
        })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .layer(layers)
        .with_state(state)
}

/// The OpenAPI description of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sluice controller admin API",
        description = "What the controller is doing (`sluice status`), every version's \
                       traffic, rollouts (`sluice rollout`) and ephemeral environments \
                       (`sluice env`). Loopback only by default.",
    ),
    paths(
        status, traffic, healthz,
        rollout_api::list, rollout_api::start, rollout_api::get,
        rollout_api::chart_svg, rollout_api::chart_png, rollout_api::act,
        env_api::list, env_api::create, env_api::get, env_api::delete,
        env_api::run_start, env_api::heartbeat, env_api::run_end, env_api::sync,
    ),
    // Schemas named only by a path parameter are not collected on their own.
    components(schemas(crate::rollout::model::Action)),
    tags(
        (name = "controller", description = "The controller and its mesh"),
        (name = "rollouts", description = "Progressive delivery"),
        (name = "environments", description = "Ephemeral environments (`sluice env`); changes need the admin token"),
    )
)]
pub struct AdminApi;

/// A change (anything but GET and HEAD) whose `Origin` names another site came from a web page
/// in someone's browser, not from `sluice rollout`: refused.
async fn same_origin_changes(req: Request, next: Next) -> Response {
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let foreign = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|_| !crate::portal::auth::same_origin(req.headers()));
    if changes && foreign {
        return AdminError::OtherSite.into_response();
    }
    next.run(req).await
}

/// What the controller is doing.
#[utoipa::path(
    get, path = "/status", tag = "controller",
    responses(
        (status = 200, description = "The report `sluice status` prints", body = StatusReport),
        (status = 503, description = "The store cannot be read", body = ApiErrorBody),
    )
)]
async fn status(State(s): State<AdminState>) -> Result<Response, AdminError> {
    let report = s.plane.status().await.map_err(|e| {
        tracing::error!(error = %e, "status failed");
        AdminError::Unavailable(
            "the store cannot be read; the controller's log has the details".to_owned(),
        )
    })?;
    Ok(pretty(StatusCode::OK, &report))
}

/// `GET /traffic`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TrafficList {
    /// Sorted by namespace, service, version and environment.
    pub traffic: Vec<TrafficRow>,
}

/// One version's traffic, cumulative since the controller started.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TrafficRow {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Version.
    pub version: String,
    /// Environment (`stable`, `pr-42`).
    pub environment: String,
    /// Responses.
    pub requests: u64,
    /// Failed responses (5xx, gRPC errors).
    pub failures: u64,
    /// `null` without requests.
    pub success_rate: Option<f64>,
    /// Estimated at bucket precision; `null` without requests.
    pub p50_ms: Option<f64>,
    /// Estimated at bucket precision; `null` without requests.
    pub p99_ms: Option<f64>,
    /// Proxies that reported in the last 10 s.
    pub instances: usize,
    /// When the last report arrived.
    pub last_report_unix_ms: i64,
}

/// Every version's traffic as the proxies report it. The quantiles are interpolated within
/// buckets like Prometheus' `histogram_quantile`.
#[utoipa::path(
    get, path = "/traffic", tag = "controller",
    responses((status = 200, description = "Every version's traffic", body = TrafficList))
)]
async fn traffic(State(s): State<AdminState>) -> Response {
    let ms = |seconds: Option<f64>| seconds.map(|s| s * 1000.0);
    let traffic = s
        .plane
        .traffic()
        .all()
        .into_iter()
        .map(|(k, t)| TrafficRow {
            success_rate: t.success_rate(),
            p50_ms: ms(t.quantile(0.5)),
            p99_ms: ms(t.quantile(0.99)),
            namespace: k.namespace,
            service: k.service,
            version: k.version,
            environment: k.environment,
            requests: t.requests,
            failures: t.failures,
            instances: t.instances,
            last_report_unix_ms: t.last_report_unix_ms,
        })
        .collect();
    pretty(StatusCode::OK, &TrafficList { traffic })
}

/// `ok`.
#[utoipa::path(
    get, path = "/healthz", tag = "controller",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String))
)]
async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], "ok\n").into_response()
}

/// This API's OpenAPI description.
async fn openapi() -> Response {
    pretty(StatusCode::OK, &AdminApi::openapi())
}

/// JSON as people read it (`curl` shows it as is).
pub fn pretty<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => AdminError::Internal(e.to_string()).into_response(),
    }
}

/// A typed query string; a malformed one is a 400 in the API's format.
#[derive(Clone, Debug)]
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AdminError> {
        serde_html_form::from_str(parts.uri.query().unwrap_or_default())
            .map(Query)
            .map_err(|e| AdminError::BadRequest(format!("the query string is malformed: {e}")))
    }
}

/// Why an admin request was refused; each is `{"error": …}` with its status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401: a change without the admin token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a change from another site's page.
    #[error("a change from another site's page is refused (its Origin is not this endpoint)")]
    OtherSite,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("this path does not take that method: see GET /openapi.json")]
    MethodNotAllowed,
    /// 409: the rollout's phase does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// 421: a host name this endpoint does not serve.
    #[error(
        "this endpoint answers to {} only, not `{}` (a page making your browser send another \
         name to this address is a DNS rebinding attack); use an IP address",
        .0.allowed, .0.requested
    )]
    WrongHost(WrongHost),
    /// 503: the store failed.
    #[error("{0}")]
    Unavailable(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl From<RolloutError> for AdminError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::NotFound(m) => AdminError::NotFound(m),
            RolloutError::Invalid(m) => AdminError::BadRequest(m),
            RolloutError::Conflict(m) => AdminError::Conflict(m),
            RolloutError::Store(e) => {
                tracing::error!(error = %e, "rollout API: store failed");
                AdminError::Unavailable(e.to_string())
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::OtherSite => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::WrongHost(_) => StatusCode::MISDIRECTED_REQUEST,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "admin API: request failed");
        }
        pretty(
            status,
            &ApiErrorBody {
                error: self.to_string(),
            },
        )
    }
}
