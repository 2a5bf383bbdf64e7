//! The per-request layers between hyper and the forwarder, outermost first in
//! [`super::stack::Stack::build`]. Each one is a small `tower::Service` wrapper.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderValue;
use tower::Service;

use super::errors::{self, LoopDetected, ProxyError, Refused, RequestTimeout};
use super::forward::Target;
use super::headers;
use super::{BoxFuture, ConnCtx, Request, RequestCtx, Response, RouteInfo, Svc, conn_ctx};
use crate::Direction;
use crate::metrics::TrafficLabels;
use crate::routing::Router;
use sluice_policy::rpc::{Rpc, normalize_path};

/// Every layer is always ready; see [`Svc`].
macro_rules! always_ready {
    ($err:ty) => {
        type Response = Response;
        type Error = $err;
        type Future = BoxFuture<Result<Response, $err>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), $err>> {
            Poll::Ready(Ok(()))
        }
    };
}

/// Turns every [`ProxyError`] into a response via [`errors::to_response`], so layers above
/// this one (metrics, logs) see failures as ordinary responses.
#[derive(Clone, Debug)]
pub struct Errors<S> {
    pub(super) inner: S,
}

impl<S: Svc<ProxyError>> Service<Request> for Errors<S> {
    always_ready!(Infallible);

    fn call(&mut self, req: Request) -> Self::Future {
        let grpc = headers::is_grpc(req.headers());
        // Kept as the header (a reference count), read only if the request fails.
        let accept = req.headers().get(http::header::ACCEPT).cloned();
        let direction = conn_ctx(&req).map(|c| c.direction);
        let fut = self.inner.call(req);
        Box::pin(async move {
            Ok(fut.await.unwrap_or_else(|error| {
                tracing::debug!(?direction, %error, "request failed in proxy");
                let accept = accept.as_ref().and_then(|v| v.to_str().ok());
                errors::to_response(&error, grpc, accept)
            }))
        })
    }
}

/// One access-log line per request, at response headers, on target `sluice_proxy::access`
/// (tracing's filter decides; [`super::access`] writes it). The path is logged without its
/// query string, which often carries secrets.
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    pub(super) inner: S,
}

impl<S: Svc<Infallible>> Service<Request> for AccessLog<S> {
    always_ready!(Infallible);

    fn call(&mut self, req: Request) -> Self::Future {
        // Everything below is copied out of the request for the log line only; when the line
        // is filtered out (the default outside debugging is `info`, benchmarks and busy
        // production sidecars run `warn`), none of it is worth its allocations.
        if !tracing::enabled!(target: super::access::TARGET, tracing::Level::INFO) {
            return self.inner.call(req);
        }
        let start = Instant::now();
        let slot = req.extensions().get::<RequestCtx>().cloned();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let version = req.version();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)?
                    .to_str()
                    .ok()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            let ctx = slot.as_ref().map(RequestCtx::conn);
            let (client, orig_dst) = ctx.map_or(("", ""), ConnCtx::logged_addrs);
            let route = slot.as_ref().and_then(RequestCtx::route);
            let labels = route.map(|r| &r.labels);
            // The path as the access matcher read it (its segments, normalised), so what was
            // authorized can be compared with what was forwarded (`path`).
            let authz_path = match slot.as_ref().and_then(RequestCtx::authorized) {
                Some(Rpc::Http { path, .. }) => normalize_path(path),
                _ => String::new(),
            };
            super::access::Line {
                direction: ctx.map_or("", |c| c.direction.as_str()),
                client,
                orig_dst,
                target: route.map(|r| r.target),
                method: method.as_str(),
                authority: &authority,
                path: &path,
                authz_path: &authz_path,
                version,
                status: rsp.status().as_u16(),
                latency_ms: start.elapsed().as_secs_f64() * 1000.0,
                dst_service: labels.map_or("", |l| &*l.dst_service),
                dst_version: labels.map_or("", |l| &*l.dst_version),
                route: labels.map_or("", |l| &*l.route),
                environment: labels.map_or("", |l| &*l.environment),
                error: rsp
                    .headers()
                    .get("sluice-proxy-error")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            }
            .write();
            Ok(rsp)
        })
    }
}

/// Rejects a request that this proxy already forwarded in the same direction (e.g. the
/// original destination is the proxy itself), answering 508 instead of recursing until file
/// descriptors run out.
#[derive(Clone, Debug)]
pub struct LoopDetect<S> {
    pub(super) inner: S,
    pub(super) proxy_id: Arc<str>,
    pub(super) markers: HopMarkers,
}

impl<S: Svc<ProxyError>> Service<Request> for LoopDetect<S> {
    always_ready!(ProxyError);

    fn call(&mut self, req: Request) -> Self::Future {
        let direction = conn_ctx(&req).map(|c| c.direction);
        if let Some(marker) = direction.and_then(|d| self.markers.get(d))
            && headers::has_hop(req.headers(), marker)
        {
            let err = LoopDetected(self.proxy_id.to_string());
            return Box::pin(async move { Err(err.into()) });
        }
        self.inner.call(req)
    }
}

/// The loop-detection marker this proxy adds in `direction`.
pub fn hop_marker(proxy_id: &str, direction: Direction) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{proxy_id};{direction}")).ok()
}

/// This proxy's two hop markers, made once: every request is checked for one and gets one,
/// and a clone of a made value is a reference count, where making it is a `format!`.
#[derive(Clone, Debug)]
pub struct HopMarkers {
    inbound: Option<HeaderValue>,
    outbound: Option<HeaderValue>,
}

impl HopMarkers {
    /// The markers of the proxy `proxy_id`.
    pub fn new(proxy_id: &str) -> HopMarkers {
        HopMarkers {
            inbound: hop_marker(proxy_id, Direction::Inbound),
            outbound: hop_marker(proxy_id, Direction::Outbound),
        }
    }

    /// The marker for `direction`.
    pub fn get(&self, direction: Direction) -> Option<&HeaderValue> {
        match direction {
            Direction::Inbound => self.inbound.as_ref(),
            Direction::Outbound => self.outbound.as_ref(),
        }
    }
}

/// How requests get their target.
#[derive(Clone, Debug)]
pub enum Routes {
    /// To the local workload at the original destination, with these labels.
    Inbound(Arc<TrafficLabels>),
    /// Through the routing table.
    Outbound(Arc<Router>),
}

/// Decides where the request goes and records it for the forwarder ([`Target`]) and for the
/// outer layers ([`RequestCtx`]). Runs before [`Sanitize`] because routing may read
/// mesh-owned headers (the environment header) that sanitizing removes.
#[derive(Clone, Debug)]
pub struct Route<S> {
    pub(super) inner: S,
    pub(super) routes: Routes,
}

impl<S: Svc<ProxyError>> Service<Request> for Route<S> {
    always_ready!(ProxyError);

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(dst) = conn_ctx(&req).map(|c| c.orig_dst) else {
            let err = errors::ForwardError::Internal("request without connection context");
            return Box::pin(async move { Err(err.into()) });
        };
        let outbound = matches!(self.routes, Routes::Outbound(_));
        let decision = match &self.routes {
            Routes::Inbound(labels) => crate::routing::Decision {
                target: dst,
                labels: labels.clone(),
                timeout: None,
                in_flight: None,
            },
            Routes::Outbound(router) => {
                match router.route_http(dst, req.method(), req.uri().path(), req.headers()) {
                    Ok(d) => d,
                    Err(e) => return Box::pin(async move { Err(e.into()) }),
                }
            }
        };
        // Outbound to a known service: the forwarder originates mTLS and expects that
        // service's identity. Inbound goes to the local app in plaintext.
        let mesh_service = (outbound && !decision.labels.dst_service.is_empty())
            .then(|| decision.labels.dst_service.clone());
        // `serve` gives every request its context; without one there is nowhere to put the
        // decision, and the forwarder answers "no routing decision".
        if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
            ctx.set_route(RouteInfo {
                labels: decision.labels,
                target: decision.target,
            });
            ctx.set_target(Target {
                addr: decision.target,
                timeout: decision.timeout,
                in_flight: decision.in_flight.map(Arc::new),
                mesh_service,
            });
        }
        self.inner.call(req)
    }
}

/// Refuses requests whose target the proxy and the application could read differently, in
/// both directions, before anything matches on the path (routing rules outbound, access rules
/// inbound), so that the path that is authorized is byte for byte the path that is forwarded:
///
/// - a path that is not canonical ([`sluice_policy::rpc::check_request_path`]: dot segments,
///   `//`, encoded separators, asterisk-form `OPTIONS *`): 400, with the canonical form;
/// - HTTP/1 absolute-form (`GET http://host/path`): 400; the `Host` header and the target's
///   authority could disagree, and a sidecar is not a forward proxy;
/// - `CONNECT` (authority-form): 405; the proxy is no tunnel, opaque TCP has its own grant.
///
/// The canonical case costs one pass over the path and no allocation.
#[derive(Clone, Debug)]
pub struct CheckPath<S> {
    pub(super) inner: S,
}

impl<S: Svc<ProxyError>> Service<Request> for CheckPath<S> {
    always_ready!(ProxyError);

    fn call(&mut self, req: Request) -> Self::Future {
        if let Err(e) = check_target(&req) {
            return Box::pin(async move { Err(e) });
        }
        self.inner.call(req)
    }
}

fn check_target(req: &Request) -> Result<(), ProxyError> {
    if req.method() == http::Method::CONNECT {
        return Err(Refused::Connect.into());
    }
    // HTTP/2 always carries `:scheme` and `:authority`; on HTTP/1 only absolute-form does.
    if req.version() < http::Version::HTTP_2 && req.uri().scheme().is_some() {
        return Err(Refused::AbsoluteForm(req.uri().to_string()).into());
    }
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    sluice_policy::rpc::check_request_path(target)?;
    Ok(())
}

/// Header hygiene: drops `Upgrade: h2c`, hop-by-hop headers and every `sluice-*` header (and
/// trailer) the client sent, then adds this proxy's hop marker.
#[derive(Clone, Debug)]
pub struct Sanitize<S> {
    pub(super) inner: S,
    pub(super) markers: HopMarkers,
}

impl<S: Svc<ProxyError>> Service<Request> for Sanitize<S> {
    always_ready!(ProxyError);

    fn call(&mut self, mut req: Request) -> Self::Future {
        let direction = conn_ctx(&req).map(|c| c.direction);
        let h = req.headers_mut();
        // Before anything else: an h2c upgrade would hand the connection to HTTP/2 streams
        // this proxy never sees, so it is removed and the request goes on as HTTP/1.1.
        headers::sanitize_request(h);
        if let Some(marker) = direction.and_then(|d| self.markers.get(d)) {
            h.insert(headers::HOP_HEADER, marker.clone());
        }
        // Trailers are headers too. A body that has ended cannot carry any, so the common
        // bodiless request pays nothing.
        if !http_body::Body::is_end_stream(req.body()) {
            req = req.map(|body| {
                http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_frame(
                    body,
                    |mut frame| {
                        if let Some(trailers) = frame.trailers_mut() {
                            headers::strip_mesh_headers(trailers);
                        }
                        frame
                    },
                ))
            });
        }
        self.inner.call(req)
    }
}

/// Fails the request with 504 when the route's timeout passes before response headers.
/// Bodies are not limited: long streams (gRPC streaming, downloads) are legitimate.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    pub(super) inner: S,
}

impl<S: Svc<ProxyError>> Service<Request> for Timeout<S> {
    always_ready!(ProxyError);

    fn call(&mut self, req: Request) -> Self::Future {
        let timeout = req
            .extensions()
            .get::<RequestCtx>()
            .and_then(RequestCtx::target)
            .and_then(|t| t.timeout);
        let fut = self.inner.call(req);
        match timeout {
            None => fut,
            Some(t) => Box::pin(async move {
                tokio::time::timeout(t, fut)
                    .await
                    .unwrap_or_else(|_| Err(RequestTimeout(t).into()))
            }),
        }
    }
}

/// Outbound from a workload in an ephemeral environment: adds the W3C baggage member
/// `sluice-env=<environment>` when the request has none, so that the environment's copies are
/// reached without help from the application (routing, the next layer in, reads it; the
/// callee's app may forward it). The member is appended to the first `baggage` field, or sent
/// as the only one: every member the application set stays byte for byte
/// ([`sluice_policy::baggage`]), an existing `sluice-env` member is never overwritten or
/// duplicated. `member` is `None` in `stable`, where the layer only passes requests on.
///
/// Cost: a scan of the `baggage` fields, no allocation, when the member is there; one
/// allocation (the merged field) when it is added to existing baggage; none otherwise.
#[derive(Clone, Debug)]
pub struct EnvBaggage<S> {
    pub(super) inner: S,
    pub(super) member: Option<Arc<EnvMember>>,
}

/// `baggage` (W3C): no constant in `http`.
const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");

/// The environment's name and its ready-made field value `sluice-env=<name>`.
#[derive(Clone, Debug)]
pub struct EnvMember {
    name: Arc<str>,
    field: HeaderValue,
}

impl EnvMember {
    /// The member for a workload in `environment`; `None` for `stable` or a name that is not
    /// a header-safe token.
    pub fn new(environment: &str) -> Option<EnvMember> {
        use sluice_policy::baggage::{ENVIRONMENT_MEMBER, with_member};
        if environment == crate::state::endpoints::STABLE || environment.is_empty() {
            return None;
        }
        let field = HeaderValue::from_maybe_shared(bytes::Bytes::from(with_member(
            None,
            ENVIRONMENT_MEMBER,
            environment,
        )))
        .ok()?;
        Some(EnvMember {
            name: environment.into(),
            field,
        })
    }
}

impl<S: Svc<ProxyError>> Service<Request> for EnvBaggage<S> {
    always_ready!(ProxyError);

    fn call(&mut self, mut req: Request) -> Self::Future {
        use sluice_policy::baggage::{ENVIRONMENT_MEMBER, has_member, with_member};
        if let Some(m) = &self.member {
            let h = req.headers_mut();
            let fields = h.get_all(BAGGAGE);
            if !has_member(fields.iter().map(HeaderValue::as_bytes), ENVIRONMENT_MEMBER) {
                match h.get_mut(BAGGAGE) {
                    None => {
                        h.insert(BAGGAGE, m.field.clone());
                    }
                    Some(first) => {
                        let merged =
                            with_member(Some(first.as_bytes()), ENVIRONMENT_MEMBER, &m.name);
                        // The existing field is a valid header value and the member is one
                        // too, so the merge is; if not, the field is left as it was.
                        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(merged)) {
                            *first = v;
                        }
                    }
                }
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// An inner service that answers with the `baggage` fields it received, one per line.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request> for Echo {
        always_ready!(ProxyError);

        fn call(&mut self, req: Request) -> Self::Future {
            let seen: Vec<u8> = req
                .headers()
                .get_all("baggage")
                .iter()
                .flat_map(|v| v.as_bytes().iter().copied().chain([b'\n']))
                .collect();
            Box::pin(async move {
                Ok(http::Response::new(
                    http_body_util::Full::new(bytes::Bytes::from(seen))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                ))
            })
        }
    }

    async fn sent(environment: &str, fields: &[&[u8]]) -> Vec<u8> {
        let mut req = http::Request::new(
            http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        for f in fields {
            req.headers_mut().append(
                "baggage",
                HeaderValue::from_bytes(f).expect("a valid field"),
            );
        }
        let mut layer = EnvBaggage {
            inner: Echo,
            member: EnvMember::new(environment).map(Arc::new),
        };
        let rsp = layer.call(req).await.expect("answered");
        rsp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn an_environments_member_is_added_once_and_nothing_else_changes() {
        // No baggage: the member alone.
        assert_eq!(sent("pr-1", &[]).await, b"sluice-env=pr-1\n");
        // The app's members stay byte for byte, ours is appended to the first field.
        assert_eq!(
            sent("pr-1", &[b"userId=al%20ice ;p=1,  theme=dark", b"k=v"]).await,
            b"userId=al%20ice ;p=1,  theme=dark,sluice-env=pr-1\nk=v\n"
        );
        // Already named (another environment, another field): left exactly as it was.
        assert_eq!(
            sent("pr-1", &[b"a=1", b" sluice-env = pr-2;x"]).await,
            b"a=1\n sluice-env = pr-2;x\n"
        );
        // Stable adds nothing.
        assert_eq!(sent("stable", &[b"a=1"]).await, b"a=1\n");
        assert_eq!(sent("stable", &[]).await, b"");
    }
}
