use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A service in the mesh: who owns it, how sensitive it is, and its RPC surface.
///
/// ```yaml
/// apiVersion: sluice.dev/v1alpha1
/// kind: MeshService
/// metadata: { name: payments }
/// spec:
///   team: payments
///   security: restricted
///   ports: [{ port: 8080, protocol: http }]
///   versions: [v1, v2]
///   endpoints:
///     - rpc: POST /v1/charges
///       description: Charge a card.
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshServiceSpec {
    /// Name of the [`Team`](super::TeamSpec) that owns this service. Its members approve access
    /// requests and receive its rollout notifications. Looked up in the service's namespace,
    /// then in `default`; write `namespace/team` to be explicit.
    pub team: String,
    /// How sensitive the service is. `open` services may have access granted on request without
    /// review (if the caller's team allows it); `restricted` ones always need review.
    #[serde(default)]
    pub security: SecurityLevel,
    /// The ports the workload listens on, and what it speaks on each.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// The versions this service ships (e.g. `v1`, `v2`). Routes and rollouts may only name
    /// these. The first is the stable version when no Route says otherwise.
    #[serde(default)]
    pub versions: Vec<String>,
    /// The service's RPC surface. The access-request form offers exactly these, and access
    /// rules are checked against them.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// One line saying what the service does; shown in the portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// How sensitive a service is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SecurityLevel {
    /// Access may be granted on request without review, if the caller's team allows it.
    #[default]
    Open,
    /// Every access grant is reviewed by the owning team.
    Restricted,
}

/// A port the workload listens on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// Optional name, e.g. `http` or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number (1-65535).
    pub port: u16,
    /// What the workload speaks on this port.
    #[serde(default)]
    pub protocol: Protocol,
}

/// The application protocol on a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2; requests are authorized per method and path. The proxy never
    /// treats such a port as opaque TCP: a connection that does not speak HTTP gets a 400 and
    /// is closed.
    #[default]
    Http,
    /// gRPC over HTTP/2; requests are authorized per `package.Service/Method`. Never opaque,
    /// like `http`.
    Grpc,
    /// Opaque TCP; connections are authorized as a whole, by `tcp` or `tcp:PORT` grants.
    Tcp,
}

/// One endpoint of a service's RPC surface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// The endpoint: an HTTP method and path template (`POST /v1/charges`,
    /// `GET /v1/charges/{id}`) or a gRPC method (`payments.v1.Payments/Refund`).
    pub rpc: String,
    /// What the endpoint does; shown on the access-request form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
