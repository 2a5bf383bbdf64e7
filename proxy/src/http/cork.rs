//! An HTTP/2 connection's writes held back until the task driving it ends its turn, then
//! written at once.
//!
//! h2 writes a DATA frame whose payload is 256 bytes or more as a frame of its own: it keeps
//! the payload aside to write it uncopied, and must flush before it can take the next frame.
//! A relay writes many such frames per turn (a turn relays what one read brought, for many
//! streams), so h2 made one `writev` per frame: on a gRPC server stream through the pair,
//! the inbound proxy made 1.7 writes per call against HAProxy's 0.34, each a trip through
//! the kernel's TCP stack. Over TLS, each was also a record of its own. Held, it makes 0.6,
//! and the pair's kernel time per call falls by about 45% (benches/README.md, "gRPC server
//! streams").
//!
//! [`cork`] wraps the connection's I/O: once the connection is up, what h2 writes is copied
//! into a buffer, h2's flushes return at once, and the task that polls the connection writes
//! the buffer with [`Uncork::poll_uncork`] after each poll, so one turn makes one write. A
//! full buffer (64 KiB) is written as soon as it fills, and waits for the socket like any
//! write: h2 is told to wait, so memory stays bounded against a slow reader. While h2 does
//! its handshake the wrapper passes everything through, so the handshake's writes and
//! flushes are h2's own.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held: a write that finds the buffer full writes it out first, and one that
/// would overflow it is taken in part (as a socket takes what fits).
const HOLD_AT_MOST: usize = 64 * 1024;

/// A buffer's first allocation, and what it may keep after a turn that wrote less than this:
/// a quiet connection keeps no more than h2's own write buffer (16 KiB) here.
const KEEP_CAPACITY: usize = 16 * 1024;

/// The I/O handed to h2 (see the module docs).
#[derive(Debug)]
pub struct Corked<T> {
    shared: Arc<Mutex<Cork<T>>>,
}

/// The driving task's handle on the same I/O: writes what the connection's turn left.
#[derive(Debug)]
pub struct Uncork<T> {
    shared: Arc<Mutex<Cork<T>>>,
}

#[derive(Debug)]
struct Cork<T> {
    io: T,
    /// Held bytes; `buf[written..]` is what is left to write.
    buf: Vec<u8>,
    written: usize,
    /// The handshake is over: writes are held. Before, everything passes through.
    holding: bool,
    /// Why writing what was held failed, for h2 to see on its next read or write.
    failed: Option<io::ErrorKind>,
}

/// Wraps `io` for h2; the second half belongs to the task that polls the connection.
pub fn cork<T>(io: T) -> (Corked<T>, Uncork<T>) {
    let shared = Arc::new(Mutex::new(Cork {
        io,
        buf: Vec::new(),
        written: 0,
        holding: false,
        failed: None,
    }));
    (
        Corked {
            shared: shared.clone(),
        },
        Uncork { shared },
    )
}

/// Both halves are polled by one task, one after the other, so the lock is never contended;
/// a panic while holding it (a bug, not input) leaves nothing half-changed worth refusing.
fn lock<T>(shared: &Mutex<Cork<T>>) -> MutexGuard<'_, Cork<T>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: AsyncWrite + Unpin> Cork<T> {
    /// Writes what is held until it is all written or the socket is full (`Pending`, with
    /// this task woken when it drains).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while self.written < self.buf.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => return Poll::Ready(Err(self.fail(io::ErrorKind::WriteZero))),
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(self.fail(e.kind()))),
            }
        }
        // A busy connection keeps its buffer, so that it does not grow it again, by doubling,
        // every turn; a turn that wrote little (a quiet connection's last, typically) lets a
        // large one go.
        if self.buf.len() < KEEP_CAPACITY && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `n` more bytes, allocated as [`KEEP_CAPACITY`] at least: a turn's writes
    /// then fit without reallocating as they come.
    fn reserve(&mut self, n: usize) {
        if self.buf.capacity() - self.buf.len() < n {
            self.buf.reserve(n.max(KEEP_CAPACITY));
        }
    }

    fn fail(&mut self, kind: io::ErrorKind) -> io::Error {
        self.failed = Some(kind);
        kind.into()
    }

    /// How many more bytes may be held, writing what is held first if the buffer is full.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.len() >= HOLD_AT_MOST {
            ready!(self.poll_drain(cx))?;
        }
        match self.failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(HOLD_AT_MOST - self.buf.len())),
        }
    }
}

impl<T: AsyncWrite + Unpin> Uncork<T> {
    /// Holds writes from now on: for a task that polls the connection itself
    /// ([`super::http2::serve`]) once the handshake is over, and then calls
    /// [`Uncork::poll_uncork`] after every poll.
    pub fn start_holding(&self) {
        lock(&self.shared).holding = true;
    }

    /// Writes what the connection's turn left, then flushes the I/O under it (a TLS stream
    /// writes its records out on flush). `Pending` leaves the rest held, with the task woken
    /// when the socket drains; an error is kept for h2's next read or write, which ends the
    /// connection, and the task is woken so that h2 gets to see it.
    pub fn poll_uncork(&self, cx: &mut Context<'_>) {
        let mut cork = lock(&self.shared);
        if !cork.holding || cork.failed.is_some() {
            return;
        }
        let drained = match cork.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut cork.io).poll_flush(cx),
            other => other,
        };
        if let Poll::Ready(Err(e)) = drained {
            tracing::debug!(error = %e, "writing an HTTP/2 connection's frames failed");
            cork.failed = Some(e.kind());
            cx.waker().wake_by_ref();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut cork = lock(&self.shared);
        if let Some(kind) = cork.failed {
            return Poll::Ready(Err(kind.into()));
        }
        Pin::new(&mut cork.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut cork = lock(&self.shared);
        if !cork.holding {
            return Pin::new(&mut cork.io).poll_write(cx, data);
        }
        let room = ready!(cork.poll_room(cx))?;
        let taken = &data[..data.len().min(room)];
        cork.reserve(taken.len());
        cork.buf.extend_from_slice(taken);
        Poll::Ready(Ok(taken.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut cork = lock(&self.shared);
        if !cork.holding {
            return Pin::new(&mut cork.io).poll_write_vectored(cx, bufs);
        }
        let mut room = ready!(cork.poll_room(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        cork.reserve(total.min(room));
        let mut n = 0;
        for buf in bufs {
            let taken = &buf[..buf.len().min(room)];
            cork.buf.extend_from_slice(taken);
            n += taken.len();
            room -= taken.len();
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Vectored: h2 then keeps a large DATA payload out of its own buffer, and the payload
    /// is copied once, into this one.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Once holding, the end of the turn flushes ([`Uncork::poll_uncork`]), not h2.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut cork = lock(&self.shared);
        if !cork.holding {
            return Pin::new(&mut cork.io).poll_flush(cx);
        }
        match cork.failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    /// What is held goes out before the shutdown (h2's GOAWAY on a graceful close).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut cork = lock(&self.shared);
        ready!(cork.poll_drain(cx))?;
        Pin::new(&mut cork.io).poll_shutdown(cx)
    }
}

/// A connection future (h2's client connection) polled with its writes uncorked after every
/// poll; holding starts with its first poll, the handshake being over by then.
#[derive(Debug)]
pub struct Driven<F, T> {
    conn: F,
    uncork: Uncork<T>,
    started: bool,
}

impl<F, T: AsyncWrite + Unpin> Driven<F, T> {
    /// `conn` driven with `uncork`, the other half of its I/O.
    pub fn new(conn: F, uncork: Uncork<T>) -> Self {
        Driven {
            conn,
            uncork,
            started: false,
        }
    }
}

impl<F: Future + Unpin, T: AsyncWrite + Unpin> Future for Driven<F, T> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            this.uncork.start_holding();
        }
        let polled = Pin::new(&mut this.conn).poll(cx);
        this.uncork.poll_uncork(cx);
        polled
    }
}

#[cfg(test)]
pub(crate) mod tests;
