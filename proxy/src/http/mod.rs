//! HTTP/1.1, HTTP/2 and gRPC proxying.
//!
//! A connection detected as HTTP is served by hyper (HTTP/1) or by [`http2`] (the `h2` crate
//! driven directly, both towards clients and upstreams); every request then runs through a tower
//! stack assembled by [`stack::Stack`], one layer per concern (metrics, access log, error
//! responses, loop detection, routing, header hygiene, timeout, forwarding). Bodies are
//! streamed frame by frame in both directions and never buffered whole.

pub mod access;
pub mod authz;
pub mod coalesce;
pub mod cork;
pub mod denial;
pub mod errors;
pub mod forward;
pub mod headers;
pub mod http2;
pub mod layers;
pub mod observe;
pub mod pool;
pub mod stack;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use crate::Direction;
use crate::drain;
use crate::metrics::TrafficLabels;
pub use errors::ProxyError;

/// Errors carried inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used throughout the stack: streaming, type-erased.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A request inside the stack.
pub type Request = http::Request<Body>;
/// A response inside the stack.
pub type Response = http::Response<Body>;
/// The future every stack service returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A service in the stack that fails with `E`. Every layer is `Clone` and always ready (flow
/// control happens in hyper and h2, per connection and per stream), so layers call their inner
/// service without `poll_ready`. The connection clones the whole stack once per request;
/// since every future is `'static` and owns what it needs, a layer calls the inner service
/// it holds rather than a clone of it (a clone per layer cost a clone of everything below).
pub trait Svc<E>:
    Service<Request, Response = Response, Error = E, Future = BoxFuture<Result<Response, E>>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, E> Svc<E> for S where
    S: Service<Request, Response = Response, Error = E, Future = BoxFuture<Result<Response, E>>>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Facts about the connection a request arrived on, in every request's extensions.
#[derive(Clone, Debug)]
pub struct ConnCtx {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The client's address.
    pub client: SocketAddr,
    /// Where the client meant to connect.
    pub orig_dst: SocketAddr,
    /// The caller's verified mesh identity, when the connection arrived over mesh mTLS.
    /// `None` means unauthenticated (plaintext, or outbound).
    pub peer: Option<Arc<crate::identity::SpiffeId>>,
    /// `peer` as the `sluice-client-id` value the application receives, made once per
    /// connection rather than formatted for every request on it.
    pub peer_header: Option<http::HeaderValue>,
    /// `client` and `orig_dst` as the access log writes them: formatted by the first request
    /// that logs, then shared by the connection's others (callgrind: formatting the two
    /// addresses was ~5,000 instructions a request, a sixth of what a log line cost).
    pub log_addrs: OnceLock<(Box<str>, Box<str>)>,
}

impl ConnCtx {
    /// The facts of a new connection.
    pub fn new(direction: Direction, client: SocketAddr, orig_dst: SocketAddr) -> ConnCtx {
        ConnCtx {
            direction,
            client,
            orig_dst,
            peer: None,
            peer_header: None,
            log_addrs: OnceLock::new(),
        }
    }

    /// `client` and `orig_dst`, formatted once per connection (see `log_addrs`).
    pub fn logged_addrs(&self) -> (&str, &str) {
        let (client, orig_dst) = self.log_addrs.get_or_init(|| {
            (
                self.client.to_string().into_boxed_str(),
                self.orig_dst.to_string().into_boxed_str(),
            )
        });
        (client, orig_dst)
    }
}

/// What routing decided, for layers outside the route layer (metrics, access log).
#[derive(Clone, Debug)]
pub struct RouteInfo {
    /// Labels for metrics and logs.
    pub labels: Arc<TrafficLabels>,
    /// The endpoint chosen.
    pub target: SocketAddr,
}

/// Per request, in its extensions: the facts of the connection it arrived on, and what the
/// inner layers decided, for the outer ones (metrics, access log) — the route, filled once by
/// the route layer, and the call the authorization layer decided on, read after the response.
/// One allocation per request for all of it (the connection's facts are shared by its
/// requests), and never contended.
///
/// It also carries the route layer's [`Target`](forward::Target) to the forwarder. That one
/// travels with the request rather than being shared: an outer layer's clone, taken before
/// routing, never sees it, and the forwarder takes it out. Kept here rather than as an
/// extension of its own, which cost a boxed insert and a hashed remove per request.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    decided: Arc<Decided>,
    target: Option<forward::Target>,
}

#[derive(Debug)]
struct Decided {
    conn: Arc<ConnCtx>,
    route: OnceLock<RouteInfo>,
    authz: OnceLock<sluice_policy::rpc::Rpc>,
}

impl RequestCtx {
    /// A request's context on a connection, nothing decided yet.
    pub fn new(conn: Arc<ConnCtx>) -> RequestCtx {
        RequestCtx {
            decided: Arc::new(Decided {
                conn,
                route: OnceLock::new(),
                authz: OnceLock::new(),
            }),
            target: None,
        }
    }

    /// The connection the request arrived on.
    pub fn conn(&self) -> &ConnCtx {
        &self.decided.conn
    }

    /// Records the routing decision (later calls are ignored).
    pub fn set_route(&self, info: RouteInfo) {
        let _ = self.decided.route.set(info);
    }

    /// The routing decision, if routing got that far.
    pub fn route(&self) -> Option<&RouteInfo> {
        self.decided.route.get()
    }

    /// Records the call authorization decided on (later calls are ignored).
    pub fn set_authorized(&self, rpc: sluice_policy::rpc::Rpc) {
        let _ = self.decided.authz.set(rpc);
    }

    /// Where the route layer decided to send the request, until the forwarder takes it.
    pub fn target(&self) -> Option<&forward::Target> {
        self.target.as_ref()
    }

    /// Records the route layer's decision for the forwarder.
    pub fn set_target(&mut self, target: forward::Target) {
        self.target = Some(target);
    }

    /// Takes the routing decision out, for the forwarder.
    pub fn take_target(&mut self) -> Option<forward::Target> {
        self.target.take()
    }

    /// The call authorization decided on, if it ran.
    pub fn authorized(&self) -> Option<&sluice_policy::rpc::Rpc> {
        self.decided.authz.get()
    }
}

/// The facts of the connection `req` arrived on (every request [`serve`] passes on has them).
pub fn conn_ctx(req: &Request) -> Option<&ConnCtx> {
    req.extensions().get::<RequestCtx>().map(RequestCtx::conn)
}

/// Which HTTP version detection found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 prior knowledge.
    Http2,
}

/// Connection-level HTTP settings.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// How long a client may take to send a request's headers (slowloris guard), HTTP/1.
    pub header_read_timeout: Duration,
    /// HTTP/2: how often a client connection is pinged, and how long the answer may take
    /// before the connection is closed. Bounds dead or stalled peers; an idle but live peer
    /// (a gRPC channel) is kept.
    pub h2_keepalive: Duration,
    /// HTTP/2: when a client resetting its streams is cut off.
    pub rapid_reset: RapidReset,
}

/// When an HTTP/2 client connection is closed for rapid reset (CVE-2023-44487): once it has
/// opened `min_streams`, if the client reset more than half of them within `min_lifetime` of
/// opening (Envoy's rule and defaults: 500 and 1 s). See [`http2`]'s `Resets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RapidReset {
    /// Streams a connection opens before the rule applies.
    pub min_streams: u32,
    /// A stream reset by the client sooner than this after opening counts against it.
    pub min_lifetime: Duration,
}

impl Default for RapidReset {
    fn default() -> RapidReset {
        RapidReset {
            min_streams: 500,
            min_lifetime: Duration::from_secs(1),
        }
    }
}

/// Largest HTTP/2 header block (HPACK-decoded) a client may send: 64 KiB, far above what real
/// requests carry and far below hyper's default.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Largest HTTP/1 request head (request line, headers, and chunked trailers): larger ones get
/// a 431 and the connection is closed.
pub const H1_MAX_HEAD: usize = 64 * 1024;

/// Why a client connection ended badly (logged: the client has gone, or was told).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// HTTP/1, from hyper.
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    /// HTTP/2.
    #[error(transparent)]
    Http2(#[from] http2::ServeError),
}

/// Serves one client connection with `svc` until it closes. When draining starts, HTTP/1
/// stops keep-alive after the in-flight request and HTTP/2 sends GOAWAY, so clients move to
/// another instance without seeing errors.
pub async fn serve<I, S>(
    io: I,
    version: Version,
    ctx: ConnCtx,
    svc: S,
    config: ServerConfig,
    mut drain: drain::Watch,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Svc<Infallible>,
{
    let ctx = Arc::new(ctx);
    match version {
        Version::Http1 => {
            let hyper_svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
                req.extensions_mut().insert(RequestCtx::new(ctx.clone()));
                svc.clone().call(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Head and body copied into one write: see `pool::H1_WRITEV`.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout)
                .max_header_size(H1_MAX_HEAD)
                .writev(pool::H1_WRITEV);
            // Boxed, each version apart: see `listen`, on the size of a connection's task.
            let mut conn = Box::pin(
                builder
                    .serve_connection(TokioIo::new(io), hyper_svc)
                    .with_upgrades(),
            );
            tokio::select! {
                res = conn.as_mut() => res?,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await?
                }
            }
            Ok(())
        }
        Version::Http2 => Ok(Box::pin(http2::serve(io, ctx, svc, config, drain)).await?),
    }
}
