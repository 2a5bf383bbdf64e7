//! `inject_latency`: the sidecar injector's cost per admission, against a real Kubernetes API
//! server (v1.20, from `ensure_kube`), with the chart's MutatingWebhookConfiguration.
//!
//! Reports:
//! - `--pods` pod creations through the API (the shop's payments Deployment's pod, as its
//!   ReplicaSet would create it) in a namespace labelled `sluice.dev/inject=enabled`, each
//!   timed from the request to the API server's answer with the injected pod (p50, p99, max);
//! - as many, alternating with those, in a namespace no webhook selects, and the difference
//!   of each pair: what the webhook adds to an admission (a TLS round trip from the API
//!   server to the controller, the injection, the JSON patch);
//! - the injection function alone, in process (no network);
//! - the size of the injected pod spec (JSON bytes of the template, before and after, both
//!   modes).
//!
//! The API server keeps its connection to the webhook open, as in a cluster. Timings taken on
//! a shared machine are noisy; compare medians.
//!
//! ```sh
//! source scripts/lib.sh && ensure_kube
//! cargo run --release -p sluice-benches --bin inject_latency -- [--pods 100]
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use sluice_controller::kubernetes::inject;
use sluice_integration::kube::{ApiServer, skip_reason};

/// Measure the sidecar injector against a real API server.
#[derive(Debug, Parser)]
struct Args {
    /// Pod creations to measure, with the injector and without.
    #[arg(long, default_value_t = 100)]
    pods: usize,
}

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

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
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The shop's payments Deployment's pod template, as a Pod its ReplicaSet would create.
fn payments_pod() -> Result<Value, BenchError> {
    let text = std::fs::read_to_string(repo("examples/shop/k8s/payments.yaml"))?;
    let deployment = sluice_policy::load::parse_yaml(&Path::new("payments.yaml").into(), &text)
        .0
        .into_iter()
        .map(|d| d.value)
        .find(|v| v["kind"] == "Deployment")
        .ok_or_else(|| BenchError::Setup("no Deployment in payments.yaml".into()))?;
    let mut pod = deployment["spec"]["template"].clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["generateName"] = json!("payments-5d8f7c9b4-");
    pod["metadata"]["labels"]["pod-template-hash"] = json!("5d8f7c9b4");
    Ok(pod)
}

/// Creates one pod in `namespace`, timed; checks it was (or was not) injected.
async fn create_pod(pods: &Api<Pod>, pod: &Pod, injected: bool) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let created = pods.create(&PostParams::default(), pod).await?;
    let took = started.elapsed();
    let has_proxy = created
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .any(|c| c.name == inject::PROXY);
    if has_proxy != injected {
        return Err(BenchError::Setup(format!(
            "a pod was {}injected",
            if injected { "not " } else { "" }
        )));
    }
    Ok(took)
}

fn report(what: &str, took: &[Duration]) {
    println!(
        "{what}, {} pods: p50 {}, p99 {}, max {}",
        took.len(),
        ms(quantile(took, 0.5)),
        ms(quantile(took, 0.99)),
        ms(took.last().copied().unwrap_or_default())
    );
}

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    let args = Args::parse();
    if let Some(reason) = skip_reason() {
        return Err(BenchError::Setup(reason));
    }
    let template = payments_pod()?;

    // The function alone, and what it adds to a pod.
    for mode in [inject::Mode::Native, inject::Mode::Classic] {
        let config = inject::Config {
            mode,
            ..inject::Config::default()
        };
        let mut times = Vec::with_capacity(1000);
        let mut after = template.clone();
        for _ in 0..1000 {
            after = template.clone();
            let started = Instant::now();
            inject::inject(&mut after, "payments", &config);
            times.push(started.elapsed());
        }
        times.sort();
        let (before, injected) = inject::size_delta(&template, &after);
        println!(
            "{mode}: pod spec {before} → {injected} bytes of JSON (+{}); inject() in process p50 {} µs, p99 {} µs",
            injected - before,
            quantile(&times, 0.5).as_micros(),
            quantile(&times, 0.99).as_micros()
        );
    }

    let api = tokio::task::spawn_blocking(ApiServer::start_for_process)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    api.install_crds();
    let state = tempfile::tempdir()?;
    let mut controller = Command::new(sluice_integration::controller::sluice_bin())
        .args(["controller", "--kubernetes", "--listen", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .args([
            "--webhook",
            "127.0.0.1:0",
            "--webhook-host",
            "127.0.0.1",
            "--inject",
            "--namespace",
            "sluice",
        ])
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(state.path().join("controller.log"))?)
        .spawn()?;
    let stdout = controller
        .stdout
        .take()
        .ok_or_else(|| BenchError::Setup("no stdout".into()))?;
    // Read on for as long as the controller writes: a closed pipe would kill it (SIGPIPE).
    let (found, webhook) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("sluice controller webhook on ") {
                let _ = found.send(addr.to_owned());
            }
        }
    });
    let webhook = tokio::task::spawn_blocking(move || webhook.recv().ok())
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .ok_or_else(|| {
            BenchError::Setup(format!(
                "the controller did not start: {}",
                std::fs::read_to_string(state.path().join("controller.log")).unwrap_or_default()
            ))
        })?;
    let ca = std::fs::read_to_string(state.path().join("state/ca/ca.crt"))?;

    let kubeconfig = kube::config::Kubeconfig::read_from(&api.kubeconfig)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let client = kube::Client::try_from(config)?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // `meshed` is opted in. `sluice` is the controller's namespace, which the chart's
    // namespaceSelector excludes by its name label (set by hand: v1.20 does not label
    // namespaces by name), so there the API server calls no webhook at all.
    for (name, labels) in [
        ("meshed", json!({"sluice.dev/inject": "enabled"})),
        ("sluice", json!({"kubernetes.io/metadata.name": "sluice"})),
    ] {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
        }))
        .map_err(|e| BenchError::Setup(e.to_string()))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    api.register_chart_injector("sluice", &webhook, &ca);
    let pod: Pod = serde_json::from_value(template.clone())
        .map_err(|e| BenchError::Setup(format!("the pod: {e}")))?;
    let meshed: Api<Pod> = Api::namespaced(client.clone(), "meshed");
    let bare: Api<Pod> = Api::namespaced(client.clone(), "sluice");
    // Alternating, so both series see the same load on a shared machine; the difference of
    // each pair is what the webhook added to that admission.
    let (mut with, mut without, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.pods + 5 {
        let a = create_pod(&meshed, &pod, true).await?;
        let b = create_pod(&bare, &pod, false).await?;
        if i >= 5 {
            with.push(a);
            without.push(b);
            added.push(a.saturating_sub(b));
        }
    }
    with.sort();
    without.sort();
    added.sort();
    report("pod creation, no webhook called", &without);
    report("pod creation, injected by the webhook", &with);
    report("what the webhook added (paired difference)", &added);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "meshed");
    let _ = pods
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    let _ = controller.kill();
    let _ = controller.wait();
    Ok(())
}
