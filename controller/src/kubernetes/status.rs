//! The `status` every Sluice custom resource carries: whether the controller accepted it, and
//! per kind what it found (a MeshService's ready instances, a CanaryPolicy's rollout phase).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition type that says whether a resource was accepted.
pub const VALID: &str = "Valid";

/// What the controller reports on a resource (`kubectl get`, `kubectl describe`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`: `True` when the resource is part of the policy in force, `False` with the
    /// field path and the fix when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The policy version (the snapshot version proxies report) the resource was last seen in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// MeshService: the ready pods behind the Service of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// CanaryPolicy: the canary weights in order, e.g. `5,25,50`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<String>,
    /// CanaryPolicy: the service's rollout phase (`Idle`, `Progressing 25%`, `Promoted`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// A condition, shaped like Kubernetes' own `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, e.g. `Valid`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason, e.g. `Accepted` or `InvalidField`.
    pub reason: String,
    /// For people: what is wrong, where (the field path) and how to fix it.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
