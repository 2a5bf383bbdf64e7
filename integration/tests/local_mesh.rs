//! `sluice up` and `sluice down` with generic workloads (python's http.server standing in for
//! checkout and catalog): namespaces, the ingress, crash restarts, and cleanup after SIGTERM
//! and after a killed run. The demo shop itself is exercised in `shop.rs`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_integration::local_mesh::{HostSnapshot, LocalMesh, SERIAL, skip_reason};
use sluice_integration::{have, skip};

fn skipped(test: &str) -> bool {
    let reason = skip_reason().or_else(|| (!have("python3")).then(|| "no python3".into()));
    if let Some(reason) = reason {
        skip(test, &reason);
        return true;
    }
    false
}

/// Two python servers under the shop's policy (checkout may call `GET /v1/products/{id}` on
/// catalog, not the list).
fn start() -> LocalMesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let www = dir.path().join("www/v1/products");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("mug"), "a mug\n").expect("write");
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
    let server = r#"[python3, -m, http.server, "8080", --directory, www]"#;
    let mesh = format!(
        "policy: {}\nworkloads:\n  - {{name: checkout, service: checkout, command: {server}, port: 8080}}\n  - {{name: catalog, service: catalog, command: {server}, port: 8080}}\n",
        policy.canonicalize().expect("policy dir").display()
    );
    LocalMesh::start_in(dir, &mesh)
}

#[test]
fn up_serves_through_sidecars_restarts_crashes_and_cleans_up_on_sigterm() {
    if skipped("up_serves_through_sidecars_restarts_crashes_and_cleans_up_on_sigterm") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let mut run = start();
    let during = HostSnapshot::take();
    for w in ["checkout", "catalog"] {
        assert!(during.netns.contains(&run.ns(w)), "{during:?}");
    }
    assert!(
        !std::fs::read_to_string(format!("/etc/netns/{}/hosts", run.ns("checkout")))
            .expect("hosts")
            .is_empty()
    );

    // checkout → catalog by service name, through both sidecars, with mTLS identity.
    let text = ["-H", "accept: text/plain"];
    let url = "http://catalog:8080/v1/products/mug";
    run.wait_for(
        "a call through the sidecars",
        Duration::from_secs(20),
        |m| {
            m.curl("checkout", &[&text[..], &[url]].concat())
                .is_ok_and(|b| b == "a mug\n")
        },
    );
    let denied = run
        .curl(
            "checkout",
            &[&text[..], &["http://catalog:8080/v1/products"]].concat(),
        )
        .expect("denial");
    assert!(
        denied.contains("checkout is not allowed to call GET /v1/products on catalog"),
        "the callee saw checkout's identity: {denied}"
    );

    // The ingress on the host's loopback routes by Host header (as an unauthenticated caller,
    // which catalog's policy refuses: the refusal comes from catalog's sidecar).
    let answer = run.curl_ingress("catalog.localhost", "/v1/products/mug", &text);
    assert!(
        answer.contains(
            "without a mesh identity is not allowed to call GET /v1/products/mug on catalog"
        ),
        "{answer}"
    );
    assert!(
        run.curl_ingress("nope.localhost", "/", &text)
            .contains("no service")
    );

    // A crashed workload is restarted.
    let pid = run
        .pid_of("catalog", "http.server")
        .expect("catalog's server");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    run.wait_for("catalog to be restarted", Duration::from_secs(20), |m| {
        m.pid_of("catalog", "http.server").is_some_and(|p| p != pid)
    });
    assert!(run.log().contains("[catalog] exited"), "{}", run.log());
    run.wait_for(
        "the restarted catalog to serve",
        Duration::from_secs(20),
        |m| {
            m.curl("checkout", &[&text[..], &[url]].concat())
                .is_ok_and(|b| b == "a mug\n")
        },
    );

    run.signal("TERM");
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", run.log());
    assert!(run.log().contains("everything removed"), "{}", run.log());
    assert!(!run.state().join("up.json").exists());
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice up left something behind"
    );
}

#[test]
fn down_cleans_up_after_a_killed_up() {
    if skipped("down_cleans_up_after_a_killed_up") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let mut run = start();
    assert_ne!(HostSnapshot::take(), before);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.state().join("up.json")).expect("up.json"),
    )
    .expect("json");
    let controller = state["controller_pid"].as_u64().expect("controller pid");

    run.signal("KILL");
    run.wait_exit(Duration::from_secs(10));
    assert_ne!(HostSnapshot::take(), before, "a killed run leaves its mesh");

    run.down();
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice down left something behind"
    );
    // Gone, or a zombie waiting for whoever inherited it to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{controller}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "controller still running: {stat}"
    );
    assert!(!run.state().join("up.json").exists());
    // Nothing left to do the second time.
    run.down();
}
