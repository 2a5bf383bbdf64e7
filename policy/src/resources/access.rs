use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which callers may call which endpoints of a service.
///
/// Access is denied unless a rule allows it (or the mesh's default policy says otherwise for
/// services without any AccessPolicy).
///
/// ```yaml
/// apiVersion: sluice.dev/v1alpha1
/// kind: AccessPolicy
/// metadata: { name: payments-callers }
/// spec:
///   service: payments
///   mode: enforce
///   rules:
///     - from: [checkout]
///       allow: ["POST /v1/charges", "GET /v1/charges/{id}"]
///       reason: Checkout charges the customer's card.
///       ephemeral: shared
///   unauthenticated:
///     - rpc: GET /healthz
///       reason: kubelet probes
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// The callee: the name of a MeshService in the same namespace.
    pub service: String,
    /// `enforce` denies what no rule allows; `audit` allows it but records and counts it as
    /// "would deny", so a policy can be tried before it bites.
    #[serde(default)]
    pub mode: PolicyMode,
    /// The grants.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
    /// Endpoints anyone may call without a mesh identity: health probes, metrics scrapes.
    #[serde(default)]
    pub unauthenticated: Vec<Exemption>,
}

/// Enforcement mode of an AccessPolicy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PolicyMode {
    /// Deny what no rule allows.
    #[default]
    Enforce,
    /// Allow everything, but record and count what would have been denied.
    Audit,
}

/// One grant: these callers may call these endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRule {
    /// Optional name, shown in denials, metrics and `sluice policy explain`. Defaults to
    /// `rules[N]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The callers: MeshService names (`checkout`, or `shop/checkout` for another namespace),
    /// or `*` for any service with a mesh identity.
    pub from: Vec<String>,
    /// The endpoints: `METHOD /path` with `{param}` segments and a trailing `*`
    /// (`GET /v1/charges/{id}`, `GET /v1/*`, `* /v1/*` for any method), gRPC
    /// `package.Service/Method` and `package.Service/*`, or opaque TCP: `tcp:5432` for one
    /// port, `tcp` for any port. HTTP and gRPC patterns never grant opaque TCP, not even `* /*`.
    pub allow: Vec<String>,
    /// Why this access exists. Required: the portal shows it to whoever reviews the policy.
    pub reason: String,
    /// How ephemeral environments of the caller reach this service: `shared` (the stable copy,
    /// the default) or `copy` (a fresh copy per environment).
    #[serde(default)]
    pub ephemeral: EphemeralMode,
}

/// How ephemeral environments handle a dependency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EphemeralMode {
    /// Every ephemeral environment shares the stable copy of the dependency.
    #[default]
    Shared,
    /// Each ephemeral environment gets a fresh copy of the dependency.
    Copy,
}

/// An endpoint callable without a mesh identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exemption {
    /// The endpoint, in the same notation as [`AccessRule::allow`].
    pub rpc: String,
    /// Why it is exempt, e.g. `kubelet probes`.
    pub reason: String,
}
