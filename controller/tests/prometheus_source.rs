//! The Prometheus metric provider against a real Prometheus: a tiny exporter serves the
//! sidecars' series for `payments` v1 and v2 with values this test controls, Prometheus
//! scrapes it every second, and `PrometheusSource::totals` must read back what was served.
//!
//! Skipped (with the reason printed) when the `prometheus` binary is not installed; the test
//! suite's setup (`scripts/lib.sh`) installs the Debian package.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_controller::rollout::engine::MetricSource;
use sluice_controller::rollout::judge::Counts;
use sluice_controller::rollout::prometheus::PrometheusSource;
use sluice_integration::{have, skip};

/// Not a timing assertion: only how long we wait before calling the setup broken (a cold
/// Prometheus on a loaded 2-core CI machine takes a few seconds; a scrape is every second).
const PATIENCE: Duration = Duration::from_secs(90);

/// Bucket bounds as the proxy's Rust exporter writes them.
const BOUNDS: [&str; 5] = ["0.005", "0.05", "0.1", "1", "+Inf"];

/// One version's served values: `(classification, count)` response series (from two callers,
/// so the query must sum), and cumulative latency bucket counts per `BOUNDS`.
#[derive(Clone, Debug)]
struct Served {
    success: u64,
    failure: u64,
    buckets: [u64; 5],
}

impl Served {
    fn expected(&self) -> Counts {
        Counts {
            requests: self.success + self.failure,
            failures: self.failure,
            latency_buckets: vec![
                (0.005, self.buckets[0]),
                (0.05, self.buckets[1]),
                (0.1, self.buckets[2]),
                (1.0, self.buckets[3]),
            ],
        }
    }
}

/// The exposition: each version's responses split over two callers and over `success` /
/// `failure`, plus an outbound series that must not count (it is the caller's side).
fn exposition(versions: &[(&str, Served)]) -> String {
    let mut out = String::new();
    out.push_str("# HELP sluice_proxy_responses_total HTTP responses sent.\n");
    out.push_str("# TYPE sluice_proxy_responses_total counter\n");
    for (version, s) in versions {
        for (class, n) in [("success", s.success), ("failure", s.failure)] {
            let first = n / 2;
            for (caller, count) in [("checkout", first), ("billing", n - first)] {
                let _ = writeln!(
                    out,
                    "sluice_proxy_responses_total{{direction=\"inbound\",src_service=\"{caller}\",\
                     dst_service=\"payments\",dst_version=\"{version}\",route=\"default\",\
                     environment=\"\",status_code=\"{}\",grpc_status=\"\",classification=\"{class}\"}} {count}",
                    if class == "success" { 200 } else { 503 }
                );
            }
        }
        let _ = writeln!(
            out,
            "sluice_proxy_responses_total{{direction=\"outbound\",src_service=\"payments\",\
             dst_service=\"payments\",dst_version=\"{version}\",route=\"default\",\
             environment=\"\",status_code=\"200\",grpc_status=\"\",classification=\"success\"}} 1000000"
        );
    }
    out.push_str("# HELP sluice_proxy_response_latency_seconds Response latency.\n");
    out.push_str("# TYPE sluice_proxy_response_latency_seconds histogram\n");
    for (version, s) in versions {
        let labels = format!(
            "direction=\"inbound\",src_service=\"checkout\",dst_service=\"payments\",\
             dst_version=\"{version}\",route=\"default\",environment=\"\",classification=\"success\""
        );
        for (le, n) in BOUNDS.iter().zip(s.buckets) {
            let _ = writeln!(
                out,
                "sluice_proxy_response_latency_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "sluice_proxy_response_latency_seconds_sum{{{labels}}} 1.5"
        );
        let _ = writeln!(
            out,
            "sluice_proxy_response_latency_seconds_count{{{labels}}} {}",
            s.buckets[4]
        );
    }
    out
}

/// Serves `/metrics` from `page` on a loopback port until the runtime ends.
async fn serve_metrics(page: Arc<Mutex<String>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the exporter");
    let addr = listener.local_addr().expect("exporter address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let page = page.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = page.lock().expect("page lock").clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(StatusCode::OK)
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body)))
                                .expect("a response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A running Prometheus, killed when dropped (also when an assertion fails).
struct PrometheusProcess {
    child: Child,
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_prometheus(dir: &Path, exporter: SocketAddr, port: u16) -> PrometheusProcess {
    let config = dir.join("prom.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: sidecars\n    static_configs:\n      - targets: ['{exporter}']\n"
        ),
    )
    .expect("write prom.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    PrometheusProcess { child }
}

async fn wait_ready(prom: &mut PrometheusProcess, port: u16, dir: &Path) {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = prom.child.try_wait() {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            panic!("prometheus exited with {status}:\n{log}");
        }
        if http_get_status(port, "/-/ready").await == Some(200) {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "prometheus not ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn http_get_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut head = Vec::new();
    stream.read_to_end(&mut head).await.ok()?;
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `totals` until it equals `want` (a scrape has to happen first); on giving up, shows
/// the last answer.
async fn wait_for(source: &PrometheusSource, version: &str, want: &Counts) {
    let started = Instant::now();
    loop {
        let got = source.totals("default", "payments", version).await;
        if got.as_ref() == Ok(want) {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{version}: Prometheus never returned {want:?}; last answer {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_served_counts_back_from_a_real_prometheus() {
    if !have("prometheus") {
        return skip(
            "reads_the_served_counts_back_from_a_real_prometheus",
            "`prometheus` not installed (apt-get install prometheus)",
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut v1 = Served {
        success: 1000,
        failure: 3,
        buckets: [400, 900, 990, 1002, 1003],
    };
    let mut v2 = Served {
        success: 57,
        failure: 5,
        buckets: [10, 40, 55, 61, 62],
    };
    let page = Arc::new(Mutex::new(exposition(&[
        ("v1", v1.clone()),
        ("v2", v2.clone()),
    ])));
    let exporter = serve_metrics(page.clone()).await;
    let port = free_port();
    let mut prom = start_prometheus(dir.path(), exporter, port);
    wait_ready(&mut prom, port, dir.path()).await;

    let source = PrometheusSource::new(&format!("http://127.0.0.1:{port}"));
    wait_for(&source, "v2", &v2.expected()).await;
    wait_for(&source, "v1", &v1.expected()).await;

    // A version nobody exports yet reads as zero, not as an error.
    let none = source
        .totals("default", "payments", "v3")
        .await
        .expect("no series is zero");
    assert_eq!(none.requests, 0);
    assert_eq!(none.failures, 0);
    assert!(none.latency_buckets.iter().all(|&(_, n)| n == 0));

    // The counters grow; the next scrapes must show it.
    v2.success += 140;
    v2.failure += 20;
    v2.buckets = [30, 120, 190, 221, 222];
    v1.success += 500;
    v1.buckets = [600, 1400, 1490, 1502, 1503];
    *page.lock().expect("page lock") = exposition(&[("v1", v1.clone()), ("v2", v2.clone())]);
    wait_for(&source, "v2", &v2.expected()).await;
    wait_for(&source, "v1", &v1.expected()).await;

    // A custom check's templated query, evaluated for canary and baseline (here the failure
    // share in percent of each version, from the same series).
    let check: sluice_policy::resources::MetricCheck = serde_json::from_value(serde_json::json!({
        "name": "failure-share",
        "signal": "successRate",
        "relative": { "margin": 0.5 },
        "query": "100 * sum(sluice_proxy_responses_total{direction=\"inbound\",dst_service=\"{{service}}\",dst_version=\"{{version}}\",classification=\"success\"}) / sum(sluice_proxy_responses_total{direction=\"inbound\",dst_service=\"{{service}}\",dst_version=\"{{version}}\"})"
    }))
    .expect("a check");
    let readings = sluice_controller::rollout::custom::read(
        &source,
        sluice_controller::rollout::custom::Target {
            namespace: "default",
            service: "payments",
            canary: "v2",
            baseline: "v1",
            interval: std::time::Duration::from_secs(5),
        },
        &[&check],
    )
    .await
    .expect("readings");
    let total = |s: &Served| (s.success + s.failure) as f64;
    let want_canary = 100.0 * v2.success as f64 / total(&v2);
    let want_baseline = 100.0 * v1.success as f64 / total(&v1);
    let got = &readings[0];
    assert!(
        (got.canary.expect("canary") - want_canary).abs() < 1e-6,
        "{got:?}"
    );
    assert!(
        (got.baseline.expect("baseline") - want_baseline).abs() < 1e-6,
        "{got:?}"
    );
    // v2 (87.5%) is far below v1 (~99.8%): a violation.
    let (violated, evidence) =
        sluice_controller::rollout::custom::judge(&check, got, 0).expect("a value");
    assert!(violated && !evidence.failed, "{evidence:?}");

    // Prometheus's own error text reaches the caller.
    let err = source.query("sum(", None).await.expect_err("a parse error");
    assert!(err.to_string().contains("bad_data"), "{err}");
    assert!(err.to_string().contains("parse error"), "{err}");
    drop(prom);
}
