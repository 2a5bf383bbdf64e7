//! Assembles the per-request stack, linkerd2-proxy style: start from the innermost service
//! and `push_*` one layer per concern on top of it.

use std::convert::Infallible;
use std::sync::Arc;

use super::authz::Authz;
use super::forward::Forward;
use super::layers::{
    AccessLog, CheckPath, EnvBaggage, EnvMember, Errors, HopMarkers, LoopDetect, Route, Routes,
    Sanitize, Timeout,
};
use super::observe::Observe;
use super::{ProxyError, Svc};
use crate::authz::Authorizer;
use crate::metrics::Metrics;

/// A stack under construction; `S` is everything pushed so far.
#[derive(Clone, Debug)]
pub struct Stack<S>(S);

/// Inputs for [`Stack::build`].
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// This proxy's loop-detection id.
    pub proxy_id: Arc<str>,
    /// How targets are chosen.
    pub routes: Routes,
    /// Metrics sink.
    pub metrics: Metrics,
    /// Shared upstream connection pools.
    pub forward: Forward,
    /// Inbound authorization; `None` for the outbound stack.
    pub authorizer: Option<Arc<Authorizer>>,
    /// Outbound from an ephemeral environment's workload: its baggage member; else `None`.
    pub env_member: Option<Arc<EnvMember>>,
}

impl Stack<Forward> {
    /// The full stack for one listener direction, outermost layer last.
    pub fn build(config: StackConfig) -> impl Svc<Infallible> {
        Stack::new(config.forward)
            .push_timeout()
            .push_authz(config.authorizer)
            .push_sanitize(config.proxy_id.clone())
            .push_route(config.routes)
            .push_env_baggage(config.env_member)
            .push_check_path()
            .push_loop_detect(config.proxy_id)
            .push_errors()
            .push_access_log()
            .push_metrics(config.metrics)
            .into_inner()
    }
}

impl<S> Stack<S> {
    /// Starts from the innermost service.
    pub fn new(inner: S) -> Self {
        Stack(inner)
    }

    /// The finished service.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S: Svc<ProxyError>> Stack<S> {
    /// Per-route timeout to response headers (504).
    pub fn push_timeout(self) -> Stack<Timeout<S>> {
        Stack(Timeout { inner: self.0 })
    }

    /// Inbound authorization, after sanitizing so the identity header it adds is the only
    /// `sluice-*` header left.
    pub fn push_authz(self, authorizer: Option<Arc<Authorizer>>) -> Stack<Authz<S>> {
        Stack(Authz {
            inner: self.0,
            authorizer,
        })
    }

    /// Strips hop-by-hop and `sluice-*` headers, adds the hop marker.
    pub fn push_sanitize(self, proxy_id: Arc<str>) -> Stack<Sanitize<S>> {
        Stack(Sanitize {
            inner: self.0,
            markers: HopMarkers::new(&proxy_id),
        })
    }

    /// Chooses the target (routing table outbound, original destination inbound).
    pub fn push_route(self, routes: Routes) -> Stack<Route<S>> {
        Stack(Route {
            inner: self.0,
            routes,
        })
    }

    /// Names the workload's ephemeral environment in the request's W3C baggage when the app
    /// did not, before routing reads it, so the environment's copies are reached.
    pub fn push_env_baggage(self, member: Option<Arc<EnvMember>>) -> Stack<EnvBaggage<S>> {
        Stack(EnvBaggage {
            inner: self.0,
            member,
        })
    }

    /// Answers 400 to ambiguous paths, before anything matches on the path.
    pub fn push_check_path(self) -> Stack<CheckPath<S>> {
        Stack(CheckPath { inner: self.0 })
    }

    /// Answers 508 to requests this proxy already forwarded.
    pub fn push_loop_detect(self, proxy_id: Arc<str>) -> Stack<LoopDetect<S>> {
        Stack(LoopDetect {
            inner: self.0,
            markers: HopMarkers::new(&proxy_id),
            proxy_id,
        })
    }

    /// Maps every error to a response, in one place.
    pub fn push_errors(self) -> Stack<Errors<S>> {
        Stack(Errors { inner: self.0 })
    }
}

impl<S: Svc<Infallible>> Stack<S> {
    /// One access-log line per request.
    pub fn push_access_log(self) -> Stack<AccessLog<S>> {
        Stack(AccessLog { inner: self.0 })
    }

    /// Golden-signal metrics.
    pub fn push_metrics(self, metrics: Metrics) -> Stack<Observe<S>> {
        Stack(Observe {
            inner: self.0,
            metrics: Arc::new(metrics),
        })
    }
}
