//! Response bodies relayed in as few DATA frames as the upstream allows without waiting.
//!
//! A gRPC server stream arrives as one small DATA frame per message (a 15-byte message is a
//! 24-byte frame on the wire). Relayed one for one, every frame costs the proxy a trip through
//! h2's queues on both connections — the largest share of a streaming call's CPU in the
//! profile (benches/README.md) — and every frame under 256 bytes counts against the next
//! hop's small-frame budget (h2 0.4.16+, `GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"`),
//! which a saturated receiver can exhaust, killing every stream on the connection.
//!
//! So when one chunk is ready, the chunks already behind it are taken too and sent as one,
//! up to one default-sized frame (16 KiB). Nothing ever waits for more: a chunk that is
//! alone goes out at once, so a stream's latency is unchanged. Frame boundaries carry no
//! meaning in HTTP (gRPC messages are length-prefixed), so merging is invisible to the
//! application. Chunks of 4 KiB or more are passed through uncopied: they are not where
//! the per-frame cost is.
//!
//! The ready chunks are gathered first and copied once into a buffer of exactly their total
//! size. Growing one buffer as they came cost a reallocation and a copy per doubling (3% of
//! the inbound proxy's instructions on a stream of small messages), and a merged chunk with
//! spare capacity kept it for as long as the next hop buffered the chunk: against a slow
//! reader, memory several times the bytes h2's send buffer counts.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::BoxError;

/// Most bytes merged into one chunk: HTTP/2's default largest frame.
const MAX_MERGED: usize = 16 * 1024;

/// A chunk at least this large is relayed as it is, never copied.
const MERGE_BELOW: usize = 4 * 1024;

/// Most chunks merged into one, so that the list gathered before copying stays small
/// however tiny the upstream's frames are.
const MAX_PARTS: usize = 128;

/// See the module docs.
#[derive(Debug)]
pub struct Coalesce<B> {
    inner: B,
    /// A frame taken while merging that could not join the chunk (trailers, an error, a
    /// large chunk, or one that would overflow it): where the next poll starts.
    held: Option<Result<Frame<Bytes>, BoxError>>,
    /// The inner body has ended.
    done: bool,
}

impl<B> Coalesce<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Coalesce {
            inner,
            held: None,
            done: false,
        }
    }
}

impl<B> http_body::Body for Coalesce<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let first = match this.held.take() {
            Some(frame) => frame,
            None if this.done => return Poll::Ready(None),
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => frame.map_err(Into::into),
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            },
        };
        let first = match first.map(Frame::into_data) {
            Ok(Ok(data)) if data.len() < MERGE_BELOW => data,
            Ok(Ok(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(Err(frame)) => return Poll::Ready(Some(Ok(frame))),
            Err(error) => return Poll::Ready(Some(Err(error))),
        };
        // A body that says it has ended has nothing to join (an HTTP/1.1 body read to its
        // `content-length`, an HTTP/2 one whose last DATA frame ended the stream): asking it
        // again is a wasted trip through every body under this one, on every such response.
        if this.inner.is_end_stream() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        // Nothing is copied unless a second chunk is there to join the first.
        let mut parts: Vec<Bytes> = Vec::new();
        let mut len = first.len();
        while parts.len() < MAX_PARTS {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Ready(Some(Err(error))) => {
                    this.held = Some(Err(error.into()));
                    break;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    // An empty frame adds nothing; it is not kept to be copied.
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if data.len() < MERGE_BELOW && len + data.len() <= MAX_MERGED => {
                        len += data.len();
                        parts.push(data);
                    }
                    Ok(data) => {
                        this.held = Some(Ok(Frame::data(data)));
                        break;
                    }
                    Err(frame) => {
                        this.held = Some(Ok(frame));
                        break;
                    }
                },
            }
        }
        if parts.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let mut merged = BytesMut::with_capacity(len);
        merged.extend_from_slice(&first);
        for part in &parts {
            merged.extend_from_slice(part);
        }
        Poll::Ready(Some(Ok(Frame::data(merged.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return match &self.held {
                Some(Ok(frame)) => SizeHint::with_exact(held_len(frame)),
                _ => SizeHint::with_exact(0),
            };
        }
        let mut hint = self.inner.size_hint();
        if let Some(Ok(frame)) = &self.held {
            let held = held_len(frame);
            hint.set_lower(hint.lower() + held);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + held);
            }
        }
        hint
    }
}

fn held_len(frame: &Frame<Bytes>) -> u64 {
    frame.data_ref().map_or(0, |d| d.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// What an upstream body has ready, poll by poll: `None` is "nothing yet" (pending).
    struct Script(VecDeque<Option<Result<Frame<Bytes>, BoxError>>>);

    impl http_body::Body for Script {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop_front() {
                Some(Some(frame)) => Poll::Ready(Some(frame)),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    /// One chunk, then a body that knows it has ended: hyper's HTTP/1.1 body once its
    /// `content-length` is read. Polling it again is a bug of the caller's.
    struct Sized(Option<Bytes>);

    impl http_body::Body for Sized {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let chunk = self
                .0
                .take()
                .expect("polled again after it said it had ended");
            Poll::Ready(Some(Ok(Frame::data(chunk))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    #[tokio::test]
    async fn a_body_that_has_ended_is_not_asked_again() {
        let mut body = Coalesce::new(Sized(Some(Bytes::from_static(b"hello"))));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            frame.into_data().expect("data"),
            Bytes::from_static(b"hello")
        );
        assert!(body.is_end_stream(), "hyper ends the response here");
        assert!(body.frame().await.is_none());
    }

    fn data(n: usize, byte: u8) -> Option<Result<Frame<Bytes>, BoxError>> {
        Some(Ok(Frame::data(Bytes::from(vec![byte; n]))))
    }

    async fn frames(body: &mut Coalesce<Script>) -> Vec<Frame<Bytes>> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.push(frame.expect("frame"));
        }
        out
    }

    /// The length of each frame, all of them data.
    fn sizes(out: &[Frame<Bytes>]) -> Vec<usize> {
        out.iter()
            .map(|f| f.data_ref().expect("data").len())
            .collect()
    }

    #[tokio::test]
    async fn a_burst_of_small_messages_goes_out_as_one_chunk_then_the_trailers() {
        let mut input: VecDeque<_> = (0..100).map(|i| data(15, i as u8)).collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        input.push_back(Some(Ok(Frame::trailers(trailers))));
        let out = frames(&mut Coalesce::new(Script(input))).await;
        assert_eq!(out.len(), 2, "{out:?}");
        let bytes = out[0].data_ref().expect("data");
        assert_eq!(bytes.len(), 1500);
        // In order: each message's 15 bytes together.
        assert!(
            bytes
                .chunks(15)
                .enumerate()
                .all(|(i, c)| c.iter().all(|b| usize::from(*b) == i))
        );
        assert_eq!(out[1].trailers_ref().expect("trailers")["grpc-status"], "0");
        // The merged chunk holds no spare capacity for the next hop to keep alive.
        let merged = out
            .into_iter()
            .next()
            .expect("data")
            .into_data()
            .expect("data");
        let merged = merged
            .try_into_mut()
            .expect("the only handle on its buffer");
        assert_eq!(merged.capacity(), 1500);
    }

    #[tokio::test]
    async fn tiny_and_empty_frames_are_merged_in_bounded_steps() {
        // An upstream sending one-byte frames, with empty ones between them.
        let input: VecDeque<_> = (0..300)
            .flat_map(|i| [data(1, i as u8), data(0, 0)])
            .collect();
        let out = frames(&mut Coalesce::new(Script(input))).await;
        // The first chunk and MAX_PARTS more at most per merged chunk (the second and third
        // start from an empty frame).
        assert_eq!(sizes(&out), [129, 128, 43]);
    }

    #[tokio::test]
    async fn merged_chunks_stay_within_one_frame_and_large_chunks_are_not_copied() {
        let big = Bytes::from(vec![7u8; 8 * 1024]);
        let input: VecDeque<_> = (0..40)
            .map(|_| data(1000, 1))
            .chain([Some(Ok(Frame::data(big.clone())))])
            .collect();
        let out = frames(&mut Coalesce::new(Script(input))).await;
        assert_eq!(sizes(&out), [16_000, 16_000, 8_000, 8 * 1024]);
        assert_eq!(out.len(), 4);
        // The large chunk is the very buffer the upstream gave.
        assert_eq!(out[3].data_ref().expect("data").as_ptr(), big.as_ptr());
    }

    #[tokio::test]
    async fn what_is_ready_goes_out_without_waiting_for_more() {
        let input = VecDeque::from([data(10, 1), data(10, 2), None, data(5, 3)]);
        let mut body = Coalesce::new(Script(input));
        // The two ready chunks at once, though the stream has not ended.
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.data_ref().expect("data").len(), 20);
        assert!(!body.is_end_stream());
        let second = body.frame().await.expect("frame").expect("data");
        assert_eq!(second.data_ref().expect("data").as_ref(), [3u8; 5]);
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn an_error_after_merged_chunks_is_still_reported() {
        let input = VecDeque::from([
            Some(Ok(Frame::data(Bytes::from_static(b"abc")))),
            Some(Ok(Frame::data(Bytes::from_static(b"def")))),
            Some(Err(BoxError::from("upstream reset"))),
        ]);
        let mut body = Coalesce::new(Script(input));
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.data_ref().expect("data").as_ref(), b"abcdef");
        let error = body.frame().await.expect("frame").expect_err("error");
        assert_eq!(error.to_string(), "upstream reset");
    }

    #[test]
    fn the_size_hint_is_the_inner_bodys_until_a_chunk_is_held() {
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
        assert_eq!(Coalesce::new(body).size_hint().exact(), Some(5));
    }
}
