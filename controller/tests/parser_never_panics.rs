//! The fuzz target's property on stable Rust: no input makes loading a policy panic.
//!
//! `cargo fuzz run parse_policy` explores far more, guided by coverage; this runs the same
//! function (included from `fuzz/parse_policy.rs`) over a few thousand generated inputs on
//! every test run, biased towards almost-valid policy files, where parser bugs live.

use proptest::prelude::*;

include!("../../fuzz/parse_policy.rs");

/// The shop example, concatenated: a realistic starting point for mutations.
fn seed() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
    let files = sluice_policy::load::read_sources(&root).expect("the shop example is readable");
    files
        .iter()
        .map(|f| f.text.as_str())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Fragments that stress YAML and the policy language: indentation, flow syntax, anchors,
/// tags, multi-documents, odd scalars and RPC patterns.
const FRAGMENTS: &[&str] = &[
    "\n",
    "  ",
    "- ",
    ": ",
    "---\n",
    "...\n",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "!!map ",
    "? ",
    "|\n",
    ">-\n",
    "\"",
    "'",
    "#",
    "~",
    "null",
    "-1",
    "1e999",
    "0x1F",
    ".nan",
    "\t",
    "\u{feff}",
    "é",
    "kind: ",
    "AccessPolicy",
    "spec:",
    "rules:",
    "from: [*]",
    "allow: [\"* /*\"]",
    "{id}",
    "/..",
    "//",
    "GET /v1/{a}/{a}/*",
    "x.Y/*",
    "weight: 4294967296",
    "<<: *a",
    "apiVersion: sluice.dev/v1alpha1\n",
];

/// A mutation of `text`: replace, insert or delete a span, or cut it short.
fn mutate(text: &str, edits: &[(usize, usize, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(at, len, op) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        let end = (at + len % 16).min(bytes.len());
        let fragment = FRAGMENTS[usize::from(op) % FRAGMENTS.len()].as_bytes();
        match op % 4 {
            0 => {
                bytes.splice(at..end, fragment.iter().copied());
            }
            1 => {
                bytes.splice(at..at, fragment.iter().copied());
            }
            2 => {
                bytes.drain(at..end);
            }
            _ => bytes.truncate(at),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_policy(&data);
    }

    #[test]
    fn yaml_like_text_never_panics(parts in proptest::collection::vec(
        proptest::sample::select(FRAGMENTS), 0..64)) {
        parse_policy(parts.concat().as_bytes());
    }

    #[test]
    fn mutated_examples_never_panic(edits in proptest::collection::vec(
        (any::<usize>(), any::<usize>(), any::<u8>()), 1..6)) {
        let text = mutate(&seed(), &edits);
        parse_policy(text.as_bytes());
    }
}
