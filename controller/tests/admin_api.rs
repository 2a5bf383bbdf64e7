//! The admin API against its own description: the real `sluice controller` with the shop's
//! policy, its `GET /openapi.json`, its first clients (`sluice status`, `sluice rollout`), and
//! schemathesis (`st`, PyPI `schemathesis`, which `scripts/test` installs) generating requests
//! from the description: no answer may be a server error or disagree with the document.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Controller, repo_root};
use serde_json::Value;

fn controller() -> (tempfile::TempDir, Controller, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let policy = repo_root().join("examples/shop/policy");
    let c = Controller::start(
        &state,
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = std::fs::read_to_string(state.join("admin.addr"))
        .expect("admin.addr")
        .trim()
        .parse()
        .expect("an address");
    (dir, c, admin)
}

/// `GET path` with `headers`: status and body.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a reply");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

/// A validator for `components.schemas.NAME` of the document.
fn validator(doc: &Value, name: &str) -> jsonschema::Validator {
    let mut schema = doc.clone();
    schema["$ref"] = Value::String(format!("#/components/schemas/{name}"));
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_valid(doc: &Value, name: &str, value: &Value) {
    let v = validator(doc, name);
    let errors: Vec<String> = v.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{value:#}");
}

/// `sluice status` and `sluice rollout` call only what the document describes, and what they
/// decode is what it says the answers are.
#[test]
fn the_clis_speak_the_documented_api() {
    let (_dir, _c, admin) = controller();
    let (status, body) = get(admin, "/openapi.json", &[]);
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    // Every request the CLIs make (controller/src/status.rs, controller/src/rollout/cli.rs).
    for (method, path) in [
        ("get", "/status"),
        ("get", "/rollouts"),
        ("post", "/rollouts"),
        ("get", "/rollouts/{id}"),
        ("post", "/rollouts/{id}/{action}"),
        ("get", "/traffic"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    // What `sluice status` decodes.
    let (status, body) = get(admin, "/status", &[]);
    assert_eq!(status, 200);
    assert_valid(
        &doc,
        "StatusReport",
        &serde_json::from_str(&body).expect("JSON"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "status",
            "--controller",
            &admin.to_string(),
            "--format",
            "json",
        ])
        .output()
        .expect("sluice status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_valid(
        &doc,
        "StatusReport",
        &serde_json::from_slice(&out.stdout).expect("JSON"),
    );
    // What `sluice rollout` decodes, and its errors.
    let (status, body) = get(admin, "/rollouts", &[]);
    assert_eq!(status, 200);
    assert_valid(
        &doc,
        "RolloutList",
        &serde_json::from_str(&body).expect("JSON"),
    );
    let (status, body) = get(admin, "/rollouts/nothing-here", &[]);
    assert_eq!(status, 404);
    assert_valid(
        &doc,
        "ApiErrorBody",
        &serde_json::from_str(&body).expect("JSON"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "rollout",
            "status",
            "payments",
            "--controller",
            &admin.to_string(),
        ])
        .output()
        .expect("sluice rollout");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = get(admin, "/traffic", &[]);
    assert_eq!(status, 200);
    assert_valid(
        &doc,
        "TrafficList",
        &serde_json::from_str(&body).expect("JSON"),
    );
}

/// A web page cannot reach the admin API through a visitor's browser: not by a rebound host
/// name, not by a form posted from another site.
#[test]
fn the_admin_api_refuses_rebound_names_and_other_sites() {
    let (_dir, _c, admin) = controller();
    let (status, body) = get(admin, "/status", &[("Host", "evil.example")]);
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");
    assert_eq!(get(admin, "/status", &[("Host", "localhost")]).0, 200);
    let mut stream = TcpStream::connect(admin).expect("connect");
    let body = "service=payments&version=v2";
    write!(
        stream,
        "POST /rollouts/payments/abort HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(reply.contains("another site"), "{reply}");
}

/// Where `st` is, if schemathesis is installed.
fn schemathesis() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v st"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    (found.status.success() && Path::new(&path).exists()).then_some(path)
}

/// schemathesis generates requests from `/openapi.json` (valid and invalid ones, every
/// operation) and checks every answer: no server error, and status codes, content types and
/// bodies as documented.
#[test]
fn schemathesis_finds_nothing_wrong() {
    let Some(st) = schemathesis() else {
        eprintln!(
            "SKIPPED schemathesis_finds_nothing_wrong: `st` not found (pip install schemathesis)"
        );
        return;
    };
    let (dir, c, admin) = controller();
    let out = Command::new(st)
        .arg("run")
        .arg(format!("http://{admin}/openapi.json"))
        .args([
            "--checks",
            "all",
            // A start with a well-formed body for a service or version the policy does not
            // declare is refused (400): that is the API working, not failing.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "25",
            // A chart is rendered per request; a debug build on a busy machine is slow.
            "--request-timeout",
            "60",
            "--seed",
            "20240501",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}\ncontroller log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
}
