//! The upstream every path ends at: a hyper HTTP/1.1 server with a tiny fixed response, on its
//! own thread and single-threaded runtime so that it does not share the load generator's.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::BenchError;

/// The response body: small, so the benchmark measures the proxies, not the payload.
const BODY: &[u8] = b"ok\n";

/// A request for this path is answered with the `sluice-client-id` header it arrived with
/// (empty if none): how the mTLS pair's check sees that the inbound proxy verified the
/// caller's certificate and authorized the call. The load never asks for it.
pub const WHOAMI_PATH: &str = "/__mesh_bench/whoami";

/// The header an inbound sluice proxy sets to the caller's verified SPIFFE ID.
const CLIENT_ID: &str = "sluice-client-id";

/// A running upstream. It lives until the process exits.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens (127.0.0.1, a kernel-chosen port).
    pub addr: SocketAddr,
}

impl Upstream {
    /// Binds 127.0.0.1:0 and serves on a new thread.
    pub fn start() -> Result<Upstream, BenchError> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("bind upstream"))?;
        let addr = listener
            .local_addr()
            .map_err(BenchError::io("upstream address"))?;
        listener
            .set_nonblocking(true)
            .map_err(BenchError::io("upstream listener"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("upstream runtime"))?;
        std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || runtime.block_on(serve(listener)))
            .map_err(BenchError::io("upstream thread"))?;
        Ok(Upstream { addr })
    }
}

async fn serve(listener: std::net::TcpListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream: cannot use listener: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("upstream: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(respond))
                .await;
        });
    }
}

async fn respond(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == WHOAMI_PATH {
        Bytes::copy_from_slice(
            req.headers()
                .get(CLIENT_ID)
                .map_or(&b""[..], |v| v.as_bytes()),
        )
    } else {
        Bytes::from_static(BODY)
    };
    Ok(Response::new(Full::new(body)))
}
