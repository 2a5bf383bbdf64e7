//! The compiled, immutable [`RoutingTable`]: the policy's `Route`s and `MeshService`s joined
//! with where services run ([`Endpoints`]).
//!
//! For each service that has addresses in the endpoints and is declared in policy:
//!
//! * **Versions** are the service's declared `spec.versions`, each with its instances in the
//!   `stable` environment. A service that declares no versions has one unnamed group holding
//!   all its stable instances.
//! * **Default split**: the Route's `backends` with their weights as written (picked by exact
//!   integer draws, see [`super::pick::weighted`]), or 100% to the first declared version when
//!   there is no Route.
//! * **Rules**, tried in order: all of `match.rpc` (same notation as AccessPolicy `allow`),
//!   `match.headers` and `match.baggage` must hold. The first that matches replaces the split
//!   with its `backends`, prefers its `environment`, and may set its own timeout.
//! * **Environments**: the instances in each non-stable environment form that environment's
//!   copy. A request names an environment through the Route's `environments.header` or
//!   `.baggage` member (both `sluice-env` by default, also for services without a Route), or
//!   a rule names one. With a copy, the request goes there; without one it falls back to the
//!   rule's backends or the default split.
//! * **Timeout**: the rule's, else the Route's, else none.
//!
//! Endpoints lag policy during a rollout (a Route may give 5% to a `v2` whose instances are
//! not up yet), so a version without instances is dropped from a split, with a warning in
//! `/config`, instead of refusing the whole config; a split with nothing left keeps its
//! versions and those requests get 503 `no-endpoints`. Refused outright (the old state stays):
//! an address claimed by two services, or a header name HTTP cannot carry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use sluice_policy::Snapshot;
use sluice_policy::resources::{Backend, EnvironmentRouting, RouteSpec};
use sluice_policy::rpc::RpcPattern;
use sluice_policy::snapshot::ServiceInfo;

use super::pick::Counters;
use crate::state::endpoints::{Endpoints, STABLE, ServiceEndpoints};

/// Why policy and endpoints do not make a routing table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Two services claim the same address, so traffic to it has no single owner.
    #[error("address {addr} belongs to both `{first}` and `{second}`")]
    DuplicateAddress {
        /// The address.
        addr: SocketAddr,
        /// The service that claimed it first.
        first: String,
        /// The other one.
        second: String,
    },
    /// A Route names something the proxy cannot act on.
    #[error("Route for `{service}`: {reason}")]
    Invalid {
        /// The service.
        service: String,
        /// What is wrong.
        reason: String,
    },
}

/// An endpoint with its shared in-flight counter (power-of-two-choices reads it).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Requests or connections currently outstanding to `addr`, shared across tables.
    pub in_flight: Arc<AtomicUsize>,
}

/// A named group of endpoints: one version, one role of a version (a rollout's fresh baseline
/// copy), or one environment's copy.
#[derive(Clone, Debug)]
pub struct Version {
    /// The version name, or the environment name for a copy.
    pub name: Arc<str>,
    /// Empty, or the role of the version's instances in this group (`baseline`).
    pub role: Arc<str>,
    /// The `dst_version` label: the version, or for a copy the version its instances run
    /// (empty if they run several).
    pub version: Arc<str>,
    /// Its endpoints (may be empty: requests routed here get 503).
    pub endpoints: Vec<Endpoint>,
}

/// A weighted split over versions (indices into [`Service::versions`]); weights sum > 0.
#[derive(Clone, Debug)]
pub struct Split(pub Vec<(usize, u32)>);

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `route` label: the rule's name, or `rules[N]`.
    pub name: Arc<str>,
    /// The endpoint pattern the request must match.
    pub rpc: Option<RpcPattern>,
    /// Lowercased header name → exact value.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Baggage member → exact value.
    pub baggage: Vec<(String, String)>,
    /// Replacement split, if the rule has backends.
    pub split: Option<Split>,
    /// Environment to prefer.
    pub environment: Option<String>,
    /// Timeout override.
    pub timeout: Option<Duration>,
}

/// A compiled service.
#[derive(Clone, Debug)]
pub struct Service {
    /// `name` or `namespace/name`.
    pub name: Arc<str>,
    /// The addresses clients dial.
    pub addresses: Vec<SocketAddr>,
    /// All declared versions, in declaration order.
    pub versions: Vec<Version>,
    /// The default split.
    pub split: Split,
    /// Environment copies by environment name.
    pub environments: HashMap<Arc<str>, Version>,
    /// Header naming the environment.
    pub environment_header: Option<http::HeaderName>,
    /// Baggage member naming the environment.
    pub environment_baggage: String,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Whether any rule matches on `rpc` (only then is the request classified).
    pub needs_rpc: bool,
    /// Default timeout.
    pub timeout: Option<Duration>,
}

impl Service {
    /// The environment a request names by this service's Route (what the router sends to an
    /// environment's copy, and what a denial names): see [`requested_environment`].
    pub fn requested_environment(&self, headers: &http::HeaderMap) -> Option<String> {
        requested_environment(
            headers,
            self.environment_header.as_ref(),
            &self.environment_baggage,
        )
    }
}

/// The environment `headers` name: `header` first, then the `baggage` member.
pub fn requested_environment(
    headers: &http::HeaderMap,
    header: Option<&http::HeaderName>,
    baggage: &str,
) -> Option<String> {
    header
        .and_then(|h| headers.get(h)?.to_str().ok().map(str::to_owned))
        .or_else(|| super::pick::baggage(headers.get_all("baggage").iter(), baggage))
}

/// The immutable table the router reads; part of each [`crate::state::ProxyState`].
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Services in policy order.
    pub services: Vec<Arc<Service>>,
    /// Original destination → service.
    pub by_addr: HashMap<SocketAddr, Arc<Service>>,
    /// Things that were skipped rather than refused (shown by `/config`, logged on load).
    pub warnings: Vec<String>,
}

impl RoutingTable {
    /// Compiles the routes of `policy` against `endpoints`. `counters` hands out each
    /// endpoint's in-flight counter so load survives reloads.
    pub fn compile(
        policy: &Snapshot,
        endpoints: &Endpoints,
        counters: &Counters,
    ) -> Result<RoutingTable, TableError> {
        let mut table = RoutingTable::default();
        let mut owner: HashMap<SocketAddr, Arc<str>> = HashMap::new();
        for eps in &endpoints.0 {
            let Some(info) = policy.service(&eps.namespace, &eps.service) else {
                table.warnings.push(format!(
                    "endpoints for `{}/{}`, which no MeshService declares, are not routed",
                    eps.namespace, eps.service
                ));
                continue;
            };
            let route = policy.routes().get(&info.name).map(|r| &r.doc.spec);
            let svc = Arc::new(compile_service(info, route, eps, counters, &mut table)?);
            for &addr in &svc.addresses {
                if let Some(first) = owner.insert(addr, svc.name.clone()) {
                    return Err(TableError::DuplicateAddress {
                        addr,
                        first: first.to_string(),
                        second: svc.name.to_string(),
                    });
                }
                table.by_addr.insert(addr, svc.clone());
            }
            table.services.push(svc);
        }
        Ok(table)
    }
}

fn compile_service(
    info: &ServiceInfo,
    route: Option<&RouteSpec>,
    eps: &ServiceEndpoints,
    counters: &Counters,
    table: &mut RoutingTable,
) -> Result<Service, TableError> {
    let name: Arc<str> = info.name.to_string().into();
    let group = |name: &str, version: &str, addrs: Vec<SocketAddr>| Version {
        name: name.into(),
        role: "".into(),
        version: version.into(),
        endpoints: addrs
            .into_iter()
            .map(|addr| Endpoint {
                addr,
                in_flight: counters.get(addr),
            })
            .collect(),
    };
    let mut versions: Vec<Version> = if info.versions.is_empty() {
        vec![group("", "", eps.addrs(None, STABLE).collect())]
    } else {
        info.versions
            .iter()
            .map(|v| group(v, v, eps.addrs(Some(v), STABLE).collect()))
            .collect()
    };
    // A role's instances (a rollout's baseline copy) form their own group, reached only by a
    // backend that names the role, so the version's ordinary split never sends them traffic.
    let named_roles = route.into_iter().flat_map(|r| {
        r.backends
            .iter()
            .chain(r.rules.iter().flat_map(|rule| rule.backends.iter()))
    });
    for b in named_roles {
        let Some(role) = b.role.as_deref() else {
            continue;
        };
        if versions
            .iter()
            .any(|v| *v.name == b.version && &*v.role == role)
        {
            continue;
        }
        let mut g = group(
            &b.version,
            &b.version,
            eps.role_addrs(Some(&b.version), STABLE, role).collect(),
        );
        g.role = role.into();
        versions.push(g);
    }
    for v in &eps.versions {
        if !info.versions.is_empty() && !info.versions.contains(&v.version) {
            table.warnings.push(format!(
                "`{name}` does not declare version `{}`; its instances are not routed",
                v.version
            ));
        }
    }
    let mut environments = HashMap::new();
    for v in eps.versions.iter().filter(|v| v.environment != STABLE) {
        if environments.contains_key(v.environment.as_str()) {
            continue;
        }
        let addrs: Vec<SocketAddr> = eps.addrs(None, &v.environment).collect();
        let mut runs = eps
            .versions
            .iter()
            .filter(|o| o.environment == v.environment);
        let label = if runs.all(|o| o.version == v.version) {
            v.version.as_str()
        } else {
            ""
        };
        if !addrs.is_empty() {
            environments.insert(
                v.environment.as_str().into(),
                group(&v.environment, label, addrs),
            );
        }
    }
    let mut warn = |w: String| table.warnings.push(w);
    let default_backends;
    let backends: &[Backend] = match route {
        Some(r) if !r.backends.is_empty() => &r.backends,
        _ => {
            // No Route (or one without backends): everything to the first declared version.
            default_backends = [Backend {
                version: versions
                    .first()
                    .map(|v| v.name.to_string())
                    .unwrap_or_default(),
                weight: 100,
                role: None,
            }];
            &default_backends
        }
    };
    let split = make_split(&name, "default split", backends, &versions, &mut warn)?;
    let bad = |reason: String| TableError::Invalid {
        service: name.to_string(),
        reason,
    };
    let mut rules = Vec::new();
    for (i, r) in route
        .map(|r| r.rules.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let rule_name = r.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
        let split = if r.backends.is_empty() {
            None
        } else {
            let what = format!("rule `{rule_name}`");
            Some(make_split(&name, &what, &r.backends, &versions, &mut warn)?)
        };
        let rpc = r
            .matches
            .rpc
            .as_deref()
            .map(RpcPattern::parse)
            .transpose()
            .map_err(|e| bad(format!("rule `{rule_name}`: {e}")))?;
        let headers = r
            .matches
            .headers
            .iter()
            .map(|(k, v)| Ok((header_name(k).map_err(&bad)?, v.clone())))
            .collect::<Result<_, TableError>>()?;
        rules.push(Rule {
            name: rule_name.into(),
            rpc,
            headers,
            baggage: r.matches.baggage.clone().into_iter().collect(),
            split,
            environment: r.environment.clone(),
            timeout: r.timeout.map(|t| t.0),
        });
    }
    let env = route.map_or_else(EnvironmentRouting::default, |r| r.environments.clone());
    let environment_header = match env.header.as_str() {
        "" => None,
        h => Some(header_name(h).map_err(&bad)?),
    };
    Ok(Service {
        name: name.clone(),
        addresses: eps.addresses.clone(),
        versions,
        split,
        environments,
        environment_header,
        environment_baggage: env.baggage,
        needs_rpc: rules.iter().any(|r| r.rpc.is_some()),
        rules,
        timeout: route.and_then(|r| r.timeout).map(|t| t.0),
    })
}

fn header_name(h: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("`{h}` is not a valid header name"))
}

/// A split over `backends`, leaving out versions that have no instances yet (see the module
/// docs) unless that would leave nothing.
fn make_split(
    service: &str,
    what: &str,
    backends: &[Backend],
    versions: &[Version],
    warn: &mut dyn FnMut(String),
) -> Result<Split, TableError> {
    let mut all = Vec::new();
    for b in backends {
        // Validation guarantees declared versions; an undeclared one here is a bug upstream.
        let role = b.role.as_deref().unwrap_or("");
        let i = versions
            .iter()
            .position(|v| *v.name == b.version && &*v.role == role)
            .ok_or_else(|| TableError::Invalid {
                service: service.to_owned(),
                reason: format!("{what} names undeclared version `{}`", b.version),
            })?;
        all.push((i, b.weight));
    }
    let ready: Vec<(usize, u32)> = all
        .iter()
        .copied()
        .filter(|&(i, w)| w > 0 && !versions[i].endpoints.is_empty())
        .collect();
    for &(i, w) in &all {
        if w > 0 && versions[i].endpoints.is_empty() {
            let role = match &*versions[i].role {
                "" => String::new(),
                role => format!(" ({role})"),
            };
            warn(format!(
                "`{service}` {what}: version `{}`{role} has weight {w} but no instances",
                versions[i].name
            ));
        }
    }
    let total: u64 = all.iter().map(|&(_, w)| u64::from(w)).sum();
    if total == 0 {
        return Err(TableError::Invalid {
            service: service.to_owned(),
            reason: format!("{what}: weights add up to 0"),
        });
    }
    Ok(Split(if ready.is_empty() { all } else { ready }))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ENDPOINTS, POLICY};
    use super::*;

    fn compile(policy: &str, endpoints: &str) -> Result<RoutingTable, TableError> {
        let set = sluice_policy::PolicySet::from_str("t.yaml", policy).expect("valid policy");
        let endpoints: Endpoints = serde_json::from_str(endpoints).expect("endpoints");
        RoutingTable::compile(&set.compile(), &endpoints, &Counters::default())
    }

    #[test]
    fn compiles_policy_routes_against_endpoints() {
        let t = compile(POLICY, ENDPOINTS).expect("valid");
        let s = &t.by_addr[&"10.0.0.1:80".parse().expect("addr")];
        assert_eq!(s.split.0, vec![(0, 100)], "zero weights are left out");
        assert_eq!(s.rules.len(), 4);
        assert_eq!(s.rules[0].headers[0].0.as_str(), "x-beta");
        assert!(s.needs_rpc);
        assert_eq!(s.environments["pr-1"].endpoints.len(), 1);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn versions_without_instances_leave_the_split_with_a_warning() {
        let policy = POLICY.replace(
            "{ version: v1, weight: 100 }, { version: v2, weight: 0 }",
            "{ version: v1, weight: 95 }, { version: v2, weight: 5 }",
        );
        let only_v1 = r#"[{"service":"pay","addresses":["10.0.0.1:80"],
            "versions":[{"version":"v1","endpoints":[{"address":"127.0.0.1:1"}]}]},
            {"service":"ghost","addresses":["10.0.0.9:80"]}]"#;
        let t = compile(&policy, only_v1).expect("valid");
        let s = &t.by_addr[&"10.0.0.1:80".parse().expect("addr")];
        assert_eq!(s.split.0, vec![(0, 95)]);
        // The beta rule sends everything to v2, which has no instances: kept, so it 503s.
        assert_eq!(
            s.rules[0].split.as_ref().map(|s| s.0.clone()),
            Some(vec![(1, 100)])
        );
        assert!(
            t.warnings.iter().any(|w| w.contains("`v2` has weight 5")),
            "{:?}",
            t.warnings
        );
        assert!(
            t.warnings.iter().any(|w| w.contains("ghost")),
            "{:?}",
            t.warnings
        );
        assert!(
            !t.by_addr
                .contains_key(&"10.0.0.9:80".parse().expect("addr"))
        );
    }

    #[test]
    fn a_baseline_copy_gets_only_the_weight_its_role_is_given() {
        let policy = POLICY.replace(
            "{ version: v1, weight: 100 }, { version: v2, weight: 0 }",
            "{ version: v1, weight: 90 }, { version: v1, role: baseline, weight: 5 }, \
             { version: v2, weight: 5 }",
        );
        let endpoints = r#"[{"service":"pay","addresses":["10.0.0.1:80"],"versions":[
            {"version":"v1","endpoints":[{"address":"127.0.0.1:1"}]},
            {"version":"v1","role":"baseline","endpoints":[{"address":"127.0.0.1:4"}]},
            {"version":"v2","endpoints":[{"address":"127.0.0.1:2"}]}]}]"#;
        let t = compile(&policy, endpoints).expect("valid");
        let s = &t.by_addr[&"10.0.0.1:80".parse().expect("addr")];
        let group = |i: usize| {
            let v = &s.versions[i];
            let ports: Vec<u16> = v.endpoints.iter().map(|e| e.addr.port()).collect();
            (v.name.to_string(), v.role.to_string(), ports)
        };
        let split: Vec<_> = s.split.0.iter().map(|&(i, w)| (group(i), w)).collect();
        assert_eq!(
            split,
            [
                (("v1".into(), "".into(), vec![1]), 90),
                (("v1".into(), "baseline".into(), vec![4]), 5),
                (("v2".into(), "".into(), vec![2]), 5),
            ],
            "the copy is not among v1's ordinary instances"
        );
        // Without a backend naming the role, the copy gets nothing.
        let t = compile(POLICY, endpoints).expect("valid");
        let s = &t.by_addr[&"10.0.0.1:80".parse().expect("addr")];
        assert!(
            s.versions
                .iter()
                .all(|v| v.endpoints.iter().all(|e| e.addr.port() != 4))
        );
    }

    #[test]
    fn an_address_with_two_owners_is_refused() {
        let policy = format!(
            "{POLICY}---\napiVersion: sluice.dev/v1alpha1\nkind: MeshService\n\
             metadata: {{ name: other }}\nspec: {{ team: t }}\n"
        );
        let endpoints = r#"[{"service":"pay","addresses":["10.0.0.1:80"]},
            {"service":"other","addresses":["10.0.0.1:80"]}]"#;
        let err = compile(&policy, endpoints).expect_err("two owners");
        assert!(
            err.to_string()
                .contains("belongs to both `pay` and `other`"),
            "{err}"
        );
    }
}
