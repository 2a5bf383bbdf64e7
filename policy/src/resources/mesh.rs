use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

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
///   environments:
///     idleTimeout: 30m
///     prices: { coreHour: 0.04, gbHour: 0.005, currency: EUR }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// Ephemeral environments (`sluice env`): when idle ones are removed, and what they cost.
    #[serde(default, skip_serializing_if = "EnvironmentSettings::is_default")]
    pub environments: EnvironmentSettings,
}

/// Settings for ephemeral environments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvironmentSettings {
    /// An environment that no request reached for this long is deleted, and its owner team is
    /// told. `sluice env create --idle-timeout` overrides it per environment. Default `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Prices for the estimated cost per day that `sluice env list` and the portal show.
    /// Without them only CPU-seconds and memory are shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<Prices>,
}

impl EnvironmentSettings {
    /// The idle timeout when none is set.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

    /// The idle timeout in force.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(Self::DEFAULT_IDLE_TIMEOUT)
    }

    fn is_default(&self) -> bool {
        *self == EnvironmentSettings::default()
    }
}

/// What compute costs, for estimates: like a cloud provider's on-demand price list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Prices {
    /// The price of one CPU core for one hour (0 or more).
    pub core_hour: f64,
    /// The price of one GiB of memory for one hour (0 or more).
    pub gb_hour: f64,
    /// The currency the prices are in, e.g. `EUR` (shown next to costs). Default `USD`.
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_currency() -> String {
    "USD".to_owned()
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            trust_domain: default_trust_domain(),
            access_request_url: default_access_request_url(),
            default_policy: DefaultPolicy::default(),
            unauthenticated_denials: DenialDetail::default(),
            unknown_destinations: UnknownDestinations::default(),
            environments: EnvironmentSettings::default(),
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
