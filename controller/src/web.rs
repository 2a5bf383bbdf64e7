//! What the controller's two HTTP surfaces share: the portal (`--portal`, people, through an
//! authenticating proxy) and the admin API (`--admin`, loopback, `sluice status` and
//! `sluice rollout`). Both are axum [`Router`]s served on the controller's tokio runtime next
//! to the gRPC API (which stays on tonic).
//!
//! Everything every request needs is a tower layer, not a call repeated in handlers:
//!
//! | layer | what |
//! |---|---|
//! | [`access_log`] | a span per request, and one line with method, path, status, latency and the user |
//! | [`host::allow`] | only the configured host names are served (DNS rebinding), see [`host::AllowedHosts`] |
//! | [`security_headers`] | CSP, no framing, `nosniff`, `no-store`, no referrer to other sites |
//!
//! Each surface adds its own: the portal users, CSRF and Origin checks and its body limit
//! (`crate::portal::server`), the admin API Origin checks on changes and its body limit
//! (`crate::server::admin`), each with errors in its own format (pages, JSON). HTML is written with maud's
//! `html!`, which escapes every value; raw HTML needs `PreEscaped`, which only the layouts use,
//! for their fixed style sheets.

pub mod host;

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, header};
use tower::Layer as _;
use tower_http::normalize_path::NormalizePathLayer;
use tracing::Instrument as _;

/// Serves `router` on `listener` until the task is dropped. Trailing slashes are trimmed
/// before routing (`/services/` is `/services`), and handlers see the peer's address.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    let app = NormalizePathLayer::trim_trailing_slash().layer(router);
    let service =
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
    if let Err(e) = axum::serve(listener, service).await {
        tracing::warn!(error = %e, "web server stopped");
    }
}

/// How a surface logs its requests.
#[derive(Clone, Copy, Debug)]
pub struct AccessLog {
    /// `portal` or `admin`.
    pub surface: &'static str,
    /// Log at `debug` rather than `info` (the admin API is polled by tools).
    pub quiet: bool,
}

/// The access log (`from_fn_with_state(AccessLog {..}, access_log)`): the request runs in a
/// span naming the surface, method and path (never the query: it holds what people typed);
/// the portal's auth layer records the user in it.
pub async fn access_log(State(log): State<AccessLog>, req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "http",
        surface = log.surface,
        method = %req.method(),
        path = %req.uri().path(),
        user = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    span.in_scope(|| {
        if log.quiet {
            tracing::debug!(status, ms, "answered");
        } else {
            tracing::info!(status, ms, "answered");
        }
    });
    response
}

/// The Content-Security-Policy of every answer: nothing but our own resources, inline styles
/// (the layouts' style sheets), and never inside another site's frame.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// The security headers (`map_response(security_headers)`), each unless the handler set its
/// own: the traffic fragment lets the portal's own pages frame it.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}
