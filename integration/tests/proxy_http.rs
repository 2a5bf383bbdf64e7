//! HTTP/1.1 and HTTP/2 through the proxy with curl, header hygiene, loops and upstream errors.

use sluice_integration::client::curl;
use sluice_integration::{Proxy, ProxyOptions, free_port, have, skip, upstream};

fn explicit_to(target: std::net::SocketAddr) -> ProxyOptions {
    ProxyOptions::default()
        .env(
            "SLUICE_PROXY_EXPLICIT_OUTBOUND",
            format!("127.0.0.1:0={target}"),
        )
        .env("SLUICE_PROXY_ID", "testproxy")
}

fn split_response(out: &std::process::Output) -> (String, serde_json::Value) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.rsplit_once("\r\n\r\n").unwrap_or((&text, ""));
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (head.to_owned(), json)
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_http1_keepalive_chunked_and_expect_continue() {
    if !have("curl") {
        return skip("curl_http1", "curl not installed");
    }
    let up = upstream::http("web").await;
    let proxy = Proxy::start(explicit_to(up.addr));
    let base = format!("http://{}", proxy.explicit(0));

    let out = curl(&["-i", &format!("{base}/hello?x=1")]).await;
    assert!(out.status.success(), "{out:?}");
    let (head, json) = split_response(&out);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(json["name"], "web");
    assert_eq!(json["path"], "/hello");
    assert_eq!(json["version"], "HTTP/1.1");
    // The Host the client used is preserved, not replaced with the endpoint address.
    assert_eq!(json["headers"]["host"], proxy.explicit(0).to_string());

    // Two URLs in one curl run share the keep-alive connection.
    let out = curl(&["-v", &format!("{base}/a"), &format!("{base}/b")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Re-using") || stderr.contains("Reusing"),
        "{stderr}"
    );

    // A chunked upload that waits for `100 Continue` arrives whole.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'a'; 300_000]).expect("write");
    let out = curl(&[
        "-H",
        "Expect: 100-continue",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{base}/count"),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "300000", "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_http2_prior_knowledge() {
    if !have("curl") {
        return skip("curl_http2", "curl not installed");
    }
    let up = upstream::http("h2").await;
    let proxy = Proxy::start(explicit_to(up.addr));
    let out = curl(&[
        "-i",
        "--http2-prior-knowledge",
        &format!("http://{}/x", proxy.explicit(0)),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let (head, json) = split_response(&out);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert_eq!(json["version"], "HTTP/2.0");
    assert_eq!(json["name"], "h2");
}

/// A proxy with the per-core runtime (the default, named so the test keeps meaning it) and two
/// workers whatever the machine's CPUs.
fn per_core_proxy(target: std::net::SocketAddr) -> Proxy {
    Proxy::start(
        explicit_to(target)
            .env("SLUICE_PROXY_RUNTIME", "per-core")
            .env("TOKIO_WORKER_THREADS", "2"),
    )
}

/// `SLUICE_PROXY_RUNTIME=per-core`: each worker thread accepts from the same listeners and
/// serves its connections on its own runtime. Many new connections, HTTP/1.1 and HTTP/2, are
/// all served whichever worker takes them, and the second worker is a thread of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_per_core_serves_every_connection_on_every_worker() {
    if !have("curl") {
        return skip("per_core", "curl not installed");
    }
    let up = upstream::http("web").await;
    let proxy = per_core_proxy(up.addr);
    let base = format!("http://{}", proxy.explicit(0));
    for i in 0..20 {
        let h2 = i % 2 == 1;
        let mut args = vec!["-sS", "-i"];
        if h2 {
            args.push("--http2-prior-knowledge");
        }
        let url = format!("{base}/n/{i}");
        args.push(&url);
        let out = curl(&args).await;
        assert!(out.status.success(), "{out:?}\n{}", proxy.log());
        let (head, json) = split_response(&out);
        let want = if h2 { "HTTP/2 200" } else { "HTTP/1.1 200" };
        assert!(head.starts_with(want), "{head}");
        assert_eq!(json["path"], format!("/n/{i}"));
    }
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    assert!(
        threads.iter().any(|t| t == "sluice-worker-1"),
        "{threads:?}"
    );
    assert!(
        proxy
            .log()
            .contains("one current-thread runtime per worker"),
        "{}",
        proxy.log()
    );
}

/// The per-core workers' connection counts, from the admin endpoint's metrics.
async fn worker_connections(proxy: &Proxy) -> Vec<(String, i64)> {
    let out = curl(&["-sS", &format!("http://{}/metrics", proxy.admin())]).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("sluice_proxy_worker_connections{worker=\"")?;
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_per_core_spreads_a_burst_of_keep_alive_clients_over_its_workers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !have("curl") {
        return skip("per_core_balance", "curl not installed");
    }
    let up = upstream::http("web").await;
    let proxy = per_core_proxy(up.addr);
    // Eight clients connect at once, as a load balancer's pool or a benchmark does: the worker
    // the kernel wakes first would take them all and leave the other core idle.
    let connect = (0..8).map(|_| tokio::net::TcpStream::connect(proxy.explicit(0)));
    let mut clients: Vec<_> = futures_util::future::join_all(connect)
        .await
        .into_iter()
        .map(|c| c.expect("connect"))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let request = format!("GET /k/{i} HTTP/1.1\r\nHost: web\r\n\r\n");
        c.write_all(request.as_bytes()).await.expect("write");
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).await.expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let mut load = worker_connections(&proxy).await;
    load.sort();
    assert_eq!(
        load,
        [("0".to_owned(), 4), ("1".to_owned(), 4)],
        "{}",
        proxy.log()
    );
    // Closed connections come off their worker's count, so the next burst is balanced too.
    drop(clients);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let load = worker_connections(&proxy).await;
        if load.iter().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{load:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_mesh_headers_and_hop_by_hop_are_stripped() {
    if !have("curl") {
        return skip("spoofed_headers", "curl not installed");
    }
    let up = upstream::http("web").await;
    let proxy = Proxy::start(explicit_to(up.addr));
    let out = curl(&[
        "-i",
        "-H",
        "sluice-identity: spiffe://evil",
        "-H",
        "Sluice-Proxy-Hop: someone;outbound",
        "-H",
        "Connection: x-private",
        "-H",
        "x-private: 1",
        "-H",
        "x-normal: kept",
        &format!("http://{}/", proxy.explicit(0)),
    ])
    .await;
    let (head, json) = split_response(&out);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let h = &json["headers"];
    assert!(h.get("sluice-identity").is_none(), "{h}");
    assert!(h.get("x-private").is_none(), "{h}");
    assert_eq!(h["x-normal"], "kept");
    // Only the proxy's own marker remains.
    assert_eq!(h["sluice-proxy-hop"], "testproxy;outbound");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_loop_gets_508() {
    if !have("curl") {
        return skip("request_loop", "curl not installed");
    }
    // A listener whose target is itself: every request comes straight back.
    let port = free_port();
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("{port}=127.0.0.1:{port}"),
            )
            .env("SLUICE_PROXY_ID", "looper"),
    );
    let out = curl(&["-i", &format!("http://{}/", proxy.explicit(0))]).await;
    let (head, _) = split_response(&out);
    assert!(head.starts_with("HTTP/1.1 508"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sluice-proxy-error: loop"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_502() {
    if !have("curl") {
        return skip("unreachable_upstream", "curl not installed");
    }
    let closed = free_port();
    let proxy = Proxy::start(explicit_to(([127, 0, 0, 1], closed).into()));
    let out = curl(&["-i", &format!("http://{}/", proxy.explicit(0))]).await;
    let (head, _) = split_response(&out);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sluice-proxy-error: connect"),
        "{head}"
    );
}
