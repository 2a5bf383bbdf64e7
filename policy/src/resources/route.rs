use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// Traffic rules for a service: the weighted split between versions, and matches that send
/// requests elsewhere.
///
/// ```yaml
/// apiVersion: sluice.dev/v1alpha1
/// kind: Route
/// metadata: { name: payments }
/// spec:
///   service: payments
///   backends:
///     - { version: v1, weight: 95 }
///     - { version: v2, weight: 5 }
///   rules:
///     - match: { headers: { x-beta: "1" } }
///       backends: [{ version: v2, weight: 100 }]
///   timeout: 10s
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// The service whose traffic this routes: a MeshService name.
    pub service: String,
    /// The default split between versions. Weights must add up to 100. Empty means all traffic
    /// goes to the service's first declared version.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Rules tried in order before the default split; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// How requests name an ephemeral environment. A request for an environment that has a copy
    /// of this service goes to that copy; otherwise it falls back to the normal split.
    #[serde(default)]
    pub environments: EnvironmentRouting,
    /// Request timeout for the whole route, unless a rule sets its own. Unset means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// The role of a rollout's fresh copy of the stable version (see [`Backend::role`]).
pub const BASELINE_ROLE: &str = "baseline";

/// A version and its share of traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    /// A version the service declares.
    pub version: String,
    /// Share of traffic in percent (0-100).
    pub weight: u32,
    /// Which of the version's instances: omitted for its ordinary ones; `baseline` for the
    /// fresh copy of the stable version a rollout starts beside its canary (the rollout
    /// engine writes this; see docs/rollouts.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A rule that sends matching requests to particular backends or an environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// Optional name, used in metrics (`route` label) and logs. Defaults to `rules[N]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the request must look like. All given conditions must hold.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Where matching requests go. Weights must add up to 100. Leave empty together with
    /// `environment` to route to an environment only.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Send matching requests to this ephemeral environment's copy, falling back to `backends`
    /// (or the default split) when the environment has no copy of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Request timeout for requests this rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Request conditions. An empty match matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// An endpoint pattern, in the same notation as AccessPolicy's `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
    /// Request headers that must be present with exactly these values (names are
    /// case-insensitive).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// W3C `baggage` members that must be present with exactly these values, e.g.
    /// `sluice-env: pr-42`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baggage: BTreeMap<String, String>,
}

/// Where a request names its ephemeral environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvironmentRouting {
    /// Request header carrying the environment name. Default `sluice-env`.
    #[serde(default = "default_env_key")]
    pub header: String,
    /// W3C baggage member carrying the environment name, so it propagates through services
    /// that forward `baggage`. Default `sluice-env`.
    #[serde(default = "default_env_key")]
    pub baggage: String,
}

impl Default for EnvironmentRouting {
    fn default() -> Self {
        EnvironmentRouting {
            header: default_env_key(),
            baggage: default_env_key(),
        }
    }
}

fn default_env_key() -> String {
    "sluice-env".to_owned()
}
