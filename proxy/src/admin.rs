//! The admin listener: `/metrics`, `/ready`, `/live`, `/config` and `/shutdown`.
//!
//! It is plain HTTP/1.1 on loopback by default and is not part of the proxied path, so it keeps
//! answering (e.g. `/ready` → 503) while the proxy drains.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::drain;
use crate::metrics::Metrics;
use crate::state::{SharedState, SourceStatus};

/// What the admin endpoints read or trigger.
#[derive(Debug)]
pub struct Admin {
    /// Exported by `/metrics`.
    pub metrics: Metrics,
    /// Summarised by `/config`.
    pub state: Arc<SharedState>,
    /// Whether draining started (`/ready` turns 503).
    pub drain: drain::Observer,
    /// Woken by `/shutdown`.
    pub shutdown: Arc<Notify>,
    /// Reported by `/config`.
    pub proxy_id: String,
    /// The config source: reported by `/config`; `/ready` waits for its first config.
    pub source: Arc<SourceStatus>,
    /// The pod's kubelet probes (`SLUICE_PROXY_PROBES`), reported by `/config`.
    pub probes: sluice_policy::probes::ProbeSet,
}

/// Serves admin requests until the process exits.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let rsp = admin.handle(&req, peer);
                async move { Ok::<_, Infallible>(rsp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "admin connection error");
            }
        });
    }
}

type AdminResponse = http::Response<Full<Bytes>>;

impl Admin {
    fn handle(&self, req: &http::Request<Incoming>, peer: SocketAddr) -> AdminResponse {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n"),
            (&Method::GET, "/ready") if self.drain.is_draining() => {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            }
            (&Method::GET, "/ready") if !self.source.ready() => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "waiting for the first config from the controller\n",
            ),
            (&Method::GET, "/ready") => reply(StatusCode::OK, "text/plain", "ready\n"),
            (&Method::GET, "/metrics") => match self.metrics.encode() {
                Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            },
            (&Method::GET, "/config") => reply(
                StatusCode::OK,
                "application/json",
                self.config_json().to_string(),
            ),
            // Anyone who can reach the admin port must not be able to stop the workload's
            // traffic, so only local callers may.
            (&Method::POST, "/shutdown") if !peer.ip().is_loopback() => reply(
                StatusCode::FORBIDDEN,
                "text/plain",
                "shutdown is only allowed from loopback\n",
            ),
            (&Method::POST, "/shutdown") => {
                self.shutdown.notify_one();
                reply(StatusCode::OK, "text/plain", "draining\n")
            }
            (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            ),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    /// The state in force: its version, the policy's version and a summary of what is
    /// routed, so `curl :4191/config` answers "which config is this proxy running?".
    fn config_json(&self) -> serde_json::Value {
        let state = self.state.current();
        let table = &state.routing;
        let services: Vec<_> = table
            .services
            .iter()
            .map(|s| {
                let weights: std::collections::HashMap<usize, u32> =
                    s.split.0.iter().copied().collect();
                serde_json::json!({
                    "name": &*s.name,
                    "addresses": s.addresses,
                    "versions": s.versions.iter().enumerate().map(|(i, v)| serde_json::json!({
                        "name": &*v.name,
                        "role": &*v.role,
                        "weight": weights.get(&i).copied().unwrap_or(0),
                        "endpoints": v.endpoints.len(),
                    })).collect::<Vec<_>>(),
                    "environments": s.environments.iter()
                        .map(|(k, v)| (k.to_string(), serde_json::json!(v.endpoints.len())))
                        .collect::<serde_json::Map<_, _>>(),
                    "rules": s.rules.iter().map(|r| &*r.name).collect::<Vec<_>>(),
                    "timeout_ms": s.timeout.map(|t| t.as_millis()),
                })
            })
            .collect();
        let policy = &state.policy;
        let local = self.state.local();
        serde_json::json!({
            "proxy_id": self.proxy_id,
            "version": state.version,
            "source": self.source.json(),
            "workload": {
                "namespace": local.namespace, "service": local.service,
                "version": local.version, "environment": local.environment,
                "instance": local.instance, "role": local.role,
            },
            "policy": {
                "version": policy.version(),
                "services": policy.services().len(),
                "routes": policy.routes().len(),
            },
            "endpoints": {
                "services": state.endpoints.0.len(),
                "instances": state.endpoints.instance_count(),
            },
            "services": services,
            "warnings": table.warnings,
            "draining": self.drain.is_draining(),
            // Allowed without identity whatever the policy says: shown so nobody has to guess.
            "kubelet_probes": self.probes.probes().iter().map(|p| serde_json::json!({
                "port": p.port(), "rpc": p.rpc().to_string(),
                "origin": sluice_policy::probes::ORIGIN,
            })).collect::<Vec<_>>(),
        })
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut rsp = http::Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    rsp
}
