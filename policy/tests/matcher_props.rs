//! The compiled access tables must decide exactly like the obvious implementation: walk every
//! policy of the callee in order, every rule in order, every pattern with
//! [`RpcPattern::matches`], then the exemptions, then fall back on the modes and the mesh
//! default. Rule sets and requests are drawn from small alphabets so that they collide often.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use sluice_policy::PolicySet;
use sluice_policy::authz::{Caller, Reason, Verdict};
use sluice_policy::resources::{
    API_VERSION, AccessPolicySpec, DefaultPolicy, Document, EphemeralMode, MeshSpec, Metadata,
    PolicyMode,
};
use sluice_policy::rpc::{Rpc, RpcPattern, Segment};
use sluice_policy::validate::{
    CallerSelector, Checked, CheckedAccessPolicy, CheckedRule, ObjectRef, Origin,
};

const LITERALS: [&str; 4] = ["a", "b", "v1", "c"];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const GRPC_SERVICES: [&str; 2] = ["s.A", "s.B"];
const GRPC_METHODS: [&str; 2] = ["M", "N"];
const CALLERS: [(&str, &str); 4] = [
    ("default", "a"),
    ("default", "b"),
    ("other", "a"),
    ("default", "c"),
];
const CALLEES: [(&str, &str); 2] = [("default", "svc"), ("other", "svc")];

fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        4 => prop::sample::select(&LITERALS[..]).prop_map(|l| Segment::Literal(l.to_owned())),
        1 => prop::sample::select(&["id", "x"][..]).prop_map(|p| Segment::Param(p.to_owned())),
    ]
}

fn pattern() -> impl Strategy<Value = RpcPattern> {
    let method = prop::option::weighted(0.75, prop::sample::select(&METHODS[..]));
    prop_oneof![
        4 => (method, prop::collection::vec(segment(), 0..4), prop::bool::weighted(0.3)).prop_map(
            |(method, segments, rest)| RpcPattern::Http {
                method: method.map(str::to_owned),
                segments,
                rest,
            }
        ),
        1 => (
            prop::sample::select(&GRPC_SERVICES[..]),
            prop::option::weighted(0.7, prop::sample::select(&GRPC_METHODS[..])),
        )
            .prop_map(|(service, method)| RpcPattern::Grpc {
                service: service.to_owned(),
                method: method.map(str::to_owned),
            }),
    ]
}

fn selector() -> impl Strategy<Value = CallerSelector> {
    prop_oneof![
        1 => Just(CallerSelector::AnyService),
        4 => prop::sample::select(&CALLERS[..])
            .prop_map(|(ns, n)| CallerSelector::Service(ObjectRef::new(ns, n))),
    ]
}

fn rule() -> impl Strategy<Value = (Vec<CallerSelector>, Vec<RpcPattern>)> {
    (
        prop::collection::vec(selector(), 1..3),
        prop::collection::vec(pattern(), 1..4),
    )
}

type PolicyParts = (
    usize,
    bool,
    Vec<(Vec<CallerSelector>, Vec<RpcPattern>)>,
    Vec<RpcPattern>,
);

fn policy() -> impl Strategy<Value = PolicyParts> {
    (
        0..CALLEES.len(),
        prop::bool::weighted(0.7),
        prop::collection::vec(rule(), 0..12),
        prop::collection::vec(pattern(), 0..2),
    )
}

fn build(policies: Vec<PolicyParts>, default_policy: DefaultPolicy) -> PolicySet {
    let access_policies = policies
        .into_iter()
        .enumerate()
        .map(|(i, (callee, enforce, rules, exempt))| {
            let (ns, name) = CALLEES[callee];
            let policy_name = format!("p{i}");
            CheckedAccessPolicy {
                name: Arc::from(policy_name.as_str()),
                service: ObjectRef::new(ns, name),
                mode: if enforce {
                    PolicyMode::Enforce
                } else {
                    PolicyMode::Audit
                },
                rules: rules
                    .into_iter()
                    .enumerate()
                    .map(|(j, (from, allow))| CheckedRule {
                        name: Arc::from(format!("rules[{j}]")),
                        from,
                        allow,
                        reason: "r".into(),
                        ephemeral: EphemeralMode::Shared,
                    })
                    .collect(),
                unauthenticated: exempt.into_iter().map(|p| (p, "probe".into())).collect(),
                source: Checked {
                    doc: Document {
                        api_version: API_VERSION.into(),
                        kind: "AccessPolicy".into(),
                        metadata: Metadata {
                            name: policy_name,
                            namespace: Some(ns.into()),
                            ..Metadata::default()
                        },
                        spec: AccessPolicySpec {
                            service: name.into(),
                            mode: PolicyMode::Enforce,
                            rules: Vec::new(),
                            unauthenticated: Vec::new(),
                        },
                    },
                    origin: Origin {
                        file: Arc::from(Path::new("generated.yaml")),
                        location: None,
                    },
                },
            }
        })
        .collect();
    PolicySet {
        mesh: MeshSpec {
            default_policy,
            ..MeshSpec::default()
        },
        access_policies,
        ..PolicySet::default()
    }
}

fn request_path() -> impl Strategy<Value = String> {
    let part = prop::sample::select(&["a", "b", "v1", "c", "zz", ".", "..", ""][..]);
    (
        prop::collection::vec(part, 0..6),
        prop::bool::ANY,
        prop::sample::select(&["", "?q=1", "?x=/a/b", "#f"][..]),
    )
        .prop_map(|(parts, trailing, suffix)| {
            let mut path = String::new();
            for p in parts {
                path.push('/');
                path.push_str(p);
            }
            if trailing || path.is_empty() {
                path.push('/');
            }
            path + suffix
        })
}

fn rpc() -> impl Strategy<Value = Rpc> {
    prop_oneof![
        4 => (prop::sample::select(&["GET", "POST", "DELETE", "PUT"][..]), request_path())
            .prop_map(|(m, p)| Rpc::http(m, p)),
        // `Rpc::Http` can be built directly with a method that is not uppercase; it matches
        // only `*` patterns, in both implementations.
        1 => request_path().prop_map(|path| Rpc::Http { method: "get".into(), path }),
        2 => (
            prop::sample::select(&["s.A", "s.B", "s.C"][..]),
            prop::sample::select(&["M", "N", "O"][..]),
        )
            .prop_map(|(s, m)| Rpc::grpc(s, m)),
    ]
}

fn caller() -> impl Strategy<Value = Caller> {
    prop_oneof![
        1 => Just(Caller::Unauthenticated),
        1 => Just(Caller::service("default", "zzz")),
        4 => prop::sample::select(&CALLERS[..]).prop_map(|(ns, n)| Caller::service(ns, n)),
    ]
}

fn request() -> impl Strategy<Value = (Caller, (String, String), Rpc)> {
    let callee = prop_oneof![
        4 => prop::sample::select(&CALLEES[..]).prop_map(|(n, s)| (n.to_owned(), s.to_owned())),
        1 => Just(("default".to_owned(), "nowhere".to_owned())),
    ];
    (caller(), callee, rpc())
}

/// What a decision says, in comparable form.
type Outcome = (
    Verdict,
    &'static str,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The obvious, linear implementation of the semantics in `sluice_policy::authz`.
fn reference(set: &PolicySet, caller: &Caller, ns: &str, svc: &str, rpc: &Rpc) -> Outcome {
    let callee = ObjectRef::new(ns, svc);
    let policies: Vec<&CheckedAccessPolicy> = set
        .access_policies
        .iter()
        .filter(|p| p.service == callee)
        .collect();
    if policies.is_empty() {
        let (v, r) = match set.mesh.default_policy {
            DefaultPolicy::Deny => (Verdict::Deny, "default-deny"),
            DefaultPolicy::Audit => (Verdict::AuditDeny, "default-audit"),
            DefaultPolicy::Allow => (Verdict::Allow, "default-allow"),
        };
        return (v, r, None, None, None);
    }
    if let Caller::Service(me) = caller {
        for p in &policies {
            for rule in &p.rules {
                let mine = rule.from.iter().any(|s| match s {
                    CallerSelector::AnyService => true,
                    CallerSelector::Service(r) => r == me,
                });
                if !mine {
                    continue;
                }
                if let Some(pat) = rule.allow.iter().find(|pat| pat.matches(rpc)) {
                    return (
                        Verdict::Allow,
                        "granted",
                        Some(p.name.to_string()),
                        Some(rule.name.to_string()),
                        Some(pat.to_string()),
                    );
                }
            }
        }
    }
    for p in &policies {
        for (i, (pat, _)) in p.unauthenticated.iter().enumerate() {
            if pat.matches(rpc) {
                return (
                    Verdict::Allow,
                    "exempt",
                    Some(p.name.to_string()),
                    Some(format!("unauthenticated[{i}]")),
                    Some(pat.to_string()),
                );
            }
        }
    }
    let enforce = policies.iter().any(|p| p.mode == PolicyMode::Enforce);
    let verdict = if enforce {
        Verdict::Deny
    } else {
        Verdict::AuditDeny
    };
    let reason = match (caller, enforce) {
        (Caller::Unauthenticated, _) => "unauthenticated",
        (_, true) => "no-rule-allows",
        (_, false) => "audit-only",
    };
    (verdict, reason, None, None, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compiled_matcher_agrees_with_the_reference(
        policies in prop::collection::vec(policy(), 0..5),
        default_policy in prop::sample::select(
            &[DefaultPolicy::Deny, DefaultPolicy::Audit, DefaultPolicy::Allow][..]
        ),
        requests in prop::collection::vec(request(), 1..40),
    ) {
        let set = build(policies, default_policy);
        let snapshot = set.compile();
        for (caller, (ns, svc), rpc) in &requests {
            let d = snapshot.decide(caller, ns, svc, rpc);
            let got: Outcome = (
                d.verdict,
                d.reason.as_str(),
                d.policy.as_deref().map(str::to_owned),
                d.rule.as_deref().map(str::to_owned),
                d.pattern.as_deref().map(str::to_owned),
            );
            let want = reference(&set, caller, ns, svc, rpc);
            prop_assert_eq!(&got, &want, "{} -> {}/{}: {}", caller, ns, svc, rpc);
            let governing: Vec<&str> = set
                .access_policies
                .iter()
                .filter(|p| p.service == ObjectRef::new(ns.as_str(), svc.as_str()))
                .map(|p| &*p.name)
                .collect();
            match &d.reason {
                Reason::NoRuleAllows { governing: g }
                | Reason::AuditOnly { governing: g }
                | Reason::Unauthenticated { governing: g } => {
                    let g: Vec<&str> = g.iter().map(|n| &**n).collect();
                    prop_assert_eq!(g, governing);
                }
                _ => {}
            }
        }
    }
}

fn big_policy() -> impl Strategy<Value = PolicyParts> {
    (
        Just(0usize),
        prop::bool::ANY,
        prop::collection::vec(rule(), 200..400),
        prop::collection::vec(pattern(), 0..10),
    )
}

/// Many rules on one service, so that the trie is deep and bushy and the pruning matters.
#[test]
fn agrees_on_large_rule_sets() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    for _ in 0..20 {
        let parts = prop::collection::vec(big_policy(), 1..4)
            .new_tree(&mut runner)
            .map(|t| t.current())
            .expect("generated");
        let set = build(parts, DefaultPolicy::Deny);
        let snapshot = set.compile();
        let requests = prop::collection::vec(request(), 300)
            .new_tree(&mut runner)
            .map(|t| t.current())
            .expect("generated");
        for (caller, (ns, svc), rpc) in &requests {
            let d = snapshot.decide(caller, ns, svc, rpc);
            let got: Outcome = (
                d.verdict,
                d.reason.as_str(),
                d.policy.as_deref().map(str::to_owned),
                d.rule.as_deref().map(str::to_owned),
                d.pattern.as_deref().map(str::to_owned),
            );
            assert_eq!(
                got,
                reference(&set, caller, ns, svc, rpc),
                "{caller} -> {ns}/{svc}: {rpc}"
            );
        }
    }
}
