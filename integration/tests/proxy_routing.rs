//! Outbound routing from a snapshot file: weighted split, environments by header and baggage,
//! fallback, refusal of unknown destinations, and hot reload under load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sluice_integration::client::{get, hyper_client};
use sluice_integration::{Proxy, ProxyOptions, upstream, write_atomically};

/// The address clients "dial" for the service. Nothing listens there: the explicit listener
/// presents it as the original destination and routing replaces it with an endpoint.
const SERVICE_ADDR: &str = "127.0.0.1:9";

fn snapshot(
    version: &str,
    v1: (u32, SocketAddr),
    v2: (u32, SocketAddr),
    env: SocketAddr,
) -> String {
    serde_json::json!({
        "version": version,
        "services": [{
            "name": "pay",
            "addresses": [SERVICE_ADDR],
            "versions": [
                { "name": "v1", "weight": v1.0, "endpoints": [v1.1] },
                { "name": "v2", "weight": v2.0, "endpoints": [v2.1] },
            ],
            "environments": { "pr-7": [env] },
        }]
    })
    .to_string()
}

struct Setup {
    a: upstream::Upstream,
    b: upstream::Upstream,
    c: upstream::Upstream,
    proxy: Proxy,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup(weights: (u32, u32), extra: &[(&str, &str)]) -> Setup {
    let (a, b, c) = (
        upstream::http("a").await,
        upstream::http("b").await,
        upstream::http("c").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snapshot.json");
    std::fs::write(
        &path,
        snapshot("1", (weights.0, a.addr), (weights.1, b.addr), c.addr),
    )
    .expect("write");
    let mut opts = ProxyOptions::default()
        .env(
            "SLUICE_PROXY_EXPLICIT_OUTBOUND",
            format!("127.0.0.1:0={SERVICE_ADDR}"),
        )
        .env("SLUICE_PROXY_SNAPSHOT", path.display().to_string())
        .env("SLUICE_PROXY_SERVICE", "checkout")
        .env("SLUICE_PROXY_LOG", "warn");
    for (k, v) in extra {
        opts = opts.env(k, *v);
    }
    let proxy = Proxy::start(opts);
    Setup {
        a,
        b,
        c,
        proxy,
        path,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_split_over_10000_requests() {
    let s = setup((80, 20), &[]).await;
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
    let s = setup((100, 0), &[]).await;
    let client = hyper_client(false);
    let addr = s.proxy.explicit(0);
    let name =
        |r: sluice_integration::client::Reply| r.json()["name"].as_str().unwrap_or("").to_owned();

    let r = get(&client, addr, "/", &[("sluice-env", "pr-7")])
        .await
        .expect("header");
    assert_eq!(name(r.clone()), "c");
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
    assert_eq!(name(r.clone()), "c");
    // Baggage is how the environment propagates, so it reaches the application.
    assert_eq!(r.json()["headers"]["baggage"], "user=1,sluice-env=pr-7;p=1");

    // No copy of this service in pr-8: the normal split (all v1 here).
    let r = get(&client, addr, "/", &[("sluice-env", "pr-8")])
        .await
        .expect("fallback");
    assert_eq!(name(r), "a");
    let r = get(&client, addr, "/", &[]).await.expect("plain");
    assert_eq!(name(r), "a");
    assert_eq!(s.c.hits(), 2);
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
async fn snapshot_reload_under_load_drops_nothing() {
    let s = setup((100, 0), &[]).await;
    let client = hyper_client(false);
    let addr = s.proxy.explicit(0);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, ok, failed) =
                (client.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match get(&client, addr, "/", &[]).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    // Flip the split back and forth, with invalid files in between that must be ignored.
    for i in 0..10u32 {
        let (w1, w2) = if i % 2 == 0 { (0, 100) } else { (100, 0) };
        let text = snapshot(&format!("v{i}"), (w1, s.a.addr), (w2, s.b.addr), s.c.addr);
        write_atomically(&s.path, &text);
        tokio::time::sleep(Duration::from_millis(150)).await;
        write_atomically(&s.path, "{ not json");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = snapshot("final", (0, s.a.addr), (100, s.b.addr), s.c.addr);
    write_atomically(&s.path, &last);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100, "load ran");

    let config = get(&client, s.proxy.admin(), "/config", &[])
        .await
        .expect("config")
        .json();
    assert_eq!(config["snapshot"]["version"], "final");
    let before = s.b.hits();
    for _ in 0..20 {
        assert_eq!(
            get(&client, addr, "/", &[]).await.expect("get").json()["name"],
            "b"
        );
    }
    assert_eq!(s.b.hits(), before + 20);
    let metrics = get(&client, s.proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains(r#"sluice_proxy_snapshot_reloads_total{result="error"}"#),
        "{metrics}"
    );
}
