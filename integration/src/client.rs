//! Test clients: a pooled hyper client for bulk requests, and `curl` for "a real user's tool".

use std::net::SocketAddr;
use std::process::Output;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// A keep-alive HTTP client (HTTP/1.1, or HTTP/2 prior knowledge with `h2`).
pub fn hyper_client(h2: bool) -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

/// A response, fully read.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON (the test upstream's default answer).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// GET `http://addr{path}` with extra headers.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    request(client, http::Method::GET, addr, path, headers).await
}

/// `method` `http://addr{path}` with extra headers and an empty body.
pub async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::default()).map_err(|e| e.to_string())?;
    let rsp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Runs `curl -sS` with `args`.
pub async fn curl(args: &[&str]) -> Output {
    tokio::process::Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .await
        .expect("run curl")
}

/// The proxy's `/metrics` at `admin`, once it shows `needle`. A counter a proxy bumps when a
/// connection ends (`sluice_proxy_tcp_close_total`) lands just after the client sees the end:
/// a user scraping a moment later sees it, and a test waits the same way.
pub async fn metrics_showing(admin: SocketAddr, needle: &str) -> String {
    let client = hyper_client(false);
    crate::wait_for_async(
        &format!("{needle} in the proxy's metrics"),
        crate::PATIENCE,
        async || {
            let body = get(&client, admin, "/metrics", &[]).await.ok()?.body;
            body.contains(needle).then_some(body)
        },
    )
    .await
}
