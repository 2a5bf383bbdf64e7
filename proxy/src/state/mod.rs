//! The proxy's configuration at one instant, and the one place it is swapped.
//!
//! A [`ProxyState`] is everything the data plane acts on: the compiled policy
//! ([`sluice_policy::Snapshot`], for authorization and routes), where services run
//! ([`Endpoints`]) and the [`RoutingTable`] compiled from both. It is immutable. A
//! [`ConfigSource`] builds a complete new state off the hot path and [`SharedState::store`]
//! swaps it in with one atomic pointer store (arc-swap), so every request sees one whole,
//! consistent state: connections already open pick up the new one on their next request, and
//! a request in flight keeps the state it started with. A state that fails to build is never
//! stored; the old one stays in force.
//!
//! Every layer reads the current state per request with [`SharedState::load`] (a few atomic
//! operations, no lock):
//!
//! ```
//! # use sluice_policy::{authz::{Caller, Decision}, rpc::Rpc};
//! # use sluice_proxy::state::SharedState;
//! # fn decide(shared: &SharedState, caller: &Caller, rpc: &Rpc) -> Decision {
//! let state = shared.load();
//! let decision = state.decide_inbound(shared.local(), caller, rpc);
//! # decision
//! # }
//! ```

pub mod controller;
pub mod endpoints;
pub mod source;

use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_policy::Snapshot;
use sluice_policy::authz::{Caller, Decision};
use sluice_policy::rpc::Rpc;

use crate::routing::{Counters, RoutingTable, TableError};
pub use endpoints::Endpoints;
pub use source::{ConfigSource, SourceError, SourceStatus};

/// The workload this proxy fronts: its own identity, from configuration (`SLUICE_PROXY_SERVICE`,
/// `_NAMESPACE`, `_SERVICE_VERSION`, `_ENVIRONMENT`, `_INSTANCE`). Mirrors the controller API's
/// `Workload` message. It never changes while the proxy runs, so it is not part of
/// [`ProxyState`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Namespace (`default` unless configured).
    pub namespace: String,
    /// MeshService name; empty when unconfigured (metrics then show an empty `src_service`).
    pub service: String,
    /// The version it runs, e.g. `v1`.
    pub version: String,
    /// `stable`, or an ephemeral environment such as `pr-42`.
    pub environment: String,
    /// Empty, or `baseline` for a rollout's fresh copy of the stable version.
    pub role: String,
    /// Unique per instance (pod name, local workload name); defaults to the proxy id.
    pub instance: String,
}

/// One immutable configuration. Build with [`ProxyState::build`]; never mutated afterwards.
#[derive(Debug)]
pub struct ProxyState {
    /// Identifies this state in `/config` and logs: the snapshot file's `version`, or for a
    /// policy directory the policy version plus a hash of the endpoints file.
    pub version: String,
    /// The compiled policy. `policy.version()` is the policy's content hash (what the
    /// controller reports), `policy.decide(..)` is the authorization decision.
    pub policy: Arc<Snapshot>,
    /// Where services run.
    pub endpoints: Endpoints,
    /// Outbound routing, compiled from `policy` and `endpoints`.
    pub routing: RoutingTable,
}

/// Why a candidate state could not be built from its parts.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Policy and endpoints do not make a usable routing table.
    #[error(transparent)]
    Routing(#[from] TableError),
}

impl ProxyState {
    /// The state before any source has loaded: no services, the empty policy (whose mesh
    /// default is `deny`), nothing routed, so outbound traffic follows
    /// `SLUICE_PROXY_UNKNOWN_DESTINATIONS`.
    pub fn empty() -> ProxyState {
        ProxyState {
            version: String::new(),
            policy: Arc::new(Snapshot::default()),
            endpoints: Endpoints::default(),
            routing: RoutingTable::default(),
        }
    }

    /// Assembles a state from a compiled policy and endpoints, compiling the routing table.
    /// Every source (policy directory, snapshot file, and next the controller's `Watch`
    /// stream) ends here, so they all get the same checks.
    pub fn build(
        version: String,
        policy: Snapshot,
        endpoints: Endpoints,
        counters: &Counters,
    ) -> Result<ProxyState, StateError> {
        let routing = RoutingTable::compile(&policy, &endpoints, counters)?;
        Ok(ProxyState {
            version,
            policy: Arc::new(policy),
            endpoints,
            routing,
        })
    }

    /// May `caller` make `rpc` to the local workload? The policy decision for inbound
    /// requests, with the decision's reason and (for denials) what the denial explains.
    pub fn decide_inbound(&self, local: &Workload, caller: &Caller, rpc: &Rpc) -> Decision {
        self.policy
            .decide(caller, &local.namespace, &local.service, rpc)
    }
}

/// The current [`ProxyState`] behind an `ArcSwap`, plus what outlives states: the local
/// workload's identity and the endpoints' in-flight counters (so a reload does not forget how
/// loaded each endpoint is).
#[derive(Debug)]
pub struct SharedState {
    current: ArcSwap<ProxyState>,
    local: Workload,
    counters: Counters,
}

impl SharedState {
    /// Starts from [`ProxyState::empty`].
    pub fn new(local: Workload) -> SharedState {
        SharedState {
            current: ArcSwap::from_pointee(ProxyState::empty()),
            local,
            counters: Counters::default(),
        }
    }

    /// The state in force, for one request. Cheap; hold it only for the request's duration.
    pub fn load(&self) -> arc_swap::Guard<Arc<ProxyState>> {
        self.current.load()
    }

    /// The state in force, as an owned `Arc` (for work that outlives a request).
    pub fn current(&self) -> Arc<ProxyState> {
        self.current.load_full()
    }

    /// Swaps in a new state. Requests already routed keep the state they loaded; the
    /// in-flight counters of endpoints neither state lists are let go (a request or state
    /// still holding one keeps it until the next swap).
    pub fn store(&self, state: ProxyState) {
        drop(self.current.swap(Arc::new(state)));
        self.counters.prune();
    }

    /// The local workload's identity.
    pub fn local(&self) -> &Workload {
        &self.local
    }

    /// In-flight counters per endpoint, shared by every state (pass to [`ProxyState::build`]).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}
