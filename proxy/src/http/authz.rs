//! The authorization layer (inbound only): decide every request against the policy in force,
//! then either fail it with the denial (rendered by the error layer) or forward it with the
//! caller's verified identity in `sluice-client-id`.
//!
//! Non-canonical paths never get here: the check-path layer (outer) refuses them with 400
//! first, so the path decided on is byte for byte the path forwarded.
//! It sits inside the sanitize layer, so by the time it adds `sluice-client-id` every
//! `sluice-*` header the client sent is gone: the application can trust the header because
//! only this proxy can have set it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use sluice_policy::rpc::Rpc;
use tower::Service;

use super::errors::ProxyError;
use super::{BoxFuture, Request, RequestCtx, Response, Svc, conn_ctx};
use crate::authz::{self, Authorizer};

/// The header carrying the caller's verified SPIFFE ID to the application.
pub const CLIENT_ID: http::HeaderName = http::HeaderName::from_static("sluice-client-id");

/// See the module docs. Without an authorizer (outbound) it only passes requests on.
#[derive(Clone, Debug)]
pub struct Authz<S> {
    pub(super) inner: S,
    pub(super) authorizer: Option<Arc<Authorizer>>,
}

impl<S: Svc<ProxyError>> Service<Request> for Authz<S> {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(authorizer) = &self.authorizer else {
            return self.inner.call(req);
        };
        let ctx = conn_ctx(&req);
        let peer = ctx.and_then(|c| c.peer.clone());
        let port = ctx.map_or(0, |c| c.orig_dst.port());
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let rpc = Rpc::from_request(req.method().as_str(), req.uri().path(), content_type);
        let decided = authorizer.check(peer.as_deref(), &rpc, port, || authz::Asked {
            request_id: authz::request_id(req.headers()),
            environment: authorizer.requested_environment(req.headers()),
        });
        // For the access log: the call as the matcher saw it (see `AccessLog`).
        if let Some(slot) = req.extensions().get::<RequestCtx>() {
            slot.set_authorized(rpc);
        }
        if let Err(denial) = decided {
            return Box::pin(async move { Err(ProxyError::Denied(denial)) });
        }
        if let Some(v) = conn_ctx(&req).and_then(|c| c.peer_header.clone()) {
            req.headers_mut().insert(CLIENT_ID, v);
        }
        self.inner.call(req)
    }
}
