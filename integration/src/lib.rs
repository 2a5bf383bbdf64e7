//! Shared helpers for the end-to-end tests in `tests/`: building and running the real
//! `sluice-proxy` binary, test upstream servers, waiting on conditions, and skipping tests
//! whose tools are missing (a failure in CI).
//!
//! Everything binds to 127.0.0.1 port 0 (or to addresses inside network namespaces a test
//! creates), so tests can run in parallel and never touch other hosts.

#![forbid(unsafe_code)]

pub mod client;
pub mod controller;
pub mod inbox;
pub mod kube;
pub mod local_mesh;
pub mod mesh;
pub mod mtls;
pub mod netns;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `sluice-proxy` binary, built once per test process with the same profile as the tests,
/// or the one [`PROXY_BIN_ENV`] names (to run the suites against another build of it, such as
/// the profile-optimised one `scripts/pgo` makes for the images).
pub fn proxy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os(PROXY_BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => workspace_bin("sluice-proxy", "sluice-proxy"),
    })
}

/// Names a `sluice-proxy` binary for the tests to run instead of building one.
pub const PROXY_BIN_ENV: &str = "SLUICE_TEST_PROXY_BIN";

/// The demo shop's `shop` binary (examples/shop/services).
pub fn shop_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("sluice-shop", "shop"))
}

/// Builds `bin` of workspace package `package` (a no-op when it is up to date) with the same
/// profile as the tests, so `cargo test --release` measures optimised binaries, and returns
/// its path.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = !cfg!(debug_assertions);
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package, "--bin", bin]);
    // Cargo gives this test process its own package's variables. Passed on, they change what
    // the build sees (ring's build script reruns when CARGO_MANIFEST_DIR changes), so every
    // test binary and every later `cargo test` would rebuild the TLS stack and relink the
    // binaries: minutes of a 2-core CI run. Build in the environment a person's shell has.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            build.env_remove(&var);
        }
    }
    if release {
        build.arg("--release");
    }
    let status = build.current_dir(&workspace).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "cargo build -p {package} --bin {bin} failed"
    );
    let path = target_dir()
        .join(if release { "release" } else { "debug" })
        .join(bin);
    assert!(path.exists(), "{} not found after build", path.display());
    path
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, else `target/`): where binaries are
/// built and where tests leave artifacts for people to look at.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The one way a test gives up because a tool or privilege is missing: call it, then return.
///
/// Where every test must run, it fails the test instead: when `SLUICE_REQUIRE_ALL=1` (which
/// `.ci/run` sets) or `CI` is set (to anything but `false` or `0`). CI installs every tool and
/// runs as root, so a test that cannot run there is a broken install step, not a pass.
///
/// On a developer's machine it prints the reason and, when `SLUICE_SKIP_LOG` names a file
/// (`scripts/test` sets it), appends `test: reason` to it, so that the run's summary counts
/// the test as skipped rather than passed (cargo only knows it returned).
pub fn skip(test: &str, reason: &str) {
    // The harness names each test's thread after the test: more exact than what callers pass.
    let current = std::thread::current();
    let test = current.name().filter(|n| *n != "main").unwrap_or(test);
    if must_run_everything() {
        panic!(
            "{test} cannot run here: {reason}. A skip fails the run where every test must run \
             (SLUICE_REQUIRE_ALL=1 or CI is set); install what it needs (scripts/lib.sh)"
        );
    }
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(log) = std::env::var_os("SLUICE_SKIP_LOG") {
        use std::io::Write;
        // The test binary (cargo runs each with its crate's name) says where the test lives.
        let binary = std::env::var("CARGO_CRATE_NAME").unwrap_or_default();
        let line = format!("{binary}::{test}: {}\n", reason.replace('\n', " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("SLUICE_SKIP_LOG {}: {e}", Path::new(&log).display());
        }
    }
}

/// Whether a skip must fail (see [`skip`]).
pub fn must_run_everything() -> bool {
    let set = |var: &str| {
        std::env::var(var)
            .is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
    };
    set("SLUICE_REQUIRE_ALL") || set("CI")
}

/// Polls `check` every 20 ms until it yields a value, and returns it; fails the test naming
/// `what` if `within` passes first. For conditions a test can observe (a log line, a metric,
/// a file, a state) instead of sleeping and hoping: give it a generous `within`, since a busy
/// machine only makes it wait longer, never fail sooner.
pub fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_for`] for checks that are async (an HTTP call, a gRPC call).
pub async fn wait_for_async<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A generous deadline for [`wait_for`]: long enough for a loaded 2-core CI machine, short
/// enough that a broken feature fails the test in reasonable time.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Whether `bin` is on PATH.
pub fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether we run as root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A running `sluice-proxy`, killed on drop.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    /// Scratch directory holding the log, the listen-address file and any snapshot.
    pub dir: tempfile::TempDir,
    /// What the proxy reported binding (`SLUICE_PROXY_LISTEN_ADDRS_FILE`).
    pub addrs: serde_json::Value,
}

/// How to start a proxy.
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Extra `SLUICE_PROXY_*` variables (they override the test defaults).
    pub env: Vec<(String, String)>,
    /// Run through this command prefix (e.g. `ip netns exec ns setpriv ...`).
    pub wrapper: Vec<String>,
    /// Make the scratch directory world-writable (for a proxy running as another uid).
    pub shared_dir: bool,
}

impl ProxyOptions {
    /// Adds a variable.
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_owned(), v.into()));
        self
    }
}

impl Proxy {
    /// Starts the proxy with loopback port-0 listeners plus `opts`, and waits until it has
    /// bound everything.
    pub fn start(opts: ProxyOptions) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        if opts.shared_dir {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
        }
        let addrs_file = dir.path().join("addrs.json");
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log file");
        let mut cmd = match opts.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(proxy_bin());
                c
            }
            None => Command::new(proxy_bin()),
        };
        let defaults = [
            ("SLUICE_PROXY_INBOUND_ADDR", "127.0.0.1:0"),
            ("SLUICE_PROXY_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("SLUICE_PROXY_ADMIN_ADDR", "127.0.0.1:0"),
            ("SLUICE_PROXY_LOG_FORMAT", "json"),
            ("SLUICE_PROXY_SNAPSHOT_POLL", "50ms"),
        ];
        for (k, v) in defaults {
            cmd.env(k, v);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.env("SLUICE_PROXY_LISTEN_ADDRS_FILE", &addrs_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn sluice-proxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addrs = loop {
            if let Ok(text) = std::fs::read_to_string(&addrs_file) {
                break serde_json::from_str(&text).expect("addrs json");
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
                panic!("sluice-proxy exited early ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "sluice-proxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Proxy { child, dir, addrs }
    }

    fn addr(&self, v: &serde_json::Value) -> SocketAddr {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {v}"))
    }

    /// The admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.addr(&self.addrs["admin"])
    }

    /// The transparent outbound listener.
    pub fn outbound(&self) -> SocketAddr {
        self.addr(&self.addrs["outbound"])
    }

    /// The transparent inbound listener.
    pub fn inbound(&self) -> SocketAddr {
        self.addr(&self.addrs["inbound"])
    }

    /// The `i`th explicit listener (outbound ones first, in configuration order).
    pub fn explicit(&self, i: usize) -> SocketAddr {
        self.addr(&self.addrs["explicit"][i]["listen"])
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident set size in KiB (`VmHWM`), from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sluice-proxy log ---\n{}", self.log());
        }
    }
}

/// Writes `contents` to `path` so that a poller never sees a partial file.
pub fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(tmp, path).expect("rename");
}

/// A free loopback port (bound then released). Only for the rare test that must configure
/// a port before the proxy starts; everything else uses port 0.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
