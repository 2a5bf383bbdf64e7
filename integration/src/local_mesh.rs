//! Runs `sluice up` for a test: the real binary on a mesh file, with real namespaces, veths,
//! a bridge, iptables, the controller and sidecars. Needs root and `ip`, `iptables-save`,
//! `curl`, `setpriv`; [`skip_reason`] says what is missing.
//!
//! Teardown is checked with [`HostSnapshot`]: `ip netns list`, `ip -o link`, `/etc/netns`
//! and the host's `iptables-save` (nat and filter). Namespace and link lists are compared
//! over the names `sluice up` uses (other suites on a shared machine create their own);
//! iptables is compared whole.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::controller::sluice_bin;

/// Runs of `sluice up` share the host's network configuration (and its iptables snapshots),
/// so tests in one process take turns.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Why `sluice up` cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    for tool in ["ip", "iptables-save", "curl", "setpriv"] {
        if !crate::have(tool) {
            return Some(format!("`{tool}` not installed"));
        }
    }
    if !crate::is_root() {
        return Some("needs root (network namespaces, veths, iptables)".into());
    }
    None
}

/// Runs a command and returns its stdout (empty if it cannot run).
pub fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
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

/// What `sluice up` may change on the host.
#[derive(Debug, PartialEq, Eq)]
pub struct HostSnapshot {
    /// `sluice up`'s namespaces.
    pub netns: Vec<String>,
    /// `sluice up`'s links (bridge, veths).
    pub links: Vec<String>,
    /// `sluice up`'s `/etc/netns` directories.
    pub etc_netns: Vec<String>,
    /// The host's nat and filter rules, counters removed.
    pub iptables: String,
}

impl HostSnapshot {
    /// Takes one now.
    pub fn take() -> HostSnapshot {
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
        HostSnapshot {
            netns,
            links,
            etc_netns,
            iptables,
        }
    }
}

/// A running `sluice up`, stopped (and `sluice down`ed) on drop so a failed test still cleans
/// up.
#[derive(Debug)]
pub struct LocalMesh {
    /// Holds the mesh file, the log and the state directory.
    pub dir: tempfile::TempDir,
    child: Child,
    /// The run id (`sluice-<id>-<workload>` namespaces).
    pub run_id: String,
}

impl LocalMesh {
    /// Writes `mesh_yaml` to a temporary directory and runs `sluice up` on it with an
    /// ephemeral ingress port, until it says it is running.
    pub fn start(mesh_yaml: &str) -> LocalMesh {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, mesh_yaml)
    }

    /// Like [`LocalMesh::start`], in a directory the caller prepared (e.g. with a policy
    /// directory the test edits).
    pub fn start_in(dir: tempfile::TempDir, mesh_yaml: &str) -> LocalMesh {
        Self::start_with_env(dir, mesh_yaml, &[])
    }

    /// Like [`LocalMesh::start_in`], with extra environment for `sluice up` (e.g.
    /// `SLUICE_UP_ROLLOUT_API`).
    pub fn start_with_env(
        dir: tempfile::TempDir,
        mesh_yaml: &str,
        env: &[(&str, String)],
    ) -> LocalMesh {
        Self::start_with(dir, mesh_yaml, env, &["--portal", "off"])
    }

    /// Like [`LocalMesh::start_with_env`], with `args` for `sluice up` (the default is
    /// `--portal off`, so that no test needs the fixed port 7070).
    pub fn start_with(
        dir: tempfile::TempDir,
        mesh_yaml: &str,
        env: &[(&str, String)],
        args: &[&str],
    ) -> LocalMesh {
        std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml).expect("mesh file");
        let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
        let child = Command::new(sluice_bin())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "up",
                "--color",
                "never",
                "--ingress",
                "127.0.0.1:0",
                "--team-inbox",
                "off",
            ])
            .args(args)
            .arg("--proxy-bin")
            .arg(crate::proxy_bin())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg(dir.path().join("mesh.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("sluice up");
        let mut mesh = LocalMesh {
            dir,
            child,
            run_id: String::new(),
        };
        mesh.wait_for("sluice up to be running", Duration::from_secs(90), |m| {
            m.log().contains("sluice up: running")
        });
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(mesh.state().join("up.json")).expect("up.json"),
        )
        .expect("json");
        mesh.run_id = state["run_id"].as_str().expect("run_id").to_owned();
        mesh
    }

    /// `sluice up`'s state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `STATE_DIR/up.json`, what the run recorded (`Null` once removed).
    pub fn record(&self) -> serde_json::Value {
        std::fs::read_to_string(self.state().join("up.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The pids in `workload`'s namespace (empty once it is gone).
    pub fn pids(&self, workload: &str) -> Vec<u32> {
        output(&["ip", "netns", "pids", &self.ns(workload)])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Whether `workload`'s namespace exists.
    pub fn has_ns(&self, workload: &str) -> bool {
        let ns = self.ns(workload);
        output(&["ip", "netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
    }

    /// Everything `sluice up` and its processes printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// The process handle.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The namespace of `workload`.
    pub fn ns(&self, workload: &str) -> String {
        format!("sluice-{}-{workload}", self.run_id)
    }

    /// The ingress port, from `sluice up`'s announcement.
    pub fn ingress_port(&self) -> u16 {
        self.log()
            .split("ingress http://")
            .nth(1)
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("an ingress line in the log")
    }

    /// `curl` run inside `workload`'s namespace (so through its sidecar) with `args`; stdout
    /// on success, stderr otherwise.
    pub fn curl(&self, from: &str, args: &[&str]) -> Result<String, String> {
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
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `curl` on the host through the ingress, as `host` (e.g. `frontend.localhost`).
    pub fn curl_ingress(&self, host: &str, path: &str, args: &[&str]) -> String {
        let port = self.ingress_port();
        let mut all = vec![
            "curl".to_owned(),
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "-H".into(),
            format!("host: {host}:{port}"),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all.push(format!("http://127.0.0.1:{port}{path}"));
        output(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The pid of the process in `workload`'s namespace with `marker` as one of its arguments.
    pub fn pid_of(&self, workload: &str, marker: &str) -> Option<u32> {
        output(&["ip", "netns", "pids", &self.ns(workload)])
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| {
                // One argument equal to the marker (`shop payments`, `python3 -m http.server`):
                // a substring would also match the `ip netns exec sluice-…-payments-v2 …`
                // commands that set the namespace up before the workload starts.
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    let text = String::from_utf8_lossy(&c);
                    !text.contains("sluice-proxy") && text.split('\0').any(|arg| arg == marker)
                })
            })
    }

    /// `sluice down --state-dir STATE`, as a person runs it after a crash; fails the test
    /// (with what it printed) unless it succeeds.
    pub fn down(&self) {
        let out = Command::new(sluice_bin())
            .args(["down", "--state-dir"])
            .arg(self.state())
            .output()
            .expect("sluice down");
        assert!(
            out.status.success(),
            "sluice down failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `sluice status --format json` for the mesh's controller.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(sluice_bin())
            .args(["status", "--format", "json", "--state-dir"])
            .arg(self.state().join("controller"))
            .output()
            .expect("sluice status");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Polls `f` every 50 ms until it holds, failing the test with the log after `within`.
    pub fn wait_for(&self, what: &str, within: Duration, mut f: impl FnMut(&Self) -> bool) {
        let until = Instant::now() + within;
        while !f(self) {
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; sluice up's log:\n{}\nsluice status:\n{:#}",
                self.log(),
                self.status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` (`TERM`, `KILL`, …) to `sluice up`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for `sluice up` to exit.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
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

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(sluice_bin())
            .args(["down", "--state-dir"])
            .arg(self.state())
            .output();
    }
}

/// Copies a directory tree (a policy directory a test is going to edit).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The demo shop's mesh file for a test: its four services with the freshly built `shop`
/// binary, payments also serving gRPC on 9090, and the policy in `policy/` beside the file.
pub fn shop_mesh_yaml() -> String {
    let bin = crate::shop_bin().display().to_string();
    let workload = |name: &str| {
        let grpc = if name == "payments" {
            ", ports: [9090]"
        } else {
            ""
        };
        format!(
            "  - {{ name: {name}, service: {name}, version: v1, command: [{bin}, {name}], port: 8080{grpc}, env: {{ SHOP_VERSION: v1 }} }}\n"
        )
    };
    format!(
        "policy: policy/\nworkloads:\n{}{}{}{}",
        workload("frontend"),
        workload("checkout"),
        workload("payments"),
        workload("catalog")
    )
}
