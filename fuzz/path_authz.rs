/// The property every input checks for path canonicalization plus the authorization
/// decision: the path that is authorized is the path that is forwarded, or it is refused.
///
/// - `check_request_path` never panics;
/// - a path it accepts is one the access matcher reads segment for segment as it is written
///   (its normalisation changes nothing but a trailing `/` and the query), so what is decided
///   on is what the application receives;
/// - on such a path, the compiled decision (the path trie) equals the reference semantics
///   (`RpcPattern::matches` over every grant), for a meshed and an unauthenticated caller;
/// - a refused path's suggested canonical form is itself accepted, and stable.
///
/// Shared, via `include!`, by the libFuzzer target (`fuzz_targets/path_authz.rs`) and by a
/// stable-Rust test in the policy crate (`policy/tests/path_props.rs`).
pub fn path_authz(data: &[u8]) {
    use sluice_policy::authz::Caller;
    use sluice_policy::rpc::{Rpc, canonical_form, check_request_path, normalize_path};
    let path = String::from_utf8_lossy(&data[..data.len().min(4096)]);
    let checked = check_request_path(&path);
    let Ok(()) = checked else {
        if let Err(e) = checked
            && let Some(c) = e.canonical
        {
            assert_eq!(check_request_path(&c), Ok(()), "{path:?} → {c:?}");
            assert_eq!(canonical_form(&c), c, "{path:?}");
        }
        return;
    };
    let sent = path.split(['?', '#']).next().unwrap_or("");
    let sent = sent
        .strip_suffix('/')
        .filter(|s| !s.is_empty())
        .unwrap_or(sent);
    let matched = normalize_path(&path);
    assert_eq!(
        matched,
        if sent.is_empty() { "/" } else { sent },
        "{path:?}"
    );

    let (snapshot, policy) = fuzz_policy();
    for caller in [
        Caller::service("default", "checkout"),
        Caller::Unauthenticated,
    ] {
        for method in ["GET", "POST"] {
            let rpc = Rpc::http(method, path.as_ref());
            let decision = snapshot.decide(&caller, "default", "payments", &rpc);
            let reference = policy.iter().any(|(anyone, pattern)| {
                (*anyone || caller != Caller::Unauthenticated) && pattern.matches(&rpc)
            });
            assert_eq!(
                decision.is_allowed(),
                reference,
                "{method} {path:?} from {caller}"
            );
        }
    }
}

/// A compiled policy with literal, `{param}`, trailing-`*`, root and TCP grants, and the same
/// grants as `(exempt, pattern)` for the reference semantics.
fn fuzz_policy() -> &'static (
    sluice_policy::Snapshot,
    Vec<(bool, sluice_policy::rpc::RpcPattern)>,
) {
    static POLICY: std::sync::OnceLock<(
        sluice_policy::Snapshot,
        Vec<(bool, sluice_policy::rpc::RpcPattern)>,
    )> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let grants = ["GET /public/*", "GET /v1/charges/{id}", "POST /v1/charges", "* /", "tcp"];
        let exempt = ["GET /healthz", "GET /.well-known/*"];
        let quote = |v: &[&str]| v.iter().map(|g| format!("\"{g}\"")).collect::<Vec<_>>().join(", ");
        let yaml = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: {{ name: t }}\nspec: {{}}\n---\n\
             apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {{ name: payments }}\n\
             spec: {{ team: t }}\n---\n\
             apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {{ name: checkout }}\n\
             spec: {{ team: t }}\n---\n\
             apiVersion: sluice.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {{ name: p }}\n\
             spec:\n  service: payments\n  rules:\n    - {{ from: [checkout], allow: [{}], reason: r }}\n\
             \x20 unauthenticated:\n{}",
            quote(&grants),
            exempt
                .iter()
                .map(|e| format!("    - {{ rpc: \"{e}\", reason: r }}\n"))
                .collect::<String>()
        );
        let set = sluice_policy::PolicySet::from_str("fuzz.yaml", &yaml)
            .unwrap_or_else(|e| panic!("the fuzz policy is valid: {e:?}"));
        let parse = |s: &str| sluice_policy::rpc::RpcPattern::parse(s).expect("pattern");
        let reference = grants
            .iter()
            .map(|g| (false, parse(g)))
            .chain(exempt.iter().map(|e| (true, parse(e))))
            .collect();
        (set.compile(), reference)
    })
}
