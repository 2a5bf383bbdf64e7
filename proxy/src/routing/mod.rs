//! The outbound routing decision: original destination → service → version (by rule,
//! environment or weight) → endpoint (power of two choices) → target address and timeout.
//!
//! The [`RoutingTable`] is immutable and is part of the [`ProxyState`] behind the proxy's one
//! `ArcSwap` ([`SharedState`]): a reload builds a whole new state and swaps the pointer, so the
//! request path never takes a lock. The only shared mutable state is each endpoint's
//! in-flight counter (an atomic, in [`Counters`]).

pub mod pick;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use sluice_policy::rpc::Rpc;

use crate::config::UnknownDestinations;
use crate::metrics::TrafficLabels;
use crate::state::{ProxyState, SharedState};
pub use pick::{Counters, InFlight};
pub use table::{RoutingTable, TableError};
use table::{Rule, Service, Version};

/// Where one request or connection goes.
#[derive(Debug)]
pub struct Decision {
    /// The address to connect to.
    pub target: SocketAddr,
    /// Metric and log labels describing the choice (shared: inbound, every request has the
    /// same ones).
    pub labels: Arc<TrafficLabels>,
    /// Timeout to response headers, if the route sets one.
    pub timeout: Option<Duration>,
    /// Holds the chosen endpoint's in-flight count until the work is done.
    pub in_flight: Option<InFlight>,
}

/// Why no target could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Unknown destination and config says refuse.
    #[error("no service owns {0} and unknown destinations are refused")]
    Refused(SocketAddr),
    /// The chosen group has no endpoints.
    #[error("service `{service}` has no endpoints in `{group}`")]
    NoEndpoints {
        /// Service name.
        service: String,
        /// Version or environment name.
        group: String,
    },
}

/// Makes routing decisions against the routing table of the state in force.
#[derive(Debug)]
pub struct Router {
    state: Arc<SharedState>,
    unknown: UnknownDestinations,
    src_service: Arc<str>,
    /// The `route` label of a request no rule matched, and the empty one: made once, shared
    /// by every request's labels.
    default_route: Arc<str>,
    empty: Arc<str>,
}

impl Router {
    /// A router reading `state` on every decision; `src_service` labels outbound traffic.
    pub fn new(state: Arc<SharedState>, unknown: UnknownDestinations) -> Router {
        let src_service = state.local().service.as_str().into();
        Router {
            state,
            unknown,
            src_service,
            default_route: "default".into(),
            empty: Arc::default(),
        }
    }

    /// The state in force (for `/config` and tests).
    pub fn state(&self) -> Arc<ProxyState> {
        self.state.current()
    }

    /// Routes an HTTP request by its original destination, method, path and headers.
    pub fn route_http(
        &self,
        dst: SocketAddr,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Decision, RouteError> {
        let state = self.state.load();
        let Some(svc) = state.routing.by_addr.get(&dst) else {
            return self.unknown(dst);
        };
        // Classifying the request allocates, so only when some rule looks at the call.
        let rpc = svc.needs_rpc.then(|| {
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            Rpc::from_request(method.as_str(), path, content_type)
        });
        let rule = svc
            .rules
            .iter()
            .find(|r| rule_matches(r, rpc.as_ref(), headers));
        let requested;
        let env = match rule.and_then(|r| r.environment.as_deref()) {
            Some(e) => Some(e),
            None => {
                requested = svc.requested_environment(headers);
                requested.as_deref()
            }
        };
        let route = rule.map_or(&self.default_route, |r| &r.name);
        let timeout = rule.and_then(|r| r.timeout).or(svc.timeout);
        // An environment without a copy of this service falls back to the normal split.
        if let Some((name, copy)) = env.and_then(|e| svc.environments.get_key_value(e)) {
            return self.decide(svc, dst, copy, name, route, timeout);
        }
        let split = rule.and_then(|r| r.split.as_ref()).unwrap_or(&svc.split);
        let version = &svc.versions[pick::weighted(split, &mut rand::rng())];
        self.decide(svc, dst, version, &self.empty, route, timeout)
    }

    /// Routes an opaque TCP connection: no headers, so only the default split applies.
    pub fn route_tcp(&self, dst: SocketAddr) -> Result<Decision, RouteError> {
        let state = self.state.load();
        let Some(svc) = state.routing.by_addr.get(&dst) else {
            return self.unknown(dst);
        };
        let version = &svc.versions[pick::weighted(&svc.split, &mut rand::rng())];
        self.decide(svc, dst, version, &self.empty, &self.default_route, None)
    }

    /// Picks an endpoint of `group`. Instances register one address, for the service's first
    /// address; a call to another of the service's addresses (another port: gRPC beside HTTP)
    /// goes to the instance on the port the client dialled, as a Kubernetes Service whose
    /// ports equal its target ports.
    fn decide(
        &self,
        svc: &Service,
        dst: SocketAddr,
        group: &Version,
        environment: &Arc<str>,
        route: &Arc<str>,
        timeout: Option<Duration>,
    ) -> Result<Decision, RouteError> {
        let endpoint = pick::p2c(&group.endpoints, &mut rand::rng()).ok_or_else(|| {
            RouteError::NoEndpoints {
                service: svc.name.to_string(),
                group: group.name.to_string(),
            }
        })?;
        let target = match svc.addresses.first() {
            Some(first) if first.port() != dst.port() => {
                SocketAddr::new(endpoint.addr.ip(), dst.port())
            }
            _ => endpoint.addr,
        };
        Ok(Decision {
            target,
            labels: Arc::new(TrafficLabels {
                src_service: self.src_service.clone(),
                dst_service: svc.name.clone(),
                dst_version: group.version.clone(),
                route: route.clone(),
                environment: environment.clone(),
            }),
            timeout,
            in_flight: Some(InFlight::new(endpoint.in_flight.clone())),
        })
    }

    fn unknown(&self, dst: SocketAddr) -> Result<Decision, RouteError> {
        match self.unknown {
            UnknownDestinations::Refuse => Err(RouteError::Refused(dst)),
            UnknownDestinations::Passthrough => Ok(Decision {
                target: dst,
                labels: Arc::new(TrafficLabels {
                    src_service: self.src_service.clone(),
                    ..TrafficLabels::default()
                }),
                timeout: None,
                in_flight: None,
            }),
        }
    }
}

fn rule_matches(rule: &Rule, rpc: Option<&Rpc>, headers: &HeaderMap) -> bool {
    let rpc_matches = match (&rule.rpc, rpc) {
        (None, _) => true,
        (Some(pattern), Some(rpc)) => pattern.matches(rpc),
        (Some(_), None) => false,
    };
    rpc_matches
        && rule.headers.iter().all(|(name, want)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == want.as_bytes())
        })
        && rule.baggage.iter().all(|(key, want)| {
            pick::baggage(headers.get_all("baggage").iter(), key).as_deref() == Some(want.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Endpoints, Workload};

    /// Policy for `pay` plus endpoints: v1 on port 1, v2 on port 2, a pr-1 copy on port 3.
    pub(crate) const POLICY: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Team
metadata: { name: t }
spec: {}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: pay }
spec: { team: t, versions: [v1, v2], endpoints: [{ rpc: "POST /v1/charges" }, { rpc: "pay.v1.Pay/*" }] }
---
apiVersion: sluice.dev/v1alpha1
kind: Route
metadata: { name: pay }
spec:
  service: pay
  backends: [{ version: v1, weight: 100 }, { version: v2, weight: 0 }]
  timeout: 1s
  rules:
    - name: beta
      match: { headers: { X-Beta: "1" } }
      backends: [{ version: v2, weight: 100 }]
      timeout: 50ms
    - name: qa
      match: { baggage: { team: qa } }
      environment: pr-1
    - name: charges
      match: { rpc: "POST /v1/charges" }
      backends: [{ version: v2, weight: 100 }]
    - name: grpc
      match: { rpc: "pay.v1.Pay/Refund" }
      backends: [{ version: v2, weight: 100 }]
"#;

    pub(crate) const ENDPOINTS: &str = r#"[{"service":"pay","addresses":["10.0.0.1:80","10.0.0.1:9090"],"versions":[
        {"version":"v1","endpoints":[{"address":"127.0.0.1:1"}]},
        {"version":"v2","endpoints":[{"address":"127.0.0.1:2"}]},
        {"version":"v2","environment":"pr-1","endpoints":[{"address":"127.0.0.1:3"}]}]}]"#;

    fn shared(policy: &str) -> Arc<SharedState> {
        let shared = Arc::new(SharedState::new(Workload {
            service: "me".into(),
            ..Default::default()
        }));
        let set = sluice_policy::PolicySet::from_str("t.yaml", policy).expect("valid policy");
        let endpoints: Endpoints = serde_json::from_str(ENDPOINTS).expect("endpoints");
        let state = ProxyState::build("7".into(), set.compile(), endpoints, shared.counters())
            .expect("valid state");
        shared.store(state);
        shared
    }

    fn router() -> Router {
        Router::new(shared(POLICY), UnknownDestinations::Passthrough)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn dst() -> SocketAddr {
        "10.0.0.1:80".parse().expect("addr")
    }

    fn get(r: &Router, h: &[(&'static str, &'static str)]) -> Decision {
        r.route_http(dst(), &http::Method::GET, "/", &headers(h))
            .expect("route")
    }

    /// Endpoints change with every rollout: the in-flight counters of addresses no state
    /// lists any more are let go, except while a request to one is still in flight.
    #[test]
    fn counters_follow_the_endpoints_through_reloads() {
        let shared = shared(POLICY);
        let set = sluice_policy::PolicySet::from_str("t.yaml", POLICY).expect("valid policy");
        let reload = |rollout: u32| {
            let v2 = format!("127.1.{}.{}:2", rollout / 250, rollout % 250 + 1);
            let json = ENDPOINTS.replace("127.0.0.1:2", &v2);
            let endpoints: Endpoints = serde_json::from_str(&json).expect("endpoints");
            let state = ProxyState::build(
                rollout.to_string(),
                set.compile(),
                endpoints,
                shared.counters(),
            )
            .expect("valid state");
            shared.store(state);
            v2.parse::<std::net::SocketAddr>().expect("addr")
        };
        let first = reload(0);
        let in_flight = InFlight::new(shared.counters().get(first));
        for rollout in 1..1_000 {
            reload(rollout);
        }
        // v1, the last v2 and pr-1's, and the first v2 while its request is in flight.
        assert_eq!(shared.counters().len(), 4);
        drop(in_flight);
        reload(1_000);
        assert_eq!(shared.counters().len(), 3);
    }

    #[test]
    fn a_further_service_port_reaches_the_instance_on_that_port() {
        let r = router();
        let grpc: SocketAddr = "10.0.0.1:9090".parse().expect("addr");
        let d = r.route_tcp(grpc).expect("routed");
        assert_eq!(d.target, "127.0.0.1:9090".parse().expect("addr"));
        assert_eq!(&*d.labels.dst_service, "pay");
        // The first address keeps the registered port.
        assert_eq!(r.route_tcp(dst()).expect("routed").target.port(), 1);
    }

    #[test]
    fn default_split_rule_and_timeout() {
        let r = router();
        let d = get(&r, &[]);
        assert_eq!((d.target.port(), &*d.labels.dst_version), (1, "v1"));
        assert_eq!(d.timeout, Some(Duration::from_millis(1000)));
        let d = get(&r, &[("x-beta", "1")]);
        assert_eq!((d.target.port(), &*d.labels.route), (2, "beta"));
        assert_eq!(d.timeout, Some(Duration::from_millis(50)));
    }

    #[test]
    fn rpc_rules_match_http_and_grpc_calls() {
        let r = router();
        let post = |path: &str, ct: &'static str| {
            let h = headers(&[("content-type", ct)]);
            r.route_http(dst(), &http::Method::POST, path, &h)
                .expect("route")
        };
        let d = post("/v1/charges?x=1", "application/json");
        assert_eq!((d.target.port(), &*d.labels.route), (2, "charges"));
        let d = post("/pay.v1.Pay/Refund", "application/grpc");
        assert_eq!((d.target.port(), &*d.labels.route), (2, "grpc"));
        // Same path without the gRPC content type is an HTTP call: no rule matches.
        let d = post("/pay.v1.Pay/Refund", "application/json");
        assert_eq!((d.target.port(), &*d.labels.route), (1, "default"));
    }

    #[test]
    fn environments_by_header_baggage_and_fallback() {
        let r = router();
        let d = get(&r, &[("sluice-env", "pr-1")]);
        assert_eq!((d.target.port(), &*d.labels.environment), (3, "pr-1"));
        assert_eq!(&*d.labels.dst_version, "v2");
        let d = get(&r, &[("baggage", "a=b,sluice-env=pr-1")]);
        assert_eq!(d.target.port(), 3);
        let d = get(&r, &[("baggage", "team=qa")]);
        assert_eq!((d.target.port(), &*d.labels.route), (3, "qa"));
        // No copy in pr-9: the normal split, and the label does not echo the unknown name.
        let d = get(&r, &[("sluice-env", "pr-9")]);
        assert_eq!((d.target.port(), &*d.labels.environment), (1, ""));
    }

    #[test]
    fn no_route_means_first_version_and_default_environment_keys() {
        let policy = POLICY
            .split("---\napiVersion: sluice.dev/v1alpha1\nkind: Route")
            .next();
        let r = Router::new(
            shared(policy.expect("split")),
            UnknownDestinations::Passthrough,
        );
        for _ in 0..20 {
            let d = get(&r, &[("x-beta", "1")]);
            assert_eq!((d.target.port(), d.timeout), (1, None));
        }
        assert_eq!(get(&r, &[("sluice-env", "pr-1")]).target.port(), 3);
        assert_eq!(r.route_tcp(dst()).expect("tcp").target.port(), 1);
    }

    #[test]
    fn unknown_destinations() {
        let other: SocketAddr = "10.0.0.2:80".parse().expect("addr");
        let d = router()
            .route_http(other, &http::Method::GET, "/", &HeaderMap::new())
            .expect("passthrough");
        assert_eq!(d.target, other);
        let refuse = Router::new(shared(POLICY), UnknownDestinations::Refuse);
        assert!(matches!(
            refuse.route_tcp(other),
            Err(RouteError::Refused(_))
        ));
    }
}
