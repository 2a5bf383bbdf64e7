//! `sluice-api` owns the wire contract between `sluice-proxy` and the `sluice` controller: the
//! versioned gRPC service `sluice.mesh.v1.Mesh` generated from `proto/sluice/mesh/v1/mesh.proto`.
//! The two sides share nothing else at run time; anything one needs from the other travels
//! through these messages.
//!
//! | call | what for |
//! |---|---|
//! | `Certify` | a workload certificate for a CSR (the key never leaves the proxy) |
//! | `Watch` | the proxy's config: the policy bundle and where services run |
//! | `Register` | a workload instance announces its service, version, environment and address |
//! | `ReportDenials` | batched denials, for the portal's pre-filled forms |
//! | `ReportTraffic` | a proxy's inbound golden signals, for canary analysis |
//!
//! The calls travel over TLS 1.3 with the mesh CA on both sides ([`tls`]): the controller
//! proves it is the controller, and every call but a first `Certify` proves which workload is
//! calling with the workload's certificate.

pub mod tls;

/// `sluice.mesh.v1`: messages, the `Mesh` client (`mesh_client`) and server (`mesh_server`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("sluice.mesh.v1");
}
