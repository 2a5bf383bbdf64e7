//! Connections to one upstream endpoint, kept for the next request.
//!
//! The forwarder already knows the endpoint of every request (the route layer chose it), so
//! a pool here belongs to one endpoint (and peer identity, and `per-core` worker) and is
//! found once per request by that key. hyper-util's pooling client, used before, keyed its
//! pool by the URI's scheme and authority (SipHash and `Authority` compares on every
//! request), needed an absolute URI it then cut back to origin-form, and spawned a task per
//! HTTP/1.1 request to return the connection once the body was read: together about 12% of
//! a proxied request's instructions (benches/README.md, "What the profile showed").
//!
//! - HTTP/1.1 ([`H1Pool`]): a connection carries one request at a time. Idle connections wait
//!   in a last-in first-out list, so the warm ones are reused and the rest expire after
//!   [`IDLE_TIMEOUT`]; at most [`MAX_IDLE`] wait per pool. A connection goes back when the
//!   response body that it carries has ended ([`Checkin`]); a response abandoned halfway
//!   closes its connection, since the rest of that body would still be on the wire.
//! - HTTP/2 ([`H2Pool`]): one connection carries every request, opened by the first request
//!   that finds none (the others wait for it), reopened once it closes and dropped after an
//!   [`IDLE_TIMEOUT`] without a request. Its streams are driven by `h2` directly, from each
//!   request's own task ([`super::http2`]).
//!
//! A request is retried, on another connection, only when it provably never left: hyper
//! hands an HTTP/1.1 request back unsent, and a reused HTTP/2 connection that has received
//! GOAWAY (or closed) refuses a new stream before any of the request is written. Either way
//! the upstream had closed or was closing the connection while idle. Anything else is the
//! caller's error to see.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Body;
use super::errors::ForwardError;
use super::http2::{self, RecvBody};
use crate::identity::SpiffeId;
use crate::tcp::{self, TcpError};
use crate::tls::{Alpn, MeshTls, TlsError};

/// Idle pooled connections are closed after about this long (at most half as long again:
/// the sweep runs every half period).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many idle HTTP/1.1 connections wait in one pool; a connection returned to a
/// full pool is closed. Peak concurrency to one endpoint from one worker rarely comes close,
/// and without a cap a burst would keep its connections (a file descriptor each) open for
/// [`IDLE_TIMEOUT`].
pub const MAX_IDLE: usize = 256;

/// The receive window of each HTTP/2 connection to an upstream: how many bytes it may send
/// ahead of what the proxy has relayed.
///
/// Also h2's budget for small DATA frames buffered unrelayed (half of it, each frame under
/// 256 bytes charged its shortfall): a gRPC server streaming tiny messages faster than the
/// caller reads them exhausts it, and h2 then closes the connection with `GOAWAY
/// ENHANCE_YOUR_CALM` and fails every call on it. hyper's 5 MiB (about 10,000 such frames)
/// was exhausted by 400 concurrent server streams of 100 messages (`mesh_bench --scenarios
/// grpc`). hyper, which opened these connections until the proxy drove h2 itself, offered
/// no other way to raise the budget; h2's `data_frame_budget` would, and is left to follow
/// this window.
pub const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Whether hyper writes an HTTP/1.1 message's head and body chunks with one vectored write
/// (`writev`) or copies them into one buffer first. A proxied message is a small head and
/// usually a body chunk or two: copying them costs less than keeping the queue of buffers
/// and building the vector (callgrind: 2–3% of an HTTP/1.1 request's instructions for the
/// pair). A large body is copied once more in user space: a 512 MB download through one
/// proxy took the same time and about 5% more of the proxy's CPU (five runs of five each).
/// Used by the server side too.
pub const H1_WRITEV: bool = false;

/// Opens connections to one fixed endpoint, over mTLS when `mesh` is set.
#[derive(Debug)]
pub struct Connector {
    /// The endpoint.
    pub addr: SocketAddr,
    /// TCP connect timeout (the TLS handshake has its own).
    pub timeout: Duration,
    /// Mesh TLS, the mesh service whose identity the peer proxy must prove (in the trust
    /// domain in force when the connection opens) and the protocol to ask it for.
    pub mesh: Option<(Arc<MeshTls>, Arc<str>, Alpn)>,
}

impl Connector {
    async fn connect(&self) -> Result<TokioIo<Upstream>, ForwardError> {
        let tcp = tcp::connect(self.addr, self.timeout)
            .await
            .map_err(|e| self.connect_error(e))?;
        let io = match &self.mesh {
            None => Upstream::Plain(tcp),
            Some((tls, service, alpn)) => {
                let tls_error = |source| {
                    self.connect_error(TcpError::Tls {
                        target: self.addr,
                        source,
                    })
                };
                let td = tls
                    .trust_domain()
                    .ok_or_else(|| tls_error(TlsError::NoIdentity))?;
                let expected = SpiffeId::of_service(td, service);
                let stream = tls
                    .connect(tcp, &expected, *alpn)
                    .await
                    .map_err(tls_error)?;
                Upstream::Tls(Box::new(stream))
            }
        };
        Ok(TokioIo::new(io))
    }

    fn connect_error(&self, e: impl Into<super::BoxError>) -> ForwardError {
        ForwardError::Connect {
            target: self.addr,
            source: e.into(),
        }
    }

    fn upstream_error(&self, e: impl Into<super::BoxError>) -> ForwardError {
        ForwardError::Upstream {
            target: self.addr,
            source: e.into(),
        }
    }
}

/// HTTP/1.1 connections to one endpoint.
#[derive(Debug)]
pub struct H1Pool {
    connector: Connector,
    idle: Mutex<IdleList>,
}

#[derive(Debug, Default)]
struct IdleList {
    conns: Vec<Idle>,
    /// Whether a sweep task is running for this list (it stops when the list is empty).
    sweeping: bool,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl H1Pool {
    /// An empty pool.
    pub fn new(connector: Connector) -> Arc<H1Pool> {
        Arc::new(H1Pool {
            connector,
            idle: Mutex::default(),
        })
    }

    /// Sends `req` (origin-form, with a `Host`) over an idle connection or a new one. The
    /// [`Checkin`] must travel with the response body and be told when the body has ended.
    pub async fn send(
        self: &Arc<Self>,
        mut req: http::Request<Body>,
    ) -> Result<(http::Response<Incoming>, Checkin), ForwardError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: a new connection is rare, and its future (TCP and TLS handshakes)
                // would otherwise triple the size of every request's future, which is
                // copied as it is built.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(rsp) => {
                    let checkin = Checkin {
                        sender,
                        pool: self.clone(),
                    };
                    return Ok((rsp, checkin));
                }
                Err(mut e) => match e.take_message() {
                    // Closed while idle before the request went out: the next connection.
                    // Ends: each turn takes an idle connection or opens a fresh one.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(self.connector.upstream_error(e.into_error())),
                },
            }
        }
    }

    /// No idle connection waits here (one lent to a response holds the pool itself).
    pub fn is_empty(&self) -> bool {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.conns.is_empty()
    }

    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(conn) = idle.conns.pop() {
            if conn.sender.is_ready() {
                return Some(conn.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<http1::SendRequest<Body>, ForwardError> {
        let io = self.connector.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .writev(H1_WRITEV)
            .handshake(io)
            .await
            .map_err(|e| self.connector.connect_error(e))?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn put(self: &Arc<Self>, sender: http1::SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.conns.len() >= MAX_IDLE {
            return;
        }
        if !idle.sweeping {
            // Called from a body's drop, which can happen outside a runtime (as it shuts
            // down): then nothing could sweep the connection, so it is closed instead.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(sweep(Arc::downgrade(self)));
            idle.sweeping = true;
        }
        idle.conns.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

/// Closes the idle connections of `pool` that have waited [`IDLE_TIMEOUT`] or that the
/// upstream has closed; stops once none are left (the next [`H1Pool::put`] starts another).
async fn sweep(pool: Weak<H1Pool>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        idle.conns
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
        if idle.conns.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

/// An HTTP/1.1 connection lent to one response; back to its pool when the body has ended.
/// Dropped without [`Checkin::done`], the connection closes.
#[derive(Debug)]
pub struct Checkin {
    sender: http1::SendRequest<Body>,
    pool: Arc<H1Pool>,
}

impl Checkin {
    /// The response body has ended. hyper's connection task usually marks itself ready for
    /// the next request before the caller reads the end; when it has not yet, a task waits
    /// for it (or for the connection to close).
    pub fn done(self) {
        let Checkin { mut sender, pool } = self;
        if sender.is_ready() {
            pool.put(sender);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(sender);
                }
            });
        }
    }
}

/// The HTTP/2 connection to one endpoint.
#[derive(Debug)]
pub struct H2Pool {
    connector: Connector,
    current: ArcSwapOption<Shared>,
    /// Held while opening a connection, so that concurrent first requests share one; holds
    /// why the last attempt failed.
    connecting: tokio::sync::Mutex<Option<String>>,
    /// Failed attempts so far: a request that waited for another's attempt and sees this
    /// change fails with it instead of trying again. Otherwise the requests queued behind an
    /// endpoint that does not answer would each wait out their own connect timeout, one
    /// after another, and the last would wait for all of them.
    failures: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    sender: h2::client::SendRequest<Bytes>,
    /// Set by every request, cleared by the idle check.
    used: AtomicBool,
    /// Set by the connection's task once the connection has ended.
    closed: Arc<AtomicBool>,
    /// Dropped with the pool's handle, which wakes the connection's task: h2 does not wake
    /// a parked connection when its last sender goes, and only a poll lets it see that and
    /// close once its streams are done.
    _last_sender: tokio::sync::oneshot::Sender<()>,
}

/// How the proxy's HTTP/2 connections to upstreams are set up: hyper's client defaults
/// (which the proxy used until it drove h2 itself), with [`H2_CONNECTION_WINDOW`].
fn h2_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_max_send_streams(100)
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false);
    builder
}

impl H2Pool {
    /// A pool with no connection yet.
    pub fn new(connector: Connector) -> Arc<H2Pool> {
        Arc::new(H2Pool {
            connector,
            current: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(None),
            failures: AtomicU64::new(0),
        })
    }

    /// Sends `req` (absolute URI) on the endpoint's connection, opening it if needed.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<http::Response<RecvBody>, ForwardError> {
        let (head, body) = req.into_parts();
        let head = http::Request::from_parts(head, ());
        loop {
            let (shared, reused) = self.shared().await?;
            shared.used.store(true, Ordering::Relaxed);
            let mut sender = shared.sender.clone();
            if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
                // The connection is going away (GOAWAY) or gone, and nothing was sent:
                // forget it. A reused one gets a fresh successor; a fresh one failing is
                // the caller's error. Ends: the next turn's connection is fresh.
                self.current.compare_and_swap(&Some(shared), None);
                if reused {
                    continue;
                }
                return Err(self.connector.upstream_error(e));
            }
            return http2::exchange(&mut sender, head, body)
                .await
                .map_err(|e| self.connector.upstream_error(e));
        }
    }

    /// The open connection and whether it served before; else a new one.
    async fn shared(self: &Arc<Self>) -> Result<(Arc<Shared>, bool), ForwardError> {
        if let Some(shared) = self.live() {
            return Ok((shared, true));
        }
        let failures = self.failures.load(Ordering::Acquire);
        let mut last_failure = self.connecting.lock().await;
        if let Some(shared) = self.live() {
            return Ok((shared, false));
        }
        if self.failures.load(Ordering::Acquire) != failures {
            let why = last_failure.as_deref().unwrap_or("failed");
            return Err(self
                .connector
                .connect_error(format!("{why} (the attempt this request waited for)")));
        }
        // Boxed for the same reason as HTTP/1.1's connect.
        match Box::pin(self.open()).await {
            Ok(shared) => Ok((shared, false)),
            Err(e) => {
                *last_failure = Some(e.to_string());
                self.failures.fetch_add(1, Ordering::Release);
                Err(e)
            }
        }
    }

    async fn open(self: &Arc<Self>) -> Result<Arc<Shared>, ForwardError> {
        let io = self.connector.connect().await?;
        let (io, uncork) = super::cork::cork(io.into_inner());
        let (sender, conn) = h2_builder()
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| self.connector.connect_error(e))?;
        // What a turn of the connection writes leaves in one write, after the turn (`cork`).
        let mut conn = super::cork::Driven::new(conn, uncork);
        let closed = Arc::new(AtomicBool::new(false));
        let (last_sender, pool_let_go) = tokio::sync::oneshot::channel();
        let ended = closed.clone();
        // Boxed: tokio moves a future by value several times on its way into a task and
        // when it completes; hyper's 1,456-byte per-request tasks cost 4% of a gRPC call in
        // those copies (benches/README.md). Boxed, it is copied once.
        tokio::spawn(Box::pin(async move {
            let result = tokio::select! {
                result = &mut conn => result,
                _ = pool_let_go => conn.await,
            };
            ended.store(true, Ordering::Release);
            if let Err(error) = result {
                tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
            }
        }));
        let shared = Arc::new(Shared {
            sender,
            used: AtomicBool::new(true),
            closed,
            _last_sender: last_sender,
        });
        self.current.store(Some(shared.clone()));
        tokio::spawn(drop_when_idle(Arc::downgrade(self), shared.clone()));
        Ok(shared)
    }

    /// No connection is open (one being opened holds the pool itself).
    pub fn is_empty(&self) -> bool {
        self.current.load().is_none()
    }

    fn live(&self) -> Option<Arc<Shared>> {
        self.current
            .load_full()
            .filter(|shared| !shared.closed.load(Ordering::Acquire))
    }
}

/// Lets go of `shared` once a whole [`IDLE_TIMEOUT`] passed without a request: its streams
/// still in flight finish, then h2 closes the connection (its task is woken when the pool's
/// handle goes, see `Shared`).
async fn drop_when_idle(pool: Weak<H2Pool>, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT).await;
        let Some(pool) = pool.upgrade() else { return };
        let current = pool.current.load();
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &shared)) {
            return;
        }
        if !shared.used.swap(false, Ordering::Relaxed) {
            drop(current);
            pool.current.compare_and_swap(&Some(shared), None);
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_request() -> http::Request<Body> {
        use http_body_util::BodyExt;
        let body = http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| match never {});
        http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("http://upstream/")
            .body(body.boxed_unsync())
            .expect("request")
    }

    /// An endpoint whose accept queue is full: the kernel drops further connection attempts,
    /// so they hang until the connect timeout, as to a host that went away.
    async fn unanswering_endpoint() -> (tokio::net::TcpListener, Vec<TcpStream>) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut held = Vec::new();
        // Fill the backlog; later attempts then hang (never accepted).
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                _ => break,
            }
        }
        (listener, held)
    }

    #[tokio::test]
    async fn requests_queued_behind_a_failing_connect_fail_with_it() {
        let (listener, _held) = unanswering_endpoint().await;
        let addr = listener.local_addr().expect("addr");
        let timeout = Duration::from_millis(300);
        let pool = H2Pool::new(Connector {
            addr,
            timeout,
            mesh: None,
        });
        let start = Instant::now();
        let sends: Vec<_> = (0..5)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.send(empty_request()).await })
            })
            .collect();
        let mut results = Vec::new();
        for send in sends {
            results.push(send.await.expect("task"));
        }
        let elapsed = start.elapsed();
        for r in &results {
            assert!(
                matches!(r, Err(ForwardError::Connect { .. })),
                "{:?}",
                r.as_ref().map(|_| ())
            );
        }
        // One attempt's timeout, not five in a row.
        assert!(elapsed < timeout * 3, "took {elapsed:?}");
        assert_eq!(pool.failures.load(Ordering::Acquire), 1);
    }
}
