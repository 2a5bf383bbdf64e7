//! The resource kinds a mesh is declared with.
//!
//! Every kind is a Kubernetes-shaped document: `apiVersion: sluice.dev/v1alpha1`, `kind`,
//! `metadata` and `spec`. The spec structs here are the single source of truth: the YAML files,
//! the JSON Schema ([`crate::schema`]) and, later, the CRDs are all derived from them.

mod access;
mod canary;
mod mesh;
mod route;
mod service;
mod team;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use access::{AccessPolicySpec, AccessRule, EphemeralMode, Exemption, PolicyMode};
pub use canary::{
    AbsoluteThreshold, Analysis, BaselineSource, CanaryPolicySpec, CanaryStep,
    DEFAULT_LATENCY_FLOOR, FailureAction, MetricCheck, MetricProvider, NotifySettings,
    PrometheusProvider, RelativeMargin, Severity, Signal,
};
pub use mesh::{
    DefaultPolicy, DenialDetail, EnvironmentSettings, MeshSpec, Prices, UnknownDestinations,
};
pub use route::{BASELINE_ROLE, Backend, EnvironmentRouting, RouteMatch, RouteRule, RouteSpec};
pub use service::{Endpoint, MeshServiceSpec, Port, Protocol, SecurityLevel};
pub use team::{Channel, ReviewRequirement, TeamMember, TeamSpec};

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";

/// The namespace a resource lives in when its metadata names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Standard object metadata, the subset of Kubernetes' `ObjectMeta` that Sluice reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Name of the resource, unique per kind and namespace. Lowercase letters, digits and `-`
    /// (an RFC 1123 label), because it ends up in identities, URLs and metric labels.
    pub name: String,
    /// Namespace of the resource. Defaults to `default`. A service's namespace is part of its
    /// mesh identity (`spiffe://<trust-domain>/ns/<namespace>/svc/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Free-form labels, kept for tooling; Sluice does not interpret them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations, kept for tooling; Sluice does not interpret them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// The namespace, with the default applied.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// One resource document: the envelope shared by every kind around a kind-specific `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    /// Always `sluice.dev/v1alpha1`.
    pub api_version: String,
    /// The resource kind, e.g. `AccessPolicy`.
    pub kind: String,
    /// Name, namespace, labels and annotations.
    pub metadata: Metadata,
    /// The kind-specific desired state.
    pub spec: S,
}

/// The kinds Sluice understands, in the order they are documented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Mesh-wide settings ([`MeshSpec`]); at most one per policy set.
    Mesh,
    /// A team that owns services ([`TeamSpec`]).
    Team,
    /// A service in the mesh ([`MeshServiceSpec`]).
    MeshService,
    /// Who may call which endpoints of a service ([`AccessPolicySpec`]).
    AccessPolicy,
    /// Traffic rules for a service ([`RouteSpec`]).
    Route,
    /// How new versions of a service are rolled out ([`CanaryPolicySpec`]).
    CanaryPolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Mesh,
        Kind::Team,
        Kind::MeshService,
        Kind::AccessPolicy,
        Kind::Route,
        Kind::CanaryPolicy,
    ];

    /// The `kind:` string of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::Team => "Team",
            Kind::MeshService => "MeshService",
            Kind::AccessPolicy => "AccessPolicy",
            Kind::Route => "Route",
            Kind::CanaryPolicy => "CanaryPolicy",
        }
    }

    /// Parses a `kind:` string, exactly as written.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed resource of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// See [`Kind::Mesh`].
    Mesh(Document<MeshSpec>),
    /// See [`Kind::Team`].
    Team(Document<TeamSpec>),
    /// See [`Kind::MeshService`].
    MeshService(Document<MeshServiceSpec>),
    /// See [`Kind::AccessPolicy`].
    AccessPolicy(Document<AccessPolicySpec>),
    /// See [`Kind::Route`].
    Route(Document<RouteSpec>),
    /// See [`Kind::CanaryPolicy`].
    CanaryPolicy(Document<CanaryPolicySpec>),
}

impl Resource {
    /// The kind of this resource.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Mesh(_) => Kind::Mesh,
            Resource::Team(_) => Kind::Team,
            Resource::MeshService(_) => Kind::MeshService,
            Resource::AccessPolicy(_) => Kind::AccessPolicy,
            Resource::Route(_) => Kind::Route,
            Resource::CanaryPolicy(_) => Kind::CanaryPolicy,
        }
    }

    /// The resource's metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Mesh(d) => &d.metadata,
            Resource::Team(d) => &d.metadata,
            Resource::MeshService(d) => &d.metadata,
            Resource::AccessPolicy(d) => &d.metadata,
            Resource::Route(d) => &d.metadata,
            Resource::CanaryPolicy(d) => &d.metadata,
        }
    }
}

/// A duration written the human way: `500ms`, `30s`, `5m`, `1h 30m`.
///
/// Stored as a [`std::time::Duration`]; serialised back in the same notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| format!("invalid duration `{s}`: {e} (write e.g. `500ms`, `30s`, `5m`)"))
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as `500ms`, `30s`, `5m` or `1h 30m`.",
            "pattern": "^([0-9]+\\s*(ns|us|ms|s|m|h|d)\\s*)+$"
        })
    }
}
