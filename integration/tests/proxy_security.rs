//! The data plane as an attacker tries it (issue 11): every test here is an attack that got
//! through before the fix, against two real proxies over mTLS and a real application server.
//!
//! - Paths: the path that is authorized must be byte-for-byte the path that is forwarded, so
//!   a path that is not canonical (dot segments, `//`, encoded separators) is refused with 400,
//!   over HTTP/1 and HTTP/2, inbound and through the caller's own sidecar.
//! - Upgrades: `Upgrade: h2c` never reaches the application (Hypercorn accepts it and would
//!   then serve HTTP/2 streams for any path, unchecked).
//! - Opaque TCP: HTTP rules never grant it; requests shaped to miss detection (a request line
//!   over 8 KiB, a pause before the first byte, bare LF line endings) are either read as HTTP
//!   and authorized per request, or refused.
//! - Limits: `sluice-*` trailers, the header read timeout, the per-listener connection cap, and
//!   the file-descriptor limit.
//! - HTTP/2 floods: streams reset as soon as they are opened (rapid reset) and a header block
//!   that never ends (CONTINUATION flood) close the connection with `ENHANCE_YOUR_CALM`, while
//!   a client cancelling some of its calls is kept.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_integration::client::{curl, get, hyper_client};
use sluice_integration::mtls::{Pair, PairOptions, TRUST_DOMAIN, counter, eventually};
use sluice_integration::{Proxy, ProxyOptions, have, skip, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `payments` behind its proxy: checkout may read `/public/*` and call `* /` (an HTTP rule for
/// the root, which used to grant opaque TCP too); `/healthz` is exempt. `ports` is inserted
/// under the service's spec (e.g. a declared HTTP port), `allow` is appended to checkout's rule.
fn policy(ports: &str, allow: &str) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec:
  trustDomain: {TRUST_DOMAIN}
  accessRequestUrl: "http://portal.test/access/new?from={{caller}}&to={{service}}&rpc={{rpc}}"
---
apiVersion: sluice.dev/v1alpha1
kind: Team
metadata: {{ name: shop }}
spec: {{}}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: {{ name: payments }}
spec:
  team: shop
{ports}  endpoints:
    - {{ rpc: "GET /public/*" }}
    - {{ rpc: "GET /admin/*" }}
    - {{ rpc: "GET /healthz" }}
    - {{ rpc: "* /" }}
---
apiVersion: sluice.dev/v1alpha1
kind: MeshService
metadata: {{ name: checkout }}
spec: {{ team: shop }}
---
apiVersion: sluice.dev/v1alpha1
kind: AccessPolicy
metadata: {{ name: payments-callers }}
spec:
  service: payments
  rules:
    - {{ name: public, from: [checkout], allow: ["GET /public/*", "* /"{allow}], reason: catalogue }}
  unauthenticated:
    - {{ rpc: GET /healthz, reason: kubelet probes }}
"#
    )
}

/// The application's port declared as HTTP.
const HTTP_PORT: &str = "  ports: [{ port: APP_PORT, protocol: http }]\n";

async fn pair(ports: &str, allow: &str) -> Pair {
    Pair::start(PairOptions {
        policy: policy(ports, allow),
        ..PairOptions::default()
    })
    .await
}

/// `curl --path-as-is` (curl would otherwise remove the dot segments itself): status and body.
async fn curl_as_is(extra: &[&str], url: &str) -> (String, String) {
    let mut args = vec!["--path-as-is", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_never_ride_an_exemption_or_a_grant() {
    if !have("curl") {
        return skip("dot_segments", "curl not installed");
    }
    let pair = pair("", "").await;
    // No identity at all: `/admin/../healthz` was decided as the exempt `/healthz` and reached
    // the app as `/admin/../healthz`.
    for (via, h2) in [(pair.inbound(), false), (pair.inbound(), true)] {
        let flag: &[&str] = if h2 {
            &["--http2-prior-knowledge"]
        } else {
            &[]
        };
        let url = format!("http://{via}/admin/../healthz");
        let (status, body) = curl_as_is(flag, &url).await;
        assert_eq!(status, "400", "h2={h2}: {body}");
        assert!(body.contains("`..`"), "says what is wrong: {body}");
        assert!(
            body.contains("/healthz"),
            "gives the canonical form: {body}"
        );
    }
    // Through the caller's own sidecar, HTTP/1 and HTTP/2: `/admin/../public/x` was allowed
    // as `/public/x`, and `/admin//../public/x` (which WHATWG URL parsing reads as
    // `/admin/public/x`) too.
    for path in [
        "/admin/../public/x",
        "/admin//../public/x",
        "/public/../admin/x",
        "/public/./x",
        "/public//x",
        "/public/%2e%2e/admin/x",
        "/public/..;/admin/x",
    ] {
        for h2 in [false, true] {
            let flag: &[&str] = if h2 {
                &["--http2-prior-knowledge"]
            } else {
                &[]
            };
            let url = format!("http://{}{path}", pair.outbound());
            let (status, body) = curl_as_is(flag, &url).await;
            assert_eq!(status, "400", "{path} h2={h2}: {body}");
        }
    }
    assert_eq!(pair.app.hits(), 0, "no refused path reached the app");
    // The canonical paths still work, and reach the app exactly as sent.
    let (status, body) = curl_as_is(&[], &format!("http://{}/public/x/", pair.outbound())).await;
    assert_eq!(status, "200", "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["path"], "/public/x/");
    let (status, _) = curl_as_is(&[], &format!("http://{}/healthz", pair.inbound())).await;
    assert_eq!(status, "200");
}

#[tokio::test(flavor = "multi_thread")]
async fn non_origin_request_targets_are_refused() {
    let pair = pair("", "").await;
    // Absolute-form, asterisk-form and CONNECT's authority-form, on HTTP/1.
    for head in [
        "GET http://payments/public/x HTTP/1.1\r\nHost: payments\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: payments\r\n",
        "CONNECT payments:443 HTTP/1.1\r\nHost: payments:443\r\n",
    ] {
        for via in [pair.outbound(), pair.inbound()] {
            let reply = raw(
                via,
                Duration::ZERO,
                &format!("{head}Connection: close\r\n\r\n"),
            )
            .await;
            let want = if head.starts_with("CONNECT") {
                "HTTP/1.1 405"
            } else {
                "HTTP/1.1 400"
            };
            assert!(reply.starts_with(want), "{head:?} via {via}: {reply}");
            assert!(reply.contains("sluice-proxy-error"), "{reply}");
        }
    }
    assert_eq!(pair.app.hits(), 0);
}

/// Sends `bytes` after `pause` on a new connection to `addr`; returns everything read until
/// the peer closes (or 10 s pass).
async fn raw(addr: SocketAddr, pause: Duration, bytes: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(pause).await;
    let _ = s.write_all(bytes.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The three ways that used to force the opaque fallback, each carrying a request for
/// `/admin/secret` that no rule grants.
fn fallback_attacks() -> Vec<(&'static str, Duration, String)> {
    let long = format!(
        "GET /admin/secret?pad={} HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n",
        "x".repeat(9 * 1024)
    );
    vec![
        ("request line over 8 KiB", Duration::ZERO, long),
        (
            "bare LF line endings",
            Duration::ZERO,
            "GET /admin/secret HTTP/1.1\nHost: payments\nConnection: close\n\n".to_owned(),
        ),
        (
            // Longer than both proxies' detect timeouts (1 s each, one after the other).
            "a pause before the first byte",
            Duration::from_millis(2500),
            "GET /admin/secret HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n".to_owned(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn http_rules_never_grant_opaque_tcp() {
    // `* /` is an HTTP rule. It used to grant the opaque pseudo-call `CONNECT /`, so any of
    // the three fallbacks carried a raw `GET /admin/secret` to the app.
    let pair = pair("", "").await;
    for (what, pause, bytes) in fallback_attacks() {
        let reply = raw(pair.outbound(), pause, &bytes).await;
        assert!(
            !reply.contains("payments-app"),
            "{what}: the request reached the app: {reply}"
        );
        // Read as HTTP and denied like any request, or (the pause) closed as TCP nobody
        // granted.
        assert!(
            reply.starts_with("HTTP/1.1 403") || reply.is_empty(),
            "{what}: {reply}"
        );
    }
    assert_eq!(pair.app.hits(), 0, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_http_port_never_falls_back_to_opaque() {
    // Even a TCP grant does not open an HTTP port to raw bytes: what is not HTTP gets a 400.
    let pair = pair(HTTP_PORT, r#", "tcp""#).await;
    for (what, pause, bytes) in fallback_attacks() {
        let reply = raw(pair.outbound(), pause, &bytes).await;
        assert!(
            reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 403"),
            "{what}: {reply}"
        );
        assert!(
            !reply.contains("payments-app"),
            "{what}: reached the app: {reply}"
        );
    }
    // Not HTTP at all, directly at the inbound port: 400 with the reason, then closed.
    let reply = raw(pair.inbound(), Duration::ZERO, "\u{1}\u{2}binary\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("declared `http`"), "{reply}");
    let reply = raw(pair.inbound(), Duration::from_millis(1500), "").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "silence: {reply}");
    assert_eq!(pair.app.hits(), 0, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_grant_is_what_opens_opaque_tcp() {
    // The same opaque bytes, with `tcp:PORT` granted and the port not declared as HTTP: they
    // reach the app, and the decision names the TCP grant.
    let pair = pair("", r#", "tcp:APP_PORT""#).await;
    let reply = raw(pair.outbound(), Duration::ZERO, "\u{1}\u{2}binary\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.1 400"),
        "the app's own answer: {reply}"
    );
    let port = pair.app.addr.port();
    let allowed = sluice_integration::mtls::counter(
        &pair.server,
        "sluice_proxy_authz_allow_total",
        &[r#"caller="checkout""#, &format!(r#"rpc="tcp:{port}""#)],
    )
    .await;
    assert_eq!(allowed, 1.0);
}

/// An ASGI app served by Hypercorn, which accepts `Upgrade: h2c`; it answers `app saw PATH`.
struct Hypercorn {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Hypercorn {
    async fn start() -> Option<Hypercorn> {
        let available = std::process::Command::new("python3")
            .args(["-c", "import hypercorn"])
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            return None;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2c");
        let port = sluice_integration::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = tokio::process::Command::new("python3")
            .args(["-m", "hypercorn", "--bind", &addr.to_string(), "app:app"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("hypercorn");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "hypercorn did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Hypercorn { child, addr })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_upgrade_never_reaches_the_app() {
    if !have("curl") || !have("nghttp") {
        return skip("h2c_upgrade", "curl or nghttp not installed");
    }
    let Some(mut app) = Hypercorn::start().await else {
        return skip("h2c_upgrade", "python3 -m hypercorn not available");
    };
    let pair = Pair::start(PairOptions {
        policy: policy("", ""),
        app_addr: Some(app.addr),
        ..PairOptions::default()
    })
    .await;
    // The exempt path, upgraded: the app answered 101 and spoke HTTP/2 from then on.
    let out = curl(&[
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        &format!("http://{}/healthz", pair.inbound()),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1.1");
    // nghttp upgrades with the first URI and sends the second as a new HTTP/2 stream on the
    // same connection: that stream would reach `/admin/secret` without any check.
    let out = tokio::process::Command::new("nghttp")
        .args([
            "-u",
            &format!("http://{}/healthz", pair.inbound()),
            &format!("http://{}/admin/secret", pair.inbound()),
        ])
        .output()
        .await
        .expect("nghttp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("app saw /admin/secret"), "{stdout}");
    let _ = app.child.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_is_authorized_as_its_request() {
    let ws = upstream::websocket_echo().await;
    let pair = Pair::start(PairOptions {
        policy: policy("", ""),
        app_addr: Some(ws.addr),
        ..PairOptions::default()
    })
    .await;
    // Not granted: the upgrade request itself is denied.
    let denied =
        tokio_tungstenite::connect_async(format!("ws://{}/admin/socket", pair.outbound())).await;
    match denied {
        Err(tokio_tungstenite::tungstenite::Error::Http(rsp)) => {
            assert_eq!(rsp.status(), 403)
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert_eq!(ws.hits(), 0);
    // Granted: the tunnel opens (and is opaque from then on).
    let (mut socket, rsp) =
        tokio_tungstenite::connect_async(format!("ws://{}/public/socket", pair.outbound()))
            .await
            .expect("granted upgrade");
    assert_eq!(rsp.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .expect("send");
    let echoed = socket.next().await.expect("echo").expect("message");
    assert_eq!(echoed.into_text().expect("text").as_str(), "hi");
}

#[tokio::test(flavor = "multi_thread")]
async fn mesh_trailers_from_the_client_are_stripped() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    // HTTP/2 (where trailers are common: gRPC) through a proxy to the echo upstream, which
    // sends back the body and trailers it received.
    let app = upstream::http("app").await;
    let proxy = Proxy::start(
        ProxyOptions::default().env("SLUICE_PROXY_EXPLICIT_INBOUND", format!("0={}", app.addr)),
    );
    let mut trailers = http::HeaderMap::new();
    trailers.insert(
        "sluice-client-id",
        "spiffe://evil/ns/x/svc/admin".parse().expect("v"),
    );
    trailers.insert("x-kept", "yes".parse().expect("v"));
    let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(format!("http://{}/echo", proxy.explicit(0)))
        .body(body)
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), 200);
    let collected = rsp.into_body().collect().await.expect("body");
    let echoed = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
    assert_eq!(
        echoed.get("x-kept").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );
    assert!(
        echoed.get("sluice-client-id").is_none(),
        "a client-sent sluice-* trailer reached the app: {echoed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off() {
    let app = upstream::http("app").await;
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env("SLUICE_PROXY_EXPLICIT_INBOUND", format!("0={}", app.addr))
            .env("SLUICE_PROXY_HEADER_READ_TIMEOUT", "1s"),
    );
    let mut s = tokio::net::TcpStream::connect(proxy.explicit(0))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was still open after 15 s");
    // Generous: the point is "bounded", not a latency figure.
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_listener_are_capped_and_the_admin_port_stays_up() {
    capped(ProxyOptions::default()).await;
}

/// With a runtime per core every worker accepts from the same listener: the cap must stay one
/// cap for the listener, not one per worker (16 × 2 slow clients would otherwise be held).
#[tokio::test(flavor = "multi_thread")]
async fn with_a_runtime_per_core_the_cap_is_one_cap_across_workers() {
    capped(
        ProxyOptions::default()
            .env("SLUICE_PROXY_RUNTIME", "per-core")
            .env("TOKIO_WORKER_THREADS", "2"),
    )
    .await;
}

async fn capped(options: ProxyOptions) {
    let app = upstream::http("app").await;
    let proxy = Proxy::start(
        options
            .env("SLUICE_PROXY_EXPLICIT_INBOUND", format!("0={}", app.addr))
            .env("SLUICE_PROXY_MAX_CONNECTIONS", "16"),
    );
    // 16 slow clients hold every slot (each has sent half a request).
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(proxy.explicit(0))
            .await
            .expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        held.push(s);
    }
    // Every one of them has been accepted and holds its slot.
    let all_held = eventually(Duration::from_secs(10), || async {
        counter(&proxy, "sluice_proxy_tcp_active", &[]).await == 16.0
    })
    .await;
    assert!(all_held, "the proxy did not accept the 16 slow clients");
    // The 17th is closed at once instead of queueing behind them.
    let mut extra = tokio::net::TcpStream::connect(proxy.explicit(0))
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection over the cap was not closed: {read:?}"
    );
    assert!(proxy.log().contains("connection limit"), "{}", proxy.log());
    // Health checks live on the admin listener, which the cap does not touch.
    let ready = get(&hyper_client(false), proxy.admin(), "/live", &[])
        .await
        .expect("admin");
    assert_eq!(ready.status, 200);
    // Freed slots are reused: once the slow clients are gone, a request is served (retried,
    // because the proxy notices the closed connections only as it reads them).
    drop(held);
    let client = hyper_client(false);
    let served = eventually(Duration::from_secs(10), || async {
        get(&client, proxy.explicit(0), "/x", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(served, "no request was served after the slow clients left");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_soft_fd_limit_is_raised_to_the_hard_limit() {
    if !have("prlimit") {
        return skip("fd_limit", "prlimit not installed");
    }
    let proxy = Proxy::start(ProxyOptions {
        wrapper: vec!["prlimit".into(), "--nofile=256:4096".into()],
        ..ProxyOptions::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], "4096", "soft limit: {line}");
    assert_eq!(fields[4], "4096", "hard limit: {line}");
}

/// The differential property behind the path rule: for generated paths (dot segments, empty
/// segments, percent-encodings, path parameters, mixtures), the proxy either refuses the
/// request with 400, or the path its access matcher decided on (the `authz_path` field of the
/// access log) has exactly the segments of the path the application received, and that path is
/// byte-for-byte the one the client sent.
#[test]
fn the_matcher_sees_the_path_the_app_receives() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pair = rt.block_on(pair("", ""));
    let segment = prop::sample::select(vec![
        "public", "admin", "x", "healthz", ".", "..", "", "%2e", "%2E%2e", ".%2e", "%2f", "a%2Fb",
        "%5c", "..;", ".;x", "%41", "~", "a;b", "%", "%zz", "...", "..a",
    ]);
    let path = (
        prop::collection::vec(segment, 1..7),
        any::<bool>(),
        prop::sample::select(vec!["", "?q=1", "?next=/../admin"]),
    )
        .prop_map(|(segments, trailing, query)| {
            let mut p = String::new();
            for s in segments {
                p.push('/');
                p.push_str(s);
            }
            if trailing {
                p.push('/');
            }
            p.push_str(query);
            p
        });
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let refused = std::cell::Cell::new(0usize);
    let decided = std::cell::Cell::new(0usize);
    let result = runner.run(&path, |path| {
        let head = format!("GET {path} HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n");
        // Unauthenticated, straight to the callee's proxy; then as checkout through its own.
        for via in [pair.inbound(), pair.outbound()] {
            let reply = rt.block_on(raw(via, Duration::ZERO, &head));
            if reply.starts_with("HTTP/1.1 400") {
                refused.set(refused.get() + 1);
                continue;
            }
            let log = pair.server.log();
            let matcher = last_authz_path(&log)
                .ok_or_else(|| TestCaseError::fail(format!("{path}: no access log line")))?;
            let sent = path.split('?').next().unwrap_or("");
            prop_assert_eq!(
                segments(&matcher),
                segments(sent),
                "{} via {}: the matcher decided on {}",
                path,
                via,
                matcher
            );
            if reply.starts_with("HTTP/1.1 200") {
                let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
                let seen: serde_json::Value = serde_json::from_str(body)
                    .map_err(|e| TestCaseError::fail(format!("{path}: {e}: {reply}")))?;
                prop_assert_eq!(seen["path"].as_str(), Some(sent), "{}", reply);
            }
            decided.set(decided.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Both branches were exercised.
    let (refused, decided) = (refused.get(), decided.get());
    assert!(
        refused > 0 && decided > 0,
        "refused {refused}, decided {decided}"
    );
}

/// The `authz_path` of the newest access-log line that has one.
fn last_authz_path(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let path = v.get("authz_path")?.as_str()?;
        (!path.is_empty()).then(|| path.to_owned())
    })
}

/// A path's segments, ignoring a single trailing `/` (which names no segment of its own).
fn segments(path: &str) -> Vec<&str> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    }
}

/// A proxy serving `app` on an explicit inbound listener, and an HTTP/2 client connection to
/// it (prior knowledge, as gRPC clients connect), its connection driven by a task.
async fn h2_client(
    app: &upstream::Upstream,
) -> (
    Proxy,
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let proxy = Proxy::start(
        ProxyOptions::default().env("SLUICE_PROXY_EXPLICIT_INBOUND", format!("0={}", app.addr)),
    );
    let io = tokio::net::TcpStream::connect(proxy.explicit(0))
        .await
        .expect("connect");
    let (send, conn) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    (proxy, send, tokio::spawn(conn))
}

/// Opens a stream for `path` and waits until the app has received it (`hits` reached `n`):
/// the proxy has done the whole work of a call. `None` once the connection refuses streams.
async fn opened_upstream(
    send: &h2::client::SendRequest<bytes::Bytes>,
    app: &upstream::Upstream,
    path: &str,
    n: usize,
) -> Option<h2::client::ResponseFuture> {
    let mut send = send.clone().ready().await.ok()?;
    let request = http::Request::get(format!("http://payments{path}"))
        .body(())
        .expect("request");
    let (response, _) = send.send_request(request, true).ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.hits() < n {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(response)
}

/// Rapid reset (CVE-2023-44487): a client opens a stream and resets it as soon as the proxy
/// has called the app, over and over. A reset stream no longer counts against the 200
/// concurrent streams, so one connection makes the proxy and the app start calls as fast as
/// it can send frames. h2 only limits resets of streams not yet accepted, and the proxy
/// accepts every stream at once.
#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_is_cut_off() {
    const ATTEMPTS: usize = 3_000;
    let app = upstream::http("app").await;
    let (proxy, send, conn) = h2_client(&app).await;
    let mut opened = 0;
    while opened < ATTEMPTS {
        // Each call waits in the app; dropping the response future resets it (CANCEL).
        match opened_upstream(&send, &app, "/slow/10000", opened + 1).await {
            Some(response) => drop(response),
            None => break,
        }
        opened += 1;
    }
    assert!(
        opened < 1_000,
        "the proxy served {opened} streams reset at once on one connection"
    );
    // Told why, as Envoy and nginx do: GOAWAY with ENHANCE_YOUR_CALM.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection is closed")
        .expect("join");
    let reason = ended.as_ref().err().and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM), "{ended:?}");
    assert!(app.hits() < 1_000, "the app saw {} calls", app.hits());
    assert_eq!(
        counter(
            &proxy,
            "sluice_proxy_refused_connections_total",
            &["reason=\"rapid-reset\""]
        )
        .await,
        1.0
    );
    assert!(proxy.log().contains("reset"), "{}", proxy.log());
    // Other clients are served.
    let (send, conn) = h2::client::handshake(
        tokio::net::TcpStream::connect(proxy.explicit(0))
            .await
            .expect("connect"),
    )
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let request = http::Request::get("http://payments/x")
        .body(())
        .expect("request");
    let response = send.send_request(request, true).expect("send").0;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer")
        .expect("response");
    assert_eq!(response.status(), 200);
}

/// Not stopped on noise: a client that cancels a third of its calls (deadlines, hedged
/// requests) keeps its connection, however many calls it makes.
#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_cancelling_some_calls_are_kept() {
    const CALLS: usize = 1_500;
    let app = upstream::http("app").await;
    let (_proxy, send, conn) = h2_client(&app).await;
    for n in 1..=CALLS {
        let path = if n % 3 == 0 { "/slow/10000" } else { "/x" };
        let response = opened_upstream(&send, &app, path, n)
            .await
            .unwrap_or_else(|| panic!("call {n} was refused"));
        if n % 3 != 0 {
            let response = tokio::time::timeout(Duration::from_secs(10), response)
                .await
                .expect("an answer")
                .expect("response");
            assert_eq!(response.status(), 200, "call {n}");
        }
    }
    assert!(!conn.is_finished(), "{:?}", conn.await);
}

/// CONTINUATION flood (CVE-2024-27316 and its kin): a header block that never ends, sent as
/// endless CONTINUATION frames, which a server buffers until END_HEADERS. The attack needs
/// raw frames: no HTTP/2 client sends it.
#[tokio::test(flavor = "multi_thread")]
async fn http2_continuation_flood_is_cut_off() {
    const FRAMES: usize = 1_000;
    let app = upstream::http("app").await;
    let proxy = Proxy::start(
        ProxyOptions::default().env("SLUICE_PROXY_EXPLICIT_INBOUND", format!("0={}", app.addr)),
    );
    let stream = tokio::net::TcpStream::connect(proxy.explicit(0))
        .await
        .expect("connect");
    let (mut rx, mut tx) = stream.into_split();
    // What the proxy answers, read all along: once it has closed, unread bytes are lost.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(&mut got)).await;
        got
    });
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    // HEADERS on stream 1 with END_STREAM, not END_HEADERS: GET http://payments/.
    out.extend(frame(0x1, 0x1, b"\x82\x86\x84\x01\x08payments"));
    let mut sent_all = tx.write_all(&out).await.is_ok();
    // 130 literal headers `x-a: aaa…` (120 bytes), never indexed, per frame, over and over.
    let filler: Vec<u8> = b"\x00\x03x-a\x78"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'a', 120))
        .cycle()
        .take(126 * 130)
        .collect();
    let continuation = frame(0x9, 0x0, &filler);
    for _ in 0..FRAMES {
        if tx.write_all(&continuation).await.is_err() {
            sent_all = false;
            break;
        }
    }
    let got = reader.await.expect("reader");
    let goaway = frames(&got).find(|(kind, _)| *kind == 0x7);
    let code = goaway.and_then(|(_, p)| Some(u32::from_be_bytes(p.get(4..8)?.try_into().ok()?)));
    // ENHANCE_YOUR_CALM (0xb): too many CONTINUATION frames for the 64 KiB header limit.
    assert_eq!(
        code,
        Some(0xb),
        "frames: {:?}",
        frames(&got).collect::<Vec<_>>()
    );
    assert!(
        !sent_all,
        "the proxy read {} MiB of one header block",
        (filler.len() * FRAMES) >> 20
    );
    assert_eq!(app.hits(), 0);
    // The proxy is still there for everyone else.
    let ok = get(&hyper_client(false), proxy.explicit(0), "/x", &[])
        .await
        .expect("served");
    assert_eq!(ok.status, 200);
}

/// The frames in `bytes` (type, payload), as a test reads an HTTP/2 peer's answer.
fn frames(mut bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let head = bytes.get(..9)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let payload = bytes.get(9..9 + len)?;
        let kind = head[3];
        bytes = &bytes[9 + len..];
        Some((kind, payload))
    })
}
