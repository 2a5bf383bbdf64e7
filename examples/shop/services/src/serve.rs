//! What every service shares: the HTTP server loop with graceful shutdown, the injected
//! faults, the one-line-per-request log, the `shop-version` header and response helpers.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{info, warn};

pub type Request = hyper::Request<Incoming>;
pub type Response = hyper::Response<Full<Bytes>>;

/// Every response carries the version that produced it, so rollout tests can count them.
pub const VERSION_HEADER: &str = "shop-version";

/// How long a shutdown waits for requests already in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// The largest request body a service reads.
const MAX_BODY: usize = 64 * 1024;

/// Faults injected on purpose, to show a bad canary being caught.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Share of requests, 0.0–1.0, that fail.
    pub error_rate: f64,
    /// Added to every request.
    pub latency: Duration,
    /// Up to this much more, uniformly at random.
    pub jitter: Duration,
}

impl Faults {
    /// Waits the configured latency (plus jitter).
    pub async fn delay(&self) {
        let mut delay = self.latency;
        if !self.jitter.is_zero() {
            delay += self.jitter.mul_f64(rand::rng().random::<f64>());
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether this request is one of the injected failures.
    pub fn fail(&self) -> bool {
        self.error_rate > 0.0 && rand::rng().random::<f64>() < self.error_rate
    }
}

/// Who is serving, for logs, headers and injected failures.
#[derive(Debug, Clone)]
pub struct Identity {
    pub service: &'static str,
    pub version: String,
    pub faults: Faults,
}

impl Identity {
    pub fn version_header(&self) -> HeaderValue {
        HeaderValue::from_str(&self.version).unwrap_or(HeaderValue::from_static("unknown"))
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is called,
/// not when the future is first polled: call it before announcing the service, so that a
/// SIGTERM sent right after the startup line is a graceful shutdown, not a kill.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("cannot listen for {name}: {e}");
            None
        }
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM");
    let mut int = install(SignalKind::interrupt(), "Ctrl-C");
    async move {
        tokio::select! {
            () = wait(term.as_mut()) => info!("SIGTERM: shutting down"),
            () = wait(int.as_mut()) => info!("Ctrl-C: shutting down"),
        }
    }
}

#[cfg(unix)]
async fn wait(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
        info!("Ctrl-C: shutting down");
    }
}

/// Serves HTTP/1 and HTTP/2 (prior knowledge) on `listener` until `shutdown` resolves, then
/// stops accepting and waits (up to 10 s) for the requests in flight.
///
/// Every request except `GET /healthz` first gets the injected latency and, at the configured
/// rate, an injected 500 instead of an answer; health checks are spared so that a bad
/// version is judged by its traffic, not restarted by its probes.
pub async fn serve<H, F>(
    listener: TcpListener,
    id: Arc<Identity>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let id = id.clone();
        let handler = handler.clone();
        let service = service_fn(move |req: Request| {
            let id = id.clone();
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handle(&id, req, handler).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Clients hanging up mid-request are routine; they are not the service's errors.
            let _ = conn.await;
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        info!("draining {open} open connection(s)");
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("gave up on requests still running after {DRAIN:?}");
    }
}

async fn handle<H, F>(id: &Identity, req: Request, handler: H) -> Response
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let start = Instant::now();
    let method = req.method().clone();
    // The path only: a query string may hold something that should not be in a log (or in
    // the rollout notification that quotes it).
    let path = req.uri().path().to_owned();
    let mut res = if method == Method::GET && path == "/healthz" {
        handler(req).await
    } else {
        id.faults.delay().await;
        if id.faults.fail() {
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({
                    "error": "injected failure (SHOP_ERROR_RATE)",
                    "service": id.service,
                    "version": id.version,
                }),
            )
        } else {
            handler(req).await
        }
    };
    res.headers_mut()
        .insert(VERSION_HEADER, id.version_header());
    log_request(method.as_str(), &path, res.status().as_u16(), start);
    res
}

/// The one line per request that the rollout notifications quote.
pub fn log_request(method: &str, path: &str, status: impl std::fmt::Display, start: Instant) {
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    info!("{method} {path} {status} {ms:.1}ms");
}

/// The startup line: service, version, where it listens, and any faults it injects.
pub fn log_started(id: &Identity, addrs: &str) {
    let f = &id.faults;
    let mut faults = Vec::new();
    if f.error_rate > 0.0 {
        faults.push(format!("{}% errors", f.error_rate * 100.0));
    }
    if !f.latency.is_zero() || !f.jitter.is_zero() {
        let mut latency = format!("+{} latency", humantime::format_duration(f.latency));
        if !f.jitter.is_zero() {
            latency.push_str(&format!(
                " (+ up to {} jitter)",
                humantime::format_duration(f.jitter)
            ));
        }
        faults.push(latency);
    }
    let faults = if faults.is_empty() {
        String::new()
    } else {
        format!(", injecting {}", faults.join(" and "))
    };
    info!(
        "shop {} {} listening on {addrs}{faults}",
        id.service, id.version
    );
}

pub fn json(status: StatusCode, body: &Value) -> Response {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub fn html(status: StatusCode, body: String) -> Response {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

pub fn text(status: StatusCode, body: &'static str) -> Response {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, &json!({ "error": message.into() }))
}

pub fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

pub fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

/// Reads a request body (up to 64 KiB).
pub async fn body_bytes(req: Request) -> Result<Bytes, Response> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// Reads a JSON request body into `T`; a 400 that says what is wrong otherwise.
pub async fn body_json<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Response> {
    let bytes = body_bytes(req).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the request body is not the JSON expected: {e}"),
        )
    })
}

/// The path's segments after a prefix: `/v1/charges/ch_1` with `/v1/charges/` → `ch_1`.
/// Only one non-empty segment counts.
pub fn path_param<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_are_one_segment() {
        assert_eq!(path_param("/v1/charges/ch_1", "/v1/charges/"), Some("ch_1"));
        assert_eq!(path_param("/v1/charges/", "/v1/charges/"), None);
        assert_eq!(path_param("/v1/charges/a/b", "/v1/charges/"), None);
        assert_eq!(path_param("/v2/charges/a", "/v1/charges/"), None);
    }
}
