//! mTLS between sidecars with real handshakes: certificates from another CA, expired ones and
//! ones with the wrong SAN are refused in both directions; opaque TCP is authorized per
//! connection; rotating certificates under load fails no request.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_integration::client::{curl, get, hyper_client};
use sluice_integration::mtls::{Leaf, Pair, PairOptions, TestCa, counter, policy, spiffe};
use sluice_integration::{PATIENCE, have, skip, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Calls the server proxy's inbound port directly over mTLS with curl, presenting `cert`/`key`.
/// `-k`: the server's identity is a SPIFFE ID, not a host name curl could check; this test is
/// about what the *server* accepts.
async fn curl_mtls(pair: &Pair, dir: &Path, cert: &str, key: &str) -> (bool, String) {
    std::fs::write(dir.join("c.pem"), cert).expect("cert");
    std::fs::write(dir.join("k.pem"), key).expect("key");
    let out = curl(&[
        "-k",
        "--max-time",
        "5",
        "--cert",
        &dir.join("c.pem").display().to_string(),
        "--key",
        &dir.join("k.pem").display().to_string(),
        &format!("https://{}/v1/charges/1", pair.inbound()),
    ])
    .await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_refuses_other_ca_expired_and_wrong_san() {
    if !have("curl") {
        return skip("inbound_refuses", "curl not installed");
    }
    let pair = Pair::start(PairOptions::default()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let (cert, key) = pair.ca.issue(&Leaf::service("checkout"));
    let (ok, body) = curl_mtls(&pair, tmp.path(), &cert, &key).await;
    assert!(ok, "a valid mesh certificate is accepted: {body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("echo");
    assert_eq!(seen["headers"]["sluice-client-id"], spiffe("checkout"));

    let other = TestCa::new("some other CA");
    let mut refused = Vec::new();
    let (c, k) = other.issue(&Leaf::service("checkout"));
    refused.push(("another CA", c, k));
    let (c, k) = pair.ca.issue(&Leaf {
        not_before: time::Duration::hours(-2),
        not_after: time::Duration::minutes(-5),
        ..Leaf::service("checkout")
    });
    refused.push(("expired", c, k));
    let (c, k) = pair.ca.issue(&Leaf {
        uris: vec!["spiffe://other.local/ns/default/svc/checkout".into()],
        ..Leaf::service("checkout")
    });
    refused.push(("foreign trust domain", c, k));
    let (c, k) = pair.ca.issue(&Leaf {
        uris: vec!["https://checkout.example".into()],
        ..Leaf::service("checkout")
    });
    refused.push(("no SPIFFE SAN", c, k));
    let (c, k) = pair.ca.issue(&Leaf {
        uris: vec!["spiffe://test.local/ns/default/svc/checkout/admin".into()],
        ..Leaf::service("checkout")
    });
    refused.push(("malformed SPIFFE ID", c, k));
    let hits = pair.app.hits();
    for (what, cert, key) in &refused {
        let (ok, body) = curl_mtls(&pair, tmp.path(), cert, key).await;
        assert!(!ok && body.is_empty(), "{what}: accepted: {body}");
    }
    assert_eq!(pair.app.hits(), hits, "no refused caller reached the app");
    let failures = counter(
        &pair.server,
        "sluice_proxy_tls_handshake_failures_total",
        &[],
    )
    .await;
    assert_eq!(failures, refused.len() as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_refuses_a_server_that_is_not_the_destination() {
    // The payments proxy presents an `orders` certificate from the right CA.
    let pair = Pair::start(PairOptions {
        server_leaf: Leaf::service("orders"),
        ..PairOptions::default()
    })
    .await;
    let rsp = get(&hyper_client(false), pair.outbound(), "/v1/charges/1", &[])
        .await
        .expect("response");
    assert_eq!(rsp.status, 502, "{}", rsp.body);
    assert_eq!(pair.app.hits(), 0);
    assert!(pair.client.log().contains("another service's identity"));

    // And a right-named certificate from another CA. Until the server proxy has it in force
    // the call fails anyway (the `orders` name), so wait for that before calling.
    let other = TestCa::new("impostor CA");
    other.write_identity_trusting(
        &pair.server_identity(),
        &Leaf::service("payments"),
        &pair.ca.pem,
    );
    let in_force = |log: String| log.matches("mesh identity in force").count();
    wait_for(
        "the server proxy to serve the impostor's certificate",
        PATIENCE,
        || (in_force(pair.server.log()) == 2).then_some(()),
    );
    let rsp = get(&hyper_client(false), pair.outbound(), "/v1/charges/1", &[])
        .await
        .expect("response");
    assert_eq!(rsp.status, 502, "{}", rsp.body);
    assert_eq!(pair.app.hits(), 0);
    // The client proxy refused the handshake for the issuer (its alert reaches the server),
    // not for the name as before. The client answers 502 as soon as it sends the alert, so
    // the server may log it a moment after the response arrives.
    wait_for(
        "the server proxy to log the client's UnknownCA alert",
        PATIENCE,
        || {
            pair.server
                .log()
                .contains("received fatal alert: UnknownCA")
                .then_some(())
        },
    );
    assert_eq!(
        pair.client
            .log()
            .matches("another service's identity")
            .count(),
        1,
        "only the `orders` certificate was refused for its name"
    );
}

/// Sends non-HTTP bytes through the client proxy and returns what came back.
async fn raw_exchange(pair: &Pair) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(pair.outbound())
        .await
        .expect("connect");
    s.write_all(b"PING\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    buf
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_tcp_is_authorized_per_connection() {
    // No TCP grant: the TCP connection is closed, logged and counted.
    let pair = Pair::start(PairOptions::default()).await;
    assert!(raw_exchange(&pair).await.is_empty());
    assert_eq!(pair.app.hits(), 0);
    let denied = counter(
        &pair.server,
        "sluice_proxy_authz_deny_total",
        &[r#"caller="checkout""#, r#"rpc="undeclared""#],
    )
    .await;
    assert_eq!(denied, 1.0);
    assert!(pair.server.log().contains("tcp:"), "{}", pair.server.log());

    // The whole HTTP surface (`* /*`) is still not opaque TCP.
    let http_only = policy("enforce", "short")
        .replace(r#"rpc: "* /tcp""#, r#"rpc: "* /*""#)
        .replace(
            r#"allow: ["GET /v1/charges/{id}"]"#,
            r#"allow: ["GET /v1/charges/{id}", "* /*"]"#,
        );
    let pair = Pair::start(PairOptions {
        policy: http_only,
        ..PairOptions::default()
    })
    .await;
    assert!(raw_exchange(&pair).await.is_empty());
    assert_eq!(pair.app.hits(), 0);

    // Granted `tcp`: the bytes reach the app (whose HTTP server answers 400 to them).
    let tcp = policy("enforce", "short").replace(
        r#"allow: ["GET /v1/charges/{id}"]"#,
        r#"allow: ["GET /v1/charges/{id}", "tcp"]"#,
    );
    let pair = Pair::start(PairOptions {
        policy: tcp.clone(),
        ..PairOptions::default()
    })
    .await;
    let reply = raw_exchange(&pair).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    // The same over a declared opaque port: still mTLS between the proxies, still authorized.
    let pair = Pair::start(PairOptions {
        policy: tcp,
        opaque: true,
        ..PairOptions::default()
    })
    .await;
    let reply = raw_exchange(&pair).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let allowed = counter(
        &pair.server,
        "sluice_proxy_authz_allow_total",
        &[r#"caller="checkout""#, r#"rpc="tcp""#],
    )
    .await;
    assert_eq!(allowed, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_rotation_under_load_fails_no_request() {
    if !have("curl") {
        return skip("rotation_under_load", "curl not installed");
    }
    let pair = Arc::new(Pair::start(PairOptions::default()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    // Pooled HTTP/1.1 and HTTP/2 through both proxies.
    for i in 0..6 {
        let (pair, stop, ok, failed) = (pair.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let client = hyper_client(i % 2 == 0);
            while !stop.load(Ordering::Relaxed) {
                match get(&client, pair.outbound(), "/v1/charges/1", &[]).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Fresh mTLS handshakes against the server proxy (each curl is a new connection), so new
    // handshakes happen while the certificate changes underneath them.
    let curl_ok = Arc::new(AtomicUsize::new(0));
    {
        let (pair, stop, curl_ok, failed) =
            (pair.clone(), stop.clone(), curl_ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let tmp = tempfile::tempdir().expect("tmp");
            let (cert, key) = pair.ca.issue(&Leaf::service("checkout"));
            while !stop.load(Ordering::Relaxed) {
                if curl_mtls(&pair, tmp.path(), &cert, &key).await.0 {
                    curl_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    let rotations = 12;
    let in_force =
        |proxy: &sluice_integration::Proxy| proxy.log().matches("mesh identity in force").count();
    for _ in 0..rotations {
        // Each rotation happens under load, and the next one only once both proxies have put
        // this one in force: every rotation is exercised, however slow the machine.
        let (server, client) = (in_force(&pair.server), in_force(&pair.client));
        let served = ok.load(Ordering::Relaxed);
        wait_for("requests between rotations", PATIENCE, || {
            (ok.load(Ordering::Relaxed) >= served + 10).then_some(())
        });
        pair.ca
            .write_identity(&pair.server_identity(), &Leaf::service("payments"));
        pair.ca
            .write_identity(&pair.client_identity(), &Leaf::service("checkout"));
        wait_for(
            "both proxies to put the new certificate in force",
            PATIENCE,
            || (in_force(&pair.server) > server && in_force(&pair.client) > client).then_some(()),
        );
    }
    let served = ok.load(Ordering::Relaxed);
    wait_for("requests after the last rotation", PATIENCE, || {
        (ok.load(Ordering::Relaxed) >= served + 10).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = start.elapsed();
    let (ok, curl_ok, failed) = (
        ok.load(Ordering::Relaxed),
        curl_ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    let installed = pair.server.log().matches("mesh identity in force").count();
    eprintln!(
        "rotation under load: {ok} proxied + {curl_ok} fresh-handshake requests in {elapsed:?}, \
         {failed} failed, server installed {installed} certificates"
    );
    assert_eq!(failed, 0);
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(
        installed > rotations,
        "rotations not picked up: {installed}"
    );
}
