//! Config reloads: from a snapshot file and from a policy directory, under load, with invalid
//! edits refused (logged with their diagnostics) while the old routes stay in force.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_integration::client::{get, hyper_client};
use sluice_integration::mesh::{self, MeshDir, SERVICE_ADDR};
use sluice_integration::mtls::counter;
use sluice_integration::{
    PATIENCE, Proxy, ProxyOptions, upstream, wait_for, wait_for_async, write_atomically,
};

fn options() -> ProxyOptions {
    ProxyOptions::default()
        .env(
            "SLUICE_PROXY_EXPLICIT_OUTBOUND",
            format!("127.0.0.1:0={SERVICE_ADDR}"),
        )
        .env("SLUICE_PROXY_SERVICE", "checkout")
        .env("SLUICE_PROXY_LOG", "warn")
}

/// Sends requests from 4 tasks until stopped; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, path: &'static str) -> Load {
        let client = hyper_client(false);
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..4)
            .map(|_| {
                let (client, stop, ok, failed) =
                    (client.clone(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match get(&client, addr, path, &[]).await {
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
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops and returns (ok, failed).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("task");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

async fn config(proxy: &Proxy) -> serde_json::Value {
    get(&hyper_client(false), proxy.admin(), "/config", &[])
        .await
        .expect("config")
        .json()
}

async fn names(addr: SocketAddr, n: usize) -> Vec<String> {
    let client = hyper_client(false);
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(&client, addr, "/", &[]).await.expect("get");
        out.push(r.json()["name"].as_str().unwrap_or("").to_owned());
    }
    out
}

/// Waits until `/config` reports a state version other than `old`.
async fn wait_for_new_version(proxy: &Proxy, old: &serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while config(proxy).await["version"] == *old {
        assert!(Instant::now() < deadline, "config never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_reload_under_load_drops_nothing() {
    let (a, b, c) = (
        upstream::http("a").await,
        upstream::http("b").await,
        upstream::http("c").await,
    );
    let services = mesh::services(a.addr, b.addr, c.addr);
    let snapshot = |version: &str, v1, v2| {
        mesh::snapshot(
            version,
            &mesh::policy(Some(&mesh::route(v1, v2, ""))),
            &services,
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snapshot.json");
    write_atomically(&path, &snapshot("1", 100, 0));
    let proxy = Proxy::start(options().env("SLUICE_PROXY_SNAPSHOT", path.display().to_string()));
    let addr = proxy.explicit(0);
    let load = Load::start(addr, "/");
    let rejected = async || {
        counter(
            &proxy,
            "sluice_proxy_snapshot_reloads_total",
            &[r#"result="error""#],
        )
        .await
    };
    // Flip the split back and forth, with invalid files in between that must be ignored:
    // broken JSON, and valid JSON whose policy bundle is invalid. Each file is written only
    // once the proxy has dealt with the one before, so every one of them is tried under load.
    for i in 0..10u32 {
        let (w1, w2) = if i % 2 == 0 { (0, 100) } else { (100, 0) };
        let version = format!("v{i}");
        write_atomically(&path, &snapshot(&version, w1, w2));
        wait_for_async(
            &format!("snapshot {version} in force"),
            PATIENCE,
            async || (config(&proxy).await["version"] == version.as_str()).then_some(()),
        )
        .await;
        let before = rejected().await;
        if i % 2 == 0 {
            write_atomically(&path, "{ not json");
        } else {
            write_atomically(&path, &snapshot("bad", 50, 60));
        }
        wait_for_async(
            "the invalid snapshot to be rejected",
            PATIENCE,
            async || (rejected().await > before).then_some(()),
        )
        .await;
        assert_eq!(config(&proxy).await["version"], version.as_str());
    }
    write_atomically(&path, &snapshot("final", 0, 100));
    wait_for_async("the final snapshot in force", PATIENCE, async || {
        (config(&proxy).await["version"] == "final").then_some(())
    })
    .await;
    assert_eq!(rejected().await, 10.0, "each invalid file rejected once");
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0);
    assert!(ok > 100, "load ran");

    let config = config(&proxy).await;
    assert_eq!(config["version"], "final");
    assert_eq!(config["policy"]["version"].as_str().map(str::len), Some(16));
    assert_eq!(config["services"][0]["name"], "pay");
    assert_eq!(config["services"][0]["versions"][1]["weight"], 100);
    assert_eq!(config["endpoints"]["instances"], 3);
    let before = b.hits();
    assert!(names(addr, 20).await.iter().all(|n| n == "b"));
    assert_eq!(b.hits(), before + 20);
    let metrics = get(&hyper_client(false), proxy.admin(), "/metrics", &[])
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains(r#"sluice_proxy_snapshot_reloads_total{result="error"}"#),
        "{metrics}"
    );
    assert!(
        proxy.log().contains("weights add up to 110"),
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policy_edit_is_refused_and_old_routes_keep_working() {
    let (a, b, c) = (
        upstream::http("a").await,
        upstream::http("b").await,
        upstream::http("c").await,
    );
    let mesh = MeshDir::new(
        &mesh::policy(Some(&mesh::route(100, 0, ""))),
        &mesh::services(a.addr, b.addr, c.addr),
    );
    let proxy = Proxy::start(
        options()
            .env(
                "SLUICE_PROXY_POLICY_DIR",
                mesh.policy_dir.display().to_string(),
            )
            .env(
                "SLUICE_PROXY_ENDPOINTS",
                mesh.endpoints.display().to_string(),
            ),
    );
    let addr = proxy.explicit(0);
    let before = config(&proxy).await["version"].clone();

    // A typo'd field and weights that do not add up: both must be named in the log.
    let broken = mesh::policy(Some(&mesh::route(0, 90, "  timeuot: 5s\n")));
    mesh.write_policy(&broken);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("new config rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = proxy.log();
    assert!(
        log.contains("mesh.yaml:"),
        "diagnostic names the file:\n{log}"
    );
    assert!(
        log.contains("error[unknown-field]: unknown field `timeuot`"),
        "{log}"
    );
    assert!(log.contains("did you mean `timeout`?"), "{log}");
    // The old routes stay in force.
    assert_eq!(config(&proxy).await["version"], before);
    assert!(names(addr, 20).await.iter().all(|n| n == "a"));

    // Fixing the file applies it.
    mesh.write_policy(&mesh::policy(Some(&mesh::route(0, 100, ""))));
    wait_for_new_version(&proxy, &before).await;
    assert!(names(addr, 20).await.iter().all(|n| n == "b"));
    assert_eq!(a.hits(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn weight_change_in_policy_dir_applies_without_dropping_in_flight_requests() {
    let (a, b, c) = (
        upstream::http("a").await,
        upstream::http("b").await,
        upstream::http("c").await,
    );
    let mesh = MeshDir::new(
        &mesh::policy(Some(&mesh::route(100, 0, ""))),
        &mesh::services(a.addr, b.addr, c.addr),
    );
    let proxy = Proxy::start(
        options()
            .env(
                "SLUICE_PROXY_POLICY_DIR",
                mesh.policy_dir.display().to_string(),
            )
            .env(
                "SLUICE_PROXY_ENDPOINTS",
                mesh.endpoints.display().to_string(),
            ),
    );
    let addr = proxy.explicit(0);
    let before = config(&proxy).await["version"].clone();
    // Slow requests that are in flight across the change, plus steady load.
    let client = hyper_client(false);
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { get(&client, addr, "/slow/700", &[]).await })
        })
        .collect();
    // Change the policy only once every slow request is at the app, i.e. in flight.
    wait_for("the slow requests to reach the app", PATIENCE, || {
        (a.hits() >= 16).then_some(())
    });
    let load = Load::start(addr, "/");
    mesh.write_policy(&mesh::policy(Some(&mesh::route(0, 100, ""))));
    wait_for_new_version(&proxy, &before).await;
    for r in slow {
        let r = r.await.expect("task").expect("in-flight request");
        assert_eq!((r.status, r.body.as_str()), (200, "slow a"));
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0);
    assert!(ok > 10, "load ran");
    assert!(names(addr, 20).await.iter().all(|n| n == "b"));
    assert!(b.hits() >= 20);
}
