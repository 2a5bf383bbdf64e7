//! Serving the portal (`--portal ADDR`): the route table, the layers every request goes
//! through, and the check of the portal's flags.
//!
//! Every request but `/healthz` goes through these layers, outermost first:
//!
//! 1. the access log ([`crate::web::access_log`]);
//! 2. the Host allowlist ([`crate::web::host`]): `--portal-url`'s host, and loopback names in
//!    dev mode, else `421` with a page saying why;
//! 3. the security headers ([`crate::web::security_headers`]);
//! 4. the user ([`authenticate`]): from the trusted proxy's header or dev mode, else `403`;
//! 5. form posts ([`check_form`]): bounded to [`MAX_BODY`], from our own origin, with the
//!    user's CSRF token, else `413` or `403`, and nothing changes.
//!
//! So a handler never checks any of these: it takes the [`User`] and, for a form it renders,
//! the [`CsrfToken`](super::extract::CsrfToken) as arguments.
//!
//! **Adding a page** (say `environments/`): a folder `portal/environments/` with the domain
//! code (what to show or change; no HTML), `pages.rs` (maud templates taking a view struct),
//! and short handlers; one line per route in [`router`]. See `docs/portal.md`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{Next, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::{Method, StatusCode};
use tower::ServiceBuilder;

use super::access::{self, AccessState};
use super::auth::{self, AuthConfig, same_origin};
use super::error::PortalError;
use super::{Portal, User, dev, environments, rollouts, services};
use crate::web::host::{AllowedHosts, HostCheck, WrongHost};
use crate::web::{self, AccessLog};

/// The largest request body accepted (a form; the portal takes nothing else).
pub const MAX_BODY: usize = 64 * 1024;

/// Everything a portal request needs.
pub struct PortalServer {
    /// What the pages read.
    pub portal: Portal,
    /// The access pages' state (policy directory, notifier, CSRF key).
    pub access: AccessState,
    /// How users are identified.
    pub auth: AuthConfig,
    /// The host names served: `--portal-url`'s, plus loopback names in dev mode.
    pub hosts: AllowedHosts,
}

/// The portal's state as handlers receive it.
pub type Shared = Arc<PortalServer>;

/// The portal: every route, in one table. Folders mirror the first segment.
pub fn router(server: Shared) -> Router {
    let mut pages = Router::new()
        .route("/", get(|| async { Redirect::to("/services") }))
        // access/: the form every denial links to, requests and their review, the audit log.
        .route("/access", get(access::list).post(access::submit))
        .route("/access/new", get(access::form))
        .route("/access/{id}", get(access::request))
        .route("/access/{id}/approve", post(access::approve))
        .route("/access/{id}/reject", post(access::reject))
        // services/: what a service is, who may call it, how it is doing.
        .route("/services", get(services::index))
        .route("/services/{name}", get(services::page))
        .route("/services/{name}/traffic", get(services::traffic))
        .route("/services/{namespace}/{name}", get(services::page_in))
        .route(
            "/services/{namespace}/{name}/traffic",
            get(services::traffic_in),
        )
        // rollouts/: read-only here; `sluice rollout` acts on the admin API.
        .route("/rollouts", get(rollouts::list))
        .route("/rollouts/{id}", get(rollouts::page))
        .route("/rollouts/{id}/chart.svg", get(rollouts::chart_svg))
        .route("/rollouts/{id}/chart.png", get(rollouts::chart_png))
        // environments/: ephemeral environments; the service page's button makes one.
        .route(
            "/environments",
            get(environments::list).post(environments::create),
        )
        .route("/environments/{name}", get(environments::page))
        .route(
            "/environments/{name}/graph.svg",
            get(environments::graph_svg),
        )
        .route("/environments/{name}/delete", post(environments::delete));
    if server.auth.dev_user.is_some() {
        // dev/: one person plays every part (loopback only).
        pages = pages.route("/dev/act-as", get(dev::chooser).post(dev::act_as));
    }
    let layers = ServiceBuilder::new()
        .layer(from_fn_with_state(
            AccessLog {
                surface: "portal",
                quiet: false,
            },
            web::access_log,
        ))
        .layer(from_fn_with_state(
            HostCheck {
                hosts: Arc::new(server.hosts.clone()),
                refuse: wrong_host,
                allow_missing: false,
            },
            web::host::allow,
        ))
        .layer(map_response(web::security_headers))
        .layer(from_fn_with_state(Arc::clone(&server), authenticate))
        .layer(from_fn_with_state(Arc::clone(&server), check_form));
    let pages = pages
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(layers)
        .with_state(server);
    Router::new()
        // For the proxy's health checks: no user, any host name, nothing shown.
        .route(
            "/healthz",
            get(|| async { ([(http::header::CONTENT_TYPE, "text/plain")], "ok\n") }),
        )
        .merge(pages)
}

fn wrong_host(wrong: WrongHost) -> Response {
    PortalError::WrongHost(wrong).into_response()
}

/// Ties the request to a [`User`], or refuses it. The user is an extension for the handlers'
/// extractor, and the current user of the task while the request runs (error pages show it).
pub async fn authenticate(
    State(server): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    match auth::user(&server.auth, peer.ip(), req.headers()) {
        Ok(user) => {
            tracing::Span::current().record("user", user.name.as_str());
            req.extensions_mut().insert(user.clone());
            auth::CURRENT_USER.scope(user, next.run(req)).await
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "portal: request refused");
            PortalError::NotSignedIn(e).into_response()
        }
    }
}

/// Every request that can change something (anything but GET and HEAD) must be a form of
/// ours: at most [`MAX_BODY`], `Origin` (or `Referer`) naming this host when the browser sends
/// one, and the user's CSRF token in its `csrf` field. The body is handed on as read.
pub async fn check_form(State(server): State<Shared>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let origin_ok = same_origin(req.headers());
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return PortalError::TooLarge.into_response();
    };
    /// The form's CSRF field (`auth::CSRF_FIELD`); everything else is the handler's.
    #[derive(serde::Deserialize)]
    struct Token {
        #[serde(default)]
        csrf: Vec<String>,
    }
    let token = serde_html_form::from_bytes::<Token>(&bytes)
        .ok()
        .and_then(|t| t.csrf.into_iter().next())
        .unwrap_or_default();
    let user = parts.extensions.get::<User>();
    if !origin_ok {
        return PortalError::OtherSite.into_response();
    }
    if !user.is_some_and(|u| server.access.csrf.verify(u, &token)) {
        return PortalError::BadToken.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// No route: a page saying so, with the way back that fits where the user was.
async fn not_found(req: Request) -> PortalError {
    let path = req.uri().path();
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/rollouts") && req.method() != Method::GET {
        return PortalError::ReadOnly(super::error::ReadOnly::Rollouts);
    }
    if under("/services") {
        return PortalError::NoService(path.to_owned());
    }
    if under("/access") {
        return PortalError::NoRequest;
    }
    PortalError::NotFound
}

/// A route, but not this method.
async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path();
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let which = if under("/services") {
        super::error::ReadOnly::Services
    } else if under("/rollouts") {
        super::error::ReadOnly::Rollouts
    } else {
        super::error::ReadOnly::Forms
    };
    let mut response = PortalError::ReadOnly(which).into_response();
    if which == super::error::ReadOnly::Services {
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
    }
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// Why the portal cannot be started with these settings.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortalConfigError {
    /// Dev mode on a non-loopback address would give anyone on the network that user.
    #[error(
        "--portal-dev-user makes every request that user, so the portal must listen on loopback \
         (e.g. --portal 127.0.0.1:7070), not {0}; behind an authenticating proxy use \
         --portal-trusted-proxy instead"
    )]
    DevUserNotLoopback(SocketAddr),
    /// No way to identify users.
    #[error(
        "the portal needs to know who is asking: run it behind an authenticating proxy \
         (--portal-trusted-proxy IP, which sends X-Forwarded-User), or locally with \
         --portal-dev-user NAME on a loopback address"
    )]
    NoAuthentication,
    /// `--portal-url` names no host to serve.
    #[error("--portal-url: {0}")]
    BadUrl(#[from] crate::web::host::BadBaseUrl),
}

/// Checks the flags before anything starts.
pub fn check_config(addr: SocketAddr, auth: &AuthConfig) -> Result<(), PortalConfigError> {
    if auth.dev_user.is_some() && !addr.ip().is_loopback() {
        return Err(PortalConfigError::DevUserNotLoopback(addr));
    }
    if auth.dev_user.is_none() && auth.trusted_proxies.is_empty() {
        return Err(PortalConfigError::NoAuthentication);
    }
    Ok(())
}

/// The host names the portal serves: `public_url`'s (`--portal-url`, or `http://` and the
/// bound address), plus loopback names in dev mode.
pub fn allowed_hosts(
    public_url: &str,
    auth: &AuthConfig,
) -> Result<AllowedHosts, PortalConfigError> {
    let hosts = AllowedHosts::from_base_url(public_url)?;
    Ok(if auth.dev_user.is_some() {
        hosts.and_loopback()
    } else {
        hosts
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::extract::connect_info::MockConnectInfo;
    use tower::Layer as _;
    use tower::ServiceExt as _;

    /// The portal over the shop's policy, in dev mode as `ernie`, without a rollout engine.
    fn shop() -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/shop/policy");
        let set = sluice_policy::PolicySet::load(std::path::Path::new(policy)).expect("shop");
        let store = crate::store::Store::open(dir.path()).expect("store");
        let plane = crate::server::state::ControlPlane::new(
            store,
            crate::server::state::PolicySnapshot::new(set),
            std::time::Duration::from_secs(30),
        )
        .expect("plane");
        let auth = AuthConfig {
            trusted_proxies: Vec::new(),
            dev_user: Some("ernie".into()),
        };
        let server = PortalServer {
            portal: Portal {
                plane,
                engine: None,
                envs: None,
            },
            access: AccessState {
                policy_dir: None,
                public_url: "http://127.0.0.1:7070".into(),
                notifier: None,
                csrf: auth::CsrfKey::generate().expect("key"),
                lock: tokio::sync::Mutex::new(()),
                dev_mode: true,
            },
            hosts: allowed_hosts("http://127.0.0.1:7070", &auth).expect("hosts"),
            auth,
        };
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        (dir, router(Arc::new(server)).layer(MockConnectInfo(peer)))
    }

    /// `GET path` through the trailing-slash normalization `web::serve` applies.
    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let app = tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash()
            .layer(app.clone());
        let req = Request::builder()
            .uri(path)
            .header(http::header::HOST, "127.0.0.1:7070")
            .body(Body::empty())
            .expect("request");
        let res = app.oneshot(req).await.expect("infallible");
        let status = res.status();
        let body = to_bytes(res.into_body(), usize::MAX).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// What `services::parse_path` used to decide is the route table's now.
    #[tokio::test]
    async fn service_paths() {
        let (_dir, app) = shop();
        let (status, body) = get(&app, "/services").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<h1>Services</h1>"), "{body}");
        assert_eq!(get(&app, "/services/").await.0, StatusCode::OK);
        let (status, body) = get(&app, "/services/payments").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<h1>payments</h1>"), "{body}");
        assert!(
            body.contains("<iframe class=\"live\" src=\"/services/payments/traffic\""),
            "{body}"
        );
        let (status, body) = get(&app, "/services/shop/payments/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.contains("<code>/services/shop/payments</code>"),
            "{body}"
        );
        for path in ["/services/a/b/c", "/servicesx", "/services//x"] {
            assert_eq!(get(&app, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        let (status, body) = get(&app, "/services/payments/traffic").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<meta http-equiv=\"refresh\""), "{body}");
        assert!(body.contains("No proxy has reported traffic"), "{body}");
    }

    #[tokio::test]
    async fn every_answer_has_the_security_headers_and_errors_are_pages() {
        let (_dir, app) = shop();
        let req = Request::builder()
            .uri("/nowhere")
            .header(http::header::HOST, "localhost:7070")
            .body(Body::empty())
            .expect("request");
        let res = app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let h = res.headers();
        assert!(
            h[http::header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|v| v.contains("frame-ancestors 'none'"))
        );
        assert_eq!(h[http::header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[http::header::CACHE_CONTROL], "no-store");
        assert!(
            h[http::header::CONTENT_TYPE]
                .to_str()
                .is_ok_and(|v| v.starts_with("text/html"))
        );
        let body = to_bytes(res.into_body(), usize::MAX).await.expect("body");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("<span class=\"user\">ernie</span>"), "{body}");
        // The fragment may be framed, by the portal's own pages only.
        let req = Request::builder()
            .uri("/services/payments/traffic")
            .header(http::header::HOST, "localhost:7070")
            .body(Body::empty())
            .expect("request");
        let res = app.oneshot(req).await.expect("infallible");
        assert!(
            res.headers()[http::header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|v| v.contains("frame-ancestors 'self'"))
        );
        assert_eq!(res.headers()[http::header::X_FRAME_OPTIONS], "SAMEORIGIN");
    }

    #[test]
    fn dev_mode_only_on_loopback_and_some_authentication_required() {
        let dev = AuthConfig {
            trusted_proxies: Vec::new(),
            dev_user: Some("ernie".into()),
        };
        let public: SocketAddr = "0.0.0.0:7070".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:7070".parse().expect("addr");
        assert_eq!(
            check_config(public, &dev),
            Err(PortalConfigError::DevUserNotLoopback(public))
        );
        assert_eq!(check_config(local, &dev), Ok(()));
        assert_eq!(
            check_config(local, &AuthConfig::default()),
            Err(PortalConfigError::NoAuthentication)
        );
    }
}
