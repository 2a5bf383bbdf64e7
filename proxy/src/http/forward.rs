//! The innermost service: sends the request to the chosen endpoint over a pooled connection
//! and relays the response (and, for `101 Switching Protocols`, the upgraded stream).
//!
//! An upgrade is authorized as the request that asks for it (`GET /chat` with
//! `Upgrade: websocket`); after the `101` the tunnel is opaque bytes both ways, which the
//! proxy relays without looking. Never to h2c: see [`super::headers::strip_h2c_upgrade`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http::uri::{Authority, Scheme, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::Service;

use super::coalesce::Coalesce;
use super::errors::{ForwardError, ProxyError};
use super::{Body, BoxError, BoxFuture, Request, Response, headers};
use crate::identity::SpiffeId;
use crate::routing::InFlight;
use crate::tcp::{self, TcpError};
use crate::tls::{Alpn, MeshTls};

/// Where the route layer decided to send a request.
#[derive(Clone, Debug)]
pub struct Target {
    /// The endpoint.
    pub addr: SocketAddr,
    /// Timeout to response headers.
    pub timeout: Option<Duration>,
    /// Keeps the endpoint's in-flight count up until the response body is done.
    pub in_flight: Option<Arc<InFlight>>,
    /// Set for outbound requests to a known mesh service: originate mTLS and require the
    /// peer to be this service.
    pub mesh_service: Option<String>,
}

/// The receive window of each HTTP/2 connection to an upstream: how many bytes it may send
/// ahead of what the proxy has relayed.
///
/// Also h2's budget for small DATA frames buffered unrelayed (half of it, each frame under
/// 256 bytes charged its shortfall): a gRPC server streaming tiny messages faster than the
/// caller reads them exhausts it, and h2 then closes the connection with `GOAWAY
/// ENHANCE_YOUR_CALM` and fails every call on it. hyper's 5 MiB (about 10,000 such frames)
/// was exhausted by 400 concurrent server streams of 100 messages (`mesh_bench --scenarios
/// grpc`); hyper offers no other way to raise the budget.
const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends requests upstream, keeping one connection pool per endpoint and HTTP version.
#[derive(Clone, Debug)]
pub struct Forward {
    pools: Arc<Pools>,
}

/// Pools are per endpoint and per expected peer identity: a plaintext connection and an mTLS
/// one to the same address are different connections. With the `per-core` runtime they are
/// also per worker ([`set_worker`]): a pooled connection is driven by a task of the runtime
/// that opened it, and a request from another worker's thread would hand every frame across.
type PoolKey = (SocketAddr, Option<SpiffeId>, usize);

thread_local! {
    /// This thread's `per-core` worker; 0 for every thread of the other runtime shapes.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as `per-core` worker `index`, for its own connection pools.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

#[derive(Debug)]
struct Pools {
    h1: DashMap<PoolKey, Client<Connector, Body>, foldhash::fast::RandomState>,
    h2: DashMap<PoolKey, Client<Connector, Body>, foldhash::fast::RandomState>,
    connect_timeout: Duration,
    mesh: Option<MeshOut>,
}

/// What outbound mTLS needs.
#[derive(Clone, Debug)]
pub struct MeshOut {
    /// Mesh TLS.
    pub tls: Arc<MeshTls>,
}

impl Forward {
    /// A forwarder with empty pools; with `mesh`, requests to mesh services go over mTLS.
    pub fn new(connect_timeout: Duration, mesh: Option<MeshOut>) -> Forward {
        Forward {
            pools: Arc::new(Pools {
                h1: DashMap::default(),
                h2: DashMap::default(),
                connect_timeout,
                mesh,
            }),
        }
    }

    /// The identity a mesh service's proxy must present, once we have a trust domain.
    fn expected(&self, service: Option<&str>) -> Option<SpiffeId> {
        let mesh = self.pools.mesh.as_ref()?;
        let td = mesh.tls.trust_domain()?;
        Some(SpiffeId::of_service(td, service?))
    }

    fn client(
        &self,
        addr: SocketAddr,
        h2: bool,
        peer: Option<SpiffeId>,
    ) -> Client<Connector, Body> {
        let map = if h2 { &self.pools.h2 } else { &self.pools.h1 };
        let key = (addr, peer, WORKER.with(std::cell::Cell::get));
        if let Some(c) = map.get(&key) {
            return c.clone();
        }
        map.entry(key.clone())
            .or_insert_with(|| {
                // The pool is keyed by endpoint, not by the URI's authority: the connector
                // ignores the URI so the request keeps the Host/:authority the client sent.
                let alpn = if h2 { Alpn::H2 } else { Alpn::Http1 };
                let connector = Connector {
                    addr,
                    timeout: self.pools.connect_timeout,
                    mesh: match (&self.pools.mesh, key.1) {
                        (Some(m), Some(id)) => Some(Arc::new((m.tls.clone(), id, alpn))),
                        _ => None,
                    },
                };
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .http2_only(h2)
                    .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
                    .build(connector)
            })
            .clone()
    }
}

impl Service<Request> for Forward {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let target = req
                .extensions_mut()
                .remove::<Target>()
                .ok_or(ForwardError::Internal("no routing decision"))?;
            let h2 = req.version() == http::Version::HTTP_2;
            *req.uri_mut() = absolute_uri(&req, target.addr)?;
            let upgrade = headers::is_upgrade(req.headers());
            let downstream = upgrade.then(|| hyper::upgrade::on(&mut req));
            let peer = this.expected(target.mesh_service.as_deref());
            let mut rsp = this
                .client(target.addr, h2, peer)
                .request(req)
                .await
                .map_err(|e| client_error(e, target.addr))?;
            let switching = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            // The request's h2c offer was removed, so an application switching to h2c anyway
            // would bypass the proxy for every later request on this connection.
            if switching && headers::switches_to_h2c(rsp.headers()) {
                return Err(super::errors::Refused::H2cSwitch.into());
            }
            if let (true, Some(downstream)) = (switching, downstream) {
                let upstream = hyper::upgrade::on(&mut rsp);
                tokio::spawn(relay_upgrade(
                    downstream,
                    upstream,
                    target.in_flight.clone(),
                ));
            }
            headers::strip_hop_by_hop(rsp.headers_mut(), switching);
            Ok(rsp.map(|body| {
                Guarded {
                    inner: Coalesce::new(body),
                    _in_flight: target.in_flight,
                }
                .boxed_unsync()
            }))
        })
    }
}

/// The legacy client needs an absolute URI. Keep the authority the client used (or its Host
/// header) so virtual hosting works; the connector decides where bytes actually go.
fn absolute_uri(req: &Request, target: SocketAddr) -> Result<Uri, ForwardError> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .map_or_else(|| Authority::try_from(target.to_string()), Ok)
            .map_err(|e| ForwardError::BadRequest(e.to_string()))?,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|e| ForwardError::BadRequest(e.to_string()))
}

fn client_error(e: hyper_util::client::legacy::Error, target: SocketAddr) -> ForwardError {
    if e.is_connect() {
        ForwardError::Connect {
            target,
            source: Box::new(e),
        }
    } else {
        ForwardError::Upstream {
            target,
            source: Box::new(e),
        }
    }
}

/// Copies bytes between the two upgraded connections (e.g. a WebSocket) until both close.
async fn relay_upgrade(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _in_flight: Option<Arc<InFlight>>,
) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

/// Connects to one fixed endpoint, whatever the URI says; over mTLS when `mesh` is set.
/// hyper's pooling client clones its connector for every request (in case the pool has no
/// idle connection), so the expected identity is behind an `Arc`: a clone is a reference
/// count, not a copy of the SPIFFE ID's strings.
#[derive(Clone, Debug)]
struct Connector {
    addr: SocketAddr,
    timeout: Duration,
    mesh: Option<Arc<(Arc<MeshTls>, SpiffeId, Alpn)>>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = TcpError;
    type Future = BoxFuture<Result<TokioIo<Upstream>, TcpError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TcpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, timeout, mesh) = (self.addr, self.timeout, self.mesh.clone());
        Box::pin(async move {
            let tcp = tcp::connect(addr, timeout).await?;
            let io = match mesh {
                None => Upstream::Plain(tcp),
                Some(mesh) => {
                    let (tls, id, alpn) = &*mesh;
                    Upstream::Tls(Box::new(tls.connect(tcp, id, *alpn).await.map_err(
                        |source| TcpError::Tls {
                            target: addr,
                            source,
                        },
                    )?))
                }
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// An upstream connection: plaintext to apps and unknown destinations, mTLS to mesh peers.
#[derive(Debug)]
pub enum Upstream {
    /// Plain TCP.
    Plain(TcpStream),
    /// Mesh mTLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        match self {
            Upstream::Plain(s) => s.connected(),
            Upstream::Tls(s) => {
                let (tcp, conn) = s.get_ref();
                let c = tcp.connected();
                if conn.alpn_protocol() == Some(crate::tls::ALPN_H2) {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(s) => s.is_write_vectored(),
            Upstream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A response body that keeps the endpoint counted as busy (for power of two choices) until
/// the stream is finished or dropped, relayed in as few frames as it arrives ready in.
struct Guarded {
    inner: Coalesce<hyper::body::Incoming>,
    _in_flight: Option<Arc<InFlight>>,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
