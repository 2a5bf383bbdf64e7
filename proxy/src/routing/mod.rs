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
    /// Metric and log labels describing the choice.
    pub labels: TrafficLabels,
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
    src_service: String,
}

impl Router {
    /// A router reading `state` on every decision; `src_service` labels outbound traffic.
    pub fn new(state: Arc<SharedState>, unknown: UnknownDestinations) -> Router {
        let src_service = state.local().service.clone();
        Router {
            state,
            unknown,
            src_service,
        }
    }

    /// The state in force (for `/config` and tests).
    pub fn state(&self) -> Arc<ProxyState> {
        self.state.current()
    }

    /// Routes an HTTP request by its original destination and headers.
    pub fn route_http(&self, dst: SocketAddr, headers: &HeaderMap) -> Result<Decision, RouteError> {
        let state = self.state.load();
        let Some(svc) = state.routing.by_addr.get(&dst) else {
            return self.unknown(dst);
        };
        let rule = svc.rules.iter().find(|r| rule_matches(r, headers));
        let env = rule
            .and_then(|r| r.environment.clone())
            .or_else(|| {
                let h = svc.environment_header.as_ref()?;
                headers.get(h)?.to_str().ok().map(str::to_owned)
            })
            .or_else(|| pick::baggage(headers.get_all("baggage").iter(), &svc.environment_baggage));
        let route = rule.map_or("default", |r| &r.name);
        let timeout = rule.and_then(|r| r.timeout).or(svc.timeout);
        // An environment without a copy of this service falls back to the normal split.
        if let Some((name, copy)) = env.and_then(|e| svc.environments.get_key_value(&e)) {
            return self.decide(svc, copy, "", name, route, timeout);
        }
        let split = rule.and_then(|r| r.split.as_ref()).unwrap_or(&svc.split);
        let version = &svc.versions[pick::weighted(split, &mut rand::rng())];
        self.decide(svc, version, &version.name, "", route, timeout)
    }

    /// Routes an opaque TCP connection: no headers, so only the default split applies.
    pub fn route_tcp(&self, dst: SocketAddr) -> Result<Decision, RouteError> {
        let state = self.state.load();
        let Some(svc) = state.routing.by_addr.get(&dst) else {
            return self.unknown(dst);
        };
        let version = &svc.versions[pick::weighted(&svc.split, &mut rand::rng())];
        self.decide(svc, version, &version.name, "", "default", None)
    }

    fn decide(
        &self,
        svc: &Service,
        group: &Version,
        version: &str,
        environment: &str,
        route: &str,
        timeout: Option<Duration>,
    ) -> Result<Decision, RouteError> {
        let endpoint = pick::p2c(&group.endpoints, &mut rand::rng()).ok_or_else(|| {
            RouteError::NoEndpoints {
                service: svc.name.to_string(),
                group: group.name.to_string(),
            }
        })?;
        Ok(Decision {
            target: endpoint.addr,
            labels: TrafficLabels {
                src_service: self.src_service.clone(),
                dst_service: svc.name.to_string(),
                dst_version: version.to_owned(),
                route: route.to_owned(),
                environment: environment.to_owned(),
            },
            timeout,
            in_flight: Some(InFlight::new(endpoint.in_flight.clone())),
        })
    }

    fn unknown(&self, dst: SocketAddr) -> Result<Decision, RouteError> {
        match self.unknown {
            UnknownDestinations::Refuse => Err(RouteError::Refused(dst)),
            UnknownDestinations::Passthrough => Ok(Decision {
                target: dst,
                labels: TrafficLabels {
                    src_service: self.src_service.clone(),
                    ..TrafficLabels::default()
                },
                timeout: None,
                in_flight: None,
            }),
        }
    }
}

fn rule_matches(rule: &Rule, headers: &HeaderMap) -> bool {
    rule.headers.iter().all(|(name, want)| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == want.as_bytes())
    }) && rule.baggage.iter().all(|(key, want)| {
        pick::baggage(headers.get_all("baggage").iter(), key).as_deref() == Some(want.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOT: &str = r#"{"version":"7","services":[{"name":"pay","addresses":["10.0.0.1:80"],
        "timeout_ms": 1000,
        "versions":[{"name":"v1","weight":1,"endpoints":["127.0.0.1:1"]},
                    {"name":"v2","weight":0,"endpoints":["127.0.0.1:2"]}],
        "environments":{"pr-1":["127.0.0.1:3"]},
        "rules":[{"name":"beta","match":{"headers":{"x-beta":"1"}},
                  "backends":[{"version":"v2","weight":1}],"timeout_ms":50},
                 {"name":"qa","match":{"baggage":{"team":"qa"}},"environment":"pr-1"}]}]}"#;

    fn shared() -> Arc<SharedState> {
        let shared = Arc::new(SharedState::new(crate::state::Workload {
            service: "me".into(),
            ..Default::default()
        }));
        let routing =
            RoutingTable::from_json(SNAPSHOT.as_bytes(), shared.counters()).expect("valid");
        shared.store(ProxyState {
            routing,
            ..ProxyState::empty()
        });
        shared
    }

    fn router() -> Router {
        Router::new(shared(), UnknownDestinations::Passthrough)
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

    #[test]
    fn default_split_rule_and_timeout() {
        let r = router();
        let d = r.route_http(dst(), &HeaderMap::new()).expect("route");
        assert_eq!((d.target.port(), d.labels.dst_version.as_str()), (1, "v1"));
        assert_eq!(d.timeout, Some(Duration::from_millis(1000)));
        let d = r
            .route_http(dst(), &headers(&[("x-beta", "1")]))
            .expect("route");
        assert_eq!((d.target.port(), d.labels.route.as_str()), (2, "beta"));
        assert_eq!(d.timeout, Some(Duration::from_millis(50)));
    }

    #[test]
    fn environments_by_header_baggage_and_fallback() {
        let r = router();
        let d = r
            .route_http(dst(), &headers(&[("sluice-env", "pr-1")]))
            .expect("route");
        assert_eq!(
            (d.target.port(), d.labels.environment.as_str()),
            (3, "pr-1")
        );
        let d = r
            .route_http(dst(), &headers(&[("baggage", "a=b,sluice-env=pr-1")]))
            .expect("route");
        assert_eq!(d.target.port(), 3);
        let d = r
            .route_http(dst(), &headers(&[("baggage", "team=qa")]))
            .expect("route");
        assert_eq!((d.target.port(), d.labels.route.as_str()), (3, "qa"));
        // No copy in pr-9: the normal split, and the label does not echo the unknown name.
        let d = r
            .route_http(dst(), &headers(&[("sluice-env", "pr-9")]))
            .expect("route");
        assert_eq!((d.target.port(), d.labels.environment.as_str()), (1, ""));
    }

    #[test]
    fn unknown_destinations() {
        let other: SocketAddr = "10.0.0.2:80".parse().expect("addr");
        let d = router()
            .route_http(other, &HeaderMap::new())
            .expect("passthrough");
        assert_eq!(d.target, other);
        let refuse = Router::new(shared(), UnknownDestinations::Refuse);
        assert!(matches!(
            refuse.route_tcp(other),
            Err(RouteError::Refused(_))
        ));
    }
}
