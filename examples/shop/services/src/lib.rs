//! The demo shop: four small services that the mesh is shown on.
//!
//! ```text
//! browser ──► frontend ──► checkout ──► payments (HTTP :8080, gRPC :9090)
//!                 │            │
//!                 └──► catalog ◄┘
//! ```
//!
//! They are deliberately plain: HTTP clients and servers with no knowledge of the mesh. In the
//! local mesh `http://payments:8080` resolves through the namespace's `/etc/hosts` and the
//! sidecar intercepts the connection; outside it, point the `SHOP_*_URL` variables anywhere.
//!
//! Every service can be made worse on purpose — an injected error rate and added latency —
//! so that a rollout can be shown failing, and every response says which version answered
//! (`shop-version`), so a test can see where the traffic went.

pub mod catalog;
pub mod checkout;
pub mod cli;
pub mod client;
pub mod frontend;
pub mod payments;
pub mod serve;

/// The generated gRPC code for `proto/payments/v1/payments.proto`.
pub mod proto {
    #![allow(clippy::unwrap_used)]
    tonic::include_proto!("payments.v1");
}
