//! Ephemeral environments in `sluice up`, end to end, on the shipped shop
//! (`examples/shop/mesh.yaml` and its policy, where checkout's call to catalog is granted with
//! `ephemeral: copy` and its call to payments with `ephemeral: shared`): real namespaces, real
//! sidecars, the real controller, `sluice env` as a person runs it.
//!
//! 1. `sluice env create pr-1 --service checkout` starts checkout's copy and catalog's copy,
//!    and shares payments; it says so, with the URL to open.
//! 2. An order through `frontend.pr-1.localhost` reaches checkout's copy, catalog's copy and
//!    stable payments (each workload's own log says which served); the same order without the
//!    environment reaches only stable.
//! 3. The copy's app sends no baggage, and still reaches the environment's catalog: its
//!    sidecar adds `sluice-env=pr-1`; a call it may not make is denied naming `pr-1`, by a
//!    copy's sidecar and by shared stable payments' alike. The portal lists pr-1 on
//!    checkout's page, draws its graph, and its button makes one.
//! 4. Bad input is refused with the fix: a duplicate name, a name that is not a DNS label, an
//!    unknown service, a command that exits at once (with its last log lines).
//! 5. The controller is killed: the restarted one still lists the environment, with its
//!    idle clock.
//! 6. An environment with a short idle timeout is deleted on its own, and the service's team
//!    is told (its Slack channel, a local receiver here).
//! 7. `sluice env run` with a build of the shop: a new build restarts the copy; Ctrl-C removes
//!    the environment the session made.
//! 8. `sluice env logs -f` follows a copy's log as it is written and ends by itself when
//!    the environment is deleted; `sluice env delete` removes what the environment started,
//!    and SIGTERM leaves the host as it was (namespaces, links, iptables).
//! 9. A run killed with an environment running is cleaned up by `sluice down`.
//!
//! Only the teams' channels are pointed at a local receiver, and the idle timeout is shortened.
//! Needs root, `ip`, `iptables-save`, `curl` and `setpriv`; skips with a reason otherwise (a
//! failure in CI).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_integration::controller::sluice_bin;
use sluice_integration::inbox::Inbox;
use sluice_integration::local_mesh::{HostSnapshot, LocalMesh, SERIAL, copy_dir, skip_reason};
use sluice_integration::{shop_bin, skip};

const WITHIN: Duration = Duration::from_secs(60);

/// The grant the shop's README adds, so that orders go through (checkout confirms charges).
const GRANT: &str = "apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: { name: checkout-confirms-charges }
spec:
  service: payments
  rules:
    - from: [checkout]
      allow: [\"GET /v1/charges/{id}\"]
      reason: Checkout confirms the charge before it tells the customer.
      ephemeral: shared
";

/// The shipped shop, as `sluice up examples/shop/mesh.yaml` runs it, its teams' channels
/// pointed at `inbox`.
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
    std::fs::create_dir_all(policy.join("grants")).expect("grants");
    std::fs::write(policy.join("grants/checkout-to-payments.yaml"), GRANT).expect("grant");
    let mesh = std::fs::read_to_string(shop.join("mesh.yaml")).expect("the shop's mesh file");
    assert!(mesh.contains("../../target/debug/shop"), "{mesh}");
    let mesh = mesh.replace("../../target/debug/shop", &shop_bin().display().to_string());
    // The portal on a free port (`sluice up` serves it in dev mode, on loopback).
    let m = LocalMesh::start_with(dir, &mesh, &[], &["--portal", "127.0.0.1:0"]);
    m.wait_for("the shop to serve", WITHIN, |m| {
        m.status()["registrations"].as_array().map(Vec::len) == Some(4)
            && m.curl_ingress("frontend.localhost", "/healthz", &[]).trim() == "ok"
    });
    m
}

/// `sluice env ARGS` against the mesh, as a person runs it: (exit code, stdout, stderr).
fn env(mesh: &LocalMesh, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(sluice_bin())
        .arg("env")
        .arg("--state-dir")
        .arg(mesh.state())
        .args(["--color", "never"])
        .args(args)
        .output()
        .expect("sluice env");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluice env list --output json`.
fn list(mesh: &LocalMesh) -> Value {
    let (code, out, err) = env(mesh, &["list", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).expect("json")
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["environments"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// How many requests `workload`'s app logged for paths starting with `request` (`POST
/// /v1/orders`): the shop logs one line per request.
fn served(mesh: &LocalMesh, workload: &str, request: &str) -> usize {
    std::fs::read_to_string(mesh.state().join(format!("logs/{workload}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(request))
        .count()
}

/// `DELETE url` from checkout's copy in pr-1, which policy does not allow: the denial's
/// problem+json, checked to name pr-1 and to link the form for pr-1.
fn denied_in_pr1(mesh: &LocalMesh, url: &str) -> Value {
    let denied = mesh
        .curl(
            "checkout.pr-1",
            &["-H", "accept: application/json", "-X", "DELETE", url],
        )
        .expect("curl from the copy");
    let problem: Value = serde_json::from_str(&denied).expect("problem+json");
    assert_eq!(problem["environment"], "pr-1", "{problem}");
    assert!(
        problem["requestAccess"]
            .as_str()
            .is_some_and(|l| l.ends_with("&env=pr-1")),
        "{problem}"
    );
    problem
}

/// `curl` against the portal as its dev user: (status line and headers, body).
fn portal(mesh: &LocalMesh, path: &str, form: Option<&str>) -> (String, String) {
    let addr =
        std::fs::read_to_string(mesh.state().join("controller/portal.addr")).expect("portal.addr");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "10"]);
    if let Some(form) = form {
        cmd.args(["--data", form]);
    }
    cmd.arg(format!("http://{}{path}", addr.trim()));
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

/// The CSRF token in a portal page's forms.
fn csrf(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with a CSRF token")
        .to_owned()
}

fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(since.as_millis()).expect("ms")
}

/// Places an order through the ingress as `host`.
fn order(mesh: &LocalMesh, host: &str) -> String {
    mesh.curl_ingress(
        host,
        "/checkout",
        &["-d", "product_id=ceramic-mug&quantity=1"],
    )
}

#[test]
fn an_environment_is_created_with_its_copies_routed_by_baggage_and_cleaned_up() {
    if let Some(reason) = skip_reason() {
        skip("an_environment_…", &reason);
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let inbox = Inbox::start();
    let mut mesh = start(&inbox);

    // 1. Create it: checkout's copy, catalog's copy (copy grant), payments shared.
    let created = Instant::now();
    let (code, out, err) = env(&mesh, &["create", "pr-1", "--service", "checkout"]);
    assert_eq!(code, 0, "{out}{err}\n{}", mesh.log());
    assert!(out.contains("environment pr-1 is ready"), "{out}");
    assert!(out.contains("checkout.pr-1"), "{out}");
    assert!(
        out.contains("catalog.pr-1") && out.contains("copied: checkout calls it"),
        "{out}"
    );
    assert!(out.contains("shared   payments"), "{out}");
    assert!(
        out.contains("open     http://frontend.pr-1.localhost:"),
        "{out}"
    );
    assert!(!out.contains("payments.pr-1"), "{out}");
    assert!(!mesh.state().join("logs/payments.pr-1.log").exists());

    // 2. An order through the environment's host: checkout's and catalog's copies, stable
    // payments.
    let (orders, products, charges) = (
        served(&mesh, "checkout", "POST /v1/orders"),
        served(&mesh, "catalog", "GET /v1/products/"),
        served(&mesh, "payments", "POST /v1/charges"),
    );
    let page = order(&mesh, "frontend.pr-1.localhost");
    let first_served = created.elapsed();
    assert!(page.contains("Order placed"), "{page}\n{}", mesh.log());
    println!(
        "env create → first order served through frontend.pr-1.localhost: {:.2}s",
        first_served.as_secs_f64()
    );
    assert_eq!(served(&mesh, "checkout.pr-1", "POST /v1/orders"), 1);
    assert!(served(&mesh, "catalog.pr-1", "GET /v1/products/") >= 1);
    assert_eq!(served(&mesh, "payments", "POST /v1/charges"), charges + 1);
    assert_eq!(served(&mesh, "checkout", "POST /v1/orders"), orders);
    assert_eq!(served(&mesh, "catalog", "GET /v1/products/"), products);

    // The same order without the environment reaches only stable.
    let copy_orders = served(&mesh, "checkout.pr-1", "POST /v1/orders");
    let copy_products = served(&mesh, "catalog.pr-1", "GET /v1/products/");
    let page = order(&mesh, "frontend.localhost");
    assert!(page.contains("Order placed"), "{page}");
    assert_eq!(served(&mesh, "checkout", "POST /v1/orders"), orders + 1);
    assert!(served(&mesh, "catalog", "GET /v1/products/") > products);
    assert_eq!(
        served(&mesh, "checkout.pr-1", "POST /v1/orders"),
        copy_orders
    );
    assert_eq!(
        served(&mesh, "catalog.pr-1", "GET /v1/products/"),
        copy_products
    );

    // 3. From inside checkout's copy, a call without baggage: its sidecar adds the member, so
    // catalog's copy answers, not stable's.
    let stable_products = served(&mesh, "catalog", "GET /v1/products/");
    mesh.curl(
        "checkout.pr-1",
        &[
            "-f",
            "-o",
            "/dev/null",
            "http://catalog:8080/v1/products/ceramic-mug",
        ],
    )
    .expect("curl from the copy");
    assert_eq!(
        served(&mesh, "catalog.pr-1", "GET /v1/products/"),
        copy_products + 1
    );
    assert_eq!(
        served(&mesh, "catalog", "GET /v1/products/"),
        stable_products
    );

    // A call the copy may not make, to another copy, is denied naming the environment (the
    // denying sidecar is catalog's copy's; a grant made from it applies in every environment).
    let problem = denied_in_pr1(&mesh, "http://catalog:8080/v1/products/ceramic-mug");
    assert_eq!(problem["caller"], "checkout", "{problem}");

    // A call it may not make to a shared service is refused by stable payments' sidecar,
    // which serves every environment: the denial names the environment the call came from
    // (the baggage member the copy's sidecar added), not `stable`.
    let problem = denied_in_pr1(&mesh, "http://payments:8080/v1/charges/ch_1");
    assert_eq!(problem["service"], "payments", "{problem}");

    // The list shows it: copies, shared, traffic, URL.
    mesh.wait_for("pr-1's requests in the list", WITHIN, |m| {
        find(&list(m), "pr-1").is_some_and(|e| e["requests_last_hour"].as_u64() > Some(0))
    });
    let l = list(&mesh);
    let pr1 = find(&l, "pr-1").expect("pr-1");
    let copies: Vec<&str> = pr1["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .filter_map(|c| c["service"].as_str())
        .collect();
    assert_eq!(copies, ["checkout", "catalog"], "{pr1:#}");
    assert!(
        pr1["shared"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "payments")),
        "{pr1:#}"
    );
    let (code, human, _) = env(&mesh, &["list"]);
    assert_eq!(code, 0);
    assert!(
        human.contains("pr-1") && human.contains("checkout"),
        "{human}"
    );

    // The portal: checkout's page lists pr-1 with the button; pr-1's page has the graph with
    // its copies marked; the button makes an environment, and the page deletes it.
    let (_, page) = portal(&mesh, "/services/checkout", None);
    assert!(page.contains("Ephemeral environments"), "{page}");
    assert!(page.contains("href=\"/environments/pr-1\""), "{page}");
    assert!(page.contains("New environment with checkout"), "{page}");
    let token = csrf(&page);
    let (_, page) = portal(&mesh, "/environments/pr-1", None);
    assert!(page.contains("<svg"), "{page}");
    assert!(page.contains(">checkout (copy)</text>"), "{page}");
    assert!(page.contains(">catalog (copy)</text>"), "{page}");
    assert!(page.contains(">payments</text>"), "{page}");
    assert!(page.contains("http://frontend.pr-1.localhost:"), "{page}");
    let (head, _) = portal(
        &mesh,
        "/environments",
        Some(&format!(
            "csrf={token}&service=catalog&namespace=default&name=pr-4"
        )),
    );
    assert!(head.contains("location: /environments/pr-4"), "{head}");
    mesh.wait_for("pr-4's copy", WITHIN, |m| {
        find(&list(m), "pr-4").is_some_and(|e| e["state"] == "ready")
    });
    let (head, page) = portal(
        &mesh,
        "/environments",
        Some(&format!("csrf={token}&service=catalog&name=Not_A_Label")),
    );
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(page.contains("DNS label"), "{page}");
    let (head, page) = portal(
        &mesh,
        "/environments/pr-4/delete",
        Some(&format!("csrf={token}")),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{page}");
    assert!(page.contains("catalog.pr-4"), "{page}");
    assert!(find(&list(&mesh), "pr-4").is_none());
    // Without the user's token nothing is made.
    let (head, _) = portal(&mesh, "/environments", Some("service=catalog&name=pr-5"));
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(find(&list(&mesh), "pr-5").is_none());

    // 4. Bad input, refused with the fix.
    let (code, _, err) = env(&mesh, &["create", "pr-1", "--service", "checkout"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sluice env delete pr-1"), "{err}");
    let (code, _, err) = env(&mesh, &["create", "PR_1", "--service", "checkout"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("DNS label"), "{err}");
    let (code, _, err) = env(&mesh, &["create", "pr-9", "--service", "chekout"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did you mean `checkout`?"), "{err}");
    let (code, _, err) = env(
        &mesh,
        &[
            "create",
            "pr-8",
            "--service",
            "checkout",
            "--",
            "/bin/sh",
            "-c",
            "echo 'listening… no: the port is taken' >&2; exit 3",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exits at once"), "{err}");
    assert!(err.contains("the port is taken"), "{err}");
    assert!(find(&list(&mesh), "pr-8").is_none());
    // And what it started is gone with it, namespaces included.
    mesh.wait_for("pr-8's namespaces to go", Duration::from_secs(10), |m| {
        !m.has_ns("checkout.pr-8") && !m.has_ns("catalog.pr-8")
    });

    // 5. The controller is killed; the restarted one keeps the environment and its clock.
    let before_restart = find(&list(&mesh), "pr-1").expect("pr-1").clone();
    let pid = mesh.status()["controller"]["pid"].as_u64().expect("pid");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    mesh.wait_for("the restarted controller", WITHIN, |m| {
        m.status()["controller"]["pid"]
            .as_u64()
            .is_some_and(|p| p != pid)
    });
    let after = find(&list(&mesh), "pr-1")
        .expect("pr-1 after the restart")
        .clone();
    assert_eq!(
        after["last_request_unix_ms"], before_restart["last_request_unix_ms"],
        "{after:#}"
    );
    assert_eq!(after["created_unix_ms"], before_restart["created_unix_ms"]);

    // 6. Idle cleanup: pr-2 with a 3 s timeout goes on its own, storefront is told, and the
    // host is as it was before pr-2 (namespaces, links, /etc/netns, iptables).
    let before_pr2 = HostSnapshot::take();
    let (code, out, err) = env(
        &mesh,
        &[
            "create",
            "pr-2",
            "--service",
            "frontend",
            "--idle-timeout",
            "3s",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    // The clock runs from creation (and from each request after it).
    let created_ms = find(&list(&mesh), "pr-2").expect("pr-2")["created_unix_ms"]
        .as_i64()
        .expect("created_unix_ms");
    let mut seen_deleted_ms = 0;
    mesh.wait_for("pr-2's idle deletion", WITHIN, |m| {
        seen_deleted_ms = unix_ms();
        find(&list(m), "pr-2").is_none()
    });
    let idle_for = seen_deleted_ms - created_ms;
    println!(
        "idle timeout 3s → pr-2 gone from the list {:.2}s after it was created ({} ms late, \
         polling included)",
        idle_for as f64 / 1000.0,
        idle_for - 3000
    );
    assert!(idle_for >= 3000, "deleted after {idle_for} ms");
    mesh.wait_for("storefront's message", WITHIN, |_| {
        inbox
            .received()
            .iter()
            .any(|r| r.path == "/slack/storefront" && r.body.to_string().contains("pr-2"))
    });
    mesh.wait_for("pr-2's namespace to go", WITHIN, |m| {
        !m.has_ns("frontend.pr-2")
    });
    let until = Instant::now() + Duration::from_secs(10);
    while HostSnapshot::take() != before_pr2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        HostSnapshot::take(),
        before_pr2,
        "pr-2's idle cleanup left something behind"
    );

    // 7. The dev loop: `env run` with a build of the shop; a new build restarts the copy, and
    // Ctrl-C removes the environment the session made.
    let build = tempfile::tempdir().expect("tempdir");
    let bin = build.path().join("shop");
    std::fs::copy(shop_bin(), &bin).expect("copy the shop");
    let run_log = mesh.dir.path().join("env-run.log");
    let mut session = Command::new(sluice_bin())
        .args([
            "env",
            "run",
            "pr-3",
            "--service",
            "catalog",
            "--color",
            "never",
        ])
        .arg("--state-dir")
        .arg(mesh.state())
        .arg("--")
        .arg(&bin)
        .arg("catalog")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&run_log).expect("log"))
        .stderr(std::fs::File::create(mesh.dir.path().join("env-run.err")).expect("log"))
        .spawn()
        .expect("sluice env run");
    let run_output = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&run_log).unwrap_or_default(),
            std::fs::read_to_string(mesh.dir.path().join("env-run.err")).unwrap_or_default()
        )
    };
    mesh.wait_for("the env run copy", WITHIN, |m| {
        m.pid_of("catalog.pr-3", "catalog").is_some()
    });
    let first = mesh.pid_of("catalog.pr-3", "catalog").expect("pid");
    assert!(
        find(&list(&mesh), "pr-3").is_some_and(|e| e["created_by_run"] == true),
        "{}",
        run_output()
    );
    // A new build lands as the linker writes it: a new file renamed over the old one.
    let next = build.path().join(".shop.new");
    std::fs::copy(shop_bin(), &next).expect("copy");
    std::fs::rename(&next, &bin).expect("rename");
    mesh.wait_for("the copy to restart on the new binary", WITHIN, |m| {
        m.pid_of("catalog.pr-3", "catalog")
            .is_some_and(|p| p != first)
    });
    assert!(run_output().contains("restarting"), "{}", run_output());
    Command::new("kill")
        .args(["-INT", &session.id().to_string()])
        .status()
        .expect("kill");
    let ended = session.wait().expect("wait");
    assert!(ended.success(), "{ended}: {}", run_output());
    assert!(find(&list(&mesh), "pr-3").is_none());
    mesh.wait_for("pr-3's namespace to go", WITHIN, |m| {
        !m.has_ns("catalog.pr-3")
    });

    // 8. `sluice env logs -f` follows checkout's copy: an order through the environment
    // shows up as it is served, and the follow ends by itself when pr-1 is deleted.
    let follow_log = mesh.dir.path().join("env-logs.out");
    let mut follow = Command::new(sluice_bin())
        .args(["env", "logs", "pr-1", "--service", "checkout", "-f"])
        .args(["--lines", "0", "--color", "never", "--state-dir"])
        .arg(mesh.state())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&follow_log).expect("log"))
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("sluice env logs -f");
    let followed = || std::fs::read_to_string(&follow_log).unwrap_or_default();
    // `--lines 0`: nothing old is printed; the follow starts at the log's end.
    let orders_before = served(&mesh, "checkout.pr-1", "POST /v1/orders");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!followed().contains("POST /v1/orders"), "{}", followed());
    assert!(order(&mesh, "frontend.pr-1.localhost").contains("Order placed"));
    assert_eq!(
        served(&mesh, "checkout.pr-1", "POST /v1/orders"),
        orders_before + 1
    );
    mesh.wait_for("the followed order", WITHIN, |_| {
        followed().matches("POST /v1/orders").count() == 1
    });

    // Delete pr-1: its copies go, stable stays.
    let (code, out, err) = env(&mesh, &["delete", "pr-1"]);
    assert_eq!(code, 0, "{out}{err}");
    mesh.wait_for("pr-1's namespaces to go", WITHIN, |m| {
        !m.has_ns("checkout.pr-1") && !m.has_ns("catalog.pr-1")
    });
    let ended = sluice_integration::wait_for("env logs -f to end", WITHIN, || {
        follow.try_wait().expect("wait")
    });
    assert!(ended.success(), "{ended}: {}", followed());
    assert!(
        followed().ends_with("environment pr-1 was deleted\n"),
        "{}",
        followed()
    );
    assert!(order(&mesh, "frontend.localhost").contains("Order placed"));
    mesh.signal("TERM");
    let status = mesh.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", mesh.log());
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice up left something behind"
    );

    // 9. Killed with an environment running (two copies, their namespaces and routes), then
    // `sluice down`: the host is as it was.
    let mut mesh = start(&inbox);
    let (code, out, err) = env(&mesh, &["create", "pr-4", "--service", "checkout"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(order(&mesh, "frontend.pr-4.localhost").contains("Order placed"));
    assert!(mesh.has_ns("checkout.pr-4") && mesh.has_ns("catalog.pr-4"));
    mesh.signal("KILL");
    mesh.wait_exit(Duration::from_secs(10));
    assert_ne!(HostSnapshot::take(), before, "a killed run leaves its mesh");
    mesh.down();
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice down left something behind after a killed run with an environment"
    );
}
