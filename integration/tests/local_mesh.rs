//! `sluice up` and `sluice down` against the real machine: network namespaces, a bridge,
//! veths, iptables inside the namespaces, the controller and real sidecars with mTLS. Needs
//! root, `ip`, `iptables-save`, `curl`, `python3` and `setpriv`; skips with a reason otherwise.
//!
//! Teardown is checked by snapshots of `ip netns list`, `ip -o link`, `/etc/netns` and the
//! host's `iptables-save` (nat and filter) before and after. Namespace and link lists are
//! compared over the names `sluice up` uses (other suites on a shared machine create their
//! own); iptables is compared whole.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests share the host's network configuration, so they take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn skip_reason() -> Option<String> {
    for tool in ["ip", "iptables-save", "curl", "python3", "setpriv"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!("`{tool}` not installed"));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root (network namespaces, veths, iptables)".into());
    }
    None
}

fn proxy_bin() -> PathBuf {
    let bin = Path::new(SLUICE)
        .parent()
        .expect("bin dir")
        .join("sluice-proxy");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "sluice-proxy", "--bin", "sluice-proxy"])
            .status()
            .expect("cargo build sluice-proxy");
        assert!(status.success(), "cannot build sluice-proxy");
    }
    bin
}

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a namespace or link name is one `sluice up` makes: `sluice-<6 hex>-…`,
/// `slbr<6 hex>`, `sl<6 hex>v<n>`.
fn is_up_name(name: &str) -> bool {
    let hex6 = |s: &str| s.len() >= 6 && s[..6].bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = name.strip_prefix("sluice-") {
        return hex6(rest) && rest[6..].starts_with('-');
    }
    if let Some(rest) = name.strip_prefix("slbr") {
        return hex6(rest);
    }
    name.strip_prefix("sl")
        .is_some_and(|rest| hex6(rest) && rest[6..].starts_with('v'))
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    netns: Vec<String>,
    links: Vec<String>,
    etc_netns: Vec<String>,
    iptables: String,
}

fn snapshot() -> Snapshot {
    let mut netns: Vec<String> = output(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_up_name(n))
        .map(String::from)
        .collect();
    netns.sort();
    let mut links: Vec<String> = output(&["ip", "-o", "link"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| is_up_name(n))
        .collect();
    links.sort();
    let mut etc_netns: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_up_name(n))
                .collect()
        })
        .unwrap_or_default();
    etc_netns.sort();
    let mut iptables = String::new();
    for table in ["nat", "filter"] {
        for l in output(&["iptables-save", "-t", table]).lines() {
            if l.starts_with('-') || l.starts_with(':') || l.starts_with('*') {
                iptables.push_str(l.split(" [").next().unwrap_or(l));
                iptables.push('\n');
            }
        }
    }
    Snapshot {
        netns,
        links,
        etc_netns,
        iptables,
    }
}

struct Run {
    dir: tempfile::TempDir,
    child: Child,
    run_id: String,
}

impl Run {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    fn ns(&self, workload: &str) -> String {
        format!("sluice-{}-{workload}", self.run_id)
    }

    fn curl(&self, from: &str, url: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .args(["-H", "accept: text/plain", url])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The pid of the workload process (the python server) in `workload`'s namespace.
    fn workload_pid(&self, workload: &str) -> Option<u32> {
        output(&["ip", "netns", "pids", &self.ns(workload)])
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("http.server"))
            })
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "sluice up did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failed test still cleans up: stop `up`, then `down` whatever is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(SLUICE)
            .args(["down", "--state-dir"])
            .arg(self.state())
            .output();
    }
}

fn wait_for(what: &str, run: &Run, within: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}; sluice up's log:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `sluice up` on two python servers standing in for checkout and catalog, under the
/// shop's policy (checkout may call `GET /v1/products/{id}` on catalog, not the list).
fn start() -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let www = dir.path().join("www/v1/products");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("mug"), "a mug\n").expect("write");
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
    let server = r#"[python3, -m, http.server, "8080", --directory, www]"#;
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            "policy: {}\nworkloads:\n  - {{name: checkout, service: checkout, command: {server}, port: 8080}}\n  - {{name: catalog, service: catalog, command: {server}, port: 8080}}\n",
            policy.canonicalize().expect("policy dir").display()
        ),
    )
    .expect("mesh file");
    let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
    let child = Command::new(SLUICE)
        .args([
            "up",
            "--color",
            "never",
            "--ingress",
            "127.0.0.1:0",
            "--proxy-bin",
        ])
        .arg(proxy_bin())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg(dir.path().join("mesh.yaml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("sluice up");
    let mut run = Run {
        dir,
        child,
        run_id: String::new(),
    };
    wait_for(
        "sluice up to be running",
        &run,
        Duration::from_secs(60),
        || run.log().contains("sluice up: running"),
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.state().join("up.json")).expect("up.json"),
    )
    .expect("json");
    run.run_id = state["run_id"].as_str().expect("run_id").to_owned();
    run
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn up_serves_through_sidecars_restarts_crashes_and_cleans_up_on_sigterm() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping up_serves_through_sidecars…: {reason}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = snapshot();
    let mut run = start();
    let during = snapshot();
    for w in ["checkout", "catalog"] {
        assert!(during.netns.contains(&run.ns(w)), "{during:?}");
    }
    assert!(
        !std::fs::read_to_string(format!("/etc/netns/{}/hosts", run.ns("checkout")))
            .expect("hosts")
            .is_empty()
    );

    // checkout → catalog by service name, through both sidecars, with mTLS identity.
    let url = "http://catalog:8080/v1/products/mug";
    wait_for(
        "a call through the sidecars",
        &run,
        Duration::from_secs(20),
        || run.curl("checkout", url).is_ok_and(|b| b == "a mug\n"),
    );
    let denied = run
        .curl("checkout", "http://catalog:8080/v1/products")
        .expect("denial");
    assert!(
        denied.contains("checkout is not allowed to call GET /v1/products on catalog"),
        "the callee saw checkout's identity: {denied}"
    );

    // The ingress on the host's loopback routes by Host header (as an unauthenticated caller,
    // which catalog's policy refuses: the refusal comes from catalog's sidecar).
    let log = run.log();
    let port = log
        .split("ingress http://catalog.localhost:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("ingress line")
        .to_owned();
    let via_ingress = |host: &str| {
        output(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-H",
            "accept: text/plain",
            "-H",
            &format!("host: {host}"),
            &format!("http://127.0.0.1:{port}/v1/products/mug"),
        ])
    };
    let answer = via_ingress(&format!("catalog.localhost:{port}"));
    assert!(
        answer.contains(
            "without a mesh identity is not allowed to call GET /v1/products/mug on catalog"
        ),
        "{answer}"
    );
    assert!(via_ingress("nope.localhost").contains("no service"));

    // A crashed workload is restarted.
    let pid = run.workload_pid("catalog").expect("catalog's server");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    wait_for(
        "catalog to be restarted",
        &run,
        Duration::from_secs(20),
        || run.workload_pid("catalog").is_some_and(|p| p != pid),
    );
    assert!(run.log().contains("[catalog] exited"), "{}", run.log());
    wait_for(
        "the restarted catalog to serve",
        &run,
        Duration::from_secs(20),
        || run.curl("checkout", url).is_ok_and(|b| b == "a mug\n"),
    );

    signal(&run.child, "TERM");
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", run.log());
    assert!(run.log().contains("everything removed"), "{}", run.log());
    assert!(!run.state().join("up.json").exists());
    assert_eq!(snapshot(), before, "sluice up left something behind");
}

#[test]
fn down_cleans_up_after_a_killed_up() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping down_cleans_up_after_a_killed_up: {reason}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = snapshot();
    let mut run = start();
    assert_ne!(snapshot(), before);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.state().join("up.json")).expect("up.json"),
    )
    .expect("json");
    let controller = state["controller_pid"].as_u64().expect("controller pid");

    signal(&run.child, "KILL");
    run.wait_exit(Duration::from_secs(10));
    assert_ne!(snapshot(), before, "a killed run leaves its mesh");

    let out = Command::new(SLUICE)
        .args(["down", "--state-dir"])
        .arg(run.state())
        .output()
        .expect("sluice down");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(), before, "sluice down left something behind");
    // Gone, or a zombie waiting for whoever inherited it to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{controller}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "controller still running: {stat}"
    );
    assert!(!run.state().join("up.json").exists());
    // Nothing left to do the second time.
    let again = Command::new(SLUICE)
        .args(["down", "--state-dir"])
        .arg(run.state())
        .output()
        .expect("sluice down");
    assert!(again.status.success());
}
