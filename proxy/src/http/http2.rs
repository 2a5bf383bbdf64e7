//! HTTP/2 driven by the `h2` crate directly, on both sides of the proxy.
//!
//! hyper's HTTP/2 client and server run every stream in tasks of their own, joined to the
//! connection and to the caller by channels. A relayed stream paid for that twice: a frame
//! arriving from the upstream woke the upstream side's stream task, then the downstream
//! stream task, then the downstream connection's task, and every call spawned two or three
//! tasks. Here a call costs no task of its own:
//!
//! - [`serve`] runs a client connection and the requests on it in one task: the streams
//!   are futures polled by the connection's task, right before it writes what they queued.
//! - [`exchange`] sends a request upstream from the task serving it: it opens the stream,
//!   sends the request body while it waits for the response head, and the response body is
//!   read straight from h2. Only a request body still streaming once the response has begun
//!   (client and bidirectional streams) gets a task of its own, so that it keeps flowing
//!   while the response body waits for its reader.
//!
//! Both kinds of connection write through [`super::cork`]: what one turn of the connection's
//! task queued leaves in one write after the turn, not in one per large DATA frame.
//!
//! Before, hyper's client alone cost about 5% of a gRPC unary call's instructions in the
//! proxy pair (benches/README.md). The HTTP semantics are h2's and hyper's: h2 encodes,
//! decodes and validates the frames, and the adapters below follow hyper's (`H2Stream`,
//! `PipeToSendStream` and `Incoming`'s HTTP/2 body), including their flow-control choices
//! and the settings hyper gives a server connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::{Body, BoxError, BoxFuture, ConnCtx, RequestCtx, Response, ServerConfig, Svc};
use crate::drain;

/// Why an HTTP/2 client connection ended badly (logged: the client has gone, or was told).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A protocol or I/O error on the connection.
    #[error(transparent)]
    H2(#[from] h2::Error),
    /// The client did not answer a keep-alive ping in time.
    #[error("no answer to an HTTP/2 keep-alive ping within {0:?}")]
    KeepAliveTimedOut(Duration),
    /// The client reset most of its streams right after opening them (rapid reset): the
    /// connection was closed with GOAWAY `ENHANCE_YOUR_CALM`.
    #[error(
        "closed: the client reset {premature} of its {streams} streams within {within:?} of opening them (rapid reset; limits: {})",
        crate::config::ENV_H2_RAPID_RESET_STREAMS
    )]
    RapidReset {
        /// Streams opened on the connection.
        streams: u32,
        /// Of those, reset by the client soon after it opened them.
        premature: u32,
        /// What "soon" was.
        within: Duration,
    },
}

/// A client connection's settings: hyper's server defaults (which the proxy used until it
/// drove h2 itself), with the proxy's own header limit.
fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_concurrent_streams(200)
        .max_local_error_reset_streams(Some(1024))
        .max_send_buffer_size(400 * 1024)
        .max_header_list_size(super::H2_MAX_HEADER_LIST);
    builder
}

/// Serves one HTTP/2 client connection (its preface not yet read) with `svc`, until it
/// closes. When draining starts it sends GOAWAY and finishes the streams already open.
///
/// One task runs the connection and every request on it: a stream is a future polled by this
/// task (through a `FuturesUnordered`, which polls only the streams that were woken), before
/// the connection, so that what a stream queued is written in the same turn. A client that
/// resets a stream before its response drops the call, and with it the upstream stream (a
/// cancelled gRPC call is cancelled all the way).
pub async fn serve<I, S>(
    io: I,
    ctx: Arc<ConnCtx>,
    svc: S,
    config: ServerConfig,
    mut drain: drain::Watch,
) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Svc<Infallible>,
{
    let (io, uncork) = super::cork::cork(io);
    let mut conn = server_builder().handshake::<_, Bytes>(io).await?;
    // From here, what a turn writes leaves in one write, after the turn (`cork`).
    uncork.start_holding();
    let mut keepalive = conn
        .ping_pong()
        .map(|ping| KeepAlive::new(ping, config.h2_keepalive));
    let mut timed_out = false;
    let mut resets = Resets::new(config.rapid_reset);
    let mut calmed = None;
    let mut streams = FuturesUnordered::new();
    let mut signaled = pin!(drain.signaled());
    let mut draining = false;
    let mut closed = false;
    let mut poll_turn = |cx: &mut Context<'_>| -> Poll<Result<(), h2::Error>> {
        if !draining && signaled.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.graceful_shutdown();
        }
        if let Some(alive) = keepalive.as_mut() {
            match alive.poll(cx) {
                Liveness::Alive => {}
                Liveness::TimedOut => {
                    // As hyper: GOAWAY, then the connection closes once h2 has written it.
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    timed_out = true;
                    keepalive = None;
                }
                Liveness::Closing => keepalive = None,
            }
        }
        loop {
            while let Poll::Ready(Some(ended)) = streams.poll_next_unpin(cx) {
                if resets.ended(ended) && calmed.is_none() {
                    // Streams still open end with the connection.
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    calmed = Some(resets);
                }
            }
            if closed {
                // Streams still open see the connection's end (their handles fail) and end.
                return if streams.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    resets.opened();
                    streams.push(ServerStream::new(req, respond, &ctx, &svc));
                }
                // Once told to calm down, the client's answer (an error, or closing) is
                // only the end of what the proxy chose.
                Poll::Ready(Some(Err(_))) if calmed.is_some() => closed = true,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                Poll::Ready(None) => closed = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    };
    std::future::poll_fn(|cx| {
        let polled = poll_turn(cx);
        uncork.poll_uncork(cx);
        polled
    })
    .await?;
    if let Some(resets) = calmed {
        return Err(ServeError::RapidReset {
            streams: resets.streams,
            premature: resets.premature,
            within: resets.limits.min_lifetime,
        });
    }
    if timed_out {
        return Err(ServeError::KeepAliveTimedOut(config.h2_keepalive));
    }
    Ok(())
}

/// How a client's stream ended, as [`Resets`] counts it.
enum Ended {
    /// Answered, or ended by the proxy or the upstream.
    Served,
    /// The client reset it before its response ended, this long after opening it.
    ResetByClient(Duration),
}

/// Rapid reset (CVE-2023-44487): a client that opens streams and resets them at once makes
/// the proxy call upstream for each, while a reset stream no longer counts against the
/// concurrent streams; h2 only limits resets of streams not yet accepted, and every stream
/// is accepted at once here. Envoy's rule ([`super::RapidReset`]): once a connection has
/// opened `min_streams`, it is closed when more than half of them were reset by the client
/// within `min_lifetime` of opening. A client cancelling some calls (deadlines, hedging) or
/// ending long streams is not stopped.
#[derive(Debug, Clone, Copy)]
struct Resets {
    limits: super::RapidReset,
    streams: u32,
    premature: u32,
}

impl Resets {
    fn new(limits: super::RapidReset) -> Resets {
        Resets {
            limits,
            streams: 0,
            premature: 0,
        }
    }

    fn opened(&mut self) {
        self.streams = self.streams.saturating_add(1);
    }

    /// Counts a stream's end; whether the connection should now be closed.
    fn ended(&mut self, ended: Ended) -> bool {
        match ended {
            Ended::ResetByClient(lived) if lived < self.limits.min_lifetime => {
                self.premature = self.premature.saturating_add(1);
                self.streams >= self.limits.min_streams && self.premature > self.streams / 2
            }
            _ => false,
        }
    }
}

/// One request of a client connection, from its head to the end of its response.
struct ServerStream {
    respond: SendResponse<Bytes>,
    state: Exchange,
    opened: Instant,
}

enum Exchange {
    /// The stack is working on the response head.
    Call(BoxFuture<Result<Response, Infallible>>),
    /// The head is sent; the body follows.
    Body(Pipe),
}

impl ServerStream {
    fn new<S: Svc<Infallible>>(
        req: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
        ctx: &Arc<ConnCtx>,
        svc: &S,
    ) -> ServerStream {
        let (parts, recv) = req.into_parts();
        // A request without a body (most of them) needs no allocation for it.
        let body = if recv.is_end_stream() {
            Body::default()
        } else {
            RecvBody::new(recv).map_err(BoxError::from).boxed_unsync()
        };
        let mut req = http::Request::from_parts(parts, body);
        req.extensions_mut().insert(RequestCtx::new(ctx.clone()));
        ServerStream {
            respond,
            state: Exchange::Call(svc.clone().call(req)),
            opened: Instant::now(),
        }
    }
}

impl Future for ServerStream {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = &mut *self;
        let reset = |opened: Instant| Poll::Ready(Ended::ResetByClient(opened.elapsed()));
        if let Exchange::Call(call) = &mut this.state {
            let response = match call.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => {
                    if let Poll::Ready(reason) = this.respond.poll_reset(cx) {
                        tracing::debug!(?reason, "the client reset the stream before the response");
                        return reset(this.opened);
                    }
                    return Poll::Pending;
                }
            };
            let (mut head, body) = response.into_parts();
            let end_of_stream = body.is_end_stream();
            prepare_head(&mut head, &body, end_of_stream);
            match this
                .respond
                .send_response(http::Response::from_parts(head, ()), end_of_stream)
            {
                Ok(_) if end_of_stream => return Poll::Ready(Ended::Served),
                Ok(send) => this.state = Exchange::Body(Pipe::new(body, send)),
                Err(error) => {
                    tracing::debug!(%error, "response head not sent");
                    this.respond.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(Ended::Served);
                }
            }
        }
        let Exchange::Body(pipe) = &mut this.state else {
            return Poll::Ready(Ended::Served);
        };
        if let Err(error) = ready!(Pin::new(&mut *pipe).poll(cx)) {
            tracing::debug!(%error, "response body not sent whole");
            if pipe.reset_by_peer {
                return reset(this.opened);
            }
        }
        Poll::Ready(Ended::Served)
    }
}

/// What hyper's server added to a response head: a `content-length` when the body's length
/// is known and the head has none, and a `Date` when it has none (RFC 9110 §6.6.1).
fn prepare_head(head: &mut http::response::Parts, body: &Body, end_of_stream: bool) {
    if !end_of_stream
        && let Some(len) = body.size_hint().exact()
        && !head.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        head.headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    if !head.headers.contains_key(http::header::DATE)
        && let Some(date) = date()
    {
        head.headers.insert(http::header::DATE, date);
    }
}

/// Now as an HTTP date, formatted once a second per thread.
fn date() -> Option<http::HeaderValue> {
    thread_local! {
        static DATE: std::cell::RefCell<Option<(u64, http::HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    DATE.with_borrow_mut(|cached| {
        if let Some((at, value)) = cached.as_ref()
            && *at == second
        {
            return Some(value.clone());
        }
        let value = http::HeaderValue::try_from(httpdate::fmt_http_date(now)).ok()?;
        *cached = Some((second, value.clone()));
        Some(value)
    })
}

/// An HTTP/2 client's keep-alive: a ping every `interval`, and the connection closed when an
/// answer takes longer than that. Bounds dead or stalled peers, keeps idle live ones (a gRPC
/// channel). hyper pinged only after `interval` without frames; a ping per interval on a
/// busy connection costs less than tracking that.
struct KeepAlive {
    ping: h2::PingPong,
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    /// A ping is out, not answered yet.
    awaiting: bool,
}

enum Liveness {
    Alive,
    TimedOut,
    /// The connection is closing anyway.
    Closing,
}

impl KeepAlive {
    fn new(ping: h2::PingPong, interval: Duration) -> KeepAlive {
        KeepAlive {
            ping,
            interval,
            timer: Box::pin(tokio::time::sleep(interval)),
            awaiting: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Liveness {
        if self.awaiting {
            match self.ping.poll_pong(cx) {
                Poll::Ready(Ok(_)) => {
                    self.awaiting = false;
                    self.timer.as_mut().reset(Instant::now() + self.interval);
                }
                Poll::Ready(Err(_)) => return Liveness::Closing,
                Poll::Pending => {}
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.awaiting {
                return Liveness::TimedOut;
            }
            if self.ping.send_ping(h2::Ping::opaque()).is_err() {
                return Liveness::Closing;
            }
            self.awaiting = true;
            self.timer.as_mut().reset(Instant::now() + self.interval);
        }
        Liveness::Alive
    }
}

/// Sends `head` and `body` on a new stream of `sender`'s connection (ready, see
/// [`SendRequest::poll_ready`]) and waits for the response head, sending the request body
/// meanwhile.
///
/// Dropping the returned future before the response resets the stream (`CANCEL`), as h2
/// does when the last handle to an unfinished stream goes.
pub async fn exchange(
    sender: &mut SendRequest<Bytes>,
    head: http::Request<()>,
    body: Body,
) -> Result<http::Response<RecvBody>, h2::Error> {
    let end_of_stream = body.is_end_stream();
    let (mut response, send) = sender.send_request(head, end_of_stream)?;
    let mut pipe = (!end_of_stream).then(|| Pipe::new(body, send));
    let head = std::future::poll_fn(|cx| {
        if let Some(sending) = pipe.as_mut()
            && let Poll::Ready(result) = Pin::new(sending).poll(cx)
        {
            if let Err(error) = result {
                tracing::debug!(%error, "request body not sent whole");
            }
            pipe = None;
        }
        Pin::new(&mut response).poll(cx)
    })
    .await;
    if let (Some(pipe), Ok(_)) = (pipe, &head) {
        tokio::spawn(async move {
            if let Err(error) = pipe.await {
                tracing::debug!(%error, "request body not sent whole");
            }
        });
    }
    Ok(head?.map(RecvBody::new))
}

/// Sends a request body on its stream, frame by frame, as the peer's flow control allows.
/// Ends when the body has, when the peer resets the stream, or on the first error (after
/// resetting the stream, so the upstream does not take a truncated body as whole).
struct Pipe {
    body: Body,
    send: SendStream<Bytes>,
    /// A chunk taken from the body that waits for send capacity (kept here across
    /// `Pending`), and whether it is the body's last.
    waiting: Option<(Bytes, bool)>,
    /// The peer reset the stream before the body ended.
    reset_by_peer: bool,
}

impl Pipe {
    fn new(body: Body, send: SendStream<Bytes>) -> Pipe {
        Pipe {
            body,
            send,
            waiting: None,
            reset_by_peer: false,
        }
    }
}

impl Future for Pipe {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            // Registered on every turn, so a reset from the peer wakes a pipe waiting for the
            // body or for capacity.
            if let Poll::Ready(reason) = this.send.poll_reset(cx) {
                return Poll::Ready(match reason? {
                    // The upstream answered without reading the rest (RFC 9113 §8.1).
                    h2::Reason::NO_ERROR => Ok(()),
                    reason => {
                        this.reset_by_peer = true;
                        Err(h2::Error::from(reason).into())
                    }
                });
            }
            if let Some((chunk, last)) = this.waiting.take() {
                if this.send.capacity() == 0 {
                    this.waiting = Some((chunk, last));
                    match ready!(this.send.poll_capacity(cx)) {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Poll::Ready(Err(e.into())),
                        None => return Poll::Ready(Err("the stream closed while sending".into())),
                    }
                }
                this.send.send_data(chunk, last)?;
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The next frame is read before any capacity is claimed: capacity claimed for a
            // body that has nothing to send yet would hold the connection's window from
            // other streams (hyper#4003).
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let last = this.body.is_end_stream();
                        if chunk.is_empty() {
                            this.send.send_data(chunk, last)?;
                            if last {
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        // A claim of one byte: h2 raises it to what is buffered when the
                        // chunk is sent, and a smaller claim lets many waiting streams share
                        // the window.
                        this.send.reserve_capacity(1);
                        this.waiting = Some((chunk, last));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.send.reserve_capacity(0);
                            this.send.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(error)) => {
                    this.send.send_reset(reset_reason(&*error));
                    return Poll::Ready(Err(error));
                }
                None => {
                    this.send.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// The reason to reset an upstream stream with when the request body failed: the client's
/// own reason when its stream was reset (a cancelled call stays a cancelled call), else
/// `INTERNAL_ERROR`, as hyper does.
fn reset_reason(error: &(dyn std::error::Error + 'static)) -> h2::Reason {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        cause = e.source();
    }
    h2::Reason::INTERNAL_ERROR
}

/// A body read from its HTTP/2 stream (a response upstream, a request downstream): data as it
/// arrives, then the trailers. The flow-control window is given back as the reader takes the
/// data (so the relay's own buffering is bounded by its reader), in one call per 16 KiB or
/// per turn of the reader, whichever comes first: a call per chunk cost 5% of a relayed
/// stream of small gRPC messages (benches/README.md).
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    /// The data frames have ended; trailers (or the end) come next.
    data_done: bool,
    /// Bytes taken by the reader whose window has not been given back yet.
    unreleased: usize,
}

/// Taken data whose window is given back at once, whether or not more is ready: one frame of
/// the default size, far below any window the proxy's peers get (64 KiB at least), so a
/// reader that stops holds back at most this much of it.
const RELEASE_AT: usize = 16 * 1024;

impl RecvBody {
    fn new(recv: RecvStream) -> RecvBody {
        RecvBody {
            recv,
            data_done: false,
            unreleased: 0,
        }
    }

    fn release(&mut self) {
        if self.unreleased > 0 {
            // Cannot fail for lengths received on this stream.
            let _ = self.recv.flow_control().release_capacity(self.unreleased);
            self.unreleased = 0;
        }
    }
}

impl Drop for RecvBody {
    /// A reader that stops early gives back what it took: its stream may stay open (the other
    /// direction still flowing), and the connection's window with it.
    fn drop(&mut self) {
        self.release();
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.unreleased += chunk.len();
                    if this.unreleased >= RELEASE_AT {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // Otherwise the reader has taken all there is, or all there will be: its turn
                // ends here.
                Poll::Pending => {
                    this.release();
                    return Poll::Pending;
                }
                // A reset with NO_ERROR after the response ends it early without failing it
                // (RFC 9113 §8.1).
                Poll::Ready(Some(Err(e))) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.release();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.release();
                    this.data_done = true;
                }
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    /// Only the end is known: a declared `content-length` stays in the message's headers for
    /// the next hop (h2 checks the data against it), so nothing needs the length from here.
    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::Full;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::Direction;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// Serves one connection on a loopback port with a service that answers `hello`, and
    /// the client's end of it.
    async fn served(
        keepalive: Duration,
    ) -> (
        TcpStream,
        tokio::task::JoinHandle<Result<(), ServeError>>,
        drain::Signal,
    ) {
        let svc = tower::service_fn(|_req: super::super::Request| -> BoxFuture<_> {
            Box::pin(async {
                Ok::<_, Infallible>(http::Response::new(
                    Full::new(Bytes::from_static(b"hello"))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                ))
            })
        });
        let (client, serving, signal, _writes) = served_by(keepalive, svc).await;
        (client, serving, signal)
    }

    /// Serves one connection on a loopback port with `svc`: the client's end of it, and the
    /// writes that reached the server's socket so far.
    async fn served_by<S: Svc<Infallible> + Send + 'static>(
        keepalive: Duration,
        svc: S,
    ) -> (
        TcpStream,
        tokio::task::JoinHandle<Result<(), ServeError>>,
        drain::Signal,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let (server, writes) = crate::http::cork::tests::Counting::new(server);
        let ctx = Arc::new(ConnCtx::new(
            Direction::Inbound,
            peer,
            SocketAddr::from(([127, 0, 0, 1], addr.port())),
        ));
        let config = ServerConfig {
            header_read_timeout: PATIENCE,
            h2_keepalive: keepalive,
            rapid_reset: super::super::RapidReset::default(),
        };
        let (signal, watch) = drain::channel();
        let serving = tokio::spawn(serve(server, ctx, svc, config, watch));
        (client, serving, signal, writes)
    }

    /// `GET http://a/` on a client connection that must still be open.
    async fn get(send: SendRequest<Bytes>) -> h2::client::ResponseFuture {
        let mut send = send.ready().await.expect("the connection is still open");
        let request = http::Request::get("http://a/").body(()).expect("a request");
        send.send_request(request, true).expect("request").0
    }

    #[test]
    fn a_connection_is_closed_when_most_of_its_streams_are_reset_at_once() {
        let quick = || Ended::ResetByClient(Duration::from_millis(1));
        let defaults = super::super::RapidReset::default();
        // Where the limits are raised (SLUICE_PROXY_H2_RAPID_RESET_*), they move the cut-off.
        let raised = super::super::RapidReset {
            min_streams: 2_000,
            min_lifetime: Duration::from_millis(5),
        };
        for limits in [defaults, raised] {
            let mut resets = Resets::new(limits);
            let mut closed_at = None;
            for n in 1..=10_000 {
                resets.opened();
                if resets.ended(quick()) {
                    closed_at = Some(n);
                    break;
                }
            }
            assert_eq!(closed_at, Some(limits.min_streams), "{limits:?}");
            // Served streams, and streams a client ends after they have lived a while (a
            // watch, a long download), do not count.
            let mut resets = Resets::new(limits);
            for n in 0..10_000 {
                resets.opened();
                let ended = match n % 3 {
                    0 => quick(),
                    1 => Ended::ResetByClient(limits.min_lifetime),
                    _ => Ended::Served,
                };
                assert!(!resets.ended(ended), "closed after {n} streams, {limits:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_answering_pings_is_disconnected() {
        let (io, serving, _signal) = served(Duration::from_millis(50)).await;
        // The client's side is never polled after the handshake: pings go unanswered, as
        // from a peer that vanished without closing its socket.
        let (_send, _conn) = h2::client::handshake(io).await.expect("handshake");
        let ended = tokio::time::timeout(PATIENCE, serving)
            .await
            .expect("the connection is closed")
            .expect("join");
        assert!(
            matches!(ended, Err(ServeError::KeepAliveTimedOut(_))),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn a_client_answering_pings_is_kept_and_served() {
        let interval = Duration::from_millis(20);
        let (io, serving, _signal) = served(interval).await;
        let (send, conn) = h2::client::handshake(io).await.expect("handshake");
        tokio::spawn(conn);
        // Many intervals, each with a ping the client answers.
        tokio::time::sleep(interval * 10).await;
        assert!(!serving.is_finished(), "{:?}", serving.await);
        let response = get(send).await;
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .expect("an answer")
            .expect("response");
        // What hyper's server added, the proxy adds.
        assert_eq!(response.headers()["content-length"], "5");
        assert!(response.headers().contains_key("date"));
        let mut body = response.into_body();
        let chunk = body.data().await.expect("data").expect("chunk");
        assert_eq!(&chunk[..], b"hello");
    }

    #[tokio::test]
    async fn draining_sends_goaway_and_ends_the_connection() {
        let (io, serving, signal) = served(PATIENCE).await;
        let (_send, conn) = h2::client::handshake(io).await.expect("handshake");
        let client = tokio::spawn(conn);
        tokio::spawn(signal.drain(PATIENCE));
        // Whether the server's last frames meet a socket the client has already closed is a
        // race (a broken pipe, logged at debug), so only the end is asserted here.
        let _ = tokio::time::timeout(PATIENCE, serving)
            .await
            .expect("the connection ends")
            .expect("join");
        // The client saw a GOAWAY, not a dropped socket.
        let closed = tokio::time::timeout(PATIENCE, client)
            .await
            .expect("the client's side ends")
            .expect("join");
        assert!(closed.is_ok(), "{closed:?}");
    }

    /// A response whose chunks are all ready (what a relay finds after one read from the
    /// upstream) leaves in a write or two, not in a write per DATA frame: h2 alone flushes
    /// after every frame of 256 bytes or more (`cork`).
    #[tokio::test]
    async fn a_turns_data_frames_leave_in_one_write() {
        const CHUNKS: usize = 50;
        const CHUNK: usize = 300;
        let svc = tower::service_fn(|_req: super::super::Request| -> BoxFuture<_> {
            Box::pin(async {
                let chunks = (0..CHUNKS)
                    .map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; CHUNK]))));
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
                Ok::<_, Infallible>(http::Response::new(body.boxed_unsync()))
            })
        });
        let (client, _serving, _signal, writes) = served_by(PATIENCE, svc).await;
        let (send, conn) = h2::client::handshake(client).await.expect("handshake");
        tokio::spawn(conn);
        // Settled first: the handshake's own writes are not what is counted.
        let warm = get(send.clone()).await.await.expect("response");
        let _ = RecvBody::new(warm.into_body()).collect().await;
        let before = writes.load(std::sync::atomic::Ordering::Relaxed);
        let response = get(send).await.await.expect("response");
        let body = RecvBody::new(response.into_body());
        let len = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .expect("the body arrives")
            .expect("body")
            .to_bytes()
            .len();
        assert_eq!(len, CHUNKS * CHUNK);
        let made = writes.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            made <= 3,
            "{made} writes for a response of {CHUNKS} ready DATA frames"
        );
    }

    /// A response body three times HTTP/2's default window (65,535 bytes), sent in small
    /// chunks on a stream that stays open: it flows only if the reader gives the window back
    /// as it reads, not when the stream ends.
    #[tokio::test]
    async fn a_long_body_gives_its_window_back_as_it_is_read() {
        const BODY: usize = 200_000;
        const CHUNK: usize = 1_000;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(io).await.expect("handshake");
            let Some(Ok((_req, mut respond))) = conn.accept().await else {
                return;
            };
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .expect("head");
            for sent in (CHUNK..=BODY).step_by(CHUNK) {
                send.reserve_capacity(CHUNK);
                while send.capacity() < CHUNK {
                    let Some(Ok(_)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await
                    else {
                        return;
                    };
                }
                let chunk = Bytes::from(vec![b'x'; CHUNK]);
                send.send_data(chunk, sent == BODY).expect("data");
            }
        });
        let io = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = h2::client::handshake(io).await.expect("handshake");
        tokio::spawn(conn);
        let response = get(send).await;
        let read = async {
            let body = RecvBody::new(response.await.expect("response").into_body());
            body.collect().await.expect("body").to_bytes().len()
        };
        let len = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the body flows: its window is given back as it is read");
        assert_eq!(len, BODY);
    }

    /// A response body sent by a [`Pipe`] on a server stream, and the client's side of that
    /// stream: its response head and its request body, left open so the client can reset
    /// the stream with a reason of its choosing.
    async fn piped(
        body: Body,
    ) -> (
        tokio::task::JoinHandle<(Result<(), BoxError>, bool)>,
        http::Response<RecvStream>,
        SendStream<Bytes>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let piping = tokio::spawn(async move {
            let (io, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(io).await.expect("handshake");
            let (_req, mut respond) = conn.accept().await.expect("a stream").expect("request");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let send = respond
                .send_response(http::Response::new(()), false)
                .expect("head");
            let mut pipe = Pipe::new(body, send);
            let result = (&mut pipe).await;
            (result, pipe.reset_by_peer)
        });
        let io = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = h2::client::handshake(io).await.expect("handshake");
        tokio::spawn(conn);
        let mut send = send.ready().await.expect("ready");
        let request = http::Request::post("http://a/")
            .body(())
            .expect("a request");
        let (response, request_body) = send.send_request(request, false).expect("request");
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .expect("a response head")
            .expect("response");
        (piping, response, request_body)
    }

    async fn ended(
        piping: tokio::task::JoinHandle<(Result<(), BoxError>, bool)>,
    ) -> (Result<(), BoxError>, bool) {
        tokio::time::timeout(PATIENCE, piping)
            .await
            .expect("the pipe ends when its stream is reset")
            .expect("join")
    }

    fn endless() -> Body {
        let chunks = futures_util::stream::repeat_with(|| {
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(&[b'x'; 1_000])))
        });
        http_body_util::StreamBody::new(chunks).boxed_unsync()
    }

    fn silent() -> Body {
        let nothing = futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>();
        http_body_util::StreamBody::new(nothing).boxed_unsync()
    }

    #[tokio::test]
    async fn a_reset_ends_a_pipe_waiting_for_its_body() {
        let (piping, _response, mut request) = piped(silent()).await;
        request.send_reset(h2::Reason::CANCEL);
        let (result, reset_by_peer) = ended(piping).await;
        assert!(result.is_err(), "{result:?}");
        assert!(
            reset_by_peer,
            "the peer's reset is told apart from a failure"
        );
    }

    #[tokio::test]
    async fn a_reset_with_no_error_ends_a_pipe_without_failing_it() {
        // RFC 9113 §8.1: the peer has all it wants and stops the rest.
        let (piping, _response, mut request) = piped(silent()).await;
        request.send_reset(h2::Reason::NO_ERROR);
        let (result, reset_by_peer) = ended(piping).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(!reset_by_peer);
    }

    #[tokio::test]
    async fn a_reset_ends_a_pipe_while_its_body_flows() {
        let (piping, response, mut request) = piped(endless()).await;
        // Some data arrives, then the client cancels; the body would go on for ever.
        let mut body = response.into_body();
        let chunk = tokio::time::timeout(PATIENCE, body.data())
            .await
            .expect("data flows")
            .expect("a chunk")
            .expect("data");
        assert!(!chunk.is_empty());
        request.send_reset(h2::Reason::CANCEL);
        let (result, reset_by_peer) = ended(piping).await;
        assert!(result.is_err(), "{result:?}");
        assert!(
            reset_by_peer,
            "a send refused after the reset is put down to the reset"
        );
    }
}
