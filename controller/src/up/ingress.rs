//! The ingress: one port on the host's loopback that routes by `Host` header —
//! `frontend.localhost:PORT` (or plain `frontend`) goes to the frontend's service address, as
//! an unauthenticated caller; `frontend.pr-1.localhost` goes to ephemeral environment `pr-1`:
//! to its frontend copy when it has one, else to stable's, and either way with the W3C baggage
//! member `sluice-env=pr-1` added (after what the client sent, which stays byte for byte), so
//! every sidecar on the way routes to `pr-1`'s copies.
//!
//! HTTP/1.1 (hyper on both sides); each request is routed on its own, so one browser
//! connection can visit several hosts. An upgrade (WebSocket) is forwarded and then relayed
//! as bytes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_policy::baggage::{ENVIRONMENT_MEMBER, has_member, with_member};
use tokio::net::{TcpListener, TcpStream};

use super::env::IngressRoutes;

/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the upstream may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

type Body = BoxBody<Bytes, hyper::Error>;

/// Where requests go.
#[derive(Debug)]
pub struct Routes {
    /// Each service's address.
    pub services: BTreeMap<String, SocketAddr>,
    /// The environments and their copies.
    pub envs: Arc<IngressRoutes>,
}

/// Serves until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, routes: Routes) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let routes = Arc::new(routes);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let routes = Arc::clone(&routes);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let routes = Arc::clone(&routes);
                async move { Ok::<_, Infallible>(handle(req, &routes).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(conn), service)
                .with_upgrades()
                .await;
        });
    }
}

/// The service and environment a `Host` names: `frontend.pr-1.localhost:8000` →
/// (`frontend`, `pr-1`); `frontend.localhost` → (`frontend`, none).
pub fn target_of(host: &str) -> (&str, Option<&str>) {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let name = name.strip_suffix(".localhost").unwrap_or(name);
    match name.split_once('.') {
        Some((service, env)) if !env.is_empty() && !env.contains('.') => (service, Some(env)),
        _ => (name, None),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

async fn handle(mut req: Request<Incoming>, routes: &Routes) -> Response<Body> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let (service, env) = target_of(&host);
    let Some(&stable) = routes.services.get(service) else {
        let list: Vec<_> = routes
            .services
            .keys()
            .map(|s| format!("{s}.localhost"))
            .collect();
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "sluice up ingress: no service for Host {host:?}; try one of: {} (or \
                 SERVICE.ENVIRONMENT.localhost for an ephemeral environment)\n",
                list.join(", ")
            ),
        );
    };
    let target = match env {
        None => stable,
        Some(env) => match routes.envs.lookup(env, service) {
            None => {
                let names = routes.envs.names();
                return text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "sluice up ingress: no environment `{env}` ({}); create it with `sluice \
                         env create {env} --service SERVICE`\n",
                        if names.is_empty() {
                            "there are none".to_owned()
                        } else {
                            format!("there are: {}", names.join(", "))
                        }
                    ),
                );
            }
            Some(copy) => {
                add_environment(req.headers_mut(), env);
                copy.unwrap_or(stable)
            }
        },
    };
    match forward(req, target).await {
        Ok(rsp) => rsp,
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("sluice up ingress: cannot reach {service} at {target}: {e}\n"),
        ),
    }
}

/// Adds `sluice-env=<env>` to the request's baggage unless a member names an environment
/// already: appended to the first `baggage` field, or as the only one.
fn add_environment(headers: &mut hyper::HeaderMap, env: &str) {
    let present = has_member(
        headers.get_all("baggage").iter().map(HeaderValue::as_bytes),
        ENVIRONMENT_MEMBER,
    );
    if present {
        return;
    }
    let merged = with_member(
        headers.get("baggage").map(HeaderValue::as_bytes),
        ENVIRONMENT_MEMBER,
        env,
    );
    if let Ok(v) = HeaderValue::from_bytes(&merged) {
        match headers.get_mut("baggage") {
            Some(first) => *first = v,
            None => {
                headers.insert("baggage", v);
            }
        }
    }
}

async fn forward(mut req: Request<Incoming>, target: SocketAddr) -> Result<Response<Body>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let upgrade = req
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut rsp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = upgrade
    {
        let upstream_side = hyper::upgrade::on(&mut rsp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(u)) = (client_side.await, upstream_side.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
            }
        });
    }
    Ok(rsp.map(BodyExt::boxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_a_service_and_maybe_an_environment() {
        assert_eq!(target_of("frontend.localhost:8000"), ("frontend", None));
        assert_eq!(target_of("frontend.localhost"), ("frontend", None));
        assert_eq!(target_of("payments"), ("payments", None));
        assert_eq!(
            target_of("frontend.pr-1.localhost:8000"),
            ("frontend", Some("pr-1"))
        );
        assert_eq!(target_of("frontend.pr-1"), ("frontend", Some("pr-1")));
        assert_eq!(target_of("a.b.c.localhost"), ("a.b.c", None));
    }

    #[test]
    fn the_environment_joins_the_baggage_the_client_sent() {
        let mut h = hyper::HeaderMap::new();
        add_environment(&mut h, "pr-1");
        assert_eq!(h["baggage"], "sluice-env=pr-1");
        let mut h = hyper::HeaderMap::new();
        h.append("baggage", HeaderValue::from_static("userId=al%20ice;p"));
        h.append("baggage", HeaderValue::from_static("k=v"));
        add_environment(&mut h, "pr-1");
        let all: Vec<_> = h.get_all("baggage").iter().collect();
        assert_eq!(all, ["userId=al%20ice;p,sluice-env=pr-1", "k=v"]);
        // The client named one: kept.
        let mut h = hyper::HeaderMap::new();
        h.insert("baggage", HeaderValue::from_static("sluice-env=pr-2"));
        add_environment(&mut h, "pr-1");
        assert_eq!(h["baggage"], "sluice-env=pr-2");
    }
}
