//! The routing snapshot: its JSON file format and the compiled, immutable [`RoutingTable`].
//!
//! The file is deliberately flat so a person (or the policy compiler, later) can write it:
//!
//! ```json
//! {
//!   "version": "42",
//!   "services": [{
//!     "name": "payments",
//!     "addresses": ["10.96.0.10:8080"],
//!     "timeout_ms": 10000,
//!     "versions": [
//!       { "name": "v1", "weight": 95, "endpoints": ["10.1.0.5:8080", "10.1.0.6:8080"] },
//!       { "name": "v2", "weight": 5,  "endpoints": ["10.1.0.7:8080"] }
//!     ],
//!     "environments": { "pr-42": ["10.1.9.1:8080"] },
//!     "environment_header": "sluice-env",
//!     "environment_baggage": "sluice-env",
//!     "rules": [{
//!       "name": "beta",
//!       "match": { "headers": { "x-beta": "1" }, "baggage": {} },
//!       "backends": [{ "version": "v2", "weight": 100 }],
//!       "environment": null,
//!       "timeout_ms": null
//!     }]
//!   }]
//! }
//! ```
//!
//! * `addresses`: the `ip:port`s clients dial (the original destinations that identify the
//!   service). Traffic to any other address is an unknown destination.
//! * `versions`: the default weighted split. The first version is the stable one.
//! * `environments`: ephemeral copies of the service by environment name. A request naming an
//!   environment (header or W3C baggage member) that has a copy goes there; otherwise it falls
//!   back to the normal split.
//! * `rules`: tried in order; the first whose `match` holds replaces the default split with its
//!   `backends` and/or sends to its `environment`, and may set its own timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pick::Counters;

/// The snapshot file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Opaque version string, reported by `/config`.
    #[serde(default)]
    pub version: String,
    /// The known services.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

/// One service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name (a metric label).
    pub name: String,
    /// Addresses clients dial.
    pub addresses: Vec<SocketAddr>,
    /// Versions and the default split; the first is stable.
    pub versions: Vec<VersionSpec>,
    /// Ephemeral environment copies: name → endpoints.
    #[serde(default)]
    pub environments: BTreeMap<String, Vec<SocketAddr>>,
    /// Header naming the environment.
    #[serde(default = "default_env_key")]
    pub environment_header: String,
    /// W3C baggage member naming the environment.
    #[serde(default = "default_env_key")]
    pub environment_baggage: String,
    /// Rules tried before the default split.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Timeout to response headers, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn default_env_key() -> String {
    "sluice-env".to_owned()
}

/// One version of a service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// Version name (a metric label).
    pub name: String,
    /// Relative weight in the default split.
    #[serde(default)]
    pub weight: u32,
    /// Where its instances listen.
    pub endpoints: Vec<SocketAddr>,
}

/// A routing rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rule name (the `route` metric label). Defaults to `rules[N]`.
    #[serde(default)]
    pub name: Option<String>,
    /// What the request must carry.
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    /// Weighted split replacing the default one.
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// Environment to send matching requests to, if it has a copy.
    #[serde(default)]
    pub environment: Option<String>,
    /// Timeout for matching requests, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Exact-value request conditions; all must hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Header name (case-insensitive) → exact value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// W3C baggage member → exact value.
    #[serde(default)]
    pub baggage: BTreeMap<String, String>,
}

/// A version's share in a rule's split.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// A version of the service.
    pub version: String,
    /// Relative weight.
    pub weight: u32,
}

/// Why a snapshot was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Not valid JSON for the format above.
    #[error("invalid snapshot JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Valid JSON describing an impossible table.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
}

/// An endpoint with its shared in-flight counter (power-of-two-choices reads it).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Requests or connections currently outstanding to `addr`, shared across table versions.
    pub in_flight: Arc<AtomicUsize>,
}

/// A named group of endpoints.
#[derive(Clone, Debug)]
pub struct Version {
    /// Version name.
    pub name: Arc<str>,
    /// Its endpoints (non-empty).
    pub endpoints: Vec<Endpoint>,
}

/// A weighted split over versions (indices into [`Service::versions`]); weights sum > 0.
#[derive(Clone, Debug)]
pub struct Split(pub Vec<(usize, u32)>);

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `route` label.
    pub name: Arc<str>,
    /// Lowercased header name → value.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Baggage member → value.
    pub baggage: Vec<(String, String)>,
    /// Replacement split, if any.
    pub split: Option<Split>,
    /// Environment to prefer.
    pub environment: Option<String>,
    /// Timeout override.
    pub timeout: Option<Duration>,
}

/// A compiled service.
#[derive(Clone, Debug)]
pub struct Service {
    /// Name.
    pub name: Arc<str>,
    /// All versions, stable first.
    pub versions: Vec<Version>,
    /// The default split.
    pub split: Split,
    /// Environment copies.
    pub environments: HashMap<String, Version>,
    /// Header naming the environment.
    pub environment_header: Option<http::HeaderName>,
    /// Baggage member naming the environment.
    pub environment_baggage: String,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Default timeout.
    pub timeout: Option<Duration>,
}

/// The immutable table the router reads. A new snapshot compiles into a new table, which is
/// swapped in whole.
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// The snapshot's version string.
    pub version: String,
    /// Services in snapshot order.
    pub services: Vec<Arc<Service>>,
    /// Original destination → service.
    pub by_addr: HashMap<SocketAddr, Arc<Service>>,
    /// The snapshot it came from, for `/config`.
    pub source: Snapshot,
}

impl RoutingTable {
    /// Parses and compiles a snapshot file's contents. `counter` hands out the in-flight
    /// counter for an endpoint so load survives reloads.
    pub fn from_json(json: &[u8], counters: &Counters) -> Result<RoutingTable, TableError> {
        let snapshot: Snapshot = serde_json::from_slice(json)?;
        RoutingTable::compile_legacy(snapshot, counters)
    }

    /// Compiles the routes of a policy snapshot against where services run. Transitional:
    /// routes still come only from the legacy snapshot format, so this table is empty.
    pub fn compile(
        policy: &sluice_policy::Snapshot,
        _endpoints: &crate::state::Endpoints,
        _counters: &Counters,
    ) -> Result<RoutingTable, TableError> {
        Ok(RoutingTable {
            version: policy.version().to_owned(),
            ..RoutingTable::default()
        })
    }

    /// Compiles a parsed snapshot, rejecting anything the router could not act on.
    pub fn compile_legacy(
        snapshot: Snapshot,
        counters: &Counters,
    ) -> Result<RoutingTable, TableError> {
        let counter = |addr| counters.get(addr);
        let bad = |s: String| TableError::Invalid(s);
        let mut by_addr = HashMap::new();
        let mut services = Vec::new();
        let group = |name: &str, addrs: &[SocketAddr]| Version {
            name: name.into(),
            endpoints: addrs
                .iter()
                .map(|&addr| Endpoint {
                    addr,
                    in_flight: counter(addr),
                })
                .collect(),
        };
        for s in &snapshot.services {
            let ctx = format!("service `{}`", s.name);
            if s.versions.is_empty() {
                return Err(bad(format!("{ctx}: needs at least one version")));
            }
            let versions: Vec<Version> = s
                .versions
                .iter()
                .map(|v| group(&v.name, &v.endpoints))
                .collect();
            let index = |name: &str| versions.iter().position(|v| &*v.name == name);
            let split = make_split(
                &ctx,
                s.versions.iter().map(|v| (v.name.as_str(), v.weight)),
                &index,
                &versions,
            )?;
            let mut rules = Vec::new();
            for (i, r) in s.rules.iter().enumerate() {
                let name = r.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
                let rctx = format!("{ctx} rule `{name}`");
                let split = if r.backends.is_empty() {
                    None
                } else {
                    let pairs = r.backends.iter().map(|b| (b.version.as_str(), b.weight));
                    Some(make_split(&rctx, pairs, &index, &versions)?)
                };
                if split.is_none() && r.environment.is_none() {
                    return Err(bad(format!("{rctx}: needs `backends` or `environment`")));
                }
                let headers = r
                    .matches
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map(|h| (h, v.clone()))
                            .map_err(|_| bad(format!("{rctx}: `{k}` is not a header name")))
                    })
                    .collect::<Result<_, _>>()?;
                rules.push(Rule {
                    name: name.into(),
                    headers,
                    baggage: r.matches.baggage.clone().into_iter().collect(),
                    split,
                    environment: r.environment.clone(),
                    timeout: r.timeout_ms.map(Duration::from_millis),
                });
            }
            let mut environments = HashMap::new();
            for (env, addrs) in &s.environments {
                if addrs.is_empty() {
                    return Err(bad(format!("{ctx}: environment `{env}` has no endpoints")));
                }
                environments.insert(env.clone(), group(env, addrs));
            }
            let environment_header = match s.environment_header.as_str() {
                "" => None,
                h => Some(
                    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                        .map_err(|_| bad(format!("{ctx}: bad environment_header `{h}`")))?,
                ),
            };
            let service = Arc::new(Service {
                name: s.name.as_str().into(),
                versions,
                split,
                environments,
                environment_header,
                environment_baggage: s.environment_baggage.clone(),
                rules,
                timeout: s.timeout_ms.map(Duration::from_millis),
            });
            for addr in &s.addresses {
                if by_addr.insert(*addr, service.clone()).is_some() {
                    return Err(bad(format!("address {addr} belongs to two services")));
                }
            }
            services.push(service);
        }
        Ok(RoutingTable {
            version: snapshot.version.clone(),
            services,
            by_addr,
            source: snapshot,
        })
    }
}

fn make_split<'a>(
    ctx: &str,
    pairs: impl Iterator<Item = (&'a str, u32)>,
    index: &dyn Fn(&str) -> Option<usize>,
    versions: &[Version],
) -> Result<Split, TableError> {
    let mut split = Vec::new();
    let mut total = 0u64;
    for (name, weight) in pairs {
        let i = index(name)
            .ok_or_else(|| TableError::Invalid(format!("{ctx}: unknown version `{name}`")))?;
        if weight > 0 && versions[i].endpoints.is_empty() {
            return Err(TableError::Invalid(format!(
                "{ctx}: version `{name}` has weight {weight} but no endpoints"
            )));
        }
        total += u64::from(weight);
        split.push((i, weight));
    }
    if total == 0 {
        return Err(TableError::Invalid(format!("{ctx}: weights add up to 0")));
    }
    Ok(Split(split))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> Counters {
        Counters::default()
    }

    #[test]
    fn compiles_example() {
        let json = br#"{"version":"1","services":[{"name":"p","addresses":["10.0.0.1:80"],
            "versions":[{"name":"v1","weight":9,"endpoints":["127.0.0.1:1"]},
                        {"name":"v2","weight":1,"endpoints":["127.0.0.1:2"]}],
            "environments":{"pr-1":["127.0.0.1:3"]},
            "rules":[{"match":{"headers":{"X-Beta":"1"}},"backends":[{"version":"v2","weight":1}]}]}]}"#;
        let t = RoutingTable::from_json(json, &counter()).expect("valid");
        let s = &t.by_addr[&"10.0.0.1:80".parse().expect("addr")];
        assert_eq!(s.split.0, vec![(0, 9), (1, 1)]);
        assert_eq!(&*s.rules[0].name, "rules[0]");
        assert_eq!(s.rules[0].headers[0].0.as_str(), "x-beta");
    }

    #[test]
    fn rejects_impossible_tables() {
        let cases: &[&[u8]] = &[
            br#"{"services":[{"name":"p","addresses":[],"versions":[]}]}"#,
            br#"{"services":[{"name":"p","addresses":[],"versions":[{"name":"v1","weight":0,"endpoints":["127.0.0.1:1"]}]}]}"#,
            br#"{"services":[{"name":"p","addresses":[],"versions":[{"name":"v1","weight":1,"endpoints":[]}]}]}"#,
            br#"{"services":[{"name":"p","addresses":[],"versions":[{"name":"v1","weight":1,"endpoints":["127.0.0.1:1"]}],
                "rules":[{"backends":[{"version":"v9","weight":1}]}]}]}"#,
            br#"{"services":[], "extra": 1}"#,
            b"not json",
        ];
        for json in cases {
            assert!(
                RoutingTable::from_json(json, &counter()).is_err(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }
}
