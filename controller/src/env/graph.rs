//! What an environment contains, read from policy: who may call whom, and which of those
//! calls an environment copies (`ephemeral: copy` on the grant) or shares (`shared`, the
//! default).
//!
//! An environment made for service S runs S's copy, and a fresh copy of every service S calls
//! through a `copy` grant, transitively along `copy` grants: if checkout copies catalog and
//! catalog copies inventory, `pr-1` runs all three. Everything else they call is shared with
//! stable. A grant to `*` (any service) with `copy` copies the callee for every service's
//! environment.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use sluice_policy::authz::Caller;
use sluice_policy::resources::EphemeralMode;
use sluice_policy::rpc::Rpc;
use sluice_policy::validate::CallerSelector;
use sluice_policy::{PolicySet, Snapshot};

/// One call a policy grants, with what environments do about it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// The caller.
    pub from: String,
    /// The callee.
    pub to: String,
    /// Whether environments copy the callee (else they share stable's).
    pub copy: bool,
}

/// Every granted call between services of `namespace`, one edge per (caller, callee): `copy`
/// when any grant between them says so. A grant to `*` becomes an edge from every service.
pub fn edges(set: &PolicySet, namespace: &str) -> Vec<Edge> {
    let services: Vec<&str> = set
        .services
        .keys()
        .filter(|k| k.namespace == namespace)
        .map(|k| k.name.as_str())
        .collect();
    let mut out: BTreeMap<(String, String), bool> = BTreeMap::new();
    for p in set
        .access_policies
        .iter()
        .filter(|p| p.service.namespace == namespace)
    {
        let to = p.service.name.as_str();
        for rule in &p.rules {
            let copy = rule.ephemeral == EphemeralMode::Copy;
            let callers: Vec<&str> = rule
                .from
                .iter()
                .flat_map(|sel| match sel {
                    CallerSelector::AnyService => services.clone(),
                    CallerSelector::Service(r) if r.namespace == namespace => vec![r.name.as_str()],
                    CallerSelector::Service(_) => Vec::new(),
                })
                .collect();
            for from in callers.into_iter().filter(|f| *f != to) {
                let e = out.entry((from.to_owned(), to.to_owned())).or_default();
                *e |= copy;
            }
        }
    }
    out.into_iter()
        .map(|((from, to), copy)| Edge { from, to, copy })
        .collect()
}

/// The services an environment for `service` copies, `service` first, then in the order
/// they are reached along `copy` edges (breadth first, names sorted at each step).
pub fn copied(edges: &[Edge], service: &str) -> Vec<String> {
    let mut seen: BTreeSet<&str> = BTreeSet::from([service]);
    let mut order = vec![service.to_owned()];
    let mut queue = VecDeque::from([service]);
    while let Some(s) = queue.pop_front() {
        for e in edges.iter().filter(|e| e.from == s && e.copy) {
            if seen.insert(e.to.as_str()) {
                order.push(e.to.clone());
                queue.push_back(e.to.as_str());
            }
        }
    }
    order
}

/// The services `copies` call that are not copied themselves: what the environment shares
/// with stable. Sorted.
pub fn shared(edges: &[Edge], copies: &[String]) -> Vec<String> {
    let copied: BTreeSet<&str> = copies.iter().map(String::as_str).collect();
    let mut out: BTreeSet<String> = BTreeSet::new();
    for e in edges {
        if copied.contains(e.from.as_str()) && !copied.contains(e.to.as_str()) {
            out.insert(e.to.clone());
        }
    }
    out.into_iter().collect()
}

/// Where a browser enters the mesh: the services anyone may `GET /` without a mesh identity
/// (the shop's frontend). `preferred` first if it is one.
pub fn entry_points(snapshot: &Snapshot, namespace: &str, preferred: &str) -> Vec<String> {
    let home = Rpc::http("GET", "/");
    let mut out: Vec<String> = snapshot
        .services()
        .keys()
        .filter(|k| k.namespace == namespace)
        .filter(|k| {
            let d = snapshot.decide(&Caller::Unauthenticated, namespace, &k.name, &home);
            // Allowed by a rule, not merely by a permissive mesh default.
            d.is_allowed() && d.policy.is_some()
        })
        .map(|k| k.name.clone())
        .collect();
    if let Some(i) = out.iter().position(|s| s == preferred) {
        let s = out.remove(i);
        out.insert(0, s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Team
metadata: { name: t }
spec: {}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: frontend }
spec: { team: t, endpoints: [{ rpc: "GET /*" }] }
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: checkout }
spec: { team: t, endpoints: [{ rpc: "GET /*" }] }
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: catalog }
spec: { team: t, endpoints: [{ rpc: "GET /*" }] }
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: inventory }
spec: { team: t, endpoints: [{ rpc: "GET /*" }] }
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: payments }
spec: { team: t, endpoints: [{ rpc: "GET /*" }] }
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: frontend }
spec:
  service: frontend
  unauthenticated: [{ rpc: "GET /*", reason: public }]
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: checkout }
spec:
  service: checkout
  rules: [{ from: [frontend], allow: ["GET /*"], reason: r }]
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: catalog }
spec:
  service: catalog
  rules:
    - { from: [frontend], allow: ["GET /*"], reason: r }
    - { from: [checkout], allow: ["GET /*"], reason: r, ephemeral: copy }
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: inventory }
spec:
  service: inventory
  rules: [{ from: [catalog], allow: ["GET /*"], reason: r, ephemeral: copy }]
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: payments }
spec:
  service: payments
  rules:
    - { from: [checkout], allow: ["GET /*"], reason: r, ephemeral: shared }
    - { from: ["*"], allow: ["GET /x"], reason: r }
"#;

    fn set() -> PolicySet {
        PolicySet::from_str("p.yaml", POLICY).expect("valid")
    }

    #[test]
    fn copies_follow_copy_grants_transitively_and_everything_else_is_shared() {
        let e = edges(&set(), "default");
        assert_eq!(copied(&e, "checkout"), ["checkout", "catalog", "inventory"]);
        assert_eq!(
            shared(&e, &copied(&e, "checkout")),
            ["payments"],
            "payments is shared; the `*` grant adds no copy"
        );
        // frontend calls catalog with a shared grant: its environments copy nothing else.
        assert_eq!(copied(&e, "frontend"), ["frontend"]);
        assert_eq!(
            shared(&e, &["frontend".into()]),
            ["catalog", "checkout", "payments"]
        );
        // A leaf.
        assert_eq!(copied(&e, "payments"), ["payments"]);
        assert!(shared(&e, &["payments".into()]).is_empty());
    }

    #[test]
    fn a_cycle_of_copies_ends() {
        let text = POLICY.to_owned()
            + r#"---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: checkout-back }
spec:
  service: checkout
  rules: [{ from: [inventory], allow: ["GET /*"], reason: r, ephemeral: copy }]
"#;
        let set = PolicySet::from_str("p.yaml", &text).expect("valid");
        let e = edges(&set, "default");
        assert_eq!(copied(&e, "catalog"), ["catalog", "inventory", "checkout"]);
    }

    #[test]
    fn the_entry_point_is_what_anyone_may_open() {
        let snapshot = set().compile();
        assert_eq!(entry_points(&snapshot, "default", "checkout"), ["frontend"]);
        assert_eq!(entry_points(&snapshot, "default", "frontend"), ["frontend"]);
    }
}
