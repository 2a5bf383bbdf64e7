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

/// The gRPC method answered with one message.
pub const GRPC_UNARY: &str = "/bench.Echo/Unary";
/// The gRPC method answered with [`STREAM_MESSAGES`] messages (a server stream).
pub const GRPC_STREAM: &str = "/bench.Echo/Stream";
/// Messages in one server-stream answer.
pub const STREAM_MESSAGES: u32 = 100;
/// One length-prefixed gRPC message (uncompressed, 8 payload bytes).
pub const GRPC_MESSAGE: &[u8] = b"\x00\x00\x00\x00\x08bench-ok";

/// An HTTP/2 (prior knowledge) upstream that answers like a gRPC server: `200`,
/// `content-type: application/grpc`, the message(s), then `grpc-status: 0` in the trailers.
/// It reads each request's whole body first, as a real server would.
#[derive(Debug)]
pub struct GrpcUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl GrpcUpstream {
    /// Binds 127.0.0.1:0 and serves on a new thread.
    pub fn start() -> Result<GrpcUpstream, BenchError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(BenchError::io("bind the gRPC upstream"))?;
        let addr = listener
            .local_addr()
            .map_err(BenchError::io("gRPC upstream address"))?;
        listener
            .set_nonblocking(true)
            .map_err(BenchError::io("gRPC upstream listener"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("gRPC upstream runtime"))?;
        std::thread::Builder::new()
            .name("grpc-upstream".into())
            .spawn(move || runtime.block_on(serve_grpc(listener)))
            .map_err(BenchError::io("gRPC upstream thread"))?;
        Ok(GrpcUpstream { addr })
    }
}

async fn serve_grpc(listener: std::net::TcpListener) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        eprintln!("grpc upstream: cannot use listener");
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .max_concurrent_streams(1000)
                .serve_connection(TokioIo::new(stream), service_fn(grpc_respond))
                .await;
        });
    }
}

async fn grpc_respond(req: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    let messages = if req.uri().path() == GRPC_STREAM {
        STREAM_MESSAGES
    } else {
        1
    };
    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
    let mut rsp = Response::new(GrpcBody {
        left: messages,
        trailers: true,
    });
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(rsp)
}

/// `left` messages, then the trailers.
struct GrpcBody {
    left: u32,
    trailers: bool,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let frame = if self.left > 0 {
            self.left -= 1;
            hyper::body::Frame::data(Bytes::from_static(GRPC_MESSAGE))
        } else if self.trailers {
            self.trailers = false;
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            hyper::body::Frame::trailers(t)
        } else {
            return std::task::Poll::Ready(None);
        };
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && !self.trailers
    }
}

/// A TCP upstream for opaque connections: reads what the client sends (up to a line), answers
/// `PONG\r\n` and closes. Each connection through the mTLS pair is a new mTLS connection
/// between the proxies (opaque TCP is not pooled), which is what the churn benchmark counts.
#[derive(Debug)]
pub struct TcpUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TcpUpstream {
    /// Binds 127.0.0.1:0 and serves on a new thread.
    pub fn start() -> Result<TcpUpstream, BenchError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(BenchError::io("bind the TCP upstream"))?;
        let addr = listener
            .local_addr()
            .map_err(BenchError::io("TCP upstream address"))?;
        listener
            .set_nonblocking(true)
            .map_err(BenchError::io("TCP upstream listener"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("TCP upstream runtime"))?;
        std::thread::Builder::new()
            .name("tcp-upstream".into())
            .spawn(move || runtime.block_on(serve_tcp(listener)))
            .map_err(BenchError::io("TCP upstream thread"))?;
        Ok(TcpUpstream { addr })
    }
}

async fn serve_tcp(listener: std::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(listener) = TcpListener::from_std(listener) else {
        eprintln!("tcp upstream: cannot use listener");
        return;
    };
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < buf.len() {
                match stream.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if buf[..got].contains(&b'\n') {
                    break;
                }
            }
            let _ = stream.write_all(b"PONG\r\n").await;
            let _ = stream.shutdown().await;
        });
    }
}
