//! A small mesh for routing tests, written the ways the proxy reads config: a policy
//! directory plus an endpoints file, or a `ProxyConfig`-shaped snapshot file.
//!
//! The service is `pay` with versions `v1` and `v2`, dialled at [`SERVICE_ADDR`]. Nothing
//! listens there: an explicit listener presents it as the original destination and routing
//! replaces it with an endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::write_atomically;

/// The address clients "dial" for `pay`.
pub const SERVICE_ADDR: &str = "127.0.0.1:9";

/// Team, `pay` (v1, v2, two endpoints) and `checkout`; then `route`, if any.
pub fn policy(route: Option<&str>) -> String {
    let mut text = String::from(
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: shop }\nspec: {}\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: { name: checkout }\n\
         spec: { team: shop }\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: { name: pay }\n\
         spec:\n  team: shop\n  versions: [v1, v2]\n\
         \x20 endpoints: [{ rpc: POST /v1/charges }, { rpc: \"GET /v1/charges/{id}\" }]\n",
    );
    if let Some(route) = route {
        text.push_str("---\napiVersion: sluice.dev/v1alpha1\nkind: Route\n");
        text.push_str("metadata: { name: pay }\nspec:\n  service: pay\n");
        text.push_str(route);
    }
    text
}

/// A Route spec body (indented under `spec:`) with a v1/v2 split and extra lines.
pub fn route(v1: u32, v2: u32, extra: &str) -> String {
    format!(
        "  backends: [{{ version: v1, weight: {v1} }}, {{ version: v2, weight: {v2} }}]\n{extra}"
    )
}

/// `pay`'s instances: one per version in `stable`, and a `pr-7` copy (running v2).
pub fn services(v1: SocketAddr, v2: SocketAddr, pr7: SocketAddr) -> serde_json::Value {
    let ep = |a: SocketAddr| serde_json::json!([{ "address": a.to_string() }]);
    serde_json::json!([{
        "namespace": "default",
        "service": "pay",
        "addresses": [SERVICE_ADDR],
        "versions": [
            { "version": "v1", "environment": "stable", "endpoints": ep(v1) },
            { "version": "v2", "environment": "stable", "endpoints": ep(v2) },
            { "version": "v2", "environment": "pr-7", "endpoints": ep(pr7) },
        ],
    }])
}

/// A snapshot file's text: the controller API's `ProxyConfig` as JSON.
pub fn snapshot(version: &str, policy: &str, services: &serde_json::Value) -> String {
    serde_json::json!({ "version": version, "policyBundle": policy, "services": services })
        .to_string()
}

/// A policy directory and an endpoints file in a temporary directory.
#[derive(Debug)]
pub struct MeshDir {
    /// `SLUICE_PROXY_POLICY_DIR`.
    pub policy_dir: PathBuf,
    /// `SLUICE_PROXY_ENDPOINTS`.
    pub endpoints: PathBuf,
    _dir: tempfile::TempDir,
}

impl MeshDir {
    /// Writes `policy` and `services` to a new directory.
    pub fn new(policy: &str, services: &serde_json::Value) -> MeshDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir(&policy_dir).expect("mkdir");
        let mesh = MeshDir {
            policy_dir,
            endpoints: dir.path().join("endpoints.json"),
            _dir: dir,
        };
        mesh.write_policy(policy);
        mesh.write_services(services);
        mesh
    }

    /// Replaces the policy (one file, `mesh.yaml`), atomically.
    pub fn write_policy(&self, policy: &str) {
        write_atomically(&self.policy_dir.join("mesh.yaml"), policy);
    }

    /// Replaces the endpoints file, atomically.
    pub fn write_services(&self, services: &serde_json::Value) {
        let text = serde_json::json!({ "services": services }).to_string();
        write_atomically(&self.endpoints, &text);
    }
}
