//! Test helpers: the real `shop` binary as a child process, a plain HTTP client, and stub
//! servers for what a test needs to fake (a dependency that the mesh denies).
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A running `shop <service>`, killed when dropped.
pub struct Shop {
    child: Child,
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Shop {
    /// Starts `shop <service>` on 127.0.0.1 port 0 (HTTP and gRPC) with `env`, and waits for
    /// its startup line to learn the ports.
    pub fn start(service: &str, env: &[(&str, &str)]) -> Shop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
            .arg(service)
            .env("SHOP_LISTEN", "127.0.0.1:0")
            .env("SHOP_GRPC_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("listening on") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let started = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("`shop {service}` printed no startup line"));
        let addr = |key: &str| {
            started
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|a| a.trim_end_matches(',').parse::<SocketAddr>().unwrap())
        };
        Shop {
            http: addr("http=").unwrap(),
            grpc: addr("grpc="),
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log once a line containing `needle` is in it (stdout is read by another thread,
    /// so a line can trail the response it belongs to). Panics after 10 s, showing the log.
    pub fn log_with(&self, needle: &str) -> Vec<String> {
        for _ in 0..200 {
            let lines = self.log();
            if lines.iter().any(|l| l.contains(needle)) {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no log line contains {needle:?}:\n{:#?}", self.log());
    }

    /// Sends SIGTERM and waits (up to 15 s) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for _ in 0..150 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("`shop` did not exit within 15 s of SIGTERM");
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub type StubResponse = hyper::Response<Full<Bytes>>;

/// What a stub saw: method, path and headers of every request.
pub type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap)>>>;

/// An HTTP server on 127.0.0.1 port 0 that answers with `answer`, recording what it saw.
pub async fn stub<F>(answer: F) -> (SocketAddr, Seen)
where
    F: Fn(&Method, &str) -> StubResponse + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let answer = Arc::new(answer);
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let seen = recorded.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let res = answer(req.method(), req.uri().path());
                    seen.lock().unwrap().push((
                        req.method().clone(),
                        req.uri().path().to_owned(),
                        req.headers().clone(),
                    ));
                    async move { Ok::<_, Infallible>(res) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

pub fn respond(status: u16, headers: &[(&str, &str)], body: String) -> StubResponse {
    let mut res = hyper::Response::builder().status(status);
    for (k, v) in headers {
        res = res.header(*k, *v);
    }
    res.body(Full::new(Bytes::from(body))).unwrap()
}
