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
    assert!(!stderr(&o).contains('\x1b'), "no colour on a pipe");
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

const SHOP: &str = "examples/shop/policy";

fn explain(from: &str, to: &str, rpc: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "policy", "explain", SHOP, "--from", from, "--to", to, "--rpc", rpc,
    ];
    args.extend_from_slice(extra);
    sluice(&args)
}

#[test]
fn explain_names_the_rule_that_allows_a_call() {
    let o = explain("checkout", "payments", "POST /v1/charges", &[]);
    assert_eq!(code(&o), EXIT_OK, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("checkout → payments: POST /v1/charges"),
        "{out}"
    );
    assert!(out.contains("\nallowed\n"), "{out}");
    assert!(
        out.contains("rule `charge-cards` of AccessPolicy `payments-callers`"),
        "{out}"
    );
    assert!(
        out.contains("grant:    Checkout charges the customer's card"),
        "{out}"
    );
    assert!(!out.contains("request:"), "{out}");
}

#[test]
fn explain_a_denial_gives_the_access_request_link() {
    let o = explain(
        "checkout",
        "payments",
        "GET /v1/charges/ch_42",
        &["--env", "pr-7"],
    );
    assert_eq!(code(&o), EXIT_NO);
    let out = stdout(&o);
    assert!(out.contains("\ndenied\n"), "{out}");
    // The link offers the declared endpoint, which is what a grant should name.
    assert!(
        out.contains(
            "request:  http://localhost:7070/access/new?from=checkout&to=payments\
             &rpc=GET%20%2Fv1%2Fcharges%2F%7Bid%7D&env=pr-7"
        ),
        "{out}"
    );
    assert!(out.contains("review:   required"), "{out}");
    assert!(out.contains("endpoint: GET /v1/charges/{id}"), "{out}");
}

#[test]
fn explain_accepts_a_declared_endpoint_template() {
    let o = explain(
        "checkout",
        "payments",
        "GET /v1/charges/{id}",
        &["--format", "json"],
    );
    assert_eq!(code(&o), EXIT_NO);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["reason"], "no-rule-allows");
    assert_eq!(v["rpc"], "GET /v1/charges/{id}");
    assert_eq!(v["alreadyGranted"], serde_json::json!(["POST /v1/charges"]));
    assert!(
        v["accessRequestUrl"]
            .as_str()
            .is_some_and(|u| u.contains("rpc=GET%20%2Fv1%2Fcharges%2F%7Bid%7D"))
    );
}

#[test]
fn explain_json_for_an_allowed_call() {
    let o = explain(
        "frontend",
        "catalog",
        "GET /v1/products/p-1",
        &["--format", "json"],
    );
    assert_eq!(code(&o), EXIT_OK);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["policy"], "catalog-callers");
    assert_eq!(v["rule"], "browse");
    assert_eq!(v["pattern"], "GET /v1/products/*");
    assert!(v.get("accessRequestUrl").is_none());
}

#[test]
fn explain_unauthenticated_callers_and_exemptions() {
    let o = explain("unauthenticated", "payments", "GET /healthz", &[]);
    assert_eq!(code(&o), EXIT_OK);
    assert!(stdout(&o).contains("grant:    kubelet probes"));
    let o = explain("unauthenticated", "payments", "POST /v1/charges", &[]);
    assert_eq!(code(&o), EXIT_NO);
    assert!(stdout(&o).contains("no mesh identity"), "{}", stdout(&o));
}

#[test]
fn explain_grpc_calls() {
    let o = explain("checkout", "payments", "payments.v1.Payments/Refund", &[]);
    assert_eq!(code(&o), EXIT_NO);
    assert!(stdout(&o).contains("endpoint: payments.v1.Payments/Refund"));
}

#[test]
fn explain_rejects_bad_questions_with_exit_2() {
    let o = explain("checkot", "payments", "POST /v1/charges", &[]);
    assert_eq!(code(&o), EXIT_ERROR);
    assert!(
        stderr(&o).contains("did you mean `checkout`?"),
        "{}",
        stderr(&o)
    );
    let o = explain("checkout", "paymens", "POST /v1/charges", &[]);
    assert_eq!(code(&o), EXIT_ERROR);
    let o = explain("checkout", "payments", "POST v1/charges", &[]);
    assert_eq!(code(&o), EXIT_ERROR);
    assert!(stderr(&o).contains("must start with `/`"), "{}", stderr(&o));
    let o = sluice(&[
        "policy",
        "explain",
        "examples/invalid",
        "--from",
        "checkout",
        "--to",
        "payments",
        "--rpc",
        "POST /v1/charges",
    ]);
    assert_eq!(code(&o), EXIT_ERROR);
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("unknown field `alow`"));
}

#[test]
fn explain_audit_mode_allows_but_says_it_would_deny() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("audit.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: {name: t}\nspec: {}\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {name: a}\nspec: {team: t}\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {name: b}\nspec: {team: t}\n---\n\
         apiVersion: sluice.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: b-callers}\n\
         spec: {service: b, mode: audit}\n",
    )
    .expect("write");
    let path = dir.path().to_string_lossy().into_owned();
    let o = sluice(&[
        "policy", "explain", &path, "--from", "a", "--to", "b", "--rpc", "GET /x",
    ]);
    assert_eq!(code(&o), EXIT_OK, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("would be denied"), "{out}");
    assert!(out.contains("request:  "), "{out}");
}

#[test]
fn explain_a_tcp_connection_says_it_is_opaque_tcp() {
    let o = explain("checkout", "payments", "tcp:5432", &[]);
    assert_eq!(code(&o), EXIT_NO, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("checkout → payments: tcp:5432"), "{out}");
    assert!(out.contains("kind:     opaque TCP"), "{out}");
    assert!(out.contains("rpc=tcp%3A5432"), "{out}");
    let o = explain("checkout", "payments", "TCP:5432", &[]);
    assert!(
        stderr(&o).contains("did you mean `tcp:5432`?"),
        "{}",
        stderr(&o)
    );
}
