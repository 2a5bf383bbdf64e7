//! The `detect_http1` fuzz target's property on stable Rust: detection never changes its mind
//! with more bytes, and never calls an HTTP/1 request that hyper's parser reads "opaque".
//! `scripts/fuzz detect_http1` explores far more; this runs on every test run.

use proptest::prelude::*;

include!("../../fuzz/detect_http1.rs");

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            "GET", "POST", "OPTIONS", "CONNECT", "get", "PROPFIND", "PRI", "G",
        ]),
        prop::sample::select(vec![
            "/",
            "/admin/secret",
            "*",
            "http://x/y",
            "db:5432",
            "/a b",
            "/\u{e9}",
        ]),
        "[a-z/?=]{0,12}",
        prop::sample::select(vec![
            "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "SPDY/3", "",
        ]),
        prop::sample::select(vec!["\r\n", "\n", "\r", ""]),
        prop::sample::select(vec!["Host: x", "Host: x\r\nA: b", ""]),
    )
        .prop_map(|(method, target, tail, version, eol, headers)| {
            format!("{method} {target}{tail} {version}{eol}{headers}{eol}{eol}").into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn http_is_never_opaque(data in request()) {
        detect_http1(&data);
    }

    #[test]
    fn arbitrary_bytes_decide_consistently(data in prop::collection::vec(any::<u8>(), 0..96)) {
        detect_http1(&data);
    }
}
