//! Access decisions against one service with 10, 1,000 and 10,000 rules: the cost must stay
//! flat (target: under 1 µs per decision at 10,000 rules).
//!
//! Rules mix literal paths, `{param}` templates, trailing-`*` wildcards and gRPC methods, each
//! granted to one of up to 500 callers (every 50th rule to `*`). Requests: an allowed literal
//! path, an allowed template, a denied path that shares a long prefix with granted ones, a
//! denied caller on a granted path, and an allowed gRPC method.
//!
//! `cargo bench -p sluice-benches --bench policy_decide -- --warm-up-time 1 --measurement-time 3`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_policy::authz::{Caller, Verdict};
use sluice_policy::rpc::Rpc;
use sluice_policy::{PolicySet, Snapshot};

const MAX_CALLERS: usize = 500;

fn callers(rules: usize) -> usize {
    (rules / 4).clamp(2, MAX_CALLERS)
}

fn caller_of(i: usize, rules: usize) -> String {
    format!("caller-{}", i % callers(rules))
}

/// The pattern of rule `i`.
fn pattern(i: usize) -> String {
    match i % 4 {
        0 => format!("GET /api/v{}/res{i}/items", i % 3),
        1 => format!("POST /api/v{}/res{i}/{{id}}/sub{}", i % 3, i % 7),
        2 => format!("* /static/t{i}/*"),
        _ => format!("pkg{}.v1.Svc{i}/Method{}", i % 50, i % 5),
    }
}

/// A policy set where `payments` has `rules` rules.
fn policy_set(rules: usize) -> PolicySet {
    let mut y = String::from(
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: shop }\nspec: {}\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: { name: payments }\n\
         spec: { team: shop }\n",
    );
    for c in 0..callers(rules) {
        let _ = write!(
            y,
            "---\napiVersion: sluice.dev/v1alpha1\nkind: MeshService\n\
             metadata: {{ name: caller-{c} }}\nspec: {{ team: shop }}\n"
        );
    }
    y.push_str(
        "---\napiVersion: sluice.dev/v1alpha1\nkind: AccessPolicy\n\
         metadata: { name: payments-callers }\nspec:\n  service: payments\n  rules:\n",
    );
    for i in 0..rules {
        let from = if i % 50 == 49 {
            "\"*\"".to_owned()
        } else {
            caller_of(i, rules)
        };
        let _ = writeln!(
            y,
            "    - {{ name: r{i}, from: [{from}], allow: [\"{}\"], reason: bench }}",
            pattern(i)
        );
    }
    y.push_str("  unauthenticated: [{ rpc: GET /healthz, reason: probes }]\n");
    match PolicySet::from_str("bench.yaml", &y) {
        Ok(set) => set,
        Err(e) => panic!("the generated policy set is invalid: {e}"),
    }
}

/// The last rule below `rules` of kind `kind` (0 literal, 1 template, 3 gRPC) that is granted
/// to a named caller.
fn last_rule(rules: usize, kind: usize) -> usize {
    (0..rules)
        .rev()
        .find(|i| i % 4 == kind && i % 50 != 49)
        .unwrap_or(kind)
}

struct Case {
    name: &'static str,
    caller: Caller,
    rpc: Rpc,
    want: Verdict,
}

fn cases(rules: usize) -> Vec<Case> {
    let lit = last_rule(rules, 0);
    let tpl = last_rule(rules, 1);
    let grpc = last_rule(rules, 3);
    let named = |i: usize| Caller::service("default", caller_of(i, rules));
    vec![
        Case {
            name: "http_allow_literal",
            caller: named(lit),
            rpc: Rpc::http("GET", format!("/api/v{}/res{lit}/items", lit % 3)),
            want: Verdict::Allow,
        },
        Case {
            name: "http_allow_template",
            caller: named(tpl),
            rpc: Rpc::http(
                "POST",
                format!("/api/v{}/res{tpl}/ch_123/sub{}", tpl % 3, tpl % 7),
            ),
            want: Verdict::Allow,
        },
        Case {
            name: "http_deny_miss",
            caller: named(lit),
            rpc: Rpc::http("GET", format!("/api/v{}/res{lit}/nothing", lit % 3)),
            want: Verdict::Deny,
        },
        Case {
            name: "http_deny_wrong_caller",
            caller: named(lit + 1),
            rpc: Rpc::http("GET", format!("/api/v{}/res{lit}/items", lit % 3)),
            want: Verdict::Deny,
        },
        Case {
            name: "grpc_allow",
            caller: named(grpc),
            rpc: Rpc::grpc(
                format!("pkg{}.v1.Svc{grpc}", grpc % 50),
                format!("Method{}", grpc % 5),
            ),
            want: Verdict::Allow,
        },
        Case {
            name: "grpc_deny",
            caller: named(grpc),
            rpc: Rpc::grpc(format!("pkg{}.v1.Svc{grpc}", grpc % 50), "Other"),
            want: Verdict::Deny,
        },
    ]
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for rules in [10, 1_000, 10_000] {
        let snapshot: Snapshot = policy_set(rules).compile();
        assert_eq!(
            snapshot.authz("default", "payments").map(|t| t.len()),
            Some(rules + 1)
        );
        for case in cases(rules) {
            let d = snapshot.decide(&case.caller, "default", "payments", &case.rpc);
            assert_eq!(d.verdict, case.want, "{} at {rules}: {d}", case.name);
            group.bench_with_input(BenchmarkId::new(case.name, rules), &case, |b, case| {
                b.iter(|| {
                    snapshot.decide(
                        black_box(&case.caller),
                        black_box("default"),
                        black_box("payments"),
                        black_box(&case.rpc),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
