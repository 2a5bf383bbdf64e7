//! The innermost service: sends the request to the chosen endpoint over a pooled connection
//! and relays the response (and, for `101 Switching Protocols`, the upgraded stream).
//!
//! An upgrade is authorized as the request that asks for it (`GET /chat` with
//! `Upgrade: websocket`); after the `101` the tunnel is opaque bytes both ways, which the
//! proxy relays without looking. Never to h2c: see [`super::headers::strip_h2c_upgrade`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http::uri::{Authority, Scheme, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tower::Service;

use super::coalesce::Coalesce;
use super::errors::{ForwardError, ProxyError};
use super::http2;
use super::pool::{Checkin, Connector, H1Pool, H2Pool};
use super::{BoxError, BoxFuture, Request, RequestCtx, Response, headers};
use crate::routing::InFlight;
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
    pub mesh_service: Option<Arc<str>>,
}

/// Sends requests upstream, keeping one connection pool per endpoint and HTTP version.
#[derive(Clone, Debug)]
pub struct Forward {
    pools: Arc<Pools>,
}

/// Pools are per endpoint and per mesh service the peer must prove it is (`None`: plaintext):
/// a plaintext connection and an mTLS one to the same address are different connections.
/// With the `per-core` runtime they are also per worker ([`set_worker`]): a pooled connection
/// is driven by a task of the runtime that opened it, and a request from another worker's
/// thread would hand every frame across.
type PoolKey = (SocketAddr, Option<Arc<str>>, usize);

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
    h1: PoolMap<H1Pool>,
    h2: PoolMap<H2Pool>,
    connect_timeout: Duration,
    mesh: Option<MeshOut>,
}

/// The pools of one HTTP version, by [`PoolKey`].
///
/// In transparent mode the destinations are whatever the workload connects to, and in a
/// cluster endpoints change with every rollout: a pool per destination ever called would grow
/// without bound. So whenever the map has doubled since its last clean-up (and holds at least
/// [`MIN_SWEEP`]), the pools nobody holds and that keep no connection are let go: the map
/// stays within twice the pools in use plus [`MIN_SWEEP`], at a cost paid only by requests
/// that make a pool. A destination called again later gets a new, empty pool.
#[derive(Debug)]
struct PoolMap<P> {
    map: DashMap<PoolKey, Arc<P>, foldhash::fast::RandomState>,
    /// The size at which the next clean-up runs.
    sweep_at: AtomicUsize,
}

/// Pools kept at least before a clean-up runs: a sidecar's usual set of destinations never
/// needs one.
const MIN_SWEEP: usize = 256;

/// A pool the map can let go of.
trait Pool {
    /// It holds no connection (idle or opening) that a later request could use.
    fn is_empty(&self) -> bool;
}

impl Pool for H1Pool {
    fn is_empty(&self) -> bool {
        H1Pool::is_empty(self)
    }
}

impl Pool for H2Pool {
    fn is_empty(&self) -> bool {
        H2Pool::is_empty(self)
    }
}

impl<P: Pool> PoolMap<P> {
    fn new() -> PoolMap<P> {
        PoolMap {
            map: DashMap::default(),
            sweep_at: AtomicUsize::new(MIN_SWEEP),
        }
    }

    /// The pool of `key`, made by `new` (given the key's peer) the first time: a read lock on
    /// one shard for every request after that.
    fn get(&self, key: PoolKey, new: impl FnOnce(Option<Arc<str>>) -> Arc<P>) -> Arc<P> {
        if let Some(pool) = self.map.get(&key) {
            return pool.clone();
        }
        let peer = key.1.clone();
        let pool = self.map.entry(key).or_insert_with(|| new(peer)).clone();
        if self.map.len() >= self.sweep_at.load(Ordering::Relaxed) {
            // A pool held elsewhere has a request on it (a response being read holds its
            // HTTP/1.1 pool, an opening connection its pool): kept, as is the one just made.
            self.map
                .retain(|_, pool| Arc::strong_count(pool) > 1 || !pool.is_empty());
            let kept = self.map.len();
            self.sweep_at
                .store((2 * kept).max(MIN_SWEEP), Ordering::Relaxed);
        }
        pool
    }
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
                h1: PoolMap::new(),
                h2: PoolMap::new(),
                connect_timeout,
                mesh,
            }),
        }
    }

    /// The mesh service whose proxy must answer, when the call goes over mTLS: to a mesh
    /// service, once this proxy has an identity of its own.
    fn mesh_peer(&self, service: Option<Arc<str>>) -> Option<Arc<str>> {
        let mesh = self.pools.mesh.as_ref()?;
        service.filter(|_| mesh.tls.has_identity())
    }

    fn connector(&self, addr: SocketAddr, peer: Option<Arc<str>>, alpn: Alpn) -> Connector {
        Connector {
            addr,
            timeout: self.pools.connect_timeout,
            mesh: match (&self.pools.mesh, peer) {
                (Some(m), Some(service)) => Some((m.tls.clone(), service, alpn)),
                _ => None,
            },
        }
    }

    fn h1(&self, addr: SocketAddr, peer: Option<Arc<str>>) -> Arc<H1Pool> {
        self.pools.h1.get((addr, peer, worker()), |peer| {
            H1Pool::new(self.connector(addr, peer, Alpn::Http1))
        })
    }

    fn h2(&self, addr: SocketAddr, peer: Option<Arc<str>>) -> Arc<H2Pool> {
        self.pools.h2.get((addr, peer, worker()), |peer| {
            H2Pool::new(self.connector(addr, peer, Alpn::H2))
        })
    }
}

fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
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
                .get_mut::<RequestCtx>()
                .and_then(RequestCtx::take_target)
                .ok_or(ForwardError::Internal("no routing decision"))?;
            let upgrade = headers::is_upgrade(req.headers());
            let downstream = upgrade.then(|| hyper::upgrade::on(&mut req));
            let peer = this.mesh_peer(target.mesh_service.clone());
            let (mut rsp, checkin) = if req.version() == http::Version::HTTP_2 {
                *req.uri_mut() = absolute_uri(&req, target.addr)?;
                let rsp = this.h2(target.addr, peer).send(req).await?;
                (rsp.map(UpstreamBody::Http2), None)
            } else {
                origin_form(&mut req, target.addr)?;
                let (rsp, checkin) = this.h1(target.addr, peer).send(req).await?;
                (rsp.map(UpstreamBody::Http1), Some(checkin))
            };
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
                    // An upgraded connection carries the tunnel from now on.
                    checkin: checkin.filter(|_| !switching),
                    ended: false,
                }
                .boxed_unsync()
            }))
        })
    }
}

/// HTTP/2 needs `:scheme` and `:authority`, which hyper takes from the URI. Keep the
/// authority the client used (or its Host header) so virtual hosting works; the pool decides
/// where bytes actually go.
fn absolute_uri(req: &Request, target: SocketAddr) -> Result<Uri, ForwardError> {
    if req.uri().scheme() == Some(&Scheme::HTTP) && req.uri().authority().is_some() {
        return Ok(req.uri().clone());
    }
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

/// HTTP/1.1 to an application is origin-form (`GET /path`) with a `Host`: a request that
/// came in absolute-form (`GET http://host/path`, from a client configured with a proxy)
/// keeps its authority as the `Host` it implies, and one without any (HTTP/1.0) gets the
/// endpoint's address.
fn origin_form(req: &mut Request, target: SocketAddr) -> Result<(), ForwardError> {
    if !req.headers().contains_key(http::header::HOST) {
        let host = match req.uri().authority() {
            Some(a) => http::HeaderValue::from_str(a.as_str()),
            None => http::HeaderValue::try_from(target.to_string()),
        }
        .map_err(|e| ForwardError::BadRequest(e.to_string()))?;
        req.headers_mut().insert(http::header::HOST, host);
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    Ok(())
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

/// A response body as read from either kind of upstream connection.
enum UpstreamBody {
    /// From hyper's HTTP/1.1 client.
    Http1(hyper::body::Incoming),
    /// From an HTTP/2 stream.
    Http2(http2::RecvBody),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Http2(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(b) => b.is_end_stream(),
            UpstreamBody::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Http1(b) => b.size_hint(),
            UpstreamBody::Http2(b) => b.size_hint(),
        }
    }
}

/// A response body that keeps the endpoint counted as busy (for power of two choices) until
/// the stream is finished or dropped, relayed in as few frames as it arrives ready in, and
/// that returns its HTTP/1.1 connection to the pool once read to the end.
struct Guarded {
    inner: Coalesce<UpstreamBody>,
    _in_flight: Option<Arc<InFlight>>,
    checkin: Option<Checkin>,
    /// The body gave its last frame; the connection is clean for the next request.
    ended: bool,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    /// hyper drops a body as soon as it reports its end (often without polling it again), so
    /// the connection goes back here; a body dropped before its end closes its connection.
    fn drop(&mut self) {
        if let Some(checkin) = self.checkin.take()
            && (self.ended || http_body::Body::is_end_stream(&self.inner))
        {
            checkin.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    /// A keep-alive HTTP/1.1 upstream on loopback answering `ok`, and how many connections it
    /// accepted.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    fn get(addr: SocketAddr) -> Request {
        let body = Empty::<Bytes>::new().map_err(|never| match never {});
        let mut req = http::Request::builder()
            .uri("/")
            .header(http::header::HOST, "upstream")
            .body(body.boxed_unsync())
            .expect("request");
        let conn = super::super::ConnCtx::new(crate::Direction::Outbound, addr, addr);
        let mut ctx = RequestCtx::new(Arc::new(conn));
        ctx.set_target(Target {
            addr,
            timeout: None,
            in_flight: None,
            mesh_service: None,
        });
        req.extensions_mut().insert(ctx);
        req
    }

    /// A workload (or an attacker in it) calling a new destination every time, as a port scan
    /// or years of endpoint churn do, must not grow the proxy's pools without bound; the pool
    /// of a destination in use keeps its connection through the clean-ups, even while that
    /// connection is lent to a response.
    #[tokio::test]
    async fn pools_of_destinations_no_longer_called_are_let_go() {
        let (app, accepted) = upstream().await;
        let mut forward = Forward::new(Duration::from_secs(1), None);
        let rsp = forward.call(get(app)).await.expect("first call");
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "ok");
        // A response still being read through the scan: its connection is lent out, so its
        // pool holds none.
        let reading = forward.call(get(app)).await.expect("second call");

        // Destinations that refuse at once: a port bound on 127.0.0.1 only, on other
        // loopback addresses, so that nothing can answer there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::new(127, 77, (i / 250) as u8, (i % 250 + 1) as u8);
            let refused = forward.call(get(SocketAddr::from((ip, port)))).await;
            assert!(refused.is_err(), "{ip}:{port} answered");
        }
        let pools = forward.pools.h1.map.len();
        assert!(
            pools <= 2 * MIN_SWEEP,
            "{pools} pools kept for 10,001 destinations"
        );

        let body = reading
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, "ok");

        let rsp = forward.call(get(app)).await.expect("call after the scan");
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "ok");
        // The lent connection went back to the pool still in the map, and served again.
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "connections to the app");
    }
}
