//! Test upstreams: an HTTP/1.1 + HTTP/2 server that reports what it received, a TCP echo
//! server and a WebSocket echo server. All run in the test's tokio runtime on 127.0.0.1:0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// A running upstream; aborted on drop.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests (or connections) served.
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Requests (or connections) served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP server (HTTP/1.1 and HTTP/2 prior knowledge, with upgrades) named `name`:
///
/// * `/count`: reads the request body and answers with its length.
/// * `/echo`: streams the request body back.
/// * `/bytes/N`: streams N bytes.
/// * `/slow/MS`: answers after MS milliseconds.
/// * any path ending in `/forbidden`: the app's own refusal, [`APP_403_BODY`] with a 403,
///   `content-type: application/json` and `x-app-reason: not-your-charge`.
/// * anything else: JSON `{name, method, path, version, headers, header_lines}`: `headers`
///   maps each name to its last value; `header_lines` lists every field as `[name, value]`
///   in the order received, bytes as sent (for tests of repeated fields).
pub async fn http(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve_http(listener, name)
}

/// [`http`] on a listener the test bound elsewhere (e.g. inside a network namespace, with
/// [`crate::netns::Netns::bind_tcp`]); it must be non-blocking. Call from a tokio runtime.
pub fn http_on(listener: std::net::TcpListener, name: &str) -> Upstream {
    serve_http(
        TcpListener::from_std(listener).expect("a non-blocking listener"),
        name,
    )
}

fn serve_http(listener: TcpListener, name: &str) -> Upstream {
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let name: Arc<str> = name.into();
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (name, counter) = (name.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    handle(name.clone(), req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits, task }
}

/// The body of the app's own 403 (`…/forbidden`): a refusal by the app, not by the mesh.
pub const APP_403_BODY: &str = r#"{"error":"this charge belongs to another customer"}"#;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

async fn handle(
    name: Arc<str>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut rsp = if path == "/count" {
        let mut body = req.into_body();
        let mut n = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, Bytes::len),
                Err(e) => return Ok(http::Response::new(full(format!("error: {e}")))),
            }
        }
        http::Response::new(full(n.to_string()))
    } else if path == "/echo" {
        http::Response::new(req.into_body().map_err(BoxError::from).boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        http::Response::new(bytes_body(n.parse().unwrap_or(0)))
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        http::Response::new(full(format!("slow {name}")))
    } else if path.ends_with("/forbidden") {
        let mut rsp = http::Response::new(full(APP_403_BODY));
        *rsp.status_mut() = http::StatusCode::FORBIDDEN;
        let h = rsp.headers_mut();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            "x-app-reason",
            http::HeaderValue::from_static("not-your-charge"),
        );
        rsp
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let lines: Vec<[String; 2]> = req
            .headers()
            .iter()
            .map(|(k, v)| [k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()])
            .collect();
        let json = serde_json::json!({
            "name": &*name,
            "method": req.method().as_str(),
            "path": path,
            "version": format!("{:?}", req.version()),
            "headers": headers,
            "header_lines": lines,
        });
        http::Response::new(full(json.to_string()))
    };
    rsp.headers_mut().insert(
        "x-upstream",
        http::HeaderValue::from_str(&name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    Ok(rsp)
}

/// `n` bytes in 64 KiB chunks, generated lazily so the upstream never holds them all.
fn bytes_body(n: usize) -> Body {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(CHUNK);
                (Ok(Frame::data(chunk.slice(..take))), left - take)
            })
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A TCP server that echoes each connection until the client half-closes, then writes
/// `"<n> bytes\n"` and closes its side, so tests can see both directions' FINs.
pub async fn tcp_echo() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut total = 0usize;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            total += n;
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream
                    .write_all(format!("{total} bytes\n").as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Upstream { addr, hits, task }
}

/// A WebSocket server that echoes every text and binary message.
pub async fn websocket_echo() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream { addr, hits, task }
}
