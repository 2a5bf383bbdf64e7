//! Fuzz target: arbitrary bytes, read as (lossy) UTF-8 policy YAML, must never panic.
#![no_main]

include!("../parse_policy.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| parse_policy(data));
