//! The metrics layer: counts each request and, when its response stream ends, the response
//! with its status, gRPC status and classification.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tower::Service;

use super::{Body, BoxError, Request, RequestCtx, Response, Svc, headers};
use crate::Direction;
use crate::metrics::{Metrics, TrafficHandles, TrafficLabels};

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    pub(super) inner: S,
    /// Behind an `Arc`: the stack is cloned for every request, and `Metrics` is a dozen
    /// registry handles.
    pub(super) metrics: std::sync::Arc<Metrics>,
}

impl<S: Svc<Infallible>> Service<Request> for Observe<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = super::BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let start = Instant::now();
        let slot = req.extensions().get::<RequestCtx>().cloned();
        let direction = slot
            .as_ref()
            .map_or(Direction::Outbound, |s| s.conn().direction);
        let grpc = headers::is_grpc(req.headers());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            // Counted here rather than on arrival because the labels come from routing.
            let handles = match slot.as_ref().and_then(RequestCtx::route) {
                Some(route) => metrics.traffic(direction, &route.labels),
                None => metrics.traffic(direction, &TrafficLabels::default()),
            };
            handles.request();
            let status = rsp.status().as_u16();
            // A trailers-only gRPC response carries its status in the headers.
            let grpc_status = grpc.then(|| grpc_status(rsp.headers()));
            let recorder = Recorder {
                handles,
                status,
                grpc_status,
                latency: start.elapsed(),
            };
            Ok(rsp.map(|inner| {
                ObservedBody {
                    inner,
                    recorder: Some(recorder),
                }
                .boxed_unsync()
            }))
        })
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    // A name made once: looking up by `&str` parses and validates it on every call, twice
    // per gRPC call (head and trailers).
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    h.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

struct Recorder {
    handles: std::sync::Arc<TrafficHandles>,
    status: u16,
    grpc_status: Option<Option<u32>>,
    latency: std::time::Duration,
}

/// Watches the response stream for trailers and records the response when the stream is
/// dropped, which happens exactly once whether it ended, failed or was cancelled.
struct ObservedBody {
    inner: Body,
    recorder: Option<Recorder>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let (Some(trailers), Some(rec)) = (frame.trailers_ref(), self.recorder.as_mut())
            && let (Some(_), Some(code)) = (rec.grpc_status, grpc_status(trailers))
        {
            rec.grpc_status = Some(Some(code));
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.handles.response(r.status, r.grpc_status, r.latency);
        }
    }
}
