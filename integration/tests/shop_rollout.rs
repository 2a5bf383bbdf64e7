//! Progressive delivery in the local mesh, end to end: the real shop, `sluice up`, the real
//! controller and sidecars, real traffic, and a real webhook receiver standing in for the
//! teams' Slack and generic webhooks. One run walks three rollouts of payments:
//!
//! 1. v3, which fails 5% of requests and is no slower, is rolled back automatically *for its
//!    errors* (no latency check fails it), judged against a fresh copy of v1; the teams get a
//!    message naming the metric, both values, the margin, the evidence, the baseline used, the
//!    canary's last log lines, the rollout page and the chart (a valid PNG);
//! 2. v2, healthy, survives a SIGKILL of the controller mid-rollout (same rollout, same step,
//!    one promotion, one promotion message), waits for confirmation and is promoted: payments
//!    then answers as v2 only;
//! 3. v3 again, paused (the weights hold) and aborted by hand; then promoted by hand.
//!
//! The canary policy is the shop's as shipped (`examples/shop/policy/payments/rollout.yaml`:
//! errors within 0.5 points, p99 within 20% and 5 ms and under 500 ms, α 0.01, 100 requests a
//! step), only with shorter steps, so the run takes a few minutes. Needs root, `ip`,
//! `iptables-save`, `curl` and `setpriv`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_integration::controller::sluice_bin;
use sluice_integration::inbox::Inbox;
use sluice_integration::local_mesh::{HostSnapshot, LocalMesh, SERIAL, copy_dir, skip_reason};
use sluice_integration::{shop_bin, skip};

/// The shop's CanaryPolicy step durations, and what this test shortens them to: the shipped
/// policy otherwise (its analysis, α, margins and floor, `minRequests`, the confirmation step,
/// the deadline and the notifications), so the test judges what users run.
const SHORTER_STEPS: [(&str, &str); 3] = [
    (
        "{ weight: 5, duration: 30s }",
        "{ weight: 5, duration: 10s }",
    ),
    (
        "{ weight: 25, duration: 1m }",
        "{ weight: 25, duration: 8s }",
    ),
    (
        "{ weight: 50, duration: 2m, confirm: true }",
        "{ weight: 50, duration: 4s, confirm: true }",
    ),
];

/// The shop with payments' canary versions, its policy copied so the test can point the
/// teams' channels at `inbox` and speed the canary policy up.
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
    let path = policy.join("payments/rollout.yaml");
    let mut rollout = std::fs::read_to_string(&path).expect("rollout.yaml");
    for (shipped, shorter) in SHORTER_STEPS {
        assert!(
            rollout.contains(shipped),
            "examples/shop/policy/payments/rollout.yaml no longer has `{shipped}`: update this test"
        );
        rollout = rollout.replace(shipped, shorter);
    }
    std::fs::write(&path, rollout).expect("rollout.yaml");
    let bin = shop_bin().display().to_string();
    let plain = |name: &str| {
        format!(
            "  - {{ name: {name}, service: {name}, command: [{bin}, {name}], port: 8080, env: {{ SHOP_VERSION: v1 }} }}\n"
        )
    };
    let mesh = format!(
        "policy: policy/\nworkloads:\n{}{}{}  - name: payments\n    service: payments\n    version: v1\n    command: [{bin}, payments]\n    port: 8080\n    env: {{ SHOP_VERSION: v1 }}\n    versions:\n      v2: {{ env: {{ SHOP_VERSION: v2 }} }}\n      v3: {{ env: {{ SHOP_VERSION: v3, SHOP_ERROR_RATE: \"0.05\" }} }}\n",
        plain("frontend"),
        plain("checkout"),
        plain("catalog"),
    );
    LocalMesh::start_in(dir, &mesh)
}

/// Charges cards from checkout's namespace, as orders do, until stopped; counts 5xx answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(mesh: &LocalMesh) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let ns = mesh.ns("checkout");
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut cmd = Command::new("ip");
                    cmd.args(["netns", "exec", &ns, "curl"]);
                    // 20 requests on one connection; `--next` keeps each body its own.
                    for i in 0..20 {
                        if i > 0 {
                            cmd.arg("--next");
                        }
                        cmd.args(["-s", "--max-time", "5", "-o", "/dev/null"])
                            .args(["-w", "%{http_code}\\n"])
                            .args(["-H", "content-type: application/json"])
                            .args(["-d", r#"{"amount": 1800, "currency": "EUR"}"#])
                            .arg("http://payments:8080/v1/charges");
                    }
                    let Ok(out) = cmd.output() else { continue };
                    for code in String::from_utf8_lossy(&out.stdout).lines() {
                        if code.starts_with('2') {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `sluice rollout ARGS --state-dir … --output json`, parsed.
fn rollout(mesh: &LocalMesh, args: &[&str]) -> serde_json::Value {
    let out = Command::new(sluice_bin())
        .arg("rollout")
        .args(args)
        .arg("--state-dir")
        .arg(mesh.state().join("controller"))
        .args(["--output", "json"])
        .output()
        .expect("sluice rollout");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        serde_json::json!({
            "error": format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
    })
}

/// payments' split as checkout's sidecar enforces it, from the proxy's `/config`: version
/// (with `-role` for a role's instances) → weight.
fn payments_weights(mesh: &LocalMesh) -> std::collections::BTreeMap<String, u64> {
    let config = Command::new("ip")
        .args(["netns", "exec", &mesh.ns("checkout"), "curl", "-sS"])
        .arg("http://127.0.0.1:4191/config")
        .output()
        .expect("curl");
    let config: serde_json::Value =
        serde_json::from_slice(&config.stdout).expect("the proxy's /config JSON");
    let services = config["routing"]["services"]
        .as_array()
        .or_else(|| config["services"].as_array())
        .cloned()
        .unwrap_or_default();
    let payments = services
        .iter()
        .find(|s| s["name"] == "payments")
        .unwrap_or_else(|| panic!("payments in checkout's /config: {config:#}"));
    payments["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let name = v["name"].as_str()?;
            let role = v["role"].as_str().unwrap_or_default();
            let key = if role.is_empty() {
                name.to_owned()
            } else {
                format!("{name}-{role}")
            };
            Some((key, v["weight"].as_u64()?))
        })
        .filter(|(_, w)| *w > 0)
        .collect()
}

fn wait_phase(mesh: &LocalMesh, id: &str, want: &[&str], within: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    mesh.wait_for(&format!("rollout {id} to be {want:?}"), within, |m| {
        last = rollout(m, &["status", id]);
        want.iter().any(|w| last["phase"] == *w)
    });
    last
}

fn admin(mesh: &LocalMesh) -> String {
    std::fs::read_to_string(mesh.state().join("controller/admin.addr"))
        .expect("admin.addr")
        .trim()
        .to_owned()
}

/// A PNG's width and height, from its IHDR chunk (after checking the signature).
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

#[test]
fn payments_canaries_are_rolled_back_promoted_paused_and_aborted() {
    if let Some(reason) = skip_reason() {
        skip("payments_canaries_…", &reason);
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let inbox = Inbox::start();
    let mut mesh = start(&inbox);
    mesh.wait_for("the shop's registrations", Duration::from_secs(30), |m| {
        m.status()["registrations"]
            .as_array()
            .is_some_and(|r| r.len() == 4)
    });
    let load = Load::start(&mesh);

    // 1. A bad canary is rolled back on its own.
    let started = rollout(&mesh, &["start", "payments", "--version", "v3"]);
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    let failed_before = load.failed();
    let done = wait_phase(
        &mesh,
        &id,
        &["rolled-back", "promoted", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(done["phase"], "rolled-back", "{done:#}");
    // For its errors, and only for them: v3 is no slower than v1.
    assert_eq!(done["failed_check"]["metric"], "errors", "{done:#}");
    let failed: Vec<&str> = done["failed_checks"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["metric"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(failed, ["errors"], "{done:#}");
    assert!(
        done["decision"]
            .as_str()
            .is_some_and(|d| d.contains("errors:") && !d.contains("p99")),
        "{done:#}"
    );
    // Judged against a fresh copy of v1 beside the canary, which is gone with it.
    assert_eq!(done["baseline"]["kind"], "copy", "{done:#}");
    assert!(
        done["baseline"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("fresh copy of v1") && d.contains("payments-v1-baseline")),
        "{done:#}"
    );
    let first = done["first_traffic_unix_ms"]
        .as_i64()
        .expect("first traffic");
    let finished = done["finished_unix_ms"].as_i64().expect("finished");
    println!(
        "v3 (5% errors) at 5%: rolled back {:.1}s after its first traffic; {} failed requests during the rollout; {} canary requests judged",
        (finished - first) as f64 / 1000.0,
        load.failed() - failed_before,
        done["canary_requests"]
    );
    // The teams heard about it, with everything a person needs.
    mesh.wait_for("the rollback message", Duration::from_secs(20), |_| {
        inbox
            .received()
            .iter()
            .any(|m| m.path == "/webhook/payments" && m.body["kind"] == "rollout.rolledBack")
    });
    let received = inbox.received();
    let generic = received
        .iter()
        .find(|m| m.path == "/webhook/payments" && m.body["kind"] == "rollout.rolledBack")
        .expect("generic rollback message");
    let fields = &generic.body["fields"];
    for field in [
        "service", "versions", "step", "weight", "metric", "canary", "baseline", "margin",
        "evidence",
    ] {
        assert!(fields[field].is_string(), "no {field}: {:#}", generic.body);
    }
    assert_eq!(fields["service"], "payments");
    assert_eq!(fields["metric"], "errors");
    assert!(
        fields["baseline used"]
            .as_str()
            .is_some_and(|b| b.contains("fresh copy of v1")),
        "{:#}",
        generic.body
    );
    assert!(
        fields["versions"]
            .as_str()
            .is_some_and(|v| v.contains("v3") && v.contains("v1"))
    );
    assert!(
        generic.body["logs"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "canary log lines: {:#}",
        generic.body
    );
    let chart = generic.body["links"]["chart"]
        .as_str()
        .expect("chart link")
        .to_owned();
    assert!(
        generic.body["links"]["rollout"]
            .as_str()
            .is_some_and(|l| l.ends_with(&id))
    );
    for channel in ["/slack/payments", "/slack/storefront"] {
        assert!(
            received
                .iter()
                .any(|m| m.path == channel && m.body["blocks"].to_string().contains("errors")),
            "no Slack rollback message on {channel}"
        );
    }
    // The chart is a real PNG, served at the linked URL.
    let png = Command::new("curl")
        .args(["-sS", "--max-time", "10", &chart])
        .output()
        .expect("curl")
        .stdout;
    assert_eq!(png_size(&png), Some((960, 540)), "{chart}");
    assert!(chart.starts_with(&format!("http://{}", admin(&mesh))));
    // The canary's and the copy's namespaces go away.
    let canary_ns = format!("{}-v3", mesh.ns("payments"));
    let copy_ns = format!("{}-v1-baseline", mesh.ns("payments"));
    mesh.wait_for(
        "the canary and the copy to be removed",
        Duration::from_secs(30),
        |_| {
            let netns = HostSnapshot::take().netns;
            !netns.contains(&canary_ns) && !netns.contains(&copy_ns)
        },
    );

    // 2. A healthy canary survives a controller restart and is promoted once.
    let started = rollout(&mesh, &["start", "payments", "--version", "v2"]);
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    mesh.wait_for("v2 to take traffic", Duration::from_secs(60), |m| {
        rollout(m, &["status", &id])["canary_requests"]
            .as_u64()
            .is_some_and(|n| n > 20)
    });
    let mid = rollout(&mesh, &["status", &id]);
    let pid = mesh.status()["controller"]["pid"].as_u64().expect("pid");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    mesh.wait_for("the restarted controller", Duration::from_secs(30), |m| {
        m.status()["controller"]["pid"]
            .as_u64()
            .is_some_and(|p| p != pid)
    });
    let resumed = rollout(&mesh, &["status", &id]);
    assert_eq!(resumed["id"], mid["id"]);
    assert!(
        resumed["step"].as_u64() >= mid["step"].as_u64(),
        "{mid:#}\n{resumed:#}"
    );
    assert!(
        resumed["phase"]
            .as_str()
            .is_some_and(|p| p != "rolled-back" && p != "failed")
    );
    let waiting = wait_phase(
        &mesh,
        &id,
        &["waiting-confirmation", "rolled-back", "failed"],
        Duration::from_secs(180),
    );
    // A healthy version passes the shipped analysis: no false rollback.
    assert_eq!(waiting["phase"], "waiting-confirmation", "{waiting:#}");
    let resumed = rollout(&mesh, &["resume", "payments"]);
    assert_eq!(resumed["phase"], "promoted", "{resumed:#}");
    let detail = rollout(&mesh, &["status", &id]);
    let promotions = detail["events"]
        .as_array()
        .map_or(0, |e| e.iter().filter(|e| e["kind"] == "promoted").count());
    assert_eq!(promotions, 1, "{detail:#}");
    // Payments answers as v2 only.
    mesh.wait_for("only v2 answering", Duration::from_secs(30), |m| {
        (0..10).all(|_| {
            m.curl("checkout", &["-si", "http://payments:8080/healthz"])
                .is_ok_and(|r| r.to_lowercase().contains("shop-version: v2"))
        })
    });
    let promoted_messages = inbox
        .received()
        .iter()
        .filter(|m| m.path == "/webhook/payments" && m.body["kind"] == "rollout.promoted")
        .count();
    assert_eq!(promoted_messages, 1);

    // 3. Pause holds the weights; abort rolls back at once.
    let started = rollout(&mesh, &["start", "payments", "--version", "v3"]);
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    assert_eq!(started["baseline_version"], "v2");
    wait_phase(&mesh, &id, &["progressing"], Duration::from_secs(60));
    let paused = rollout(&mesh, &["pause", &id]);
    assert_eq!(paused["phase"], "paused", "{paused:#}");
    let enforced = |m: &LocalMesh| payments_weights(m);
    // The split checkout's proxy enforces once the pause reached it: the canary's weight and
    // the rest with v2. (This rollout starts within a poll of v2's promotion: the runner used
    // to remove the promoted v2 as a superseded canary, and checkout's proxy then enforced
    // only `v3: 5`, all of payments' traffic to v3. Both checks below caught it.)
    let mut weights_at_pause = enforced(&mesh);
    mesh.wait_for(
        "checkout's proxy to enforce the paused split",
        Duration::from_secs(30),
        |m| {
            weights_at_pause = enforced(m);
            weights_at_pause.values().sum::<u64>() == 100
        },
    );
    assert_eq!(
        weights_at_pause.get("v3").copied(),
        paused["weight"].as_u64(),
        "the proxies enforce the paused rollout's weight: {weights_at_pause:?}\n{paused:#}"
    );
    // Longer than the step: unpaused, it would have moved on by now.
    std::thread::sleep(Duration::from_secs(12));
    let held = rollout(&mesh, &["status", &id]);
    assert_eq!(held["phase"], "paused");
    assert_eq!(
        (held["step"].as_u64(), held["weight"].as_u64()),
        (paused["step"].as_u64(), paused["weight"].as_u64()),
        "{held:#}"
    );
    assert_eq!(
        enforced(&mesh),
        weights_at_pause,
        "the weights proxies enforce held"
    );
    let aborted = rollout(&mesh, &["abort", &id]);
    assert_eq!(
        (aborted["phase"].as_str(), aborted["weight"].as_u64()),
        (Some("aborted"), Some(0))
    );
    // Promote skips the remaining steps.
    let started = rollout(&mesh, &["start", "payments", "--version", "v3"]);
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    let promoted = rollout(&mesh, &["promote", &id]);
    assert_eq!(promoted["phase"], "promoted", "{promoted:#}");
    assert!(
        promoted["decision"]
            .as_str()
            .is_some_and(|d| d.contains("skipping the remaining steps")),
        "{promoted:#}"
    );

    println!(
        "load during the run: {} requests answered, {} failed",
        load.ok(),
        load.failed()
    );
    drop(load);
    mesh.signal("TERM");
    let status = mesh.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", mesh.log());
    let started_at = Instant::now();
    while HostSnapshot::take() != before && started_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice up left something behind"
    );
}
