//! The read-only admin endpoint: HTTP/1.1 on loopback (`--admin`, port 0 by default; the bound
//! address is written to `STATE_DIR/admin.addr`).
//!
//! | path | answer |
//! |---|---|
//! | `GET /status` | the [`StatusReport`](crate::status::StatusReport) JSON `sluice status` prints |
//! | `GET /traffic` | every version's traffic totals as the proxies report them ([`crate::rollout::traffic`]) |
//! | `GET /healthz` | `ok` |
//! | `/rollouts…` | the rollout API and pages ([`super::rollout_api`]) |
//! | `/environments…`, `/instances/sync` | ephemeral environments ([`crate::env::api`]); changes need the admin token |
//!
//! It listens on loopback only by default: the rollout actions (start, pause, promote, abort)
//! are as powerful as the CLI, and anyone who can reach the port can use them. Behind an
//! authenticating proxy is the way to share it (the portal's issue adds user identities).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::state::ControlPlane;

/// The environment routes' state: the environments and the admin token changes need.
#[derive(Clone)]
pub struct EnvRoutes {
    /// The environments.
    pub envs: Arc<crate::env::Environments>,
    /// `STATE_DIR/admin.token`.
    pub token: Arc<str>,
}

/// Serves until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<ControlPlane>,
    engine: Option<Arc<crate::rollout::engine::Engine>>,
    envs: Option<EnvRoutes>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let plane = Arc::clone(&plane);
        let engine = engine.clone();
        let envs = envs.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let plane = Arc::clone(&plane);
                let engine = engine.clone();
                let envs = envs.clone();
                async move {
                    if let Some(envs) = envs.filter(|_| crate::env::api::handles(req.uri().path()))
                    {
                        return Ok::<_, Infallible>(environments(&envs, req).await);
                    }
                    let rollouts = req.uri().path() == "/rollouts"
                        || req.uri().path().starts_with("/rollouts/");
                    Ok::<_, Infallible>(match (rollouts, engine) {
                        (true, Some(engine)) => super::rollout_api::handle(&engine, req).await,
                        _ => handle(&plane, &req).await,
                    })
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

async fn environments(routes: &EnvRoutes, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::{BodyExt, Limited};
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(req.into_body(), crate::env::api::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is too large or was cut off\n",
            );
        }
    };
    let (status, value) = crate::env::api::handle(
        &routes.envs,
        &method,
        &path,
        authorization.as_deref(),
        &routes.token,
        &body,
    )
    .await;
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "error\n"))
}

async fn handle(plane: &ControlPlane, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/status" => match plane.status().await {
            Ok(report) => match serde_json::to_vec_pretty(&report) {
                Ok(body) => Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "error\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            },
            Err(e) => {
                tracing::error!(error = %e, "status failed");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store cannot be read; the controller's log has the details\n",
                )
            }
        },
        "/traffic" => traffic(plane),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /status\n"),
    }
}

/// `GET /traffic`: `{"traffic": [{namespace, service, version, environment, requests,
/// failures, success_rate, p50_ms, p99_ms, instances, last_report_unix_ms}]}`, sorted by key.
/// The rates and quantiles are `null` without requests; quantiles are interpolated within
/// buckets like Prometheus' `histogram_quantile`, so they are estimates at bucket precision.
fn traffic(plane: &ControlPlane) -> Response<Full<Bytes>> {
    let ms = |seconds: Option<f64>| seconds.map(|s| s * 1000.0);
    let rows: Vec<serde_json::Value> = plane
        .traffic()
        .all()
        .into_iter()
        .map(|(k, t)| {
            serde_json::json!({
                "namespace": k.namespace,
                "service": k.service,
                "version": k.version,
                "environment": k.environment,
                "requests": t.requests,
                "failures": t.failures,
                "success_rate": t.success_rate(),
                "p50_ms": ms(t.quantile(0.5)),
                "p99_ms": ms(t.quantile(0.99)),
                "instances": t.instances,
                "last_report_unix_ms": t.last_report_unix_ms,
            })
        })
        .collect();
    match serde_json::to_vec_pretty(&serde_json::json!({ "traffic": rows })) {
        Ok(body) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "error\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}
