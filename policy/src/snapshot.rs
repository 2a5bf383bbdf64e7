//! The compiled, immutable form of a policy set, and its wire format.
//!
//! [`PolicySet::compile`] turns a valid set into a [`Snapshot`]: the mesh settings, what each
//! service declares, a compiled access table ([`ServiceAuthz`]) per callee, and the routes and
//! canary policies as checked. A snapshot never changes; the proxy keeps the current one behind
//! an `Arc` and swaps in a new one when policy changes, so decisions never see a half-applied
//! update.
//!
//! [`PolicySet::to_bundle`] is how the controller ships a set to proxies: every resource as one
//! JSON document, separated by `---` lines. JSON is YAML, so [`PolicySet::from_str`] reads a
//! bundle back, and the result has the same [`Snapshot::version`].
//!
//! The version is a content hash (FNV-1a, 64 bits, as 16 hex digits) of the bundle text, i.e.
//! of the mesh settings and of every resource in [`PolicySet::resources`] order. Where the
//! resources were read from does not matter; the order of AccessPolicies does, because it
//! decides which rule a decision names. It detects change; it is not a security measure.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use crate::authz::{Caller, Decision, Reason, ServiceAuthz, Verdict};
use crate::link::{DeniedCall, access_request_link};
use crate::resources::{
    API_VERSION, CanaryPolicySpec, DefaultPolicy, Document, Kind, MeshSpec, Metadata, Port,
    Resource, RouteSpec, SecurityLevel,
};
use crate::rpc::{Rpc, RpcPattern};
use crate::validate::{Checked, CheckedAccessPolicy, ObjectRef, PolicySet};

/// What a snapshot knows about one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    /// The service.
    pub name: ObjectRef,
    /// The owning team.
    pub team: String,
    /// How sensitive it is.
    pub security: SecurityLevel,
    /// The ports it listens on.
    pub ports: Vec<Port>,
    /// The versions it ships; the first is the stable one unless a Route says otherwise.
    pub versions: Vec<String>,
    /// Its declared RPC surface, parsed, in the order written.
    pub endpoints: Vec<RpcPattern>,
    /// What it does.
    pub description: Option<String>,
}

/// A compiled policy set: immutable, cheap to share behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    version: String,
    mesh: MeshSpec,
    services: BTreeMap<ObjectRef, ServiceInfo>,
    /// Access tables by namespace, then service name: looked up with borrowed strings.
    authz: HashMap<Box<str>, HashMap<Box<str>, ServiceAuthz>>,
    routes: BTreeMap<ObjectRef, Checked<RouteSpec>>,
    canaries: BTreeMap<ObjectRef, Checked<CanaryPolicySpec>>,
}

impl Default for Snapshot {
    /// The snapshot of an empty policy set: mesh defaults, no services, every call gets the
    /// default policy (`deny`). What a proxy enforces before it has heard from the controller.
    fn default() -> Self {
        PolicySet::default().compile()
    }
}

impl PolicySet {
    /// Compiles the set into a [`Snapshot`].
    pub fn compile(&self) -> Snapshot {
        let services = self
            .services
            .iter()
            .map(|(name, s)| {
                let spec = &s.source.doc.spec;
                let info = ServiceInfo {
                    name: name.clone(),
                    team: spec.team.clone(),
                    security: spec.security,
                    ports: spec.ports.clone(),
                    versions: spec.versions.clone(),
                    endpoints: s.endpoints.clone(),
                    description: spec.description.clone(),
                };
                (name.clone(), info)
            })
            .collect();
        let mut by_callee: BTreeMap<&ObjectRef, Vec<&CheckedAccessPolicy>> = BTreeMap::new();
        for p in &self.access_policies {
            by_callee.entry(&p.service).or_default().push(p);
        }
        let mut authz: HashMap<Box<str>, HashMap<Box<str>, ServiceAuthz>> = HashMap::new();
        for (callee, policies) in by_callee {
            authz
                .entry(callee.namespace.as_str().into())
                .or_default()
                .insert(
                    callee.name.as_str().into(),
                    ServiceAuthz::new(callee.clone(), policies),
                );
        }
        Snapshot {
            version: self.version(),
            mesh: self.mesh.clone(),
            services,
            authz,
            routes: self.routes.clone(),
            canaries: self.canaries.clone(),
        }
    }

    /// The set as a bundle: a `Mesh` document with the mesh settings, then every resource in
    /// [`PolicySet::resources`] order, each as one line of JSON, separated by `---` lines.
    /// [`PolicySet::from_str`] loads it back.
    pub fn to_bundle(&self) -> String {
        let mut out = String::new();
        let resources = self.resources();
        // `resources()` does not list the Mesh document (the set keeps only its spec), so it
        // is written here, unless a later `resources()` starts listing it itself.
        let listed = resources.iter().any(|r| r.kind() == Kind::Mesh);
        let mesh = Document {
            api_version: API_VERSION.to_owned(),
            kind: Kind::Mesh.as_str().to_owned(),
            metadata: Metadata {
                name: "mesh".to_owned(),
                ..Metadata::default()
            },
            spec: self.mesh.clone(),
        };
        if !listed {
            push_document(&mut out, &mesh);
        }
        for resource in resources {
            match &resource {
                Resource::Mesh(d) => push_document(&mut out, d),
                Resource::Team(d) => push_document(&mut out, d),
                Resource::MeshService(d) => push_document(&mut out, d),
                Resource::AccessPolicy(d) => push_document(&mut out, d),
                Resource::Route(d) => push_document(&mut out, d),
                Resource::CanaryPolicy(d) => push_document(&mut out, d),
            }
        }
        out
    }

    /// The content hash that [`Snapshot::version`] reports (see the [module docs](self)).
    pub fn version(&self) -> String {
        format!("{:016x}", fnv1a64(self.to_bundle().as_bytes()))
    }
}

/// Appends one document to a bundle.
fn push_document<S: Serialize>(out: &mut String, doc: &Document<S>) {
    if !out.is_empty() {
        out.push_str("---\n");
    }
    // Documents have string keys and no maps keyed otherwise, so serialisation cannot fail.
    let json = serde_json::to_string(doc).expect("policy documents serialise to JSON");
    // serde_json escapes C0 controls but writes other characters as they are; YAML does not
    // allow some of them unescaped (DEL, C1 controls, the BOM) and YAML 1.1 readers take
    // U+2028/U+2029 for line breaks. They can only occur inside strings, where `\uXXXX`
    // means the same in JSON and in YAML.
    for c in json.chars() {
        if matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}'
        ) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Snapshot {
    /// The content hash of the policy set this was compiled from (16 hex digits).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The mesh-wide settings.
    pub fn mesh(&self) -> &MeshSpec {
        &self.mesh
    }

    /// Every declared service.
    pub fn services(&self) -> &BTreeMap<ObjectRef, ServiceInfo> {
        &self.services
    }

    /// One service, if declared.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceInfo> {
        self.services.get(&ObjectRef::new(namespace, name))
    }

    /// The compiled access table of a service, if any AccessPolicy names it.
    pub fn authz(&self, namespace: &str, service: &str) -> Option<&ServiceAuthz> {
        self.authz.get(namespace).and_then(|m| m.get(service))
    }

    /// Routes by service, as checked.
    pub fn routes(&self) -> &BTreeMap<ObjectRef, Checked<RouteSpec>> {
        &self.routes
    }

    /// Canary policies by service, as checked.
    pub fn canaries(&self) -> &BTreeMap<ObjectRef, Checked<CanaryPolicySpec>> {
        &self.canaries
    }

    /// Decides whether `caller` may make `rpc` to `service` in `namespace`: the service's
    /// access table if it has AccessPolicies, the mesh's `defaultPolicy` otherwise (also for
    /// services the snapshot does not know). See [`crate::authz`] for the rules.
    pub fn decide(&self, caller: &Caller, namespace: &str, service: &str, rpc: &Rpc) -> Decision {
        match self.authz(namespace, service) {
            Some(table) => table.decide(caller, rpc),
            None => match self.mesh.default_policy {
                DefaultPolicy::Deny => Decision::new(Verdict::Deny, Reason::DefaultDeny),
                DefaultPolicy::Audit => Decision::new(Verdict::AuditDeny, Reason::DefaultAudit),
                DefaultPolicy::Allow => Decision::new(Verdict::Allow, Reason::DefaultAllow),
            },
        }
    }

    /// The link to request access for a denied call, from the mesh's `accessRequestUrl`.
    ///
    /// `rpc` is what the form should offer to grant: see [`crate::link::offered_rpc`].
    pub fn access_request_link(
        &self,
        caller: &Caller,
        service: &str,
        rpc: &str,
        environment: &str,
    ) -> String {
        access_request_link(
            &self.mesh.access_request_url,
            &DeniedCall {
                caller: &caller.to_string(),
                service,
                rpc,
                environment,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::LoadError;

    fn load(text: &str) -> PolicySet {
        PolicySet::from_str("t.yaml", text).unwrap_or_else(|e| match e {
            LoadError::Invalid { diagnostics, .. } => panic!("{diagnostics:#?}"),
            e => panic!("{e}"),
        })
    }

    const SET: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Mesh
metadata: { name: mesh }
spec:
  trustDomain: shop.local
  accessRequestUrl: "https://portal.example/access?from={caller}&to={service}&rpc={rpc}&env={environment}"
  defaultPolicy: audit
---
apiVersion: sluice.dev/v1alpha1
kind: Team
metadata: { name: shop, labels: { tier: "1" } }
spec:
  members: [{ name: "Zoë \u0085 \u2028 \x7f", email: zoe@shop.example }]
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: payments, namespace: pay }
spec:
  team: shop
  security: restricted
  ports: [{ port: 8080, protocol: grpc }]
  versions: [v1, v2]
  endpoints: [{ rpc: "POST /v1/charges" }, { rpc: "payments.v1.Payments/*" }]
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: checkout }
spec: { team: shop }
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: payments-callers, namespace: pay }
spec:
  service: payments
  rules:
    - { name: charge, from: [default/checkout], allow: ["post /v1/charges"], reason: "checkout: \"charges\"" }
---
apiVersion: sluice.dev/v1alpha1
kind: Route
metadata: { name: payments, namespace: pay }
spec:
  service: payments
  backends: [{ version: v1, weight: 90 }, { version: v2, weight: 10 }]
  timeout: 90s
---
apiVersion: sluice.dev/v1alpha1
kind: CanaryPolicy
metadata: { name: payments, namespace: pay }
spec:
  service: payments
  stepWeight: 10
  maxWeight: 50
  analysis: { alpha: 0.05, metrics: [{ name: p99, signal: latency, quantile: 0.99, threshold: { max: 250.5 } }] }
"#;

    #[test]
    fn compiles_services_tables_routes_and_canaries() {
        let snap = load(SET).compile();
        assert_eq!(snap.version().len(), 16);
        assert_eq!(snap.mesh().trust_domain, "shop.local");
        let pay = snap.service("pay", "payments").expect("declared");
        assert_eq!(pay.team, "shop");
        assert_eq!(pay.security, SecurityLevel::Restricted);
        assert_eq!(pay.versions, ["v1", "v2"]);
        assert_eq!(pay.ports[0].port, 8080);
        assert_eq!(pay.endpoints.len(), 2);
        assert_eq!(snap.services().len(), 2);
        assert!(snap.authz("pay", "payments").is_some());
        assert!(snap.authz("default", "checkout").is_none());
        assert_eq!(snap.routes().len(), 1);
        assert_eq!(snap.canaries().len(), 1);
        let checkout = Caller::service("default", "checkout");
        let d = snap.decide(
            &checkout,
            "pay",
            "payments",
            &Rpc::http("POST", "/v1/charges"),
        );
        assert_eq!(d.reason, Reason::Granted);
        assert_eq!(d.rule.as_deref(), Some("charge"));
        assert_eq!(d.pattern.as_deref(), Some("POST /v1/charges"));
        // The same name in another namespace has no policy: the mesh default (audit) applies.
        let d = snap.decide(
            &checkout,
            "default",
            "payments",
            &Rpc::http("POST", "/v1/x"),
        );
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::AuditDeny, Reason::DefaultAudit)
        );
    }

    #[test]
    fn default_policy_applies_to_services_without_policies_and_unknown_ones() {
        for (policy, verdict, reason) in [
            ("deny", Verdict::Deny, Reason::DefaultDeny),
            ("audit", Verdict::AuditDeny, Reason::DefaultAudit),
            ("allow", Verdict::Allow, Reason::DefaultAllow),
        ] {
            let text = format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: Mesh\nmetadata: {{ name: m }}\n\
                 spec: {{ defaultPolicy: {policy} }}\n---\n\
                 apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: {{ name: t }}\nspec: {{}}\n---\n\
                 apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {{ name: a }}\n\
                 spec: {{ team: t }}\n"
            );
            let snap = load(&text).compile();
            for caller in [Caller::Unauthenticated, Caller::service("default", "a")] {
                for service in ["a", "nowhere"] {
                    let d = snap.decide(&caller, "default", service, &Rpc::http("GET", "/"));
                    assert_eq!(
                        (d.verdict, &d.reason),
                        (verdict, &reason),
                        "{policy} {service}"
                    );
                    assert_eq!(d.policy, None);
                    assert!(d.explain().contains(&format!("mesh default is `{policy}`")));
                }
            }
        }
        let empty = Snapshot::default();
        let d = empty.decide(&Caller::Unauthenticated, "x", "y", &Rpc::grpc("a.B", "C"));
        assert_eq!(d.reason, Reason::DefaultDeny);
    }

    #[test]
    fn bundle_round_trips_with_the_same_version() {
        let set = load(SET);
        let bundle = set.to_bundle();
        assert!(bundle.starts_with("{\"apiVersion\":\"sluice.dev/v1alpha1\",\"kind\":\"Mesh\""));
        assert_eq!(bundle.matches("\n---\n").count(), set.resources().len());
        assert!(bundle.contains("\\u0085") && bundle.contains("\\u2028"));
        let back = load(&bundle);
        assert_eq!(back.to_bundle(), bundle);
        assert_eq!(back.compile().version(), set.compile().version());
        assert_eq!(back.mesh, set.mesh);
        assert_eq!(back.resources(), set.resources());
        // Without a Mesh document the defaults are shipped explicitly, and still round-trip.
        let no_mesh = SET.split_once("---\n").map(|(_, rest)| rest).unwrap_or(SET);
        let set = load(no_mesh);
        assert_eq!(load(&set.to_bundle()).version(), set.version());
    }

    #[test]
    fn version_changes_with_content_not_with_layout() {
        let a = load(SET).version();
        let reformatted = SET.replace("{ name: charge,", "{\n        name: charge,");
        assert_eq!(load(&reformatted).version(), a);
        let changed = SET.replace(
            "weight: 90 }, { version: v2, weight: 10",
            "weight: 80 }, { version: v2, weight: 20",
        );
        assert_ne!(load(&changed).version(), a);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn snapshots_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Snapshot>();
        shareable::<std::sync::Arc<Snapshot>>();
    }

    #[test]
    fn access_request_link_fills_the_mesh_template() {
        let snap = load(SET).compile();
        let link = snap.access_request_link(
            &Caller::service("default", "checkout"),
            "pay/payments",
            &Rpc::http("GET", "/v1/charges?limit=1").to_string(),
            "pr-42",
        );
        assert_eq!(
            link,
            "https://portal.example/access?from=checkout&to=pay%2Fpayments\
             &rpc=GET%20%2Fv1%2Fcharges&env=pr-42"
        );
        let link = snap.access_request_link(
            &Caller::Unauthenticated,
            "payments",
            &Rpc::grpc("payments.v1.Payments", "Refund").to_string(),
            "stable",
        );
        assert!(
            link.contains("from=unauthenticated&to=payments&rpc=payments.v1.Payments%2FRefund")
        );
    }
}
