//! The proxies under test, run as child processes: a pair of `sluice-proxy` release binaries
//! in explicit mode, or a pair of nginx masters with one worker each. Also `/proc` readings of
//! their memory, threads and CPU time.
//!
//! The sluice pair runs plaintext, or (the mTLS pair) with identities, policy and endpoints
//! from [`crate::mtls`].
//!
//! All pairs have the same shape: client → A → B → upstream, where A plays the caller's
//! sidecar (outbound) and B the callee's (inbound). Everything binds 127.0.0.1.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::error::BenchError;
use crate::mtls::{self, MeshFiles};

/// How long a child may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
struct Supervised {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Supervised, BenchError> {
        let stderr = File::create(&log).map_err(BenchError::file("create", &log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(BenchError::io(format!("start {name} ({cmd:?})")))?;
        Ok(Supervised {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has exited.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Setup(format!(
                "{} exited during start-up ({status}); its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            ))),
            Err(e) => Err(BenchError::io(format!("wait for {}", self.name))(e)),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(raw) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A process whose memory the report shows.
#[derive(Clone, Debug)]
pub struct Watched {
    /// What it is, e.g. `sluice A (outbound)`.
    pub label: String,
    /// Its pid.
    pub pid: u32,
}

/// Figures from `/proc/PID/status` and `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// Threads (`Threads`).
    pub threads: u64,
    /// User plus system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcSample {
    /// Reads the process's current figures.
    pub fn read(pid: u32) -> Result<ProcSample, BenchError> {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let status = std::fs::read_to_string(&path).map_err(BenchError::file("read", &path))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let path = PathBuf::from(format!("/proc/{pid}/stat"));
        let stat = std::fs::read_to_string(&path).map_err(BenchError::file("read", &path))?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th
        // fields of the whole line, so the 12th and 13th after it.
        let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: Vec<u64> = after_comm
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        Ok(ProcSample {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
            cpu_ticks: ticks.iter().sum(),
        })
    }
}

/// Clock ticks per second for `/proc/PID/stat` CPU times.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Finds `cargo build`'s release `sluice-proxy`, building it first unless told not to.
pub fn sluice_proxy_bin(build: bool) -> Result<PathBuf, BenchError> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("building the release sluice-proxy (cargo build --release -p sluice-proxy)");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "sluice-proxy",
                "--bin",
                "sluice-proxy",
            ])
            .current_dir(&workspace)
            .status()
            .map_err(BenchError::io("run cargo build -p sluice-proxy"))?;
        if !status.success() {
            return Err(BenchError::Setup(format!(
                "cargo build --release -p sluice-proxy failed ({status})"
            )));
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("release").join("sluice-proxy");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(BenchError::Setup(format!(
            "{} not found: build it with `cargo build --release -p sluice-proxy` or pass \
             --proxy-bin",
            bin.display()
        )))
    }
}

/// How to run the sluice proxies.
#[derive(Clone, Debug)]
pub struct SluiceOptions {
    /// The binary.
    pub bin: PathBuf,
    /// `SLUICE_PROXY_LOG` (`warn` keeps the per-request access log off, like nginx's).
    pub log: String,
    /// `TOKIO_WORKER_THREADS` for each proxy; unset means tokio's default (one per core).
    pub worker_threads: Option<usize>,
    /// `SLUICE_PROXY_RUNTIME` for each proxy; unset means the proxy's default.
    pub runtime: Option<String>,
    /// A command the proxy runs under (e.g. `valgrind --tool=callgrind ...`); empty: none.
    pub wrapper: Vec<String>,
    /// More environment for each proxy (e.g. longer poll intervals while profiling).
    pub env: Vec<(String, String)>,
}

/// What `SLUICE_PROXY_LISTEN_ADDRS_FILE` holds (the parts the benchmark uses).
#[derive(Debug, Deserialize)]
struct BoundAddrs {
    explicit: Vec<BoundExplicit>,
    admin: SocketAddr,
}

#[derive(Debug, Deserialize)]
struct BoundExplicit {
    listen: SocketAddr,
}

/// Two `sluice-proxy` processes: A's explicit outbound listener forwards to B's explicit
/// inbound listener, which forwards to the upstream. Plaintext between them, or mTLS with
/// authorization on B's inbound ([`SluicePair::start_mtls`]).
#[derive(Debug)]
pub struct SluicePair {
    // Field order is drop order: A (the client's side) stops first.
    a: Supervised,
    b: Supervised,
    entry: SocketAddr,
    a_admin: SocketAddr,
    b_admin: SocketAddr,
    b_inbound: SocketAddr,
}

impl SluicePair {
    /// Plaintext: starts B, reads back its port, then starts A pointed at it. Neither has a
    /// policy or an identity, so they only forward.
    pub fn start(
        opts: &SluiceOptions,
        upstream: SocketAddr,
        dir: &Path,
    ) -> Result<SluicePair, BenchError> {
        let (b, b_bound) = start_sluice(
            opts,
            "sluice B (inbound)",
            &[(
                "SLUICE_PROXY_EXPLICIT_INBOUND",
                format!("127.0.0.1:0={upstream}"),
            )],
            &dir.join("sluice-b"),
        )?;
        let (a, a_bound) = start_sluice(
            opts,
            "sluice A (outbound)",
            &[(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={}", b_bound.listen),
            )],
            &dir.join("sluice-a"),
        )?;
        Ok(SluicePair {
            a,
            b,
            entry: a_bound.listen,
            a_admin: a_bound.admin,
            b_admin: b_bound.admin,
            b_inbound: b_bound.listen,
        })
    }

    /// mTLS: B (`bench-upstream`, its identity, the policy, authorization enforced) starts
    /// first; then its inbound port goes into the endpoints file and A (`bench-client`, its
    /// identity, policy + endpoints, unknown destinations refused) starts with its explicit
    /// outbound listener aimed at the service's address, which its routing sends to B over
    /// mTLS. Check it with [`crate::mtls::verify`] before measuring.
    pub fn start_mtls(
        opts: &SluiceOptions,
        upstream: SocketAddr,
        mesh: &MeshFiles,
        dir: &Path,
    ) -> Result<SluicePair, BenchError> {
        let path = |p: &Path| p.display().to_string();
        let (b, b_bound) = start_sluice(
            opts,
            "sluice mTLS B (inbound)",
            &[
                (
                    "SLUICE_PROXY_EXPLICIT_INBOUND",
                    format!("127.0.0.1:0={upstream}"),
                ),
                ("SLUICE_PROXY_SERVICE", mtls::UPSTREAM_SERVICE.into()),
                ("SLUICE_PROXY_NAMESPACE", mtls::NAMESPACE.into()),
                ("SLUICE_PROXY_POLICY_DIR", path(&mesh.policy_dir)),
                ("SLUICE_PROXY_IDENTITY_DIR", path(&mesh.upstream_identity)),
                ("SLUICE_PROXY_AUTHZ", "enforce".into()),
            ],
            &dir.join("sluice-mtls-b"),
        )?;
        mesh.write_endpoints(b_bound.listen)?;
        let (a, a_bound) = start_sluice(
            opts,
            "sluice mTLS A (outbound)",
            &[
                (
                    "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                    format!("127.0.0.1:0={}", mesh.service_addr),
                ),
                ("SLUICE_PROXY_SERVICE", mtls::CLIENT_SERVICE.into()),
                ("SLUICE_PROXY_NAMESPACE", mtls::NAMESPACE.into()),
                ("SLUICE_PROXY_POLICY_DIR", path(&mesh.policy_dir)),
                ("SLUICE_PROXY_ENDPOINTS", path(&mesh.endpoints)),
                ("SLUICE_PROXY_IDENTITY_DIR", path(&mesh.client_identity)),
                ("SLUICE_PROXY_UNKNOWN_DESTINATIONS", "refuse".into()),
            ],
            &dir.join("sluice-mtls-a"),
        )?;
        Ok(SluicePair {
            a,
            b,
            entry: a_bound.listen,
            a_admin: a_bound.admin,
            b_admin: b_bound.admin,
            b_inbound: b_bound.listen,
        })
    }

    /// Where the client connects (A's explicit outbound listener).
    pub fn entry(&self) -> SocketAddr {
        self.entry
    }

    /// `error` with the end of A's and B's logs, for a failure the logs explain (the scratch
    /// directory holding them is removed when the run ends).
    pub fn with_logs(&self, error: BenchError) -> BenchError {
        let mut text = error.to_string();
        for p in [&self.a, &self.b] {
            let log = tail(&p.log);
            let log = if log.trim().is_empty() {
                "(empty)"
            } else {
                &log
            };
            text.push_str(&format!("\n--- {} ({}):\n{log}", p.name, p.log.display()));
        }
        BenchError::Setup(text)
    }

    /// B's admin listener (`/metrics`).
    pub fn b_admin(&self) -> SocketAddr {
        self.b_admin
    }

    /// B's inbound listener (what a client outside the mesh, or an attacker, reaches).
    pub fn b_inbound(&self) -> SocketAddr {
        self.b_inbound
    }

    /// `A / B`: each proxy's count of config reloads applied, from `/metrics`.
    pub async fn reloads(&self) -> String {
        let mut out = Vec::new();
        for admin in [self.a_admin, self.b_admin] {
            let text = crate::load::get_once(admin, "/metrics", Duration::from_secs(5))
                .await
                .map(|(_, body)| body)
                .unwrap_or_default();
            let n = text
                .lines()
                .find(|l| l.starts_with("sluice_proxy_snapshot_reloads_total{result=\"ok\"}"))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or("?")
                .to_owned();
            out.push(n);
        }
        out.join(" / ")
    }

    /// A and B.
    pub fn watched(&self) -> Vec<Watched> {
        [&self.a, &self.b]
            .into_iter()
            .map(|p| Watched {
                label: p.name.clone(),
                pid: p.pid(),
            })
            .collect()
    }
}

/// What a started proxy bound.
#[derive(Clone, Copy, Debug)]
struct Bound {
    /// Its one explicit listener.
    listen: SocketAddr,
    /// Its admin listener.
    admin: SocketAddr,
}

/// Starts one proxy with no transparent listeners, an admin listener on a kernel-chosen port
/// and `env` (which sets its one explicit listener, `127.0.0.1:0=target`), waits for its
/// listen-address file and returns what it bound.
fn start_sluice(
    opts: &SluiceOptions,
    name: &str,
    env: &[(&str, String)],
    dir: &Path,
) -> Result<(Supervised, Bound), BenchError> {
    std::fs::create_dir_all(dir).map_err(BenchError::file("create", dir))?;
    let addrs_file = dir.join("addrs.json");
    // A file left by an earlier proxy in the same directory would be read as this one's.
    match std::fs::remove_file(&addrs_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(BenchError::file("remove", &addrs_file)(e));
        }
        _ => {}
    }
    let mut cmd = wrapped(&opts.bin, &opts.wrapper);
    cmd.env("SLUICE_PROXY_INBOUND_ADDR", "off")
        .env("SLUICE_PROXY_OUTBOUND_ADDR", "off")
        .env("SLUICE_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .env("SLUICE_PROXY_LOG", &opts.log)
        .env("SLUICE_PROXY_LISTEN_ADDRS_FILE", &addrs_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match opts.worker_threads {
        Some(n) => cmd.env("TOKIO_WORKER_THREADS", n.to_string()),
        None => cmd.env_remove("TOKIO_WORKER_THREADS"),
    };
    match &opts.runtime {
        Some(shape) => cmd.env("SLUICE_PROXY_RUNTIME", shape),
        None => cmd.env_remove("SLUICE_PROXY_RUNTIME"),
    };
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let mut proc = Supervised::spawn(name, cmd, dir.join("proxy.log"))?;
    let timeout = start_timeout(&opts.wrapper);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(&addrs_file) {
            let bound: BoundAddrs = serde_json::from_str(&text)
                .map_err(|e| BenchError::Setup(format!("{name}: {}: {e}", addrs_file.display())))?;
            let listen = bound.explicit.first().map(|e| e.listen).ok_or_else(|| {
                BenchError::Setup(format!("{name}: no explicit listener in {text}"))
            })?;
            return Ok((
                proc,
                Bound {
                    listen,
                    admin: bound.admin,
                },
            ));
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "{name} did not write {} within {timeout:?}",
                addrs_file.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a reference pair (nginx, HAProxy) speaks on every hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// HTTP/1.1 with keep-alive pools.
    Http1,
    /// HTTP/2 prior knowledge (h2c) end to end: gRPC.
    H2,
}

/// Two nginx masters, one worker each: A `proxy_pass`es (or `grpc_pass`es) to B, B to the
/// upstream, both with a keep-alive upstream pool.
#[derive(Debug)]
pub struct NginxPair {
    a: Supervised,
    b: Supervised,
    entry: SocketAddr,
    b_addr: SocketAddr,
}

impl NginxPair {
    /// Starts B, then A pointed at it.
    pub fn start(
        nginx: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
    ) -> Result<NginxPair, BenchError> {
        NginxPair::start_wrapped(nginx, upstream, dir, hop, &[])
    }

    /// As [`NginxPair::start`], each nginx run by `wrapper` (e.g. valgrind) when it is not
    /// empty, and then as one process (`master_process off`: the master serves, so the
    /// process the wrapper watches is the one doing the work).
    pub fn start_wrapped(
        nginx: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
        wrapper: &[String],
    ) -> Result<NginxPair, BenchError> {
        let (b, b_addr) = start_nginx(
            nginx,
            "nginx B",
            upstream,
            &dir.join("nginx-b"),
            hop,
            wrapper,
        )?;
        let (a, entry) = start_nginx(nginx, "nginx A", b_addr, &dir.join("nginx-a"), hop, wrapper)?;
        Ok(NginxPair {
            a,
            b,
            entry,
            b_addr,
        })
    }

    /// Where the client connects (A's listener).
    pub fn entry(&self) -> SocketAddr {
        self.entry
    }

    /// B's listener.
    pub fn b_entry(&self) -> SocketAddr {
        self.b_addr
    }

    /// A's and B's workers (the masters only supervise, so they are left out), or A and B
    /// themselves when they run without a master.
    pub fn watched(&self) -> Vec<Watched> {
        [&self.a, &self.b]
            .into_iter()
            .flat_map(|p| {
                let workers = children_of(p.pid());
                let (pids, label) = if workers.is_empty() {
                    (vec![p.pid()], p.name.clone())
                } else {
                    (workers, format!("{} worker", p.name))
                };
                pids.into_iter().map(move |pid| Watched {
                    label: label.clone(),
                    pid,
                })
            })
            .collect()
    }
}

/// Two HAProxy processes, one thread each (`nbthread 1`), A → B → upstream, keep-alive
/// connection reuse to the next hop (`http-reuse always`), no logging.
#[derive(Debug)]
pub struct HaproxyPair {
    a: Supervised,
    b: Supervised,
    entry: SocketAddr,
    b_addr: SocketAddr,
}

impl HaproxyPair {
    /// Starts B, then A pointed at it.
    pub fn start(
        haproxy: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
    ) -> Result<HaproxyPair, BenchError> {
        HaproxyPair::start_wrapped(haproxy, upstream, dir, hop, &[])
    }

    /// As [`HaproxyPair::start`], each HAProxy run by `wrapper` (e.g. valgrind) when it is
    /// not empty.
    pub fn start_wrapped(
        haproxy: &Path,
        upstream: SocketAddr,
        dir: &Path,
        hop: Hop,
        wrapper: &[String],
    ) -> Result<HaproxyPair, BenchError> {
        let (b, b_addr) = start_haproxy(
            haproxy,
            "haproxy B",
            upstream,
            &dir.join("haproxy-b"),
            hop,
            wrapper,
        )?;
        let (a, entry) = start_haproxy(
            haproxy,
            "haproxy A",
            b_addr,
            &dir.join("haproxy-a"),
            hop,
            wrapper,
        )?;
        Ok(HaproxyPair {
            a,
            b,
            entry,
            b_addr,
        })
    }

    /// Where the client connects (A's listener).
    pub fn entry(&self) -> SocketAddr {
        self.entry
    }

    /// B's listener.
    pub fn b_entry(&self) -> SocketAddr {
        self.b_addr
    }

    /// A and B (each one process with one thread).
    pub fn watched(&self) -> Vec<Watched> {
        [&self.a, &self.b]
            .into_iter()
            .map(|p| Watched {
                label: p.name.clone(),
                pid: p.pid(),
            })
            .collect()
    }
}

/// `nginx -v`'s answer, e.g. `nginx/1.22.1`, or `None` when nginx cannot be run.
pub fn nginx_version(nginx: &Path) -> Option<String> {
    let out = Command::new(nginx).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.trim()
        .strip_prefix("nginx version: ")
        .map(str::to_owned)
        .filter(|_| out.status.success())
}

/// `haproxy -v`'s first line, shortened to `HAProxy 2.6.12-1+deb12u4`, or `None`.
pub fn haproxy_version(haproxy: &Path) -> Option<String> {
    let out = Command::new(haproxy).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    let version = first
        .strip_prefix("HAProxy version ")?
        .split_whitespace()
        .next()?;
    out.status.success().then(|| format!("HAProxy {version}"))
}

/// nginx and HAProxy are not told to listen on port 0 (nginx refuses it), so the port is
/// picked the next best way: bind port 0, read the port back, release it and hand it over. If
/// something else takes it in between, the start fails to bind and is retried with a new port.
fn start_on_picked_port(
    name: &str,
    dir: &Path,
    timeout: Duration,
    command: impl Fn(SocketAddr) -> Result<Command, BenchError>,
) -> Result<(Supervised, SocketAddr), BenchError> {
    const ATTEMPTS: usize = 3;
    std::fs::create_dir_all(dir).map_err(BenchError::file("create", dir))?;
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BenchError::io(format!("pick a port for {name}")))?;
        let mut proc = Supervised::spawn(name, command(listen)?, dir.join("stderr.log"))?;
        match wait_listening(&mut proc, listen, timeout) {
            Ok(()) => return Ok((proc, listen)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| BenchError::Setup(format!("{name} did not start"))))
}

fn start_nginx(
    nginx: &Path,
    name: &str,
    upstream: SocketAddr,
    dir: &Path,
    hop: Hop,
    wrapper: &[String],
) -> Result<(Supervised, SocketAddr), BenchError> {
    start_on_picked_port(name, dir, start_timeout(wrapper), |listen| {
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir, listen, upstream, hop))
            .map_err(BenchError::file("write", &conf))?;
        let mut cmd = wrapped(nginx, wrapper);
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args([
                "-g",
                if wrapper.is_empty() {
                    "daemon off;"
                } else {
                    "daemon off; master_process off;"
                },
            ]);
        Ok(cmd)
    })
}

/// `program` run by `wrapper`'s program and arguments, or on its own.
fn wrapped(program: &Path, wrapper: &[String]) -> Command {
    match wrapper.split_first() {
        None => Command::new(program),
        Some((first, args)) => {
            let mut cmd = Command::new(first);
            cmd.args(args).arg(program);
            cmd
        }
    }
}

/// Under valgrind a start takes many times longer.
fn start_timeout(wrapper: &[String]) -> Duration {
    if wrapper.is_empty() {
        START_TIMEOUT
    } else {
        START_TIMEOUT * 6
    }
}

fn start_haproxy(
    haproxy: &Path,
    name: &str,
    upstream: SocketAddr,
    dir: &Path,
    hop: Hop,
    wrapper: &[String],
) -> Result<(Supervised, SocketAddr), BenchError> {
    start_on_picked_port(name, dir, start_timeout(wrapper), |listen| {
        let conf = dir.join("haproxy.cfg");
        std::fs::write(&conf, haproxy_conf(listen, upstream, hop))
            .map_err(BenchError::file("write", &conf))?;
        let mut cmd = wrapped(haproxy, wrapper);
        // -db: foreground, one process (no master-worker), which is the pid watched.
        cmd.arg("-db").arg("-f").arg(&conf);
        Ok(cmd)
    })
}

fn wait_listening(
    proc: &mut Supervised,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "{} is not listening on {addr} after {timeout:?}",
                proc.name
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One worker, no access log, a keep-alive pool to the next hop: the usual way to run nginx as
/// a reverse proxy, and the closest match to one sidecar. HTTP/1.1 with `proxy_pass`, or
/// HTTP/2 prior knowledge on the listener and `grpc_pass` (HTTP/2) to the next hop.
fn nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr, hop: Hop) -> String {
    let d = dir.display();
    let (listen_opts, location) = match hop {
        Hop::Http1 => (
            "",
            "proxy_pass http://next_hop;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";",
        ),
        Hop::H2 => (" http2", "grpc_pass grpc://next_hop;"),
    };
    format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 10240; }}
http {{
    access_log off;
    # No per-connection request cap (nginx's default is 1,000), as in sluice, so neither pair
    # pays for reconnects the other does not.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    http2_max_requests 1000000;
    http2_max_concurrent_streams 1000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream next_hop {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen}{listen_opts};
        location / {{
            {location}
        }}
    }}
}}
"
    )
}

/// One thread, no logging, keep-alive to clients and connection reuse to the next hop, the
/// same timeouts as nginx's pair. HTTP/1.1, or HTTP/2 prior knowledge on both sides (`proto
/// h2`), which is how HAProxy carries gRPC.
fn haproxy_conf(listen: SocketAddr, upstream: SocketAddr, hop: Hop) -> String {
    let proto = match hop {
        Hop::Http1 => "",
        Hop::H2 => " proto h2",
    };
    format!(
        "global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
frontend in
    bind {listen}{proto}
    default_backend next_hop
backend next_hop
    server next {upstream}{proto}
"
    )
}

/// Direct children of `pid`, from `/proc/*/stat`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_owned();
                    // After the command: state, then ppid.
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_figures() {
        let s = ProcSample::read(std::process::id()).expect("proc");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib && s.threads >= 1);
    }

    #[test]
    fn nginx_conf_points_at_the_next_hop() {
        let conf = nginx_conf(
            Path::new("/tmp/x"),
            "127.0.0.1:1000".parse().expect("addr"),
            "127.0.0.1:2000".parse().expect("addr"),
            Hop::Http1,
        );
        assert!(conf.contains("listen 127.0.0.1:1000;"));
        assert!(conf.contains("server 127.0.0.1:2000;"));
        assert!(conf.contains("keepalive 64;"));
    }

    #[test]
    fn haproxy_conf_is_one_thread_with_reuse() {
        let conf = haproxy_conf(
            "127.0.0.1:1000".parse().expect("addr"),
            "127.0.0.1:2000".parse().expect("addr"),
            Hop::H2,
        );
        assert!(conf.contains("nbthread 1"));
        assert!(conf.contains("bind 127.0.0.1:1000 proto h2"));
        assert!(conf.contains("server next 127.0.0.1:2000 proto h2"));
        assert!(conf.contains("http-reuse always"));
    }
}
