//! The table of invalid policy files: every file in `tests/invalid/` states, in its leading
//! comments, exactly the diagnostics it must produce, and nothing else may be reported.
//!
//! ```yaml
//! # expect: 9:7 unknown-field: unknown field `alow`
//! # help: did you mean `allow`?
//! # warning: 10:15 undeclared-endpoint: ...
//! ```
//!
//! Each case is loaded together with `_base.yaml` (teams and services to refer to), the way a
//! policy directory is loaded.

use std::path::Path;
use std::sync::Arc;

use sluice_policy::PolicySet;
use sluice_policy::diagnostic::Severity;
use sluice_policy::load::SourceFile;
use sluice_policy::validate::LoadError;

#[derive(Debug, PartialEq)]
struct Expected {
    severity: Severity,
    line: usize,
    column: usize,
    code: String,
    message: String,
    help: Option<String>,
}

fn expectations(text: &str) -> Vec<Expected> {
    let mut out: Vec<Expected> = Vec::new();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let (severity, rest) = if let Some(r) = line.strip_prefix("# expect: ") {
            (Severity::Error, r)
        } else if let Some(r) = line.strip_prefix("# warning: ") {
            (Severity::Warning, r)
        } else if let Some(h) = line.strip_prefix("# help: ") {
            let last = out.last_mut().expect("`# help:` follows an expectation");
            last.help = Some(h.to_owned());
            continue;
        } else {
            continue;
        };
        let (pos, rest) = rest.split_once(' ').expect("`L:C code: message`");
        let (l, c) = pos.split_once(':').expect("`L:C`");
        let (code, message) = rest.split_once(": ").expect("`code: message`");
        out.push(Expected {
            severity,
            line: l.parse().expect("line"),
            column: c.parse().expect("column"),
            code: code.to_owned(),
            message: message.to_owned(),
            help: None,
        });
    }
    out
}

/// Renders diagnostics in the notation of the expectation comments, so a failure can be
/// compared (or, after checking it by eye, pasted) line by line.
fn render(list: &[Expected]) -> String {
    let mut out = String::new();
    for e in list {
        let tag = match e.severity {
            Severity::Error => "expect",
            Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "    # {tag}: {}:{} {}: {}\n",
            e.line, e.column, e.code, e.message
        ));
        if let Some(h) = &e.help {
            out.push_str(&format!("    # help: {h}\n"));
        }
    }
    out
}

fn source(path: &Path) -> SourceFile {
    SourceFile {
        path: Arc::from(path),
        text: std::fs::read_to_string(path).expect("readable"),
    }
}

#[test]
fn the_base_set_is_valid() {
    let base = source(Path::new("tests/invalid/_base.yaml"));
    let set = PolicySet::from_sources(&[base]).expect("base is valid");
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
}

#[test]
fn every_invalid_file_reports_exactly_its_expected_diagnostics() {
    let base = source(Path::new("tests/invalid/_base.yaml"));
    let mut cases: Vec<_> = std::fs::read_dir("tests/invalid")
        .expect("tests/invalid")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('_'))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let file = source(&case);
        let want = expectations(&file.text);
        assert!(!want.is_empty(), "{} states no expectation", case.display());
        let diagnostics = match PolicySet::from_sources(&[base.clone(), file]) {
            Ok(set) => set.warnings,
            Err(LoadError::Invalid { diagnostics, .. }) => diagnostics,
            Err(e) => panic!("{}: {e}", case.display()),
        };
        let got: Vec<Expected> = diagnostics
            .iter()
            .map(|d| {
                let loc = d.location.as_ref().unwrap_or_else(|| {
                    panic!("{}: diagnostic without a location: {d}", case.display())
                });
                assert_eq!(&*loc.file, case.as_path(), "{d}");
                Expected {
                    severity: d.severity,
                    line: loc.line,
                    column: loc.column,
                    code: d.code.to_owned(),
                    message: d.message.clone(),
                    help: d.help.clone(),
                }
            })
            .collect();
        let mut want_sorted = want;
        want_sorted.sort_by_key(|e| (e.severity, e.line, e.column));
        let mut got_sorted = got;
        got_sorted.sort_by_key(|e| (e.severity, e.line, e.column));
        if want_sorted != got_sorted {
            failures.push(format!(
                "{}:\n  want:\n{}\n  got:\n{}",
                case.display(),
                render(&want_sorted),
                render(&got_sorted)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
