//! Policy files as an attacker would write them (issue 11): whoever can add a file to the
//! policy directory must not be able to exhaust memory, block the reader, or make Sluice echo
//! another file. Each case is refused (or skipped) with a diagnostic that says where and how
//! to fix it. Generated rather than kept in `tests/invalid/`: the point of the first ones is
//! their size.
//!
//! Peak memory of the alias bomb is measured in `benches/README.md` ("Hostile policy files"),
//! not asserted here.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use sluice_policy::PolicySet;
use sluice_policy::diagnostic::{Diagnostic, Style, render};
use sluice_policy::validate::LoadError;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TEAM: &str =
    "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: shop }\nspec: {}\n";

/// Runs `f` on a thread and gives up after `limit`: a reader that blocks (a FIFO) or spins
/// fails the test instead of hanging the suite.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("loading did not finish within {limit:?}: it blocks"))
}

fn invalid(result: Result<PolicySet, LoadError>) -> Vec<Diagnostic> {
    match result {
        Err(LoadError::Invalid { diagnostics, .. }) => diagnostics,
        Err(LoadError::Read(e)) => panic!("expected diagnostics, got a read error: {e}"),
        Ok(_) => panic!("the set was accepted"),
    }
}

#[test]
fn an_alias_bomb_is_refused_at_the_alias_that_goes_over() {
    // The file: 1 MiB of text, one 1 MiB anchor, 3,000 aliases of it (3 GB expanded).
    let mut text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata:\n  name: bomb\n  labels:\n    a: &big {}\nspec:\n  members:\n",
        "x".repeat(1 << 20)
    );
    for _ in 0..3000 {
        text.push_str("    - *big\n");
    }
    let diags = within(Duration::from_secs(60), move || {
        invalid(PolicySet::from_str("bomb.yaml", &text))
    });
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(d.code, "yaml-too-large");
    let loc = d.location.as_ref().expect("a position");
    // The anchor is 1 MiB of the 32 MiB budget; the 31st alias (line 9 is the first) is over.
    assert_eq!(
        (loc.file.to_str(), loc.line, loc.column),
        (Some("bomb.yaml"), 39, 7),
        "{d}"
    );
    assert!(d.message.contains("alias"), "{}", d.message);
    assert!(
        d.help.as_deref().is_some_and(|h| h.contains("32 MiB")),
        "{d}"
    );
}

#[test]
fn many_small_files_share_one_expansion_budget() -> TestResult {
    // Each file alone is under the limit; together they are not.
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("team.yaml"), TEAM)?;
    let value = "y".repeat(64 * 1024);
    for i in 0..12 {
        let mut text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata:\n  name: t{i}\n  labels:\n    a: &v {value}\nspec:\n  members:\n"
        );
        for _ in 0..50 {
            text.push_str("    - *v\n");
        }
        std::fs::write(tmp.path().join(format!("t{i}.yaml")), text)?;
    }
    let diags = invalid(PolicySet::load(tmp.path()));
    assert!(
        diags.iter().any(|d| d.code == "yaml-too-large"),
        "{diags:?}"
    );
    Ok(())
}

#[test]
fn deep_nesting_is_refused_instead_of_overflowing_the_stack() {
    let text = format!("{}x\n", "- ".repeat(200_000));
    let diags = within(Duration::from_secs(60), move || {
        invalid(PolicySet::from_str("deep.yaml", &text))
    });
    assert_eq!(diags[0].code, "yaml-too-deep", "{diags:?}");
    assert_eq!(diags[0].location.as_ref().map(|l| l.line), Some(1));
}

#[test]
fn a_link_out_of_the_directory_is_refused_and_its_content_never_shown() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("policy");
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("team.yaml"), TEAM)?;
    // Valid YAML, so that if it were read its line would be quoted in a diagnostic.
    std::fs::write(
        tmp.path().join("shadow"),
        "root: $6$SECRET-HASH-0123456789$abcdef:19000:0:99999:7:::\n",
    )?;
    std::os::unix::fs::symlink(tmp.path().join("shadow"), dir.join("leak.yaml"))?;
    let (diags, sources) = match PolicySet::load(&dir) {
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => (diagnostics, sources),
        other => panic!("expected the set to be refused, got {other:?}"),
    };
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].code, "symlink-outside");
    let rendered = render(&diags[0], &sources, Style::plain());
    assert!(rendered.contains("leak.yaml"), "{rendered}");
    assert!(!rendered.contains("SECRET"), "{rendered}");
    assert!(
        sources.values().all(|text| !text.contains("SECRET")),
        "the linked file must not even be read"
    );
    Ok(())
}

#[test]
fn a_link_to_dev_zero_is_refused_without_reading_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("team.yaml"), TEAM)?;
    std::os::unix::fs::symlink("/dev/zero", tmp.path().join("zero.yaml"))?;
    let dir = tmp.path().to_owned();
    let diags = within(Duration::from_secs(30), move || {
        invalid(PolicySet::load(&dir))
    });
    assert_eq!(
        diags.iter().map(|d| d.code).collect::<Vec<_>>(),
        ["symlink-outside"]
    );
    Ok(())
}

#[test]
fn a_fifo_is_skipped_with_a_warning_and_does_not_block() -> TestResult {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("team.yaml"), TEAM)?;
    mkfifo(&tmp.path().join("pipe.yaml"))?;
    let dir = tmp.path().to_owned();
    let set = within(Duration::from_secs(30), move || PolicySet::load(&dir))?;
    assert_eq!(set.teams.len(), 1);
    assert_eq!(
        set.warnings.iter().map(|d| d.code).collect::<Vec<_>>(),
        ["not-a-regular-file"]
    );
    Ok(())
}

#[test]
fn an_oversized_file_is_refused_by_a_bounded_read() -> TestResult {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("team.yaml"), TEAM)?;
    let mut big = TEAM.to_owned();
    big.push_str(&"# padding\n".repeat(500_000));
    std::fs::write(tmp.path().join("big.yaml"), big)?;
    let diags = invalid(PolicySet::load(tmp.path()));
    assert_eq!(diags[0].code, "file-too-large", "{diags:?}");
    assert!(diags[0].message.contains("big.yaml"));
    Ok(())
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("mkfifo").arg(path).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("mkfifo failed"))
    }
}
