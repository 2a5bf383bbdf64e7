/// The property every fuzz input checks: whatever the bytes, loading them as a policy file
/// returns `Ok` or `Err` and never panics, loops or overflows.
///
/// Shared, via `include!`, by the libFuzzer target (`fuzz_targets/parse_policy.rs`) and by a
/// stable-Rust test in the controller (`controller/tests/parser_never_panics.rs`), so the
/// property is checked on every CI run, not only when someone fuzzes.
pub fn parse_policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(set) = sluice_policy::PolicySet::from_str("fuzz.yaml", &text) {
        // A valid set must also compile and answer a question without panicking.
        let snapshot = set.compile();
        let caller = sluice_policy::authz::Caller::service("default", "fuzz");
        let rpc = sluice_policy::rpc::Rpc::http("GET", "/fuzz/../x/{id}");
        for service in snapshot.services().keys() {
            let _ = snapshot.decide(&caller, &service.namespace, &service.name, &rpc);
        }
    }
}
