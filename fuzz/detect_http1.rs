/// The property every input checks for protocol detection plus the HTTP/1 request head:
///
/// - classifying never panics, and a decision never changes with more bytes (what a prefix
///   decided, the whole input decides too);
/// - a complete HTTP/1 request head that hyper's parser (`httparse`) accepts with an
///   origin-form target is never classified as opaque TCP: if it were, the request would skip
///   per-request authorization (the fallback attacks of issue 11).
///
/// Shared, via `include!`, by the libFuzzer target (`fuzz_targets/detect_http1.rs`) and by a
/// stable-Rust test in the proxy (`proxy/tests/detect_props.rs`).
pub fn detect_http1(data: &[u8]) {
    use sluice_proxy::detect::{Protocol, Verdict, classify};
    let data = &data[..data.len().min(16 * 1024)];
    let whole = classify(data);
    // Every prefix up to 512 bytes, then a few longer ones.
    let lengths = (0..data.len().min(512)).chain((512..data.len()).step_by(509));
    for n in lengths {
        if let Verdict::Known(p) = classify(&data[..n]) {
            assert_eq!(
                whole,
                Verdict::Known(p),
                "{n} bytes decided {p:?} but the whole input decides otherwise: {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(data)
        && req.path.is_some_and(|p| p.starts_with('/'))
    {
        assert_ne!(
            whole,
            Verdict::Known(Protocol::Opaque),
            "an HTTP/1 request hyper would read was classified opaque: {:?}",
            String::from_utf8_lossy(data)
        );
    }
}
