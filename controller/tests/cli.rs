//! The `sluice` binary as a user runs it: real process, real files, exit codes and output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_controller::{EXIT_ERROR, EXIT_NO, EXIT_OK, Terminal};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller crate sits in the workspace root")
        .to_path_buf()
}

/// Runs `sluice` from the repository root (so paths print as `examples/…`), with stdout
/// piped: not a terminal.
fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("NO_COLOR")
        .output()
        .expect("run sluice")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> u8 {
    o.status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .expect("exited normally")
}

#[test]
fn the_shop_is_valid_and_summarised() {
    let o = sluice(&["policy", "check", "examples/shop/policy"]);
    assert_eq!(code(&o), EXIT_OK, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o),
        "checked 7 files: 2 teams, 4 services, 4 access policies, 1 route, 1 canary policy — ok\n"
    );
}

#[test]
fn the_broken_copy_reports_every_error_with_position_and_fix() {
    let o = sluice(&["policy", "check", "examples/invalid"]);
    assert_eq!(code(&o), EXIT_NO);
    let out = stdout(&o);
    for expected in [
        "error[unknown-field]: unknown field `alow`",
        "--> examples/invalid/payments/access.yaml:15:7",
        "= help: did you mean `allow`?",
        "--> examples/invalid/storefront/access.yaml:42:14",
        "= help: did you mean `checkout`?",
        "= help: did you mean `restricted`?",
        "error[invalid-weight]: weights add up to 95, not 100",
        "unknown placeholder `{env}`",
        "invalid RPC `POST v1/orders`",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        out.ends_with("checked 7 files: 6 errors\n"),
        "summary line:\n{out}"
    );
}

#[test]
fn a_missing_directory_is_exit_2() {
    let o = sluice(&["policy", "check", "examples/does-not-exist"]);
    assert_eq!(code(&o), EXIT_ERROR);
    assert!(stdout(&o).is_empty());
    let err = stderr(&o);
    assert!(
        err.starts_with("error: cannot read examples/does-not-exist"),
        "{err}"
    );
}

#[test]
fn a_directory_without_policy_files_is_exit_2() {
    let empty = tempfile::tempdir().expect("tempdir");
    let path = empty.path().to_string_lossy().into_owned();
    let o = sluice(&["policy", "check", &path]);
    assert_eq!(code(&o), EXIT_ERROR);
    assert!(stderr(&o).contains("no policy files"), "{}", stderr(&o));
}

#[test]
fn json_output_parses_and_carries_the_diagnostics() {
    let o = sluice(&[
        "policy",
        "check",
        "examples/shop/policy",
        "--format",
        "json",
    ]);
    assert_eq!(code(&o), EXIT_OK);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["valid"], true);
    assert_eq!(v["files"], 7);
    assert_eq!(v["counts"]["MeshService"], 4);
    assert_eq!(v["counts"]["AccessPolicy"], 4);
    assert_eq!(v["diagnostics"], serde_json::json!([]));

    let o = sluice(&["policy", "check", "examples/invalid", "--format", "json"]);
    assert_eq!(code(&o), EXIT_NO);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["valid"], false);
    let diags = v["diagnostics"].as_array().expect("array");
    assert_eq!(diags.len(), 6);
    let alow = diags
        .iter()
        .find(|d| d["code"] == "unknown-field")
        .expect("the alow typo");
    assert_eq!(alow["severity"], "error");
    assert_eq!(alow["field"], "spec.rules[0].alow");
    assert_eq!(alow["location"]["line"], 15);
    assert_eq!(alow["location"]["column"], 7);
    assert_eq!(alow["help"], "did you mean `allow`?");

    let o = sluice(&["policy", "check", "nowhere", "--format", "json"]);
    assert_eq!(code(&o), EXIT_ERROR);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["valid"], false);
    assert!(v["error"].as_str().is_some_and(|e| e.contains("nowhere")));
}

#[test]
fn no_colour_when_piped_unless_forced() {
    let plain = sluice(&["policy", "check", "examples/invalid"]);
    assert!(!stdout(&plain).contains('\x1b'));
    let forced = sluice(&["policy", "check", "examples/invalid", "--color", "always"]);
    assert!(stdout(&forced).contains("\x1b[1;31m"));
    assert_eq!(code(&forced), EXIT_NO);
}

/// In-process, pretending to be a terminal: colour by default, none with NO_COLOR or `never`.
#[test]
fn colour_follows_terminal_and_no_color() {
    let run = |terminal: Terminal, extra: &[&str]| {
        let dir = repo_root().join("examples/invalid");
        let mut args = vec![
            "sluice".to_owned(),
            "policy".into(),
            "check".into(),
            dir.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = sluice_controller::run(args, terminal, &mut out, &mut err);
        assert_eq!(code, EXIT_NO);
        String::from_utf8(out).expect("UTF-8")
    };
    let tty = Terminal {
        stdout_is_tty: true,
        no_color: false,
    };
    let tty_no_color = Terminal {
        stdout_is_tty: true,
        no_color: true,
    };
    assert!(run(tty, &[]).contains('\x1b'));
    assert!(!run(tty, &["--color", "never"]).contains('\x1b'));
    assert!(!run(tty_no_color, &[]).contains('\x1b'));
    assert!(run(tty_no_color, &["--color", "always"]).contains('\x1b'));
    assert!(!run(Terminal::default(), &[]).contains('\x1b'));
}

#[test]
fn bad_arguments_are_exit_2_and_help_is_exit_0() {
    let o = sluice(&["policy", "check"]);
    assert_eq!(code(&o), EXIT_ERROR);
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
    let o = sluice(&["policy", "check", "--help"]);
    assert_eq!(code(&o), EXIT_OK);
    assert!(stdout(&o).contains("--format"));
}

#[test]
fn schema_prints_the_combined_schema() {
    let o = sluice(&["policy", "schema"]);
    assert_eq!(code(&o), EXIT_OK);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["oneOf"].as_array().map(Vec::len), Some(6));
}
