//! I/O wrappers shared by the TCP and HTTP paths.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose first bytes were already read (for protocol detection) and are replayed
/// before reading from the socket again. Reading instead of `peek`ing lets detection wait for
/// more bytes without busy-looping on a socket that already has a few.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Bytes,
    io: I,
}

impl<I> PrefixedIo<I> {
    /// Wraps `io`, replaying `prefix` first.
    pub fn new(prefix: Bytes, io: I) -> Self {
        PrefixedIo { prefix, io }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// What is still to be replayed (all of what detection read, until the first read).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The bytes still to be replayed and the stream, apart.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An advanced `Bytes` still holds its whole buffer: let it go, or a connection
                // that then idles (thousands, in a slowloris attack) keeps its detection bytes.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    // Forwarded so that a client's half-close reaches the upstream as a FIN.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_prefix_then_reads_inner() {
        let inner: &[u8] = b" world";
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello"), inner);
        let mut out = String::new();
        io.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn lets_go_of_the_detection_bytes_once_replayed() {
        // A slow connection idles after its first bytes: they must not stay allocated.
        let detected = Bytes::from(b"GET / HTTP/1.1\r\n".to_vec());
        let inner: &[u8] = b"";
        let mut io = PrefixedIo::new(detected.clone(), inner);
        let mut first = [0u8; 64];
        let n = io.read(&mut first).await.expect("read");
        assert_eq!(&first[..n], b"GET / HTTP/1.1\r\n");
        assert!(
            detected.is_unique(),
            "the proxy still holds the replayed bytes"
        );
    }
}
