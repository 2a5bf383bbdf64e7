//! The `sluice-proxy` pairs: finding (and building) the release binary, and starting two
//! proxies in explicit mode, plaintext or with mTLS, reading back the ports they bound. Kept
//! apart from the reference pairs because sluice reports its own addresses and needs no
//! configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Supervised, Watched, start_timeout, tail, wrapped};
use crate::error::BenchError;
use crate::mtls::{self, MeshFiles};

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
