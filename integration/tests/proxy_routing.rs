//! Outbound routing compiled from policy (`Route` resources) and endpoints: weighted split,
//! environments by header and baggage with fallback, `rpc` rules, refusal of unknown
//! destinations and of ambiguous paths. Reloads are in `proxy_config.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_integration::client::{get, hyper_client, request};
use sluice_integration::mesh::{self, MeshDir, SERVICE_ADDR};
use sluice_integration::{Proxy, ProxyOptions, upstream};

struct Setup {
    a: upstream::Upstream,
    b: upstream::Upstream,
    c: upstream::Upstream,
    proxy: Proxy,
    _mesh: MeshDir,
}

/// `pay` v1 → a, v2 → b, the pr-7 copy → c, routed by `route` from a policy directory.
async fn setup(route: &str) -> Setup {
    let (a, b, c) = (
        upstream::http("a").await,
        upstream::http("b").await,
        upstream::http("c").await,
    );
    let mesh = MeshDir::new(
        &mesh::policy(Some(route)),
        &mesh::services(a.addr, b.addr, c.addr),
    );
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={SERVICE_ADDR}"),
            )
            .env(
                "SLUICE_PROXY_POLICY_DIR",
                mesh.policy_dir.display().to_string(),
            )
            .env(
                "SLUICE_PROXY_ENDPOINTS",
                mesh.endpoints.display().to_string(),
            )
            .env("SLUICE_PROXY_SERVICE", "checkout")
            .env("SLUICE_PROXY_LOG", "warn"),
    );
    Setup {
        a,
        b,
        c,
        proxy,
        _mesh: mesh,
    }
}

fn name(r: &sluice_integration::client::Reply) -> String {
    r.json()["name"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_split_over_10000_requests() {
    let s = setup(&mesh::route(80, 20, "")).await;
    let client = hyper_client(false);
    let n = 10_000usize;
    let addr = s.proxy.explicit(0);
    let failures = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, failures) = (client.clone(), failures.clone());
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    match get(&client, addr, "/", &[]).await {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let (a, b) = (s.a.hits() as f64, s.b.hits() as f64);
    assert_eq!(a + b, n as f64);
    // Pearson chi-square with 1 degree of freedom; 10.83 is the p = 0.001 critical value.
    let (ea, eb) = (0.8 * n as f64, 0.2 * n as f64);
    let chi2 = (a - ea).powi(2) / ea + (b - eb).powi(2) / eb;
    assert!(chi2 < 10.83, "chi2 = {chi2:.2} for a={a} b={b}");
    eprintln!("weighted split: a={a} b={b} chi2={chi2:.3}");

    let metrics = get(&client, s.proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_proxy_requests_total{") && l.contains(r#"dst_version="v2""#)
        })
        .expect("per-version request metric");
    assert!(
        line.contains(r#"dst_service="pay""#) && line.contains(r#"src_service="checkout""#),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_by_header_and_baggage_with_fallback() {
    let s = setup(&mesh::route(100, 0, "")).await;
    let client = hyper_client(false);
    let addr = s.proxy.explicit(0);

    let r = get(&client, addr, "/", &[("sluice-env", "pr-7")])
        .await
        .expect("header");
    assert_eq!(name(&r), "c");
    // The mesh-owned header is consumed by routing, not passed to the application.
    assert!(r.json()["headers"].get("sluice-env").is_none());

    let r = get(
        &client,
        addr,
        "/",
        &[("baggage", "user=1,sluice-env=pr-7;p=1")],
    )
    .await
    .expect("baggage");
    assert_eq!(name(&r), "c");
    // Baggage is how the environment propagates, so it reaches the application.
    assert_eq!(r.json()["headers"]["baggage"], "user=1,sluice-env=pr-7;p=1");

    // No copy of this service in pr-8: the normal split (all v1 here).
    let r = get(&client, addr, "/", &[("sluice-env", "pr-8")])
        .await
        .expect("fallback");
    assert_eq!(name(&r), "a");
    let r = get(&client, addr, "/", &[]).await.expect("plain");
    assert_eq!(name(&r), "a");
    assert_eq!(s.c.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_match_rpc_headers_and_send_to_an_environment() {
    let rules = "  rules:\n\
        \x20   - name: charges\n      match: { rpc: POST /v1/charges }\n\
        \x20     backends: [{ version: v2, weight: 100 }]\n\
        \x20   - name: qa\n      match: { headers: { x-team: qa } }\n      environment: pr-7\n\
        \x20   - name: qa-missing\n      match: { headers: { x-team: qa9 } }\n      environment: pr-9\n";
    let s = setup(&mesh::route(100, 0, rules)).await;
    let client = hyper_client(false);
    let addr = s.proxy.explicit(0);
    let post = |path: &'static str| request(&client, http::Method::POST, addr, path, &[]);

    assert_eq!(name(&post("/v1/charges").await.expect("post")), "b");
    assert_eq!(
        name(&post("/v1/charges?idempotency=1").await.expect("q")),
        "b"
    );
    // Another method or path is not the declared call: the default split.
    assert_eq!(name(&post("/v1/refunds").await.expect("other")), "a");
    let r = get(&client, addr, "/v1/charges", &[]).await.expect("get");
    assert_eq!(name(&r), "a");
    let r = get(&client, addr, "/", &[("x-team", "qa")])
        .await
        .expect("qa");
    assert_eq!(name(&r), "c");
    // A rule's environment without a copy falls back to the default split.
    let r = get(&client, addr, "/", &[("x-team", "qa9")])
        .await
        .expect("qa9");
    assert_eq!(name(&r), "a");
    let metrics = get(&client, s.proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    assert!(metrics.contains(r#"route="charges""#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_destinations_can_be_refused() {
    let up = upstream::http("x").await;
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={}", up.addr),
            )
            .env("SLUICE_PROXY_UNKNOWN_DESTINATIONS", "refuse"),
    );
    let r = get(&hyper_client(false), proxy.explicit(0), "/", &[])
        .await
        .expect("reply");
    assert_eq!(r.status, 403);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_canonical_paths_are_refused_both_ways() {
    let up = upstream::http("x").await;
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_EXPLICIT_OUTBOUND",
                format!("127.0.0.1:0={}", up.addr),
            )
            .env(
                "SLUICE_PROXY_EXPLICIT_INBOUND",
                format!("127.0.0.1:0={}", up.addr),
            ),
    );
    let client = hyper_client(false);
    for listener in [proxy.explicit(0), proxy.explicit(1)] {
        for path in [
            "/public/%2e%2e/admin",
            "/a%2Fb",
            "/a%5cb",
            "/a/../b",
            "/a//b",
        ] {
            let r = get(&client, listener, path, &[]).await.expect("reply");
            assert_eq!(r.status, 400, "{path}");
            assert_eq!(r.headers["sluice-proxy-error"], "non-canonical-path");
            let problem = r.json();
            assert_eq!(
                problem["type"],
                "https://sluice.dev/problems/non-canonical-path"
            );
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("not canonical")),
                "{problem}"
            );
        }
        let r = get(&client, listener, "/a/../b", &[]).await.expect("reply");
        assert_eq!(r.json()["canonical"], "/b");
        let r = get(&client, listener, "/public/a%20b", &[])
            .await
            .expect("ok");
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.hits(), 2);
}
