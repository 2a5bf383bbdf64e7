//! An HTTP/2 exchange with an upstream, driven by the `h2` crate from the request's own task.
//!
//! hyper's HTTP/2 client (used before) hands every request to a dispatch task through a
//! channel, which opens the stream and then spawns one task per request to wait for the
//! response (and another while a request body is still streaming), whose answer comes back
//! through a second channel: two task hops and a spawn per call, about 5% of a gRPC unary
//! call's instructions in the proxy pair (benches/README.md). Here the task serving the
//! request opens the stream itself, sends the request body while it waits for the response
//! headers, and reads the response body straight from h2. Only a request body still
//! streaming once the response has begun (client and bidirectional streams) gets a task of
//! its own, so that it keeps flowing while the response body waits for its reader.
//!
//! The HTTP semantics are h2's and hyper's: h2 encodes, decodes and validates the frames,
//! and the two adapters below follow hyper's (`PipeToSendStream` and `Incoming`'s HTTP/2
//! body), including its flow-control choices.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http_body::{Body as _, Frame, SizeHint};

use super::{Body, BoxError};

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
) -> Result<http::Response<ResponseBody>, h2::Error> {
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
    Ok(head?.map(ResponseBody::new))
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
}

impl Pipe {
    fn new(body: Body, send: SendStream<Bytes>) -> Pipe {
        Pipe {
            body,
            send,
            waiting: None,
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
                    reason => Err(h2::Error::from(reason).into()),
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

/// A response body read from its HTTP/2 stream: data as it arrives (its flow-control window
/// given back at once, the relay's own buffering bounded by its reader), then the trailers.
#[derive(Debug)]
pub struct ResponseBody {
    recv: RecvStream,
    /// The data frames have ended; trailers (or the end) come next.
    data_done: bool,
}

impl ResponseBody {
    fn new(recv: RecvStream) -> ResponseBody {
        ResponseBody {
            recv,
            data_done: false,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    // Cannot fail for a length just received on this stream.
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // A reset with NO_ERROR after the response ends it early without failing it
                // (RFC 9113 §8.1).
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
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

    /// Only the end is known: a declared `content-length` stays in the response's headers
    /// for the next hop, so nothing needs the length from here.
    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}
