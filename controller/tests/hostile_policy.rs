//! Hostile files in the policy directory of a running controller (issue 11): whoever can add a
//! file there must not be able to stop the controller, freeze policy updates, or read another
//! file through `sluice status`, the admin API or the log. The real `sluice controller`
//! process, real files, `sluice status` and `sluice policy check` as an operator runs them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Fixture, PATIENCE};

/// The line a secret file holds; it must never be shown anywhere.
const SECRET: &str = "root: $6$SECRET-HASH-5f4dcc3b5aa765d61d8327deb882cf99:19000:0:99999:7:::";

fn version(status: &Value) -> String {
    status["snapshot"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn last_error(status: &Value) -> String {
    status["last_config_error"]["rendered"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `sluice policy check DIR`, with a deadline: it must never hang.
fn policy_check(dir: &Path) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["policy", "check"])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sluice policy check");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (status.code().unwrap_or(-1), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice policy check {} hangs", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn an_alias_bomb_is_refused_and_the_controller_stays_up() {
    let f = Fixture::new();
    let mut controller = f.start();
    let good = version(&f.status_json());
    // The bomb: one 1 MiB anchor used 3,000 times (3 GB expanded).
    let mut bomb = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata:\n  name: bomb\nspec:\n  members: []\n  channels:\n    - &big {}\n",
        "x".repeat(1 << 20)
    );
    bomb.push_str("  review:\n");
    for _ in 0..3000 {
        bomb.push_str("    - *big\n");
    }
    std::fs::write(f.policy.join("bomb.yaml"), &bomb).expect("write the bomb");
    let status = f
        .wait_status("the bomb to be refused", |s| {
            last_error(s).contains("yaml-too-large")
        })
        .await;
    let rendered = last_error(&status);
    assert!(
        rendered.contains("bomb.yaml:40:7"),
        "file:line:col of the alias that goes over: {rendered}"
    );
    assert!(rendered.contains("help:"), "{rendered}");
    assert_eq!(version(&status), good, "the last good version stays");
    assert!(
        controller.child.try_wait().expect("wait").is_none(),
        "the controller is still running"
    );
    // Its snippet shows a window of the offending line, never the 1 MiB anchor.
    assert!(rendered.len() < 4096, "{} bytes rendered", rendered.len());

    // A restart with the bomb in place refuses to start (exit 2) and says why, quickly and
    // without aborting.
    controller.kill();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("controller")
        .arg("--state-dir")
        .arg(&f.state)
        .arg("--policy")
        .arg(&f.policy)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .expect("restart the controller");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("yaml-too-large"), "{stderr}");
}

#[tokio::test]
async fn a_link_to_a_file_outside_never_shows_its_content() {
    let f = Fixture::new();
    let controller = f.start();
    let good = version(&f.status_json());
    let outside = f.policy.parent().expect("parent").join("shadow");
    std::fs::write(&outside, format!("{SECRET}\n")).expect("write the secret");
    std::os::unix::fs::symlink(&outside, f.policy.join("leak.yaml")).expect("link");
    let status = f
        .wait_status("the link to be refused", |s| {
            last_error(s).contains("symlink-outside")
        })
        .await;
    assert_eq!(
        version(&status),
        good,
        "refused: the last good version stays"
    );
    let rendered = last_error(&status);
    assert!(rendered.contains("leak.yaml"), "{rendered}");

    let (_, human) = f.status(false);
    let (_, json) = f.status(true);
    let (code, check) = policy_check(&f.policy);
    assert_eq!(code, 1, "{check}");
    assert!(check.contains("symlink-outside"), "{check}");
    // Give the log a moment to be written out, then look everywhere an operator (or a portal
    // user, who sees the last config error) could.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (what, text) in [
        ("sluice status", human),
        ("sluice status --format json (GET /status)", json),
        ("sluice policy check", check),
        ("the controller log", controller.log()),
    ] {
        assert!(
            !text.contains("SECRET-HASH"),
            "{what} shows the linked file's content:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_fifo_is_skipped_and_later_edits_are_still_published() {
    let f = Fixture::new();
    let controller = f.start();
    let before = version(&f.status_json());
    let fifo = f.policy.join("pipe.yaml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // A FIFO must not stop `sluice policy check` either.
    let (code, check) = policy_check(&f.policy);
    assert_eq!(code, 0, "{check}");
    assert!(check.contains("not-a-regular-file"), "{check}");

    // An edit after the FIFO appeared (a revocation, say) is published.
    f.edit(&f.access(), "reason:", "reason: revoked in a hurry;");
    let after = f
        .wait_status("the edit next to the FIFO", |s| version(s) != before)
        .await;
    assert!(
        after["last_config_error"].is_null(),
        "skipped, not refused: {after:#}"
    );
    // And after it is removed.
    std::fs::remove_file(&fifo).expect("remove the FIFO");
    let middle = version(&after);
    f.edit(
        &f.access(),
        "revoked in a hurry;",
        "revoked, then restored;",
    );
    f.wait_status("the edit after the FIFO left", |s| version(s) != middle)
        .await;
    let deadline = Instant::now() + PATIENCE;
    while !controller.log().contains("pipe.yaml is a FIFO") {
        assert!(
            Instant::now() < deadline,
            "the skipped FIFO is logged: {}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
