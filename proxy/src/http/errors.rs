//! The one place where a failure becomes an HTTP (or gRPC) response.
//!
//! Each layer has its own small error type; [`ProxyError`] gathers them and [`to_response`]
//! decides status codes, so the mapping is consistent and reviewable in one screen.

use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{Body, Response};
use crate::authz::Denial;
use crate::routing::RouteError;
use sluice_policy::rpc::NonCanonicalPath;

/// A request the proxy refuses to carry whatever policy says, because what it would authorize
/// and what the application would act on could differ.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// `CONNECT`: the proxy is no tunnel; opaque TCP has its own grant (`tcp:PORT`).
    #[error(
        "CONNECT is not proxied: a sidecar is no tunnel (opaque TCP to a port is granted with \
         `tcp:PORT` and needs no CONNECT)"
    )]
    Connect,
    /// An HTTP/1 request target in absolute-form (`GET http://host/path`).
    #[error(
        "the request target is in absolute-form (`{0}`); the sidecar is not a forward proxy: \
         send the path (origin-form, `GET /path`) with a `Host` header"
    )]
    AbsoluteForm(String),
    /// An upstream tried to switch a connection to HTTP/2 (`h2c`) whose requests the proxy
    /// would then never see.
    #[error("the application answered with a switch to h2c, which the mesh does not relay")]
    H2cSwitch,
}

/// The request already passed through this proxy in this direction.
#[derive(Debug, thiserror::Error)]
#[error("request loop: this request already passed through proxy {0}")]
pub struct LoopDetected(pub String);

/// The route's timeout passed before the upstream sent response headers.
#[derive(Debug, thiserror::Error)]
#[error("no response headers from upstream within {0:?}")]
pub struct RequestTimeout(pub std::time::Duration);

/// Sending the request upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection could be made.
    #[error("connect to upstream {target}: {source}")]
    Connect {
        /// The endpoint.
        target: std::net::SocketAddr,
        /// Why.
        source: super::BoxError,
    },
    /// The upstream connection failed or sent something invalid.
    #[error("upstream {target}: {source}")]
    Upstream {
        /// The endpoint.
        target: std::net::SocketAddr,
        /// Why.
        source: super::BoxError,
    },
    /// The request cannot be expressed upstream (e.g. an unusable URI).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The stack was assembled wrongly (no routing decision reached the forwarder).
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// Any failure in the HTTP stack.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// See [`LoopDetected`].
    #[error(transparent)]
    Loop(#[from] LoopDetected),
    /// See [`RouteError`].
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The path is not canonical, so the proxy and the application could read it differently.
    #[error(transparent)]
    NonCanonicalPath(#[from] NonCanonicalPath),
    /// See [`Refused`].
    #[error(transparent)]
    Refused(#[from] Refused),
    /// See [`RequestTimeout`].
    #[error(transparent)]
    Timeout(#[from] RequestTimeout),
    /// See [`ForwardError`].
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// Policy denied the call; rendered by [`super::denial`], not by the generic mapping.
    #[error("denied: {}", .0.explain)]
    Denied(Box<Denial>),
}

impl ProxyError {
    /// HTTP status, gRPC code, and a short stable reason for the `sluice-proxy-error` header.
    fn classify(&self) -> (StatusCode, u32, &'static str) {
        use ForwardError as F;
        match self {
            ProxyError::Loop(_) => (StatusCode::LOOP_DETECTED, 13, "loop"),
            ProxyError::Route(RouteError::Refused(_)) => (StatusCode::FORBIDDEN, 7, "refused"),
            ProxyError::Route(RouteError::NoEndpoints { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, 14, "no-endpoints")
            }
            ProxyError::NonCanonicalPath(_) => (StatusCode::BAD_REQUEST, 3, "non-canonical-path"),
            ProxyError::Refused(Refused::Connect) => {
                (StatusCode::METHOD_NOT_ALLOWED, 12, "connect-refused")
            }
            ProxyError::Refused(Refused::AbsoluteForm(_)) => {
                (StatusCode::BAD_REQUEST, 3, "absolute-form")
            }
            ProxyError::Refused(Refused::H2cSwitch) => (StatusCode::BAD_GATEWAY, 14, "h2c-refused"),
            ProxyError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, 4, "timeout"),
            ProxyError::Forward(F::Connect { .. }) => (StatusCode::BAD_GATEWAY, 14, "connect"),
            ProxyError::Forward(F::Upstream { .. }) => (StatusCode::BAD_GATEWAY, 14, "upstream"),
            ProxyError::Forward(F::BadRequest(_)) => (StatusCode::BAD_REQUEST, 13, "bad-request"),
            ProxyError::Forward(F::Internal(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, 13, "internal")
            }
            ProxyError::Denied(_) => (StatusCode::FORBIDDEN, 7, "denied"),
        }
    }
}

/// Turns an error into the response the client sees. gRPC clients get a trailers-only
/// response (HTTP 200 with `grpc-status`), because that is what their libraries understand.
/// Denials get their own rich rendering, chosen by `accept` for non-gRPC clients.
pub fn to_response(err: &ProxyError, grpc: bool, accept: Option<&str>) -> Response {
    if let ProxyError::Denied(denial) = err {
        return super::denial::render(denial, grpc, accept);
    }
    let (status, grpc_code, reason) = err.classify();
    let message = err.to_string();
    if !grpc
        && matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED
        )
    {
        return problem(err, status, reason, accept);
    }
    let mut rsp = if grpc {
        let mut rsp = http::Response::new(empty());
        let h = rsp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(grpc_code));
        let encoded: String =
            percent_encoding::utf8_percent_encode(&message, percent_encoding::CONTROLS).to_string();
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            h.insert("grpc-message", v);
        }
        rsp
    } else {
        let mut rsp = http::Response::new(text(format!("sluice-proxy: {message}\n")));
        *rsp.status_mut() = status;
        rsp.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    rsp.headers_mut()
        .insert("sluice-proxy-error", HeaderValue::from_static(reason));
    rsp
}

/// Requests the proxy refuses as malformed get the same treatment as denials: RFC 9457
/// problem+json unless the client reads text, with a stable `type` per reason and, for a path
/// that has one, its canonical form.
fn problem(
    err: &ProxyError,
    status: StatusCode,
    reason: &'static str,
    accept: Option<&str>,
) -> Response {
    let message = err.to_string();
    let (body, content_type) = match super::denial::negotiate(accept) {
        super::denial::Format::Problem => {
            let mut v = serde_json::json!({
                "type": format!("https://sluice.dev/problems/{reason}"),
                "title": "Request refused by the mesh",
                "status": status.as_u16(),
                "detail": message,
            });
            if let ProxyError::NonCanonicalPath(p) = err {
                v["problem"] = p.problem.describe().into();
                if let Some(c) = &p.canonical {
                    v["canonical"] = c.clone().into();
                }
            }
            (v.to_string(), "application/problem+json")
        }
        _ => (
            format!("sluice-proxy: {message}\n"),
            "text/plain; charset=utf-8",
        ),
    };
    let mut rsp = http::Response::new(text(body));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("sluice-proxy-error", HeaderValue::from_static(reason));
    rsp
}

/// The bytes answering a connection that is not HTTP on a port declared HTTP, before it is
/// closed: the listener has no HTTP connection to answer through, so the response is written
/// whole. `message` says why.
pub fn not_http_response(message: &str) -> Vec<u8> {
    let body = format!("sluice-proxy: {message}\n");
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         sluice-proxy-error: not-http\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn empty() -> Body {
    Full::default()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(s: String) -> Body {
    Full::from(s).map_err(|never| match never {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let e = ProxyError::from(LoopDetected("p".into()));
        assert_eq!(
            to_response(&e, false, None).status(),
            StatusCode::LOOP_DETECTED
        );
        let e = ProxyError::from(RequestTimeout(std::time::Duration::from_secs(1)));
        let rsp = to_response(&e, true, None);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "4");
        assert_eq!(rsp.headers()["sluice-proxy-error"], "timeout");
        let e =
            ProxyError::from(sluice_policy::rpc::check_request_path("/a/../b").expect_err("dots"));
        let rsp = to_response(&e, false, None);
        assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rsp.headers()["content-type"], "application/problem+json");
        assert_eq!(rsp.headers()["sluice-proxy-error"], "non-canonical-path");
        assert_eq!(to_response(&e, true, None).headers()["grpc-status"], "3");
        let e = ProxyError::from(Refused::Connect);
        assert_eq!(
            to_response(&e, false, Some("text/plain")).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
