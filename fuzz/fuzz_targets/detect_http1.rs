//! Fuzz target: see `../detect_http1.rs` for the property every input checks.
#![no_main]

include!("../detect_http1.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| detect_http1(data));
