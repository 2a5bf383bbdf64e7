//! The `path_authz` fuzz target's property on stable Rust, over generated paths: a path is
//! refused, or the access matcher decides on exactly the path the application receives (and
//! the compiled decision agrees with the reference semantics). `scripts/fuzz path_authz`
//! explores far more; this runs on every test run.

use proptest::prelude::*;

include!("../../fuzz/path_authz.rs");

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "public",
            "admin",
            "v1",
            "charges",
            "ch_1",
            "healthz",
            ".well-known",
            ".",
            "..",
            "",
            "%2e",
            "%2E.",
            "%2f",
            "%5C",
            "..;",
            ".;x",
            "a;b",
            "%41",
            "%",
            "\\\\",
            "\t",
            "?",
            "#",
            "*",
            "{id}",
        ])
        .prop_map(str::to_owned),
        "[a-z%./;]{0,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn authorized_path_is_forwarded_path(
        segments in prop::collection::vec(segment(), 0..8),
        trailing in any::<bool>(),
        query in prop::sample::select(vec!["", "?q=/../x", "#f"]),
    ) {
        let mut path = String::new();
        for s in &segments {
            path.push('/');
            path.push_str(s);
        }
        if trailing || path.is_empty() {
            path.push('/');
        }
        path.push_str(query);
        path_authz(path.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
        path_authz(&data);
    }
}
