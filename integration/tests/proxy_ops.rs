//! Operations: graceful drain on SIGTERM, admin endpoints, metrics format, config errors.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_integration::client::{curl, get, hyper_client};
use sluice_integration::{
    PATIENCE, Proxy, ProxyOptions, have, proxy_bin, skip, upstream, wait_for, wait_for_async,
};
use tokio::sync::oneshot;

/// An upstream that holds its one request until the test releases it, so the request is in
/// flight for exactly as long as the test says, however slow the machine. Reports when the
/// request has arrived.
async fn held_upstream() -> (SocketAddr, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (arrived_tx, arrived) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    let held = std::sync::Mutex::new(Some((arrived_tx, released)));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        // Anything else connecting (the test's probe of the draining listener, relayed as
        // opaque TCP by a worker that has not closed it yet) is refused at once, rather than
        // left in the backlog where its relay would keep the drain waiting.
        drop(listener);
        // HTTP/1.1 or HTTP/2, as the proxy forwards what the client spoke.
        let svc = hyper::service::service_fn(move |_req| {
            let held = held.lock().expect("lock").take();
            async move {
                if let Some((arrived_tx, released)) = held {
                    let _ = arrived_tx.send(());
                    let _ = released.await;
                }
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"held, then released"),
                )))
            }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    (addr, arrived, release)
}

/// The byte offset of the first JSON log line whose message is `message` (and, if given,
/// whose field `key` is `value`).
fn log_position(log: &str, message: &str, field: Option<(&str, &str)>) -> Option<usize> {
    let mut offset = 0;
    for line in log.split_inclusive('\n') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && v["message"] == message
            && field.is_none_or(|(k, want)| v[k] == want)
        {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits() {
    sigterm_drains(false).await;
}

/// The same over HTTP/2: the connection gets GOAWAY, and its open stream still completes.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_http2_streams_then_exits() {
    sigterm_drains(true).await;
}

async fn sigterm_drains(h2: bool) {
    let (up, arrived, release) = held_upstream().await;
    // A drain deadline far beyond the test's patience: the proxy must exit because the work is
    // done, never because the deadline passed.
    let mut proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={up}"),
            )
            .env("SLUICE_PROXY_DRAIN_DEADLINE", "300s"),
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

    // 1. A request is in flight: the app has it and has not answered.
    let in_flight = {
        let client = hyper_client(h2);
        tokio::spawn(async move { get(&client, addr, "/held", &[]).await })
    };
    tokio::time::timeout(PATIENCE, arrived)
        .await
        .expect("the request reaches the app")
        .expect("upstream task");

    // 2. SIGTERM: the proxy drains: not ready, and its listener closed.
    proxy.terminate();
    let listener = addr.to_string();
    wait_for_async(
        "the proxy to report draining and close its listener",
        PATIENCE,
        async || {
            if let Some(status) = proxy.exit_status() {
                panic!(
                    "exited ({status}) with a request in flight:\n{}",
                    proxy.log()
                );
            }
            let ready = get(&hyper_client(false), proxy.admin(), "/ready", &[]).await;
            let closed = log_position(
                &proxy.log(),
                "stopped accepting",
                Some(("listener", &listener)),
            );
            // With a runtime per core each worker closes its own descriptor of the listener
            // and logs it; the port refuses once the last has: wait for what a client sees.
            let refused = closed.is_some() && tokio::net::TcpStream::connect(addr).await.is_err();
            (ready.is_ok_and(|r| r.status == 503) && refused).then_some(())
        },
    )
    .await;

    // 3. While the request is in flight, the proxy waits for it.
    assert!(
        proxy.exit_status().is_none(),
        "exited with a request in flight:\n{}",
        proxy.log()
    );
    assert!(
        !in_flight.is_finished(),
        "the in-flight request was cut off"
    );

    // 4. The app answers: the caller gets the whole response, and only then does the proxy exit.
    release.send(()).expect("release the request");
    let reply = in_flight
        .await
        .expect("task")
        .expect("in-flight request completes");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "held, then released")
    );
    let (status, proxy) = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(PATIENCE);
        (status, proxy)
    })
    .await
    .expect("join");
    let status = status.unwrap_or_else(|| panic!("did not exit:\n{}", proxy.log()));
    assert!(status.success(), "{status}");

    // The log tells the same story, in this order; and the drain ended because the work was
    // done, not because the deadline passed.
    let log = proxy.log();
    let order = [
        log_position(&log, "draining", None),
        log_position(&log, "stopped accepting", Some(("listener", &listener))),
        log_position(&log, "drained; exiting", Some(("outcome", "Drained"))),
    ];
    assert!(
        order.iter().all(Option::is_some) && order.is_sorted(),
        "draining → stopped accepting → drained (Drained), got {order:?}:\n{log}"
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
    // The close is counted once `copy_bidirectional` returns, after our EOF.
    let metrics =
        sluice_integration::client::metrics_showing(proxy.admin(), "sluice_proxy_tcp_close_total{")
            .await;
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
    let line = wait_for("the access log line", PATIENCE, || {
        proxy
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "sluice_proxy::access")
    });
    let log = proxy.log();
    assert_eq!(line["path"], "/logged");
    assert_eq!(line["status"], 200);
    assert!(!log.contains("secret=1"), "query strings are not logged");
}

/// The plain format as a log collector stores it (stderr is a file here, as under
/// `kubectl logs`): no terminal colour codes, and each request's line names the client and
/// the original destination, which are formatted once per connection and shared by the
/// connection's requests.
#[tokio::test(flavor = "multi_thread")]
async fn plain_access_log_has_no_colour_codes_and_every_request_names_its_connection() {
    if !have("curl") {
        return skip("plain_access_log", "curl not installed");
    }
    let up = upstream::http("web").await;
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env("SLUICE_PROXY_LOG_FORMAT", "plain")
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={}", up.addr),
            ),
    );
    let url = |n: u32| format!("http://{}/logged/{n}", proxy.explicit(0));
    // Three requests on one keep-alive connection (curl reuses it for URLs of one host).
    let out = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &url(1),
        &url(2),
        &url(3),
    ])
    .await;
    assert!(out.status.success());
    let lines = wait_for("three access log lines", PATIENCE, || {
        let lines: Vec<String> = proxy
            .log()
            .lines()
            .filter(|l| l.contains("sluice_proxy::access"))
            .map(str::to_owned)
            .collect();
        (lines.len() == 3).then_some(lines)
    });
    // An explicit outbound listener's original destination is the upstream it names.
    let orig_dst = format!("orig_dst={}", up.addr);
    let mut clients = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in a log file: {line:?}"
        );
        assert!(line.contains(&format!("path=/logged/{}", n + 1)), "{line}");
        assert!(line.contains(&orig_dst), "no {orig_dst}: {line}");
        let client = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("client="))
            .unwrap_or_else(|| panic!("no client: {line}"));
        assert!(
            client.parse::<std::net::SocketAddr>().is_ok(),
            "client {client:?}: {line}"
        );
        clients.push(client.to_owned());
    }
    assert!(
        clients.iter().all(|c| *c == clients[0]),
        "one connection: {clients:?}"
    );
}
