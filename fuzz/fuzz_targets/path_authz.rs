//! Fuzz target: see `../path_authz.rs` for the property every input checks.
#![no_main]

include!("../path_authz.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| path_authz(data));
