use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, duplex};

use super::*;

/// An I/O that counts the writes that reached it: what would be `write`/`writev` calls.
#[derive(Debug)]
pub(crate) struct Counting<T> {
    pub(crate) io: T,
    pub(crate) writes: Arc<AtomicUsize>,
}

impl<T> Counting<T> {
    pub(crate) fn new(io: T) -> (Counting<T>, Arc<AtomicUsize>) {
        let writes = Arc::new(AtomicUsize::new(0));
        (
            Counting {
                io,
                writes: writes.clone(),
            },
            writes,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, data));
        self.writes.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs));
        self.writes.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn uncork_now<T: AsyncWrite + Unpin>(uncork: &Uncork<T>) {
    std::future::poll_fn(|cx| {
        uncork.poll_uncork(cx);
        Poll::Ready(())
    })
    .await;
}

/// Whatever the peer can read without waiting.
async fn readable_now(peer: &mut DuplexStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(read) = peer.read(&mut buf).now_or_never() {
        match read.expect("read") {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// The shape of h2 relaying a turn's worth of DATA frames of 256 bytes or more: a frame
/// head from its buffer and the payload beside it in one vectored write, then a flush, frame
/// after frame. Held, they all reach the socket in one write, in order, after the turn.
#[tokio::test]
async fn a_turns_frames_reach_the_socket_in_one_write() {
    let (ours, mut peer) = duplex(1 << 20);
    let (counting, writes) = Counting::new(ours);
    let (mut corked, uncork) = cork(counting);
    uncork.start_holding();
    let mut sent = Vec::new();
    for frame in 0..100u8 {
        let head = [frame; 9];
        let payload = vec![frame; 300];
        let slices = [io::IoSlice::new(&head), io::IoSlice::new(&payload)];
        let n = corked.write_vectored(&slices).await.expect("write");
        assert_eq!(n, 309, "a held write takes every slice whole");
        corked.flush().await.expect("flush");
        sent.extend_from_slice(&head);
        sent.extend_from_slice(&payload);
    }
    assert!(
        readable_now(&mut peer).await.is_empty(),
        "nothing leaves before the turn ends"
    );
    assert_eq!(writes.load(Ordering::Relaxed), 0);
    uncork_now(&uncork).await;
    assert_eq!(writes.load(Ordering::Relaxed), 1, "one write for the turn");
    assert_eq!(readable_now(&mut peer).await, sent);
}

/// h2's handshake (the client's preface, the server's SETTINGS) is written and flushed as
/// h2 asks: nothing is held until the task that drives the connection says so.
#[tokio::test]
async fn before_holding_starts_writes_and_flushes_pass_through() {
    let (ours, mut peer) = duplex(1 << 16);
    let (mut corked, _uncork) = cork(ours);
    corked
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    corked.flush().await.expect("flush");
    assert_eq!(
        readable_now(&mut peer).await,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    );
}

/// A peer that reads nothing does not make the proxy hold an unbounded amount: once the
/// buffer is full, writes wait for the socket, as they would without the cork.
#[tokio::test]
async fn a_peer_that_stops_reading_bounds_what_is_held() {
    let (ours, _peer) = duplex(1024);
    let (mut corked, uncork) = cork(ours);
    uncork.start_holding();
    let big = vec![7u8; 200 * 1024];
    let write = corked.write_all(&big).now_or_never();
    assert!(write.is_none(), "the write waits for the peer");
    let held = lock(&uncork.shared).buf.len();
    assert_eq!(held, HOLD_AT_MOST, "the buffer filled, and no further");
}

/// A graceful close writes what is held (h2's GOAWAY) before shutting the socket down.
#[tokio::test]
async fn shutdown_writes_what_is_held_first() {
    let (ours, mut peer) = duplex(1 << 16);
    let (mut corked, uncork) = cork(ours);
    uncork.start_holding();
    corked.write_all(b"goaway").await.expect("write");
    corked.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.expect("read to the end");
    assert_eq!(got, b"goaway");
}

/// A write that fails after the turn (the peer has gone) reaches h2 on its next read or
/// write, which ends the connection, instead of being lost.
#[tokio::test]
async fn a_failed_write_is_reported_to_h2() {
    let (ours, peer) = duplex(1 << 16);
    let (mut corked, uncork) = cork(ours);
    uncork.start_holding();
    drop(peer);
    corked.write_all(b"frames").await.expect("held");
    uncork_now(&uncork).await;
    let mut buf = [0u8; 16];
    let read = corked.read(&mut buf).await;
    assert!(read.is_err(), "the read sees the failed write: {read:?}");
    assert!(corked.write_all(b"more").await.is_err());
}

/// A busy connection keeps its buffer from turn to turn; once a turn writes little (the
/// connection has gone quiet), the burst's memory is let go.
#[tokio::test]
async fn a_quiet_turn_lets_a_bursts_memory_go() {
    let (ours, mut peer) = duplex(1 << 20);
    let (mut corked, uncork) = cork(ours);
    uncork.start_holding();
    corked.write_all(&[1u8; 60 * 1024]).await.expect("write");
    uncork_now(&uncork).await;
    assert_eq!(readable_now(&mut peer).await.len(), 60 * 1024);
    let kept = lock(&uncork.shared).buf.capacity();
    assert!(kept >= 60 * 1024, "a busy turn keeps its buffer ({kept})");
    corked.write_all(b"ping ack").await.expect("write");
    uncork_now(&uncork).await;
    assert_eq!(readable_now(&mut peer).await, b"ping ack");
    assert_eq!(lock(&uncork.shared).buf.capacity(), 0);
}
