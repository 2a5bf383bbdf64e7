//! `sluice-policy` owns Sluice's declarative model: the resource kinds a mesh is written in
//! ([`resources`]), reading them from YAML with precise positions ([`load`]), checking them as a
//! set with errors that say what, where and how to fix ([`validate`], [`diagnostic`]), and
//! compiling a valid set into an immutable [`Snapshot`] whose matchers answer "may this caller
//! make this call?" in time independent of the number of rules ([`authz`]). It does no
//! networking: the proxy and the controller both build on it.
//!
//! ```
//! use sluice_policy::{PolicySet, rpc::Rpc, authz::Caller};
//!
//! let yaml = r#"
//! apiVersion: sluice.dev/v1alpha1
//! kind: Team
//! metadata: { name: shop }
//! spec: {}
//! ---
//! apiVersion: sluice.dev/v1alpha1
//! kind: MeshService
//! metadata: { name: payments }
//! spec: { team: shop, endpoints: [{ rpc: POST /v1/charges }] }
//! ---
//! apiVersion: sluice.dev/v1alpha1
//! kind: MeshService
//! metadata: { name: checkout }
//! spec: { team: shop }
//! ---
//! apiVersion: sluice.dev/v1alpha1
//! kind: AccessPolicy
//! metadata: { name: payments-callers }
//! spec:
//!   service: payments
//!   rules:
//!     - { from: [checkout], allow: ["POST /v1/charges"], reason: checkout charges cards }
//! "#;
//! let set = PolicySet::from_str("inline.yaml", yaml).expect("valid");
//! let snapshot = set.compile();
//! let checkout = Caller::service("default", "checkout");
//! let decision = snapshot.decide(&checkout, "default", "payments", &Rpc::http("POST", "/v1/charges"));
//! assert!(decision.is_allowed());
//! assert_eq!(decision.policy.as_deref(), Some("payments-callers"));
//! assert_eq!(decision.rule.as_deref(), Some("rules[0]"));
//! let decision = snapshot.decide(&checkout, "default", "payments", &Rpc::http("GET", "/v1/charges"));
//! assert!(!decision.is_allowed());
//! assert_eq!(
//!     decision.explain(),
//!     "denied: no rule of AccessPolicy `payments-callers` allows this caller to make this call"
//! );
//! // What the controller ships to proxies: it loads back to the same snapshot version.
//! let bundle = set.to_bundle();
//! let shipped = PolicySet::from_str("bundle", &bundle).expect("valid");
//! assert_eq!(shipped.compile().version(), snapshot.version());
//! ```
#![warn(missing_docs)]

pub mod authz;
pub mod baggage;
pub mod diagnostic;
pub mod link;
pub mod load;
pub mod probes;
pub mod resources;
pub mod rpc;
pub mod schema;
pub mod snapshot;
pub mod validate;

pub use diagnostic::Diagnostic;
pub use snapshot::Snapshot;
pub use validate::PolicySet;
