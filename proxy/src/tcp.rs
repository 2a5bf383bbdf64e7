//! Opaque TCP forwarding: bytes both ways, half-close preserved, counted for metrics.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::TcpMetrics;

/// Why an opaque connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The upstream refused or was unreachable.
    #[error("connect to {target}: {source}")]
    Connect {
        /// Where we tried to connect.
        target: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The upstream did not answer in time.
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    /// Either side failed mid-stream.
    #[error("stream: {0}")]
    Io(#[from] io::Error),
    /// Mesh TLS to the upstream proxy failed.
    #[error("mTLS to {target}: {source}")]
    Tls {
        /// Where we tried to connect.
        target: SocketAddr,
        /// Why.
        source: crate::tls::TlsError,
    },
}

/// Connects to `target` with a timeout. Nagle is disabled because the proxy only forwards
/// what the application already chose to write.
pub async fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream, TcpError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| TcpError::ConnectTimeout(target))?
        .map_err(|source| TcpError::Connect { target, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Forwards `client` to `target` until both directions are closed. `copy_bidirectional` shuts
/// down each write side when the other side's read hits EOF, so half-closes propagate.
pub async fn forward<I>(
    client: I,
    target: SocketAddr,
    connect_timeout: Duration,
    metrics: TcpMetrics,
) -> Result<(u64, u64), TcpError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    forward_via(client, target, connect_timeout, None, metrics).await
}

/// [`forward`], optionally over mesh mTLS to a peer proxy that must prove it is `mesh.1`.
pub async fn forward_via<I>(
    client: I,
    target: SocketAddr,
    connect_timeout: Duration,
    mesh: Option<(&crate::tls::MeshTls, &crate::identity::SpiffeId)>,
    metrics: TcpMetrics,
) -> Result<(u64, u64), TcpError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let result = async {
        let upstream = connect(target, connect_timeout).await?;
        let mut client = Counted {
            io: client,
            read: metrics.read.clone(),
            write: metrics.write.clone(),
        };
        match mesh {
            None => {
                let mut upstream = upstream;
                Ok(tokio::io::copy_bidirectional(&mut client, &mut upstream).await?)
            }
            Some((tls, id)) => {
                let mut upstream = tls
                    .connect(upstream, id, crate::tls::Alpn::Opaque)
                    .await
                    .map_err(|source| TcpError::Tls { target, source })?;
                Ok(tokio::io::copy_bidirectional(&mut client, &mut upstream).await?)
            }
        }
    }
    .await;
    metrics.closed(result.is_ok());
    result
}

/// Counts bytes as they pass, so long-lived connections show up in metrics before they close.
struct Counted<I> {
    io: I,
    read: IntCounter,
    write: IntCounter,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read.inc_by((buf.filled().len() - before) as u64);
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.write.inc_by(n as u64);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
