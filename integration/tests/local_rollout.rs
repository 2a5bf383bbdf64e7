//! Rollouts in `sluice up` against the real controller: the shipped shop
//! (`examples/shop/mesh.yaml` and its policy), `sluice up` with its own controller and rollout
//! engine, real namespaces and sidecars.
//!
//! 1. Editing the mesh file's `version: v1` to `v2` while `sluice up` runs (as the file's
//!    comment tells a user to) asks the controller for a rollout; the controller's engine
//!    starts it and the runner starts the canary beside the stable workload, with the
//!    version's environment; the canary's sidecar registers as v2. Promoted by hand
//!    (`sluice rollout promote`), the stable workload is retired and the canary takes the
//!    service address.
//! 2. A rollout started with `sluice rollout start` keeps its canary while the controller
//!    does not answer; aborted (`sluice rollout abort`), the canary is removed; a new rollout
//!    gets a fresh canary; and `sluice down` removes it after `sluice up` is killed.
//!
//! Both end by checking that the host is as it was. Only the teams' channels are pointed at a
//! local receiver. Needs root, `ip`, `iptables-save`, `curl` and `setpriv`; skips with a reason
//! otherwise (a failure in CI).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_integration::controller::sluice_bin;
use sluice_integration::inbox::Inbox;
use sluice_integration::local_mesh::{HostSnapshot, LocalMesh, SERIAL, copy_dir, skip_reason};
use sluice_integration::{shop_bin, skip};

const WITHIN: Duration = Duration::from_secs(60);

fn skipped(test: &str) -> bool {
    if let Some(reason) = skip_reason() {
        skip(test, &reason);
        return true;
    }
    false
}

/// The shipped shop, as `sluice up examples/shop/mesh.yaml` runs it: the mesh file with the
/// freshly built `shop` binary, and a copy of its policy whose team channels point at `inbox`.
fn start(inbox: &Inbox) -> LocalMesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let policy = dir.path().join("policy");
    copy_dir(&shop.join("policy"), &policy);
    let teams = std::fs::read_to_string(policy.join("teams.yaml")).expect("teams");
    std::fs::write(
        policy.join("teams.yaml"),
        teams.replace("http://localhost:7072", &inbox.url()),
    )
    .expect("teams");
    let mesh = std::fs::read_to_string(shop.join("mesh.yaml")).expect("the shop's mesh file");
    assert!(mesh.contains("../../target/debug/shop"), "{mesh}");
    let mesh = mesh.replace("../../target/debug/shop", &shop_bin().display().to_string());
    let mesh_file = LocalMesh::start_in(dir, &mesh);
    mesh_file.wait_for("the shop's registrations", WITHIN, |m| {
        registered(m, "payments", "v1")
            && m.status()["registrations"].as_array().map(Vec::len) == Some(4)
    });
    mesh_file
}

/// `sluice rollout ARGS --output json` against the mesh's controller, as a person runs it.
fn rollout(mesh: &LocalMesh, args: &[&str]) -> Value {
    let out = Command::new(sluice_bin())
        .arg("rollout")
        .args(args)
        .arg("--state-dir")
        .arg(mesh.state().join("controller"))
        .args(["--output", "json"])
        .output()
        .expect("sluice rollout");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "sluice rollout {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn phase(mesh: &LocalMesh, id: &str) -> String {
    rollout(mesh, &["status", id])["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The environment of `pid`.
fn environ(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|e| String::from_utf8_lossy(&e).replace('\0', "\n"))
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The pid of `workload`'s proxy.
fn proxy_pid(mesh: &LocalMesh, workload: &str) -> Option<u32> {
    mesh.pids(workload).into_iter().find(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("sluice-proxy"))
    })
}

/// The pid of `workload`'s shop server (`shop payments`).
fn server_pid(mesh: &LocalMesh, workload: &str) -> Option<u32> {
    mesh.pid_of(workload, "payments")
}

fn recorded(mesh: &LocalMesh, workload: &str) -> bool {
    mesh.record()["namespaces"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| *n == mesh.ns(workload)))
}

fn veths(mesh: &LocalMesh) -> BTreeSet<String> {
    mesh.record()["veths"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn registered(mesh: &LocalMesh, instance: &str, version: &str) -> bool {
    mesh.status()["registrations"].as_array().is_some_and(|r| {
        r.iter()
            .any(|r| r["instance"] == instance && r["version"] == version)
    })
}

/// A charge from checkout's namespace, through both sidecars: the response headers and body.
fn charge(mesh: &LocalMesh) -> String {
    mesh.curl(
        "checkout",
        &[
            "-i",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"amount": 1800, "currency": "EUR"}"#,
            "http://payments:8080/v1/charges",
        ],
    )
    .unwrap_or_else(|e| e)
    .to_lowercase()
}

#[test]
fn a_mesh_file_edit_starts_a_rollout_on_the_real_controller_whose_canary_is_promoted() {
    if skipped("a_mesh_file_edit_starts_a_rollout_on_the_real_controller_whose_canary_is_promoted")
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let inbox = Inbox::start();
    let mut mesh = start(&inbox);
    assert!(charge(&mesh).contains("shop-version: v1"));

    // The user edits payments' version in the mesh file, as its comment says.
    let file = mesh.dir.path().join("mesh.yaml");
    let text = std::fs::read_to_string(&file).expect("mesh file");
    let edited = text.replacen(
        "name: payments\n    service: payments\n    version: v1",
        "name: payments\n    service: payments\n    version: v2",
        1,
    );
    assert_ne!(
        edited, text,
        "the shipped mesh file's payments entry changed shape"
    );
    let tmp = mesh.dir.path().join(".mesh.yaml.tmp");
    std::fs::write(&tmp, edited).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");

    // `sluice up` asked the real controller, whose engine started a rollout.
    let said = "sluice up: mesh file: payments v1→v2: the controller started rollout ";
    mesh.wait_for("the controller's answer in the log", WITHIN, |m| {
        m.log().contains(said)
    });
    let log = mesh.log();
    let id = log
        .split(said)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a rollout id")
        .to_owned();
    let status = rollout(&mesh, &["status", &id]);
    assert_eq!(
        (
            &status["service"],
            &status["baseline_version"],
            &status["canary_version"]
        ),
        (&"payments".into(), &"v1".into(), &"v2".into()),
        "{status:#}"
    );

    // The canary starts beside the stable workload, recorded before it is created, with the
    // version's environment merged over the base one.
    mesh.wait_for("the canary's server", WITHIN, |m| {
        server_pid(m, "payments-v2").is_some()
    });
    assert!(mesh.has_ns("payments"), "the stable one keeps running");
    assert!(recorded(&mesh, "payments-v2"), "{}", mesh.record());
    let hosts = std::fs::read_to_string(format!("/etc/netns/{}/hosts", mesh.ns("payments-v2")))
        .unwrap_or_else(|e| panic!("the canary's hosts: {e}\n{}", mesh.log()));
    assert!(hosts.contains("payments"), "{hosts}");
    let server = server_pid(&mesh, "payments-v2").expect("canary server");
    let env = environ(server);
    assert!(env.contains("SHOP_VERSION=v2"), "the version's env: {env}");
    assert!(
        mesh.log().contains(&format!(
            "sluice up: rollout {id} payments v1→v2: started canary payments-v2 (10.213."
        )),
        "{}",
        mesh.log()
    );
    // Its sidecar registered with the controller as the canary version, and the engine moves
    // the rollout on.
    mesh.wait_for("the canary's registration as v2", WITHIN, |m| {
        registered(m, "payments-v2", "v2")
    });
    assert!(registered(&mesh, "payments", "v1"));
    mesh.wait_for("the rollout to progress", WITHIN, |m| {
        phase(m, &id) == "progressing"
    });

    // Promoted by hand: the stable workload is retired; the canary keeps running (the same
    // process: it was never restarted) and now carries the service address.
    let promoted = rollout(&mesh, &["promote", &id]);
    assert!(promoted.get("error").is_none(), "{promoted:#}");
    mesh.wait_for("the old payments to be retired", WITHIN, |m| {
        !m.has_ns("payments")
    });
    assert_eq!(phase(&mesh, &id), "promoted");
    assert!(
        mesh.log().contains(&format!(
            "sluice up: rollout {id} payments v1→v2: promoted: retired payments"
        )),
        "{}",
        mesh.log()
    );
    assert_eq!(mesh.log().matches("started canary").count(), 1);
    assert!(!recorded(&mesh, "payments"), "{}", mesh.record());
    assert!(!Path::new("/etc/netns").join(mesh.ns("payments")).exists());
    assert_eq!(server_pid(&mesh, "payments-v2"), Some(server));
    let addrs = sluice_integration::local_mesh::output(&[
        "ip",
        "netns",
        "exec",
        &mesh.ns("payments-v2"),
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    assert!(addrs.contains("/32"), "the service address moved: {addrs}");
    // Checkout's charges now reach v2 only.
    mesh.wait_for("charges answered by v2", WITHIN, |m| {
        (0..10).all(|_| charge(m).contains("shop-version: v2"))
    });

    mesh.signal("TERM");
    let status = mesh.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", mesh.log());
    assert!(mesh.log().contains("everything removed"), "{}", mesh.log());
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice up left something behind"
    );
}

#[test]
fn an_aborted_canary_is_removed_and_down_cleans_up_after_a_kill() {
    if skipped("an_aborted_canary_is_removed_and_down_cleans_up_after_a_kill") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let inbox = Inbox::start();
    let mut mesh = start(&inbox);
    let stable_veths = veths(&mesh);

    // Started by hand, without touching the mesh file.
    let started = rollout(&mesh, &["start", "payments", "--version", "v3"]);
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started:#}"))
        .to_owned();
    mesh.wait_for("the canary, registered", WITHIN, |m| {
        server_pid(m, "payments-v3").is_some() && registered(m, "payments-v3", "v3")
    });
    let server = server_pid(&mesh, "payments-v3").expect("canary server");
    assert!(environ(server).contains("SHOP_ERROR_RATE=0.05"));
    // The long-lived processes (a pyenv shim may fork short-lived helpers too).
    let canary_pids = [
        server,
        proxy_pid(&mesh, "payments-v3").expect("the canary's proxy"),
    ];
    // The canary and, as the shop's analysis asks (`baseline: copy`), a fresh copy of v1 to
    // judge it against: one veth each.
    mesh.wait_for("the baseline copy", WITHIN, |m| {
        server_pid(m, "payments-v1-baseline").is_some()
    });
    let copy_pid = server_pid(&mesh, "payments-v1-baseline").expect("the copy's server");
    let first_canary: Vec<String> = veths(&mesh).difference(&stable_veths).cloned().collect();
    assert_eq!(first_canary.len(), 2, "{first_canary:?}");

    // The controller stops answering (frozen, so `sluice up` does not restart it): the runner
    // says so, and the canary stays.
    let controller = mesh.status()["controller"]["pid"]
        .as_u64()
        .expect("the controller's pid")
        .to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args(["-s", sig, &controller])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("STOP");
    let outage = "; the workloads stay as they are until it answers";
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // `sluice status` asks the frozen controller too, so look at the log only.
        let until = std::time::Instant::now() + WITHIN;
        while !mesh.log().contains(outage) {
            assert!(
                std::time::Instant::now() < until,
                "no outage in the log:\n{}",
                mesh.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }));
    signal("CONT");
    if let Err(panic) = waited {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(server_pid(&mesh, "payments-v3"), Some(server));
    assert!(canary_pids.iter().all(|p| alive(*p)), "nothing was stopped");
    mesh.wait_for("the API to answer again", WITHIN, |m| {
        m.log().contains("sluice up: the rollout API answers again")
    });

    // Aborted by hand: the canary's processes, namespace, veth and /etc/netns entry go.
    let aborted = rollout(&mesh, &["abort", &id]);
    assert!(aborted.get("error").is_none(), "{aborted:#}");
    // The runner says so once the removal is done, a moment after the namespace goes.
    let said = format!("sluice up: rollout {id} payments v1→v3: aborted: removed payments-v3");
    mesh.wait_for("the canary to be removed", WITHIN, |m| {
        !m.has_ns("payments-v3") && m.log().contains(&said)
    });
    assert_eq!(phase(&mesh, &id), "aborted");
    assert!(canary_pids.iter().all(|p| !alive(*p)), "{canary_pids:?}");
    mesh.wait_for("the baseline copy to be removed", WITHIN, |m| {
        !m.has_ns("payments-v1-baseline")
    });
    assert!(!alive(copy_pid), "the baseline copy's server still runs");
    assert!(!recorded(&mesh, "payments-v3"), "{}", mesh.record());
    assert!(
        !Path::new("/etc/netns")
            .join(mesh.ns("payments-v3"))
            .exists()
    );
    // The runner's record drops the copy's veth after its namespace is gone (seen in CI: the
    // record still listed it when read right after), so it is waited for, not read at once.
    mesh.wait_for("the canary's and the copy's veths to go", WITHIN, |m| {
        veths(m) == stable_veths
    });
    assert!(mesh.has_ns("payments") && server_pid(&mesh, "payments").is_some());

    // A new rollout of the same version: a fresh canary, on a fresh veth.
    let again = rollout(&mesh, &["start", "payments", "--version", "v3"]);
    assert!(
        again["id"].is_string() && again["id"] != id.as_str(),
        "{again:#}"
    );
    mesh.wait_for("the second canary and its copy", WITHIN, |m| {
        server_pid(m, "payments-v3").is_some() && server_pid(m, "payments-v1-baseline").is_some()
    });
    let second_canary: Vec<String> = veths(&mesh).difference(&stable_veths).cloned().collect();
    assert_eq!(second_canary.len(), 2, "{second_canary:?}");
    assert!(
        second_canary.iter().all(|v| !first_canary.contains(v)),
        "fresh veths: {second_canary:?} after {first_canary:?}"
    );

    // Killed with a canary running: `sluice down` removes it too (it is in up.json).
    mesh.signal("KILL");
    mesh.wait_exit(Duration::from_secs(10));
    mesh.down();
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice down left something behind"
    );
}
