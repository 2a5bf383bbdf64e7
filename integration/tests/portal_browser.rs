//! The portal's access-request flow, driven by a person's browser: a real headless Chromium
//! (Debian's `chromium` and `chromedriver`, through Python Selenium and
//! `integration/browser/portal_flow.py`) follows a real denial's link in the shop's local mesh.
//!
//! 1. checkout's `GET /v1/products` on catalog is denied at catalog's sidecar; the test takes
//!    the `requestAccess` link from the problem+json body;
//! 2. the browser opens it;
//! 3. the form shows caller and callee with their teams, the denied endpoint ticked and the
//!    others not, ephemeral environments `shared`, and says the grant applies at once
//!    (catalog is `open`, team storefront has `review: optional`);
//! 4. the browser submits it;
//! 5. checkout's call succeeds (the time from the click to the first allowed call is printed);
//! 6. team storefront's channels got `access.granted`; the grant file is in the policy
//!    directory and the audit log on `/access` lists it.
//!
//! Everything is real (`sluice up`, the controller and its portal, the sidecars, the shop's
//! services, the browser) except Slack: the teams' channels point at a local receiver
//! ([`Inbox`]). Screenshots of the form, the result, the callee's service page and `/access`
//! are left in `target/portal-screenshots/` for a person to look at.
//!
//! Needs root, `ip`, `iptables-save`, `curl`, `setpriv`, `/usr/bin/chromium`,
//! `/usr/bin/chromedriver` and Python's `selenium`; skips with a reason otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_integration::inbox::Inbox;
use sluice_integration::local_mesh::{
    HostSnapshot, LocalMesh, SERIAL, copy_dir, output, shop_mesh_yaml, skip_reason,
};
use sluice_integration::{free_port, skip, target_dir};

const CALLER: &str = "checkout";
const CALLEE: &str = "catalog";
/// Denied by the shop's policy (checkout may only read one product), immediate to grant.
const RPC: &str = "GET /v1/products";
const CALL: &str = "http://catalog:8080/v1/products";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn browser_skip_reason() -> Option<String> {
    if let Some(reason) = skip_reason() {
        return Some(reason);
    }
    for (file, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !Path::new(file).exists() {
            return Some(format!("{file} not found (Debian package {package})"));
        }
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !selenium.is_ok_and(|s| s.success()) {
        return Some("python3 cannot import selenium (pip install selenium)".into());
    }
    None
}

/// The shop, with the teams' channels at `inbox` (and a generic webhook for storefront next to
/// its Slack channel) and denial links pointing at the portal on `portal_port`.
fn start_shop(inbox: &Inbox, portal_port: u16) -> LocalMesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let policy = dir.path().join("policy");
    copy_dir(&shop.join("policy"), &policy);
    let edit = |file: &str, from: &str, to: &str| {
        let path = policy.join(file);
        let text = std::fs::read_to_string(&path).expect("read policy");
        assert!(text.contains(from), "{file} has no `{from}`");
        std::fs::write(&path, text.replace(from, to)).expect("write policy");
    };
    edit(
        "teams.yaml",
        "      slack: http://localhost:7072/slack/storefront\n",
        "      slack: http://localhost:7072/slack/storefront\n    \
         - name: storefront-audit-log\n      \
         webhook: http://localhost:7072/webhook/storefront\n",
    );
    edit("teams.yaml", "http://localhost:7072", &inbox.url());
    edit(
        "mesh.yaml",
        "http://localhost:7070/",
        &format!("http://127.0.0.1:{portal_port}/"),
    );
    let mesh = shop_mesh_yaml();
    let portal = format!("127.0.0.1:{portal_port}");
    LocalMesh::start_with(dir, &mesh, &[], &["--portal", &portal])
}

/// The status code of checkout's call to catalog (`000` when curl fails).
fn call_status(mesh: &LocalMesh) -> String {
    mesh.curl(CALLER, &["-o", "/dev/null", "-w", "%{http_code}", CALL])
        .unwrap_or_else(|_| "000".into())
}

/// Where the screenshots go: `target/portal-screenshots/`, emptied first.
fn screenshot_dir() -> PathBuf {
    let dir = target_dir().join("portal-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// This run's part of a snapshot: on a shared machine, other `sluice up` runs (another
/// checkout's tests, a demo) come and go while this one runs. Their names carry their own run
/// id; the host's iptables are still compared whole.
fn this_run(mut snapshot: HostSnapshot, run_id: &str) -> HostSnapshot {
    for names in [
        &mut snapshot.netns,
        &mut snapshot.links,
        &mut snapshot.etc_netns,
    ] {
        names.retain(|n| n.contains(run_id));
    }
    snapshot
}

#[test]
fn a_browser_follows_a_denial_to_the_portal_and_the_grant_takes_effect() {
    if let Some(reason) = browser_skip_reason() {
        skip("a_browser_follows_a_denial_…", &reason);
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let inbox = Inbox::start();
    let port = free_port();
    let mut mesh = start_shop(&inbox, port);
    let portal = format!("http://127.0.0.1:{port}");
    mesh.wait_for(
        "the shop and the portal to serve",
        Duration::from_secs(30),
        |m| {
            let status = m.status();
            output(&[
                "curl",
                "-sS",
                "--max-time",
                "2",
                &format!("{portal}/healthz"),
            ])
            .trim()
                == "ok"
                && status["proxies"]
                    .as_array()
                    .is_some_and(|p| p.len() == 4 && p.iter().all(|p| p["behind"] == false))
                && status["registrations"]
                    .as_array()
                    .is_some_and(|r| r.len() == 4)
        },
    );

    // 1. The denied call, as checkout gets it.
    let raw = mesh
        .curl(CALLER, &["-i", "-H", "accept: application/json", CALL])
        .expect("curl");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let problem: serde_json::Value = serde_json::from_str(body).expect("problem+json");
    assert_eq!(problem["caller"], CALLER, "{problem}");
    assert_eq!(problem["service"], CALLEE, "{problem}");
    assert_eq!(problem["rpc"], RPC, "{problem}");
    let link = problem["requestAccess"]
        .as_str()
        .expect("a requestAccess link")
        .to_owned();
    assert_eq!(
        link,
        format!(
            "{portal}/access/new?from=checkout&to=catalog&rpc=GET%20%2Fv1%2Fproducts&env=stable"
        )
    );
    println!("denied: {CALLER} → {CALLEE} {RPC}; link {link}");

    // 2–4. The browser follows the link, reads the form, submits it.
    let shots = screenshot_dir();
    let stderr_path = mesh.dir.path().join("browser.stderr");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/portal_flow.py");
    let mut browser = Command::new("python3")
        .arg(&script)
        .args(["--url", &link, "--callee", CALLEE])
        .args([
            "--reason",
            "Checkout shows the product list on the order page.",
        ])
        .arg("--screenshots")
        .arg(&shots)
        .arg("--profile")
        .arg(mesh.dir.path().join("chromium-profile"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("python3");
    let lines = BufReader::new(browser.stdout.take().expect("stdout"));
    let mut summary = serde_json::Value::Null;
    let mut allowed_after = None;
    for line in lines.lines() {
        let line = line.expect("browser output");
        let event: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                println!("browser: {line}");
                continue;
            }
        };
        match event["event"].as_str() {
            // 5. From the click on, poll the call until it is allowed.
            Some("submitting") => {
                let clicked = Instant::now();
                let until = clicked + Duration::from_secs(10);
                let mut last = String::new();
                while Instant::now() < until {
                    last = call_status(&mesh);
                    if last == "200" {
                        allowed_after = Some(clicked.elapsed());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(
                    allowed_after.is_some(),
                    "checkout's call was still {last} 10 s after the submission; sluice up's \
                     log:\n{}",
                    mesh.log()
                );
            }
            Some("summary") => summary = event,
            _ => {}
        }
    }
    let exit = browser.wait().expect("python3");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    println!("browser summary: {summary:#}");
    assert!(
        exit.success() && summary["error"].is_null(),
        "the browser flow failed ({exit}): {}\nstderr:\n{stderr}\nsluice up's log:\n{}",
        summary["error"],
        mesh.log()
    );
    let allowed_after = allowed_after.expect("the browser never submitted");
    println!(
        "portal grant → call allowed in {:.3}s (from the click on \"Request access\")",
        allowed_after.as_secs_f64()
    );

    // 3. What the form showed.
    let form = &summary["form"];
    assert_eq!(form["caller"], CALLER, "{form}");
    assert_eq!(form["caller_team"], "team storefront", "{form}");
    assert_eq!(form["callee"], CALLEE, "{form}");
    assert_eq!(form["callee_team"], "team storefront", "{form}");
    assert_eq!(form["environment"], "stable", "{form}");
    assert_eq!(
        form["endpoints"],
        serde_json::json!({
            "GET /v1/products": true,
            "GET /v1/products/{id}": false,
            "GET /healthz": false,
            "GET /metrics": false,
        }),
        "{form}"
    );
    assert_eq!(form["ephemeral"], "shared", "{form}");
    assert_eq!(
        form["decision"],
        "Submitting grants access at once: catalog is open and storefront lets its services \
         get access without review.",
        "{form}"
    );
    assert!(form["errors"].is_null(), "{form}");

    // 4. What the submission answered.
    let result = &summary["result"];
    assert!(
        result["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{portal}/access/"))),
        "{result}"
    );
    assert_eq!(result["status"], "granted", "{result}");
    assert!(
        result["banner"].as_str().is_some_and(|b| b.contains(
            "Granted: checkout may now call catalog. The grant is in grants/checkout-to-catalog.yaml"
        )),
        "{result}"
    );
    let service = &summary["service"];
    assert!(
        service["heading"]
            .as_str()
            .is_some_and(|h| h.contains(CALLEE)),
        "{service}"
    );

    // The grant file, and the audit log on /access.
    let file = mesh
        .dir
        .path()
        .join("policy/grants/checkout-to-catalog.yaml");
    let grant = std::fs::read_to_string(&file).expect("the grant file");
    assert!(
        grant.contains("\"checkout\"") && grant.contains("\"GET /v1/products\""),
        "{grant}"
    );
    let audit = summary["access"]["audit"]
        .as_array()
        .expect("audit rows")
        .clone();
    assert!(
        audit.iter().any(|row| row.as_str().is_some_and(
            |r| r.contains("granted") && r.contains("checkout → catalog: GET /v1/products")
        )),
        "no audit entry for the grant: {audit:?}"
    );

    // 6. Team storefront (caller's and callee's team) heard about it on both its channels.
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "developer".into());
    mesh.wait_for("the team messages", Duration::from_secs(10), |_| {
        let got = inbox.received();
        ["/slack/storefront", "/webhook/storefront"]
            .iter()
            .all(|p| got.iter().any(|r| r.path == *p))
    });
    let got = inbox.received();
    let webhook: Vec<_> = got
        .iter()
        .filter(|r| r.path == "/webhook/storefront")
        .collect();
    assert_eq!(webhook.len(), 1, "{got:?}");
    let message = &webhook[0].body;
    assert_eq!(message["kind"], "access.granted", "{message}");
    assert_eq!(message["fields"]["caller"], CALLER, "{message}");
    assert_eq!(message["fields"]["callee"], CALLEE, "{message}");
    assert_eq!(message["fields"]["rpcs"], RPC, "{message}");
    assert_eq!(
        message["fields"]["requested by"],
        user.as_str(),
        "{message}"
    );
    let slack: Vec<_> = got
        .iter()
        .filter(|r| r.path == "/slack/storefront")
        .collect();
    assert_eq!(slack.len(), 1, "{got:?}");
    assert!(
        slack[0]
            .body
            .to_string()
            .contains("checkout may now call catalog"),
        "{:?}",
        slack[0]
    );

    for name in ["form.png", "result.png", "service.png", "access.png"] {
        let path = shots.join(name);
        let png = std::fs::read(&path).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
        println!("screenshot: {}", path.display());
    }

    // Teardown leaves the machine as it was.
    let run_id = mesh.run_id.clone();
    mesh.signal("TERM");
    let status = mesh.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", mesh.log());
    assert_eq!(
        this_run(HostSnapshot::take(), &run_id),
        this_run(before, &run_id),
        "sluice up left something behind; its log:\n{}",
        mesh.log()
    );
}
