//! `kube_propagation`: Sluice on a real Kubernetes API server (v1.20, from `ensure_kube`).
//!
//! Reports:
//! - how long the API server (with etcd) takes to start and be ready;
//! - policy propagation from `kubectl apply` to a watching proxy: `--edits` edits of the shop's
//!   payments AccessPolicy, each timed from just before `kubectl patch` runs until the
//!   controller's `Watch` stream delivers the new version (p50, p99, max), and the same minus
//!   kubectl's own run time (process start, discovery, the request);
//! - the controller's memory (RSS and peak) with the shop loaded.
//!
//! ```sh
//! source scripts/lib.sh && ensure_kube
//! cargo run --release -p sluice-benches --bin kube_propagation -- [--edits 20]
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use sluice_api::v1::{WatchRequest, Workload};
use sluice_integration::kube::{ApiServer, skip_reason};

/// Measure Sluice against a real API server.
#[derive(Debug, Parser)]
struct Args {
    /// Edits to measure.
    #[arg(long, default_value_t = 20)]
    edits: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    if let Some(reason) = skip_reason() {
        return Err(reason.into());
    }
    let api = tokio::task::spawn_blocking(ApiServer::start_for_process).await?;
    println!(
        "API server (etcd + kube-apiserver v1.20.2) ready in {}",
        ms(api.startup)
    );
    api.install_crds();
    api.kubectl_ok(&["apply", "-R", "-f", &repo("examples/shop/policy")]);

    let state = tempfile::tempdir()?;
    let sluice = sluice_integration::controller::sluice_bin();
    let mut controller = Command::new(sluice)
        .args(["controller", "--kubernetes", "--listen", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(state.path().join("controller.log"))?)
        .spawn()?;
    let stdout = controller.stdout.take().ok_or("no stdout")?;
    let addr = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("sluice controller listening on ")
                    .map(str::to_owned)
            })
    })
    .await?
    .ok_or_else(|| {
        format!(
            "the controller did not start: {}",
            std::fs::read_to_string(state.path().join("controller.log")).unwrap_or_default()
        )
    })?;
    // Over TLS with checkout's certificate, as checkout's proxy watches.
    let token = Command::new(sluice)
        .args(["identity", "token", "--service", "checkout", "--state-dir"])
        .arg(state.path().join("state"))
        .output()?;
    let mut client = sluice_integration::controller::client_as(
        &format!("https://{addr}"),
        &state.path().join("state/ca/ca.crt"),
        String::from_utf8_lossy(&token.stdout).trim(),
        "checkout",
    )
    .await;
    let mut stream = client
        .watch(WatchRequest {
            workload: Some(Workload {
                namespace: "default".into(),
                service: "checkout".into(),
                version: "v1".into(),
                environment: "stable".into(),
                instance: "bench".into(),
                role: String::new(),
            }),
            proxy_id: "bench".into(),
            have_version: String::new(),
        })
        .await?
        .into_inner();
    let mut version = stream.message().await?.ok_or("stream closed")?.version;

    let mut total = Vec::new();
    let mut after_kubectl = Vec::new();
    for i in 0..args.edits {
        let patch = format!(
            r#"[{{"op":"replace","path":"/spec/rules/0/reason","value":"Checkout charges cards (edit {i})."}}]"#
        );
        let started = Instant::now();
        let out = api
            .kubectl(&[
                "patch",
                "accesspolicy",
                "payments-callers",
                "--type=json",
                "-p",
                &patch,
            ])
            .output()?;
        let kubectl_done = started.elapsed();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        loop {
            let config = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await??
                .ok_or("stream closed")?;
            if config.version != version {
                version = config.version;
                break;
            }
        }
        let took = started.elapsed();
        total.push(took);
        after_kubectl.push(took.saturating_sub(kubectl_done));
    }
    total.sort();
    after_kubectl.sort();
    println!(
        "kubectl patch → watching proxy, {} edits: p50 {}, p99 {}, max {}",
        args.edits,
        ms(quantile(&total, 0.5)),
        ms(quantile(&total, 0.99)),
        ms(total.last().copied().unwrap_or_default())
    );
    println!(
        "  of which after kubectl returned: p50 {}, p99 {}, max {}",
        ms(quantile(&after_kubectl, 0.5)),
        ms(quantile(&after_kubectl, 0.99)),
        ms(after_kubectl.last().copied().unwrap_or_default())
    );
    let pid = controller.id();
    println!(
        "controller memory with the shop loaded: RSS {} KiB, peak {} KiB",
        rss_kib(pid, "VmRSS:"),
        rss_kib(pid, "VmHWM:")
    );
    let _ = controller.kill();
    let _ = controller.wait();
    Ok(())
}
