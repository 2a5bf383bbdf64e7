//! Listeners and per-connection dispatch: learn where the client meant to go, detect the
//! protocol, and hand the connection to the HTTP stack or the opaque TCP forwarder.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tower::util::BoxCloneSyncService;

use crate::authz::{self, Authorizer};
use crate::detect::{self, Protocol};
use crate::drain;
use crate::http::{self, ConnCtx, Request, Response, ServerConfig};
use crate::identity::SpiffeId;
use crate::io::PrefixedIo;
use crate::metrics::{Metrics, TrafficLabels};
use crate::routing::{Decision, Router};
use crate::state::SharedState;
use crate::tls::MeshTls;
use crate::{Direction, tcp};
use sluice_policy::resources::Protocol as PortProtocol;

/// A finished per-request stack, type-erased so listeners can hold one per direction.
pub type HttpStack = BoxCloneSyncService<Request, Response, Infallible>;

/// How a listener learns each connection's original destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// From `SO_ORIGINAL_DST` (connections redirected by iptables).
    Transparent,
    /// Every connection goes to this fixed address (no iptables needed).
    Explicit(SocketAddr),
}

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    /// Which rules apply to its connections.
    pub direction: Direction,
    /// How it finds original destinations.
    pub mode: Mode,
    /// The socket.
    pub tcp: TcpListener,
    /// The bound address (with the real port when 0 was asked for).
    pub local: SocketAddr,
}

impl Listener {
    /// Binds `addr`.
    pub async fn bind(direction: Direction, mode: Mode, addr: SocketAddr) -> io::Result<Listener> {
        let tcp = TcpListener::bind(addr).await?;
        let local = tcp.local_addr()?;
        Ok(Listener {
            direction,
            mode,
            tcp,
            local,
        })
    }

    /// The same socket for another runtime (`per-core`): a second descriptor of it, so
    /// each runtime accepts connections from one queue. The descriptor shares the socket's
    /// non-blocking mode.
    pub fn share(&self) -> io::Result<SharedListener> {
        use std::os::fd::AsFd;
        let fd = self.tcp.as_fd().try_clone_to_owned()?;
        Ok(SharedListener {
            direction: self.direction,
            mode: self.mode,
            tcp: std::net::TcpListener::from(fd),
            local: self.local,
        })
    }
}

/// A [`Listener`] on its way to another runtime (see [`Listener::share`]).
#[derive(Debug)]
pub struct SharedListener {
    direction: Direction,
    mode: Mode,
    tcp: std::net::TcpListener,
    local: SocketAddr,
}

impl SharedListener {
    /// Registers the socket with the runtime this is called in.
    pub fn into_listener(self) -> io::Result<Listener> {
        Ok(Listener {
            direction: self.direction,
            mode: self.mode,
            tcp: TcpListener::from_std(self.tcp)?,
            local: self.local,
        })
    }
}

/// The connection slots of one listener ([`Dispatch::max_connections`]), shared by every
/// runtime that accepts from it so the cap stays one cap.
pub fn connection_slots(dispatch: &Dispatch) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(dispatch.max_connections))
}

/// Everything a connection needs, shared by all listeners.
#[derive(Debug)]
pub struct Dispatch {
    /// Per-direction HTTP stacks.
    pub inbound_http: HttpStack,
    /// See `inbound_http`.
    pub outbound_http: HttpStack,
    /// Routing for outbound opaque TCP.
    pub router: Arc<Router>,
    /// Labels for inbound traffic (this workload as destination).
    pub inbound_labels: Arc<TrafficLabels>,
    /// Metrics sink.
    pub metrics: Metrics,
    /// Detection timeout.
    pub detect_timeout: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Ports that skip detection.
    pub opaque_ports: BTreeSet<u16>,
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Mesh mTLS, when this proxy has (or is getting) a mesh identity.
    pub tls: Option<Arc<MeshTls>>,
    /// Inbound authorization for opaque TCP (HTTP is authorized per request in the stack).
    pub authorizer: Option<Arc<Authorizer>>,
    /// The config in force: which ports the local service declares, and as what.
    pub state: Arc<SharedState>,
    /// Most connections one listener serves at once; more are closed as they arrive.
    pub max_connections: usize,
}

/// What the local service declares a port to speak (`MeshService.spec.ports`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Declared {
    /// Not declared: detect, and treat what is not HTTP as opaque TCP (a `tcp` grant needed).
    Unknown,
    /// HTTP or gRPC: never opaque; what is not HTTP gets a 400 and is closed.
    Http(&'static str),
    /// Opaque TCP: no detection, like `SLUICE_PROXY_OPAQUE_PORTS`.
    Tcp,
}

/// The workers of the `per-core` runtime as every accept loop sees them: the connections each
/// serves now, and where to hand a connection to another.
///
/// Every worker accepts from the same listening socket, and the kernel wakes all of them for
/// each new connection: whichever runs first takes it, and a worker that is awake takes a whole
/// burst. Eight keep-alive clients connecting at once then land on one core while the other
/// idles (measured: the second worker used 5% of the first's CPU). So an accept loop keeps a
/// connection only while its worker serves no more than any other, and otherwise hands it to
/// the least loaded worker, which serves it on its own thread from then on. Handing over costs
/// two `epoll_ctl` calls and a wake-up, once per connection.
#[derive(Debug)]
pub struct Workers {
    /// Per worker: the connections it serves (`sluice_proxy_worker_connections`).
    load: Vec<prometheus::IntGauge>,
    /// Per worker: where connections handed to it wait (see [`serve_handoffs`]).
    inboxes: Vec<tokio::sync::mpsc::UnboundedSender<Handoff>>,
}

/// An accepted connection and what it holds until it ends: its listener's slot, its worker's
/// count (per-core), and a drain watch. `S` is the socket: registered with this runtime, or
/// (a [`Handoff`]) with none, on its way to another worker.
#[derive(Debug)]
pub struct Accepted<S> {
    stream: S,
    client: SocketAddr,
    direction: Direction,
    mode: Mode,
    local: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
    load: Option<Load>,
    drain: drain::Watch,
}

/// A connection accepted by one worker for another to serve: deregistered from the accepting
/// worker's runtime, registered again by the server's.
pub type Handoff = Accepted<std::net::TcpStream>;

impl Accepted<TcpStream> {
    /// Serves it on the current runtime, holding what it holds until it ends.
    fn spawn(self, dispatch: Arc<Dispatch>) {
        tokio::spawn(async move {
            let Accepted {
                stream,
                client,
                direction,
                mode,
                local,
                slot,
                load,
                drain,
            } = self;
            dispatch
                .handle(stream, client, direction, mode, local, drain)
                .await;
            drop((slot, load));
        });
    }

    /// The same connection without its runtime registration, for another worker.
    fn into_handoff(self) -> io::Result<Handoff> {
        self.map_stream(TcpStream::into_std)
    }
}

impl<S> Accepted<S> {
    /// The same connection over `f(stream)`, keeping its slot, load and drain watch.
    fn map_stream<T>(self, f: impl FnOnce(S) -> io::Result<T>) -> io::Result<Accepted<T>> {
        Ok(Accepted {
            stream: f(self.stream)?,
            client: self.client,
            direction: self.direction,
            mode: self.mode,
            local: self.local,
            slot: self.slot,
            load: self.load,
            drain: self.drain,
        })
    }
}

impl Handoff {
    /// Registers it with the current runtime and serves it there.
    fn spawn(self, dispatch: Arc<Dispatch>) {
        let client = self.client;
        match self.map_stream(TcpStream::from_std) {
            Ok(accepted) => accepted.spawn(dispatch),
            Err(error) => {
                tracing::warn!(%client, %error, "cannot serve a handed-over connection");
            }
        }
    }
}

impl Workers {
    /// `count` workers with their load gauges; each worker must run [`serve_handoffs`] with
    /// its receiver (the `i`-th for worker `i`).
    pub fn new(
        count: usize,
        metrics: &Metrics,
    ) -> (
        Arc<Workers>,
        Vec<tokio::sync::mpsc::UnboundedReceiver<Handoff>>,
    ) {
        let (inboxes, receivers) = (0..count)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let load = (0..count).map(|i| metrics.worker_connections(i)).collect();
        (Arc::new(Workers { load, inboxes }), receivers)
    }

    /// Which worker should serve a connection worker `me` accepted: `me` unless another
    /// serves fewer connections.
    fn pick(&self, me: usize) -> usize {
        let mut best = (me, self.load[me].get());
        for (i, load) in self.load.iter().enumerate() {
            let load = load.get();
            if load < best.1 {
                best = (i, load);
            }
        }
        best.0
    }
}

/// Which worker an accept loop runs on, with the others (`per-core` only).
#[derive(Clone, Debug)]
pub struct Balance {
    /// This worker.
    pub index: usize,
    /// Every worker.
    pub workers: Arc<Workers>,
}

impl Balance {
    /// Serves `conn` on the least loaded worker: here, or handed to another. It is counted
    /// against that worker at once, so the next pick on any worker sees it.
    fn place(&self, mut conn: Accepted<TcpStream>, dispatch: &Arc<Dispatch>) {
        let to = self.workers.pick(self.index);
        conn.load = Some(Load::count(&self.workers.load[to]));
        if to == self.index {
            return conn.spawn(dispatch.clone());
        }
        let client = conn.client;
        let handoff = match conn.into_handoff() {
            Ok(h) => h,
            Err(error) => {
                tracing::debug!(%client, %error, "connection lost while handing it over");
                return;
            }
        };
        if let Err(tokio::sync::mpsc::error::SendError(mut h)) =
            self.workers.inboxes[to].send(handoff)
        {
            // That worker is gone (it cannot be, short of a panic): serve it here.
            h.load = Some(Load::count(&self.workers.load[self.index]));
            h.spawn(dispatch.clone());
        }
    }
}

/// Counts a connection against its worker from creation until it is dropped.
#[derive(Debug)]
struct Load(prometheus::IntGauge);

impl Load {
    fn count(gauge: &prometheus::IntGauge) -> Load {
        gauge.inc();
        Load(gauge.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves the connections other workers hand to this one (its receiver from [`Workers::new`]),
/// on this worker's runtime, until every sender is gone.
pub async fn serve_handoffs(
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    dispatch: Arc<Dispatch>,
) {
    while let Some(handoff) = inbox.recv().await {
        handoff.spawn(dispatch.clone());
    }
}

/// Accepts connections until draining starts; each connection keeps a drain watch so
/// shutdown waits for it.
///
/// At most `dispatch.max_connections` are served at once (`slots`, from
/// [`connection_slots`], shared by every runtime accepting from this listener). Over the cap a new connection is
/// closed at once (the client sees a reset or EOF and can retry elsewhere) rather than left
/// queueing, so slow clients cannot take every file descriptor: the admin listener (health
/// checks) is not capped, and the cap leaves it descriptors. Reaching the cap, and leaving
/// it, is logged once each time.
///
/// With `balance` (the `per-core` runtime) a connection goes to the least loaded worker
/// ([`Workers`]).
pub async fn accept_loop(
    listener: Listener,
    slots: Arc<tokio::sync::Semaphore>,
    balance: Option<Balance>,
    dispatch: Arc<Dispatch>,
    drain: drain::Watch,
) {
    let mut stop = drain.clone();
    let mut at_cap = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.signaled() => break,
            res = listener.tcp.accept() => res,
        };
        match accepted {
            Ok((stream, client)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    if !at_cap {
                        at_cap = true;
                        tracing::warn!(
                            listener = %listener.local, direction = %listener.direction,
                            limit = dispatch.max_connections,
                            "connection limit reached: closing new connections until some end \
                             (raise SLUICE_PROXY_MAX_CONNECTIONS if this load is legitimate)"
                        );
                    }
                    dispatch.metrics.over_limit(listener.direction);
                    drop(stream);
                    continue;
                };
                if at_cap {
                    at_cap = false;
                    tracing::info!(listener = %listener.local, "below the connection limit again");
                }
                let conn = Accepted {
                    stream,
                    client,
                    direction: listener.direction,
                    mode: listener.mode,
                    local: listener.local,
                    slot,
                    load: None,
                    drain: drain.clone(),
                };
                match &balance {
                    Some(balance) => balance.place(conn, &dispatch),
                    None => conn.spawn(dispatch.clone()),
                }
            }
            Err(error) => {
                // Usually EMFILE; back off briefly instead of spinning.
                tracing::warn!(%error, listener = %listener.local, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(listener = %listener.local, "stopped accepting");
}

impl Dispatch {
    async fn handle(
        &self,
        stream: TcpStream,
        client: SocketAddr,
        direction: Direction,
        mode: Mode,
        local: SocketAddr,
        drain: drain::Watch,
    ) {
        let _active = self.metrics.active(direction);
        let orig_dst = match mode {
            Mode::Explicit(target) => target,
            Mode::Transparent => match original_dst(&stream) {
                Ok(dst) if is_self(dst, local) => {
                    tracing::warn!(%client, %dst, "refusing connection addressed to the proxy itself");
                    return;
                }
                Ok(dst) => dst,
                Err(error) => {
                    tracing::warn!(%client, %error, "no original destination; was this connection redirected by iptables?");
                    return;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let declared = match direction {
            Direction::Inbound => self.declared(orig_dst.port()),
            Direction::Outbound => Declared::Unknown,
        };
        let opaque_port = declared == Declared::Tcp
            || (self.opaque_ports.contains(&orig_dst.port()) && declared == Declared::Unknown);
        let detected = if opaque_port && (direction == Direction::Outbound || self.tls.is_none()) {
            Ok((Protocol::Opaque, PrefixedIo::new(Bytes::new(), stream)))
        } else if opaque_port {
            // Peer proxies wrap opaque ports in mTLS too, so inbound still looks for a
            // ClientHello; anything else stays opaque. A server-speaks-first client from
            // outside the mesh waits the detect timeout here (see the report on issue 4).
            detect::detect(stream, self.detect_timeout)
                .await
                .map(|(p, io)| match p {
                    Protocol::Tls => (Protocol::Tls, io),
                    _ => (Protocol::Opaque, io),
                })
        } else {
            detect::detect(stream, self.detect_timeout).await
        };
        let (protocol, io) = match detected {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(%client, %error, "connection failed during detection");
                return;
            }
        };
        tracing::debug!(%client, %orig_dst, ?protocol, %direction, "accepted");
        let ctx = ConnCtx::new(direction, client, orig_dst);
        // Each way of serving is boxed: a connection's task would otherwise be as large as
        // the largest of them (TLS termination with HTTP/2 inside), 11.9 KB for every
        // connection, also the thousands a slowloris attack holds; boxed, a connection pays
        // for the way it is served.
        match (protocol, direction, &self.tls) {
            // A peer proxy's mTLS: terminate it, learn the caller, then serve what is inside.
            (Protocol::Tls, Direction::Inbound, Some(tls)) => {
                Box::pin(self.serve_mtls(io, ctx, tls, declared, drain)).await;
            }
            // A port declared HTTP is never opaque.
            (Protocol::Tls | Protocol::Opaque, _, _) if matches!(declared, Declared::Http(_)) => {
                Box::pin(self.refuse_not_http(io, protocol, &ctx, declared)).await
            }
            // Without a mesh identity a client's own TLS is relayed untouched, like any
            // opaque stream.
            (Protocol::Tls | Protocol::Opaque, _, _) => Box::pin(self.forward_tcp(io, ctx)).await,
            (Protocol::Http1, _, _) => Box::pin(self.serve_http1(io, ctx, drain)).await,
            (Protocol::Http2, _, _) => {
                Box::pin(self.serve_http(io, http::Version::Http2, ctx, drain)).await
            }
        }
    }

    /// HTTP/1 detected on a client's connection: hyper takes over once the first request head
    /// is whole ([`detect::whole_head`]), so that a slow client holds only the bytes it sent.
    /// Peer proxies that announce HTTP/1 by ALPN go straight to hyper: they send whole heads.
    async fn serve_http1<I>(&self, io: PrefixedIo<I>, ctx: ConnCtx, mut drain: drain::Watch)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let head = detect::whole_head(io, self.server.header_read_timeout, http::H1_MAX_HEAD);
        let io = tokio::select! {
            head = head => head,
            // Nothing of this client's was served yet: it can retry on another instance.
            _ = drain.signaled() => return,
        };
        match io {
            Ok(Some(io)) => self.serve_http(io, http::Version::Http1, ctx, drain).await,
            Ok(None) => {
                tracing::debug!(client = %ctx.client, "closed before its first request head was whole")
            }
            Err(error) => {
                tracing::debug!(client = %ctx.client, %error, "connection failed before its first request head was whole")
            }
        }
    }

    async fn serve_http<I>(&self, io: I, version: http::Version, ctx: ConnCtx, drain: drain::Watch)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stack = match ctx.direction {
            Direction::Inbound => self.inbound_http.clone(),
            Direction::Outbound => self.outbound_http.clone(),
        };
        let (client, direction) = (ctx.client, ctx.direction);
        match http::serve(io, version, ctx, stack, self.server, drain).await {
            Ok(()) => {}
            // The proxy chose to close it: worth an operator's attention (one line per
            // connection, and each took hundreds of streams).
            Err(error @ http::ConnError::Http2(http::http2::ServeError::RapidReset { .. })) => {
                tracing::warn!(%client, %error, "HTTP/2 connection closed");
                self.metrics.rapid_reset(direction);
            }
            Err(error) => tracing::debug!(%client, %error, "HTTP connection ended with an error"),
        }
    }

    /// Inbound mesh mTLS. A handshake that fails (wrong CA, expired, no or foreign SPIFFE ID)
    /// closes the connection: the caller's proxy logs the TLS alert, and we count it.
    async fn serve_mtls(
        &self,
        io: PrefixedIo<TcpStream>,
        mut ctx: ConnCtx,
        tls: &MeshTls,
        declared: Declared,
        drain: drain::Watch,
    ) {
        let (stream, peer) = match tls.accept(io).await {
            Ok(accepted) => accepted,
            Err(error) => {
                self.metrics.tls_failure(ctx.direction);
                tracing::info!(client = %ctx.client, %error, "mesh TLS refused");
                return;
            }
        };
        tracing::debug!(client = %ctx.client, %peer, "mesh TLS accepted");
        ctx.peer_header = ::http::HeaderValue::from_str(&peer.to_string()).ok();
        ctx.peer = Some(Arc::new(peer));
        // ALPN says what flows inside; a peer that offered none sends opaque TCP or HTTP
        // that is detected as usual.
        let version = match stream.get_ref().1.alpn_protocol() {
            Some(crate::tls::ALPN_H2) => Some(http::Version::Http2),
            Some(crate::tls::ALPN_HTTP1) => Some(http::Version::Http1),
            _ => None,
        };
        if let Some(version) = version {
            return self.serve_http(stream, version, ctx, drain).await;
        }
        match detect::detect(stream, self.detect_timeout).await {
            Ok((Protocol::Http1, io)) => self.serve_http1(io, ctx, drain).await,
            Ok((Protocol::Http2, io)) => {
                self.serve_http(io, http::Version::Http2, ctx, drain).await
            }
            Ok((protocol, io)) if matches!(declared, Declared::Http(_)) => {
                self.refuse_not_http(io, protocol, &ctx, declared).await
            }
            Ok((_, io)) => self.forward_tcp(io, ctx).await,
            Err(error) => {
                tracing::debug!(client = %ctx.client, %error, "mTLS connection failed during detection")
            }
        }
    }

    /// What the local service declares `port` (its original destination) to speak.
    fn declared(&self, port: u16) -> Declared {
        let state = self.state.load();
        let local = self.state.local();
        let Some(info) = state.policy.service(&local.namespace, &local.service) else {
            return Declared::Unknown;
        };
        match info
            .ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.protocol)
        {
            None => Declared::Unknown,
            Some(PortProtocol::Http) => Declared::Http("http"),
            Some(PortProtocol::Grpc) => Declared::Http("grpc"),
            Some(PortProtocol::Tcp) => Declared::Tcp,
        }
    }

    /// A connection to a port declared HTTP that does not speak HTTP: answered with a 400
    /// that says why (unless it is TLS, which could not read it), then closed. Never opaque:
    /// that would let bytes past per-request authorization.
    async fn refuse_not_http<I>(
        &self,
        mut io: I,
        protocol: Protocol,
        ctx: &ConnCtx,
        declared: Declared,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + HasPrefix,
    {
        let Declared::Http(kind) = declared else {
            return;
        };
        let why = match protocol {
            Protocol::Tls => "sent a TLS handshake the mesh does not terminate".to_owned(),
            _ => detect::why_not_http(io.prefix(), self.detect_timeout),
        };
        let port = ctx.orig_dst.port();
        tracing::info!(
            client = %ctx.client, port, protocol = kind, reason = %why,
            "refused a connection that is not HTTP on a port declared `{kind}`"
        );
        self.metrics.not_http(ctx.direction);
        if protocol != Protocol::Tls {
            let service = &self.state.local().service;
            let message = format!(
                "port {port} of {service} is declared `{kind}`, but this connection {why}; it \
                 is refused rather than carried as opaque TCP"
            );
            let _ = tokio::io::AsyncWriteExt::write_all(
                &mut io,
                &http::errors::not_http_response(&message),
            )
            .await;
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
    }

    async fn forward_tcp<I>(&self, io: I, ctx: ConnCtx)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let decision = match ctx.direction {
            Direction::Inbound => {
                // Opaque TCP is authorized once, for the whole connection, and only by a TCP
                // grant for this port (`tcp:PORT` or `tcp`): never by an HTTP rule.
                if let Some(authorizer) = &self.authorizer {
                    // A TCP connection names no environment.
                    let id = || authz::Asked {
                        request_id: format!("{:032x}", rand::random::<u128>()),
                        environment: None,
                    };
                    let rpc = authz::tcp_rpc(ctx.orig_dst.port());
                    if authorizer
                        .check(ctx.peer.as_deref(), &rpc, ctx.orig_dst.port(), id)
                        .is_err()
                    {
                        // Logged and counted by the authorizer; TCP has no way to say more.
                        return;
                    }
                }
                Ok(Decision {
                    target: ctx.orig_dst,
                    labels: self.inbound_labels.clone(),
                    timeout: None,
                    in_flight: None,
                })
            }
            Direction::Outbound => self.router.route_tcp(ctx.orig_dst),
        };
        let decision = match decision {
            Ok(d) => d,
            Err(error) => {
                tracing::info!(client = %ctx.client, orig_dst = %ctx.orig_dst, %error, "connection refused");
                return;
            }
        };
        // Outbound to a mesh service with an identity to show: wrap the stream in mTLS.
        let expected = match (&self.tls, ctx.direction) {
            (Some(tls), Direction::Outbound) if !decision.labels.dst_service.is_empty() => tls
                .trust_domain()
                .map(|td| SpiffeId::of_service(td, &decision.labels.dst_service)),
            _ => None,
        };
        let mesh = match (&self.tls, &expected) {
            (Some(tls), Some(id)) => Some((tls.as_ref(), id)),
            _ => None,
        };
        let metrics = self.metrics.tcp(ctx.direction, &decision.labels);
        match tcp::forward_via(io, decision.target, self.connect_timeout, mesh, metrics).await {
            Ok((sent, received)) => tracing::debug!(
                client = %ctx.client, target = %decision.target, sent, received, "TCP connection closed"
            ),
            Err(error) => tracing::info!(
                client = %ctx.client, target = %decision.target, %error, "TCP connection failed"
            ),
        }
        drop(decision.in_flight);
    }
}

/// A stream that can say which bytes detection read before giving up on it.
pub trait HasPrefix {
    /// The bytes read during detection.
    fn prefix(&self) -> &[u8];
}

impl<I> HasPrefix for PrefixedIo<I> {
    fn prefix(&self) -> &[u8] {
        PrefixedIo::prefix(self)
    }
}

/// The destination the client dialed before iptables redirected it to us.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let v4_mapped = matches!(local, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some());
    if local.is_ipv4() || v4_mapped {
        let raw = getsockopt(stream, sockopt::OriginalDst)?;
        Ok(SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw))))
    } else {
        let raw = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        Ok(SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(raw))))
    }
}

/// Whether `dst` is this listener itself: forwarding there would loop forever.
fn is_self(dst: SocketAddr, listener: SocketAddr) -> bool {
    dst.port() == listener.port() && (listener.ip().is_unspecified() || dst.ip() == listener.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_addresses() {
        let any: SocketAddr = "0.0.0.0:4143".parse().expect("addr");
        assert!(is_self("10.0.0.5:4143".parse().expect("addr"), any));
        assert!(!is_self("10.0.0.5:8080".parse().expect("addr"), any));
        let lo: SocketAddr = "127.0.0.1:4140".parse().expect("addr");
        assert!(!is_self("10.0.0.5:4140".parse().expect("addr"), lo));
    }

    #[tokio::test]
    async fn original_dst_fails_without_redirect() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let _c = TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        assert!(original_dst(&s).is_err());
    }
}
