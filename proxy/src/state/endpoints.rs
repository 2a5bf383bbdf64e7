//! Where services run: the runtime facts that are not policy.
//!
//! These types mirror the controller API's `ServiceEndpoints` message
//! (`api/proto/sluice/mesh/v1/mesh.proto`) field for field, so the JSON read today (the
//! endpoints file, the snapshot file's `services`) and the protobuf streamed by the controller
//! next issue become the same value. JSON uses the proto's camelCase field names:
//!
//! ```json
//! { "services": [{
//!     "namespace": "default", "service": "payments",
//!     "addresses": ["10.96.0.10:8080"],
//!     "versions": [
//!       { "version": "v1", "environment": "stable", "endpoints": [{ "address": "10.1.0.5:8080" }] },
//!       { "version": "v2", "environment": "pr-42", "endpoints": [{ "address": "10.1.9.1:8080", "instance": "pay-pr42-0" }] }
//!     ] }] }
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The environment of ordinary (non-ephemeral) workloads.
pub const STABLE: &str = "stable";

/// Every service's addresses and instances, in the order received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Endpoints(pub Vec<ServiceEndpoints>);

/// One service: the addresses clients dial, and its instances by version and environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEndpoints {
    /// The service's namespace (`default` when omitted, as in policy files).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The MeshService name.
    pub service: String,
    /// The stable `ip:port`s clients dial (a ClusterIP, or the local runner's service
    /// address). Outbound traffic to one of them is routed to this service.
    #[serde(default)]
    pub addresses: Vec<SocketAddr>,
    /// Instances grouped by version and environment.
    #[serde(default)]
    pub versions: Vec<VersionEndpoints>,
}

/// The instances of one version in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VersionEndpoints {
    /// The version they run, e.g. `v1`.
    pub version: String,
    /// `stable` (the default), or an ephemeral environment such as `pr-42`.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Empty for ordinary instances; `baseline` for a rollout's fresh copy of the stable
    /// version, routed to only by a Route backend naming that role.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// The instances.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// `ip:port` of the instance's inbound proxy.
    pub address: SocketAddr,
    /// Unique per instance (pod or local workload name); informational.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
}

fn default_namespace() -> String {
    sluice_policy::resources::DEFAULT_NAMESPACE.to_owned()
}

fn default_environment() -> String {
    STABLE.to_owned()
}

impl Endpoints {
    /// One service's entry, if present.
    pub fn service(&self, namespace: &str, service: &str) -> Option<&ServiceEndpoints> {
        self.0
            .iter()
            .find(|s| s.namespace == namespace && s.service == service)
    }

    /// Total number of instances, for `/config`.
    pub fn instance_count(&self) -> usize {
        self.0
            .iter()
            .flat_map(|s| &s.versions)
            .map(|v| v.endpoints.len())
            .sum()
    }
}

impl ServiceEndpoints {
    /// The ordinary instance addresses of `version` in `environment` (no role).
    pub fn addrs<'a>(
        &'a self,
        version: Option<&'a str>,
        environment: &'a str,
    ) -> impl Iterator<Item = SocketAddr> + 'a {
        self.role_addrs(version, environment, "")
    }

    /// The addresses of `version`'s instances with `role` in `environment`.
    pub fn role_addrs<'a>(
        &'a self,
        version: Option<&'a str>,
        environment: &'a str,
        role: &'a str,
    ) -> impl Iterator<Item = SocketAddr> + 'a {
        self.versions
            .iter()
            .filter(move |v| {
                v.environment == environment
                    && v.role == role
                    && version.is_none_or(|n| v.version == n)
            })
            .flat_map(|v| v.endpoints.iter().map(|e| e.address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proto_shape_with_defaults() {
        let json = r#"[{"service":"pay","addresses":["10.0.0.1:80"],
            "versions":[{"version":"v1","endpoints":[{"address":"127.0.0.1:1"}]},
                        {"version":"v2","environment":"pr-1","endpoints":[{"address":"127.0.0.1:2","instance":"i"}]}]}]"#;
        let e: Endpoints = serde_json::from_str(json).expect("valid");
        let pay = e.service("default", "pay").expect("pay");
        assert_eq!(pay.versions[0].environment, STABLE);
        assert_eq!(pay.addrs(Some("v1"), STABLE).count(), 1);
        assert_eq!(
            pay.addrs(None, "pr-1").next(),
            Some(([127, 0, 0, 1], 2).into())
        );
        assert_eq!(e.instance_count(), 2);
        assert!(serde_json::from_str::<Endpoints>(r#"[{"service":"p","extra":1}]"#).is_err());
    }
}
