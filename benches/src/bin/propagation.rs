//! `propagation`: how long a policy edit takes to reach every proxy.
//!
//! Starts the real `sluice controller` (release build) on a copy of the shop's policy, opens
//! `--proxies` Watch streams from this process (each a tonic client on its own mTLS connection
//! with its workload's certificate from `Certify`, as real proxies have), then edits a policy
//! file `--edits` times. For each edit it measures,
//! per proxy, the time from just before the file is written to the moment that proxy's stream
//! delivers the new version, and reports p50, p99 and max per edit and over all of them.
//!
//! ```sh
//! cargo run --release -p sluice-benches --bin propagation -- [--proxies 1000] [--edits 5]
//! ```
//!
//! The figure includes the controller's poll interval (100 ms: an edit waits 0–100 ms to be
//! seen), validation and compilation, and fan-out over 1,000 HTTP/2 streams. Target: p99 < 1 s.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use clap::Parser;
use rustls::client::ResolvesClientCert;
use sluice_api::v1::mesh_client::MeshClient;
use sluice_api::v1::{CertifyRequest, WatchRequest, Workload};
use sluice_controller::identity::{TokenKey, WorkloadIdentity};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Measure policy propagation from the controller to many proxies.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated proxies (one connection and Watch stream each).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Policy edits to measure.
    #[arg(long, default_value_t = 5)]
    edits: usize,
    /// The `sluice` binary; built with `cargo build --release` when not given.
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// Give up on an edit after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn sluice_bin(args: &Args) -> Result<PathBuf, Error> {
    if let Some(bin) = &args.sluice_bin {
        return Ok(bin.clone());
    }
    let root = repo_root();
    eprintln!("building the release sluice binary…");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args([
            "build",
            "--release",
            "-p",
            "sluice-controller",
            "--bin",
            "sluice",
        ])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        return Err("cargo build of the sluice binary failed".into());
    }
    Ok(root.join("target/release/sluice"))
}

/// The controller, killed on drop.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An mTLS channel to the controller at `addr`, trusting `ca_pem`, presenting `cert`.
async fn channel(
    addr: &str,
    ca_pem: &[u8],
    cert: Option<Arc<dyn ResolvesClientCert>>,
) -> Result<Channel, Error> {
    let config = sluice_api::tls::client_config(sluice_api::tls::roots_from_pem(ca_pem)?, cert)?;
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .connect_with_connector(sluice_api::tls::Connector::new(config))
        .await?)
}

/// A certificate for `default/<service>` from `Certify`, with a token signed by the
/// controller's key: what each simulated proxy presents.
async fn certificate(
    addr: &str,
    ca_pem: &[u8],
    tokens: &TokenKey,
    service: &str,
) -> Result<Arc<dyn ResolvesClientCert>, Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let token = tokens.issue(
        &WorkloadIdentity::new("default", service)?,
        Duration::from_secs(3600),
        std::time::SystemTime::now(),
    );
    let issued = MeshClient::new(channel(addr, ca_pem, None).await?)
        .certify(CertifyRequest {
            workload: Some(Workload {
                namespace: "default".to_owned(),
                service: service.to_owned(),
                ..Workload::default()
            }),
            csr_der: csr.der().to_vec(),
            token,
        })
        .await?
        .into_inner();
    Ok(sluice_api::tls::fixed_client_cert(
        vec![issued.certificate_der.into()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let bin = sluice_bin(&args)?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy");
    copy_dir(&repo_root().join("examples/shop/policy"), &policy)?;
    let state = dir.path().join("state");
    let mut child = Command::new(&bin)
        .arg("controller")
        .arg("--state-dir")
        .arg(&state)
        .arg("--policy")
        .arg(&policy)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let _controller = Controller(child);
    let addr = line
        .trim()
        .strip_prefix("sluice controller listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?
        .to_owned();

    // One certificate per simulated service (the controller streams to a workload only with
    // its own), from Certify with a token signed by the controller's key.
    let ca_pem = std::fs::read(state.join("ca/ca.crt"))?;
    let tokens = TokenKey::load_or_create(&state)?;
    let mut certs = Vec::new();
    for s in 0..50 {
        certs.push(certificate(&addr, &ca_pem, &tokens, &format!("svc-{s}")).await?);
    }

    // Connect every proxy and wait for its first config.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, Instant)>();
    let connect_start = Instant::now();
    let mut first_versions = Vec::new();
    for i in 0..args.proxies {
        let channel = channel(&addr, &ca_pem, Some(certs[i % 50].clone())).await?;
        let mut client = MeshClient::new(channel);
        let mut stream = client
            .watch(WatchRequest {
                workload: Some(Workload {
                    namespace: "default".to_owned(),
                    service: format!("svc-{}", i % 50),
                    version: "v1".to_owned(),
                    environment: "stable".to_owned(),
                    instance: format!("svc-{}-{i}", i % 50),
                    role: String::new(),
                }),
                proxy_id: format!("bench-{i}"),
                have_version: String::new(),
            })
            .await?
            .into_inner();
        let first = stream.message().await?.ok_or("stream closed")?;
        first_versions.push(first.version);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(config)) = stream.message().await {
                if tx.send((i, config.version, Instant::now())).is_err() {
                    break;
                }
            }
        });
    }
    eprintln!(
        "{} proxies watching after {:.1} s",
        args.proxies,
        connect_start.elapsed().as_secs_f64()
    );
    let mut current = first_versions[0].clone();

    let mut all = Vec::new();
    println!("| edit | version | proxies | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for edit in 0..args.edits {
        // Spread the edits over the controller's 100 ms poll phase, so the figures sample
        // every wait an edit can have, not one phase over and over.
        let jitter = u64::try_from(edit * 37 % 100).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(300 + jitter)).await;
        let team = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: {{ name: bench-{edit} }}\nspec: {{}}\n"
        );
        let t0 = Instant::now();
        std::fs::write(policy.join("bench.yaml"), team)?;
        let mut seen = vec![false; args.proxies];
        let mut latencies = Vec::with_capacity(args.proxies);
        let mut version = String::new();
        let deadline = tokio::time::Instant::now() + args.timeout;
        while latencies.len() < args.proxies {
            let (i, v, at) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| {
                    format!(
                        "edit {edit}: only {} proxies got it in time",
                        latencies.len()
                    )
                })?
                .ok_or("all streams ended")?;
            if v == current || seen[i] {
                continue;
            }
            seen[i] = true;
            version.clone_from(&v);
            latencies.push(at.saturating_duration_since(t0));
        }
        current = version.clone();
        latencies.sort();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            edit + 1,
            version,
            latencies.len(),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
            ms(*latencies.last().unwrap_or(&Duration::ZERO))
        );
        all.extend(latencies);
    }
    all.sort();
    let p99 = percentile(&all, 99.0);
    println!(
        "| all | | {} | {} | {} | {} |",
        all.len(),
        ms(percentile(&all, 50.0)),
        ms(p99),
        ms(*all.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "\ntarget p99 < 1000 ms: {}",
        if p99 < Duration::from_secs(1) {
            "met ✓"
        } else {
            "missed ✗"
        }
    );
    Ok(())
}
