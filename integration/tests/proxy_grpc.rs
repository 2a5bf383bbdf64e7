//! gRPC through the proxy with Python grpcio: unary, server/client/bidi streaming, trailers
//! and error statuses, plus the gRPC-aware metrics. Skips when grpcio is not installed
//! (`pip install grpcio grpcio-tools`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use sluice_integration::client::{get, hyper_client};
use sluice_integration::{Proxy, ProxyOptions, skip};

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcio_unary_streaming_and_trailers() {
    let have_grpc = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_grpc {
        return skip(
            "grpcio",
            "python3 with grpcio and grpcio-tools not available",
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc");
    let generated = tempfile::tempdir().expect("tempdir");
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", src.display()))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .arg(src.join("echo.proto"))
        .status()
        .expect("protoc");
    assert!(status.success());

    let mut server = KillOnDrop(
        Command::new("python3")
            .arg(src.join("server.py"))
            .arg(generated.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    let port: u16 = line.trim().parse().expect("port number");

    let proxy = Proxy::start(ProxyOptions::default().env(
        "SLUICE_PROXY_EXPLICIT_OUTBOUND",
        format!("127.0.0.1:0=127.0.0.1:{port}"),
    ));
    let out = tokio::process::Command::new("python3")
        .arg(src.join("client.py"))
        .arg(generated.path())
        .arg(proxy.explicit(0).to_string())
        .output()
        .await
        .expect("client");
    assert!(
        out.status.success(),
        "client failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );

    let metrics = get(&hyper_client(false), proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    let responses = |needle: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("sluice_proxy_responses_total{") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(responses(r#"grpc_status="0""#) >= 3.0, "{metrics}");
    // NOT_FOUND arrives in trailers and is classified as a failure.
    let not_found = metrics
        .lines()
        .find(|l| l.contains(r#"grpc_status="5""#))
        .unwrap_or_else(|| panic!("no grpc_status 5:\n{metrics}"));
    assert!(
        not_found.contains(r#"classification="failure""#),
        "{not_found}"
    );
}
