//! Operations: graceful drain on SIGTERM, admin endpoints, metrics format, config errors.

use std::time::{Duration, Instant};

use sluice_integration::client::{curl, get, hyper_client};
use sluice_integration::{Proxy, ProxyOptions, have, proxy_bin, skip, upstream};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let up = upstream::http("slow").await;
    let mut proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={}", up.addr),
            )
            .env("SLUICE_PROXY_DRAIN_DEADLINE", "20s"),
    );
    let addr = proxy.explicit(0);
    let client = hyper_client(false);
    assert_eq!(
        get(&client, proxy.admin(), "/ready", &[])
            .await
            .expect("ready")
            .status,
        200
    );

    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, addr, "/slow/1500", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    proxy.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Draining: not ready, and no new connections accepted.
    let ready = get(&hyper_client(false), proxy.admin(), "/ready", &[])
        .await
        .expect("ready");
    assert_eq!(ready.status, 503);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );

    let reply = in_flight
        .await
        .expect("task")
        .expect("in-flight request completes");
    assert_eq!((reply.status, reply.body.as_str()), (200, "slow slow"));
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(Duration::from_secs(10));
        (status, proxy)
    })
    .await
    .expect("join");
    let (status, proxy) = status;
    let status = status.unwrap_or_else(|| panic!("did not exit:\n{}", proxy.log()));
    assert!(status.success(), "{status}");
    // Exited once the work was done, long before the 20s deadline.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_and_shutdown_from_loopback() {
    let mut proxy = Proxy::start(ProxyOptions::default());
    let client = hyper_client(false);
    let admin = proxy.admin();
    assert_eq!(
        get(&client, admin, "/live", &[])
            .await
            .expect("live")
            .status,
        200
    );
    let config = get(&client, admin, "/config", &[])
        .await
        .expect("config")
        .json();
    assert_eq!(config["services"], serde_json::json!([]));
    assert_eq!(config["policy"]["services"], 0);
    assert_eq!(
        get(&client, admin, "/nope", &[]).await.expect("404").status,
        404
    );
    assert_eq!(
        get(&client, admin, "/shutdown", &[])
            .await
            .expect("GET")
            .status,
        405
    );
    let req = http::Request::post(format!("http://{admin}/shutdown"))
        .body(Default::default())
        .expect("request");
    assert_eq!(client.request(req).await.expect("POST").status(), 200);
    let exited = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .expect("join");
    assert!(exited.is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool() {
    if !have("promtool") {
        return skip(
            "metrics_pass_promtool",
            "promtool not installed (Debian package `prometheus`)",
        );
    }
    let http_up = upstream::http("web").await;
    let tcp_up = upstream::tcp_echo().await;
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={},127.0.0.1:0={}", http_up.addr, tcp_up.addr),
            )
            .env(
                "SLUICE_PROXY_EXPLICIT_INBOUND",
                format!("127.0.0.1:0={}", http_up.addr),
            ),
    );
    let client = hyper_client(false);
    for listener in [0, 2] {
        get(
            &client,
            proxy.explicit(listener),
            "/",
            &[("content-type", "application/grpc")],
        )
        .await
        .expect("request");
    }
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(proxy.explicit(1))
            .await
            .expect("connect");
        s.write_all(b"\x00binary").await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).await.expect("read");
    }
    let metrics = get(&client, proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    for name in [
        "sluice_proxy_requests_total",
        "sluice_proxy_responses_total",
        "sluice_proxy_response_latency_seconds_bucket",
        "sluice_proxy_tcp_open_total",
        "sluice_proxy_tcp_close_total",
        "sluice_proxy_tcp_read_bytes_total",
        r#"direction="inbound""#,
        r#"grpc_status="unknown""#,
        r#"classification="failure""#,
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(metrics.as_bytes()).await.expect("write");
    }
    let out = child.wait_with_output().await.expect("promtool output");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_lists_every_error_and_exits_64() {
    let out = std::process::Command::new(proxy_bin())
        .env("SLUICE_PROXY_INBOUND_ADDR", "nowhere")
        .env("SLUICE_PROXY_LOG_FORMAT", "xml")
        .env("SLUICE_PROXY_DRAIN_DEADLINE", "later")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in [
        "SLUICE_PROXY_INBOUND_ADDR",
        "SLUICE_PROXY_LOG_FORMAT",
        "SLUICE_PROXY_DRAIN_DEADLINE",
    ] {
        assert!(stderr.contains(var), "{var} not reported:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_sees_json_access_log() {
    if !have("curl") {
        return skip("json_access_log", "curl not installed");
    }
    let up = upstream::http("web").await;
    let proxy = Proxy::start(ProxyOptions::default().env(
        "SLUICE_PROXY_EXPLICIT_OUTBOUND",
        format!("127.0.0.1:0={}", up.addr),
    ));
    let out = curl(&[
        "-o",
        "/dev/null",
        &format!("http://{}/logged?secret=1", proxy.explicit(0)),
    ])
    .await;
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = proxy.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "sluice_proxy::access")
        .unwrap_or_else(|| panic!("no access log line:\n{log}"));
    assert_eq!(line["path"], "/logged");
    assert_eq!(line["status"], 200);
    assert!(!log.contains("secret=1"), "query strings are not logged");
}
