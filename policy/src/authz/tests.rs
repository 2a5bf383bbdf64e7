//! Unit tests of the access tables: each semantic rule of the module docs.
use super::*;
use crate::PolicySet;
use crate::rpc::{normalize_path, path_segments};

const HEADER: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Team
metadata: { name: shop }
spec: {}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: payments }
spec: { team: shop }
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: checkout }
spec: { team: shop }
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: orders }
spec: { team: shop }
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: { name: fraud, namespace: risk }
spec: { team: shop }
"#;

fn table(policies: &str) -> ServiceAuthz {
    let text = format!("{HEADER}---\n{policies}");
    let set = PolicySet::from_str("t.yaml", &text).unwrap_or_else(|e| match e {
        crate::validate::LoadError::Invalid { diagnostics, .. } => {
            panic!("{diagnostics:#?}")
        }
        e => panic!("{e}"),
    });
    ServiceAuthz::new(ObjectRef::new("default", "payments"), &set.access_policies)
}

fn checkout() -> Caller {
    Caller::service("default", "checkout")
}

fn orders() -> Caller {
    Caller::service("default", "orders")
}

fn get(path: &str) -> Rpc {
    Rpc::http("GET", path)
}

fn named(d: &Decision) -> (Verdict, Option<&str>, Option<&str>, Option<&str>) {
    (
        d.verdict,
        d.policy.as_deref(),
        d.rule.as_deref(),
        d.pattern.as_deref(),
    )
}

const BASIC: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: payments-callers }
spec:
  service: payments
  rules:
    - name: read
      from: [checkout]
      allow: ["GET /v1/charges/{id}", "GET /v1/*"]
      reason: r
    - name: everyone-lists
      from: ["*"]
      allow: ["GET /v1/charges", "payments.v1.Payments/List"]
      reason: r
    - from: [risk/fraud]
      allow: ["payments.v1.Payments/*", "* /admin/{x}/*"]
      reason: r
  unauthenticated:
    - { rpc: GET /healthz, reason: probes }
    - { rpc: "GET /v1/*", reason: silly but legal }
"#;

#[test]
fn first_matching_rule_and_pattern_are_named() {
    let t = table(BASIC);
    let d = t.decide(&checkout(), &get("/v1/charges/ch_1"));
    assert_eq!(
        named(&d),
        (
            Verdict::Allow,
            Some("payments-callers"),
            Some("read"),
            Some("GET /v1/charges/{id}")
        )
    );
    assert_eq!(d.reason, Reason::Granted);
    // `GET /v1/charges` is matched by `read` (via `GET /v1/*`) before `everyone-lists`.
    let d = t.decide(&checkout(), &get("/v1/charges"));
    assert_eq!(named(&d).2, Some("read"));
    assert_eq!(named(&d).3, Some("GET /v1/*"));
    assert!(
        d.explain()
            .contains("rule `read` of AccessPolicy `payments-callers`")
    );
}

#[test]
fn any_service_callers_and_named_callers_in_other_namespaces() {
    let t = table(BASIC);
    let d = t.decide(&orders(), &get("/v1//charges/"));
    assert_eq!(named(&d).2, Some("everyone-lists"));
    let d = t.decide(&orders(), &Rpc::grpc("payments.v1.Payments", "List"));
    assert_eq!(named(&d).2, Some("everyone-lists"));
    let fraud = Caller::service("risk", "fraud");
    let d = t.decide(&fraud, &Rpc::grpc("payments.v1.Payments", "Refund"));
    assert_eq!(named(&d).2, Some("rules[2]"));
    assert_eq!(named(&d).3, Some("payments.v1.Payments/*"));
    let d = t.decide(&fraud, &Rpc::http("DELETE", "/admin/x"));
    assert_eq!(named(&d).3, Some("* /admin/{x}/*"));
    // The same name in another namespace is another caller.
    let d = t.decide(
        &Caller::service("default", "fraud"),
        &Rpc::grpc("payments.v1.Payments", "Refund"),
    );
    assert_eq!(d.verdict, Verdict::Deny);
}

#[test]
fn exemptions_allow_anyone_but_rules_win_for_meshed_callers() {
    let t = table(BASIC);
    for caller in [Caller::Unauthenticated, orders()] {
        let d = t.decide(&caller, &get("/healthz?full=1"));
        assert_eq!(d.reason, Reason::Exempt, "{caller}");
        assert_eq!(
            named(&d),
            (
                Verdict::Allow,
                Some("payments-callers"),
                Some("unauthenticated[0]"),
                Some("GET /healthz")
            )
        );
    }
    let d = t.decide(&Caller::Unauthenticated, &get("/v1/charges"));
    assert_eq!(d.reason, Reason::Exempt);
    assert_eq!(named(&d).2, Some("unauthenticated[1]"));
    let d = t.decide(&checkout(), &get("/v1/charges"));
    assert_eq!(d.reason, Reason::Granted);
}

#[test]
fn unauthenticated_callers_need_an_exemption() {
    let t = table(BASIC);
    let d = t.decide(&Caller::Unauthenticated, &get("/admin/x/y"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(matches!(d.reason, Reason::Unauthenticated { .. }));
    assert_eq!(d.reason.governing(), [Arc::from("payments-callers")]);
    assert!(
        d.explain()
            .starts_with("denied: the caller has no mesh identity")
    );
    let d = t.decide(
        &Caller::Unauthenticated,
        &Rpc::grpc("payments.v1.Payments", "List"),
    );
    assert_eq!(d.verdict, Verdict::Deny);
}

#[test]
fn enforce_denies_and_names_every_governing_policy() {
    let t = table(&format!(
        "{BASIC}---\n{}",
        r#"
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: trial }
spec:
  service: payments
  mode: audit
  rules: [{ from: [orders], allow: ["POST /v1/refunds"], reason: r }]
"#
    ));
    let d = t.decide(&orders(), &Rpc::http("POST", "/v1/charges"));
    assert_eq!(d.verdict, Verdict::Deny);
    let governing: Arc<[Arc<str>]> = Arc::from([Arc::from("payments-callers"), "trial".into()]);
    assert_eq!(d.reason, Reason::NoRuleAllows { governing });
    assert!(!d.is_allowed());
    assert_eq!(
        d.explain(),
        "denied: no rule of AccessPolicies `payments-callers`, `trial` allows this caller \
             to make this call"
    );
    // A grant from an audit policy is still a grant.
    let d = t.decide(&orders(), &Rpc::http("POST", "/v1/refunds"));
    assert_eq!(named(&d).1, Some("trial"));
    assert_eq!(t.mode(), PolicyMode::Enforce);
}

#[test]
fn audit_only_policies_audit_deny() {
    let t = table(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: trial }
spec:
  service: payments
  mode: audit
  rules: [{ from: [orders], allow: ["POST /v1/refunds"], reason: r }]
"#,
    );
    let d = t.decide(&checkout(), &Rpc::http("POST", "/v1/refunds"));
    assert_eq!(d.verdict, Verdict::AuditDeny);
    assert!(d.is_allowed());
    assert!(matches!(d.reason, Reason::AuditOnly { .. }));
    assert!(d.explain().starts_with("allowed for audit"));
    let d = t.decide(&Caller::Unauthenticated, &Rpc::http("POST", "/v1/refunds"));
    assert_eq!(d.verdict, Verdict::AuditDeny);
    assert!(matches!(d.reason, Reason::Unauthenticated { .. }));
    assert_eq!(t.mode(), PolicyMode::Audit);
}

#[test]
fn http_and_grpc_never_cross() {
    let t = table(BASIC);
    let fraud = Caller::service("risk", "fraud");
    // `* /admin/{x}/*` is HTTP only.
    assert!(!t.decide(&fraud, &Rpc::grpc("admin.x", "Y")).is_allowed());
    // `payments.v1.Payments/*` does not match the HTTP form of the call.
    let d = t.decide(&fraud, &Rpc::http("POST", "/payments.v1.Payments/Refund"));
    assert!(!d.is_allowed());
}

#[test]
fn caller_display() {
    assert_eq!(checkout().to_string(), "checkout");
    assert_eq!(Caller::service("risk", "fraud").to_string(), "risk/fraud");
    assert_eq!(Caller::Unauthenticated.to_string(), "unauthenticated");
}

#[test]
fn segments_agree_with_normalize_path() {
    let long = "/a".repeat(40) + "/../b/./c?x#y";
    let paths = [
        "",
        "/",
        "//",
        "/v1//charges/./x/..",
        "/../..",
        "/a/b/../../c?q=/d",
        "a/b",
        "/a#frag/b",
        "/.../x",
        long.as_str(),
        &"/x".repeat(33),
    ];
    for path in paths {
        let want: Vec<String> = path_segments(&normalize_path(path))
            .map(str::to_owned)
            .collect();
        let got = with_segments(path, |s| {
            s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
        });
        assert_eq!(got, want, "{path}");
    }
}
