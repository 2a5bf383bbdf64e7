use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Mesh-wide settings. At most one per policy set; without one the defaults below apply.
///
/// ```yaml
/// apiVersion: sluice.dev/v1alpha1
/// kind: Mesh
/// metadata: { name: mesh }
/// spec:
///   trustDomain: shop.local
///   accessRequestUrl: "http://localhost:7070/access/new?from={caller}&to={service}&rpc={rpc}&env={environment}"
///   defaultPolicy: deny
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    /// The SPIFFE trust domain: identities are `spiffe://<trustDomain>/ns/<ns>/svc/<name>`.
    /// Default `cluster.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The link put in every denial. `{caller}`, `{service}`, `{rpc}` and `{environment}` are
    /// replaced, percent-encoded. Default: the local portal's access form.
    #[serde(default = "default_access_request_url")]
    pub access_request_url: String,
    /// What happens to calls to a service that has no AccessPolicy at all.
    #[serde(default)]
    pub default_policy: DefaultPolicy,
    /// How much a denial tells a caller without a mesh identity.
    #[serde(default)]
    pub unauthenticated_denials: DenialDetail,
    /// What the outbound proxy does with traffic to addresses that are not mesh services.
    #[serde(default)]
    pub unknown_destinations: UnknownDestinations,
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            trust_domain: default_trust_domain(),
            access_request_url: default_access_request_url(),
            default_policy: DefaultPolicy::default(),
            unauthenticated_denials: DenialDetail::default(),
            unknown_destinations: UnknownDestinations::default(),
        }
    }
}

fn default_trust_domain() -> String {
    "cluster.local".to_owned()
}

fn default_access_request_url() -> String {
    "http://localhost:7070/access/new?from={caller}&to={service}&rpc={rpc}&env={environment}"
        .to_owned()
}

/// The decision for services that no AccessPolicy covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DefaultPolicy {
    /// Deny every call (zero trust).
    #[default]
    Deny,
    /// Allow every call, but record and count it as "would deny".
    Audit,
    /// Allow every call.
    Allow,
}

/// How much a denial reveals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DenialDetail {
    /// Status, sentence and link, but no policy names.
    #[default]
    Short,
    /// Everything a meshed caller gets.
    Full,
}

/// Outbound handling of non-mesh destinations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UnknownDestinations {
    /// Forward to the original address, unchanged.
    #[default]
    Passthrough,
    /// Refuse the connection or request.
    Refuse,
}
