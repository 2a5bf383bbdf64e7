//! What one proxy is sent: the policy its workload needs, not the whole set.
//!
//! A proxy decides inbound calls to its own service and routes its workload's outbound calls.
//! For that it needs:
//!
//! | it gets | why |
//! |---|---|
//! | the Mesh settings | trust domain, default policy, denial link, unknown destinations |
//! | its own service's MeshService and AccessPolicies, in full | it decides every call to it |
//! | every service's name, team name, ports and versions, and every Route | to route any outbound call, including one the callee will refuse: that refusal, its denial page and its report to the portal are the callee's |
//! | every Team's name | a MeshService names its team, and the bundle must validate |
//!
//! Everything else is left out: other services' AccessPolicies (who may call whom: a map of
//! the mesh for an attacker holding one workload's certificate), CanaryPolicies (metric
//! queries, thresholds), team members and notification channels (emails, webhook URLs, which
//! are secrets), and other services' endpoint lists and descriptions. Endpoints (the `services`
//! field of `ProxyConfig`) stay whole, for the same routing reason. `docs/security.md` lists
//! what a proxy can still see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_policy::PolicySet;
use sluice_policy::resources::TeamSpec;
use sluice_policy::validate::ObjectRef;

use super::state::PolicySnapshot;

/// The policy a workload in `namespace`/`service` needs, out of `set`.
pub fn workload_view(set: &PolicySet, namespace: &str, service: &str) -> PolicySet {
    let own = ObjectRef::new(namespace, service);
    let mut view = PolicySet {
        mesh: set.mesh.clone(),
        routes: set.routes.clone(),
        ..PolicySet::default()
    };
    view.teams = set
        .teams
        .iter()
        .map(|(name, team)| {
            let mut team = team.clone();
            team.doc.spec = TeamSpec {
                members: Vec::new(),
                channels: Vec::new(),
                review: Default::default(),
            };
            (name.clone(), team)
        })
        .collect();
    view.services = set
        .services
        .iter()
        .map(|(name, svc)| {
            let mut svc = svc.clone();
            if *name != own {
                let spec = &mut svc.source.doc.spec;
                spec.endpoints.clear();
                spec.description = None;
                spec.security = Default::default();
                svc.endpoints.clear();
            }
            (name.clone(), svc)
        })
        .collect();
    view.access_policies = set
        .access_policies
        .iter()
        .filter(|p| p.service == own)
        .cloned()
        .collect();
    view
}

/// Views of one effective policy set (the policy in force, with any rollout weights applied),
/// made once per workload and shared by all its proxies and by later publications of the same
/// version (a registration changes endpoints, not views).
pub struct Views {
    /// The effective policy's version.
    pub version: String,
    policy: Arc<PolicySnapshot>,
    /// The policy with rollout weights applied, when there are any.
    overridden: Option<PolicySet>,
    bundles: Mutex<HashMap<(String, String), Arc<str>>>,
}

impl Views {
    /// Views of `overridden`, or of `policy`'s set when there are no overrides.
    pub fn new(
        version: String,
        policy: Arc<PolicySnapshot>,
        overridden: Option<PolicySet>,
    ) -> Self {
        Views {
            version,
            policy,
            overridden,
            bundles: Mutex::new(HashMap::new()),
        }
    }

    fn set(&self) -> &PolicySet {
        self.overridden.as_ref().unwrap_or(&self.policy.set)
    }

    /// The bundle for `namespace`/`service`.
    pub fn bundle(&self, namespace: &str, service: &str) -> Arc<str> {
        let key = (namespace.to_owned(), service.to_owned());
        if let Some(b) = self
            .bundles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return b.clone();
        }
        // Built outside the lock: two streams racing build the same thing twice, harmlessly.
        let bundle: Arc<str> = workload_view(self.set(), namespace, service)
            .to_bundle()
            .into();
        self.bundles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, bundle.clone());
        bundle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> PolicySet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
        PolicySet::load(&dir).expect("the shop's policy is valid")
    }

    #[test]
    fn every_view_of_the_shop_is_a_valid_policy_set() {
        let set = shop();
        for name in set.services.keys() {
            let bundle = workload_view(&set, &name.namespace, &name.name).to_bundle();
            let view = PolicySet::from_str("view", &bundle)
                .unwrap_or_else(|e| panic!("the view for {name} is invalid: {e:?}"));
            assert_eq!(view.services.len(), set.services.len());
            assert!(
                view.access_policies.iter().all(|p| p.service == *name),
                "{name} sees only its own policies"
            );
        }
    }

    #[test]
    fn checkout_sees_what_it_needs_and_nothing_else() {
        let set = shop();
        let bundle = workload_view(&set, "default", "checkout").to_bundle();
        // Its own policy, and what routing calls to payments needs.
        assert!(bundle.contains("checkout-callers"), "{bundle}");
        assert!(bundle.contains("\"kind\":\"Route\""), "{bundle}");
        assert!(bundle.contains("\"name\":\"payments\""), "{bundle}");
        // Not who may call payments, not the rollout, not the teams' people and channels.
        for absent in [
            "payments-callers",
            "CanaryPolicy",
            "@shop.example",
            "#payments",
            "localhost:7072",
        ] {
            assert!(!bundle.contains(absent), "{absent} in {bundle}");
        }
        // The whole set does hold them.
        let all = set.to_bundle();
        assert!(all.contains("payments-callers") && all.contains("@shop.example"));
    }
}
