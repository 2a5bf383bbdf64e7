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
use tokio::net::{TcpListener, TcpStream};
use tower::util::BoxCloneSyncService;

use crate::detect::{self, Protocol};
use crate::drain;
use crate::http::{self, ConnCtx, Request, Response, ServerConfig};
use crate::io::PrefixedIo;
use crate::metrics::{Metrics, TrafficLabels};
use crate::routing::{Decision, Router};
use crate::{Direction, tcp};

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
    pub inbound_labels: TrafficLabels,
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
}

/// Accepts connections until draining starts; each connection keeps a drain watch so
/// shutdown waits for it.
pub async fn accept_loop(listener: Listener, dispatch: Arc<Dispatch>, drain: drain::Watch) {
    let mut stop = drain.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.signaled() => break,
            res = listener.tcp.accept() => res,
        };
        match accepted {
            Ok((stream, client)) => {
                let dispatch = dispatch.clone();
                let watch = drain.clone();
                let (direction, mode, local) = (listener.direction, listener.mode, listener.local);
                tokio::spawn(async move {
                    dispatch
                        .handle(stream, client, direction, mode, local, watch)
                        .await
                });
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
        let detected = if self.opaque_ports.contains(&orig_dst.port()) {
            Ok((Protocol::Opaque, PrefixedIo::new(Bytes::new(), stream)))
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
        let ctx = ConnCtx {
            direction,
            client,
            orig_dst,
        };
        let version = match protocol {
            Protocol::Http1 => http::Version::Http1,
            Protocol::Http2 => http::Version::Http2,
            // mTLS seam: the next issue terminates (inbound) or originates (outbound) TLS
            // here. Until then a client's own TLS is relayed untouched, like any opaque stream.
            Protocol::Tls | Protocol::Opaque => return self.forward_tcp(io, ctx).await,
        };
        let stack = match direction {
            Direction::Inbound => self.inbound_http.clone(),
            Direction::Outbound => self.outbound_http.clone(),
        };
        if let Err(error) = http::serve(io, version, ctx, stack, self.server, drain).await {
            tracing::debug!(%client, %error, "HTTP connection ended with an error");
        }
    }

    async fn forward_tcp(&self, io: PrefixedIo<TcpStream>, ctx: ConnCtx) {
        let decision = match ctx.direction {
            Direction::Inbound => Ok(Decision {
                target: ctx.orig_dst,
                labels: self.inbound_labels.clone(),
                timeout: None,
                in_flight: None,
            }),
            Direction::Outbound => self.router.route_tcp(ctx.orig_dst),
        };
        let decision = match decision {
            Ok(d) => d,
            Err(error) => {
                tracing::info!(client = %ctx.client, orig_dst = %ctx.orig_dst, %error, "connection refused");
                return;
            }
        };
        let metrics = self.metrics.tcp(ctx.direction, &decision.labels);
        match tcp::forward(io, decision.target, self.connect_timeout, metrics).await {
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
