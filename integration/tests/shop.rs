//! The demo shop as a local mesh, end to end: `sluice up` on the shop's services (the real
//! `shop` binary) in network namespaces, real sidecars with mTLS, the real controller. One
//! run walks the README's story and the controller's promises:
//!
//! 1. an order placed through the ingress is refused at payments' sidecar, and the denial
//!    reaches the shop page, the caller (problem+json) and `sluice status`;
//! 2. the controller is killed under load: no request on existing routes fails, the restarted
//!    controller has every registration and denial it had, and every proxy is back on the
//!    current version;
//! 3. a grant written to the policy directory takes effect, and the order goes through;
//! 4. a crashed workload is restarted;
//! 5. SIGTERM removes every namespace, link and iptables rule.
//!
//! Needs root, `ip`, `iptables-save`, `curl` and `setpriv`; skips with a reason otherwise.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sluice_integration::local_mesh::{
    HostSnapshot, LocalMesh, SERIAL, copy_dir, shop_mesh_yaml, skip_reason,
};
use sluice_integration::{PATIENCE, shop_bin, skip, wait_for};

const GRANT: &str = "apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: checkout-confirms-charges }
spec:
  service: payments
  rules:
    - from: [checkout]
      allow: [\"GET /v1/charges/{id}\"]
      reason: Checkout confirms the charge before it tells the customer.
";

fn start_shop() -> LocalMesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    copy_dir(&shop.join("policy"), &dir.path().join("policy"));
    let mesh = shop_mesh_yaml();
    LocalMesh::start_in(dir, &mesh)
}

/// Places an order through the ingress, as a browser's form post does.
fn order(mesh: &LocalMesh) -> String {
    mesh.curl_ingress(
        "frontend.localhost",
        "/checkout",
        &["-d", "product_id=ceramic-mug&quantity=1"],
    )
}

fn proxies_current(status: &serde_json::Value, n: usize) -> bool {
    status["proxies"]
        .as_array()
        .is_some_and(|p| p.len() == n && p.iter().all(|p| p["behind"] == false))
}

#[test]
fn the_shop_denies_then_grants_survives_a_controller_restart_and_cleans_up() {
    if let Some(reason) = skip_reason() {
        skip("the_shop_…", &reason);
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let mut mesh = start_shop();
    mesh.wait_for("the shop to serve", Duration::from_secs(30), |m| {
        let status = m.status();
        m.curl_ingress("frontend.localhost", "/healthz", &[]).trim() == "ok"
            && proxies_current(&status, 4)
            && status["registrations"]
                .as_array()
                .is_some_and(|r| r.len() == 4)
    });

    // 1. The denial, as the shop page shows it…
    let page = order(&mesh);
    assert!(page.contains("We could not place your order"), "{page}");
    assert!(
        page.contains("checkout is not allowed to call GET /v1/charges/ch_"),
        "{page}"
    );
    // …with the link offering the declared endpoint, not the one charge.
    assert!(
        page.contains("access/new?from=checkout&amp;to=payments&amp;rpc=GET%20%2Fv1%2Fcharges%2F%7Bid%7D&amp;env=stable"),
        "{page}"
    );
    // …as the caller gets it (problem+json from payments' sidecar)…
    let raw = mesh
        .curl(
            "checkout",
            &[
                "-i",
                "-H",
                "accept: application/json",
                "http://payments:8080/v1/charges/ch_0123456789abcdef_100_EUR",
            ],
        )
        .expect("curl");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(head.contains("sluice-denied-by: payments-"), "{head}");
    assert!(head.contains("rel=\"help\""), "{head}");
    let problem: serde_json::Value = serde_json::from_str(body).expect("problem+json");
    assert_eq!(problem["caller"], "checkout");
    assert_eq!(problem["service"], "payments");
    assert_eq!(
        problem["rpc"],
        "GET /v1/charges/ch_0123456789abcdef_100_EUR"
    );
    assert_eq!(problem["policy"], "payments-callers");
    assert_eq!(problem["environment"], "stable");
    assert!(
        problem["requestAccess"]
            .as_str()
            .is_some_and(|l| l.contains("rpc=GET%20%2Fv1%2Fcharges%2F%7Bid%7D")),
        "{problem}"
    );
    // …over gRPC too (payments' second port), as a rich status the client can read…
    let refund = Command::new("ip")
        .args([
            "netns",
            "exec",
            &mesh.ns("checkout"),
            &shop_bin().display().to_string(),
        ])
        .args(["refund", "ch_0123456789abcdef_100_EUR"])
        .output()
        .expect("shop refund");
    let refund = format!(
        "{}{}",
        String::from_utf8_lossy(&refund.stdout),
        String::from_utf8_lossy(&refund.stderr)
    );
    assert!(
        refund.contains("PermissionDenied")
            && refund.contains(
                "checkout is not allowed to call payments.v1.Payments/Refund on payments"
            ),
        "{refund}"
    );
    // …and as the controller recorded it, by endpoint.
    mesh.wait_for("the denial report", Duration::from_secs(15), |m| {
        m.status()["denials"]["recent"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["rpc"] == "GET /v1/charges/{id}"))
    });

    // 2. Kill the controller under load on an existing route (checkout → catalog).
    let status = mesh.status();
    let version = status["snapshot"]["version"].clone();
    let registrations = status["registrations"].clone();
    let denials_total = status["denials"]["total"].as_i64().expect("total");
    let controller_pid = status["controller"]["pid"].as_u64().expect("pid");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU32::new(0));
    let ns = mesh.ns("checkout");
    let load = {
        let (stop, served) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                // 20 requests on one connection per curl, so the load is steady.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns, "curl", "-s", "--max-time", "5"])
                    .args(["-w", "%{http_code}\\n"]);
                for _ in 0..20 {
                    cmd.args([
                        "-o",
                        "/dev/null",
                        "http://catalog:8080/v1/products/ceramic-mug",
                    ]);
                }
                let out = cmd.output().expect("curl");
                for code in String::from_utf8_lossy(&out.stdout).lines() {
                    if code == "200" {
                        ok += 1;
                        served.fetch_add(1, Ordering::Relaxed);
                    } else if failed.len() < 20 {
                        failed.push(code.to_owned());
                    }
                }
            }
            (ok, failed)
        })
    };
    // The load is flowing before the kill, and goes on after the new controller took over.
    let flowing = |after: u32| {
        wait_for("requests through the mesh", PATIENCE, || {
            (served.load(Ordering::Relaxed) >= after + 20).then_some(())
        })
    };
    flowing(0);
    Command::new("kill")
        .args(["-KILL", &controller_pid.to_string()])
        .status()
        .expect("kill");
    mesh.wait_for(
        "the restarted controller with every proxy current",
        Duration::from_secs(30),
        |m| {
            let s = m.status();
            s["controller"]["pid"]
                .as_u64()
                .is_some_and(|p| p != controller_pid)
                && proxies_current(&s, 4)
        },
    );
    // Keep going on the new controller's configuration for a while.
    flowing(served.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    assert!(ok >= 20, "only {ok} requests made it");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while the controller restarted: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    let after = mesh.status();
    assert_eq!(after["snapshot"]["version"], version);
    let addresses = |r: &serde_json::Value| {
        let mut a: Vec<String> = r
            .as_array()
            .expect("registrations")
            .iter()
            .map(|r| format!("{} {}", r["instance"], r["address"]))
            .collect();
        a.sort();
        a
    };
    assert_eq!(
        addresses(&after["registrations"]),
        addresses(&registrations)
    );
    assert!(after["denials"]["total"].as_i64().expect("total") >= denials_total);
    println!("controller restart under load: {ok} requests, 0 failed");

    // 3. Grant the call by adding a policy file; the order goes through.
    let grants = mesh.dir.path().join("policy/grants");
    std::fs::create_dir_all(&grants).expect("grants dir");
    let tmp = grants.join(".checkout-to-payments.yaml.tmp");
    std::fs::write(&tmp, GRANT).expect("write");
    std::fs::rename(&tmp, grants.join("checkout-to-payments.yaml")).expect("rename");
    let granted_at = Instant::now();
    mesh.wait_for("the grant to take effect", Duration::from_secs(10), |m| {
        m.curl(
            "checkout",
            &[
                "-f",
                "-o",
                "/dev/null",
                "http://payments:8080/v1/charges/ch_0123456789abcdef_100_EUR",
            ],
        )
        .is_ok()
    });
    println!(
        "grant by file → call allowed in {:.2}s",
        granted_at.elapsed().as_secs_f64()
    );
    let page = order(&mesh);
    assert!(page.contains("Order placed"), "{page}");

    // 4. A crashed workload is restarted, and serves again.
    let pid = mesh.pid_of("payments", "payments").expect("payments' pid");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    mesh.wait_for("payments to be restarted", Duration::from_secs(20), |m| {
        m.pid_of("payments", "payments").is_some_and(|p| p != pid)
    });
    mesh.wait_for("an order after the restart", Duration::from_secs(20), |m| {
        order(m).contains("Order placed")
    });

    // 5. Teardown leaves the machine as it was.
    mesh.signal("TERM");
    let status = mesh.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", mesh.log());
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice up left something behind"
    );
}
