//! The proxy fed by the real controller: `Watch` brings it every policy version, `Register`
//! announces its inbound to everyone else, and a controller that is SIGKILLed and restarted on
//! the same state directory neither stops its traffic nor leaves it behind.
//!
//! Waits are generous polls: speed is measured in `benches/`, never asserted here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use serde_json::Value;
use sluice_api::v1::{ProxyConfig, WatchRequest, Workload};
use sluice_integration::client::{get, hyper_client, request};
use sluice_integration::controller::RealController;
use sluice_integration::mtls::{Leaf, TestCa};
use sluice_integration::{Proxy, ProxyOptions, free_port, upstream};

/// Long enough for a reconnect at the end of the proxy's backoff (5 s cap) on a busy machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read policy");
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).expect("write policy");
}

/// Adds an unauthenticated grant to payments' AccessPolicy (a new policy version).
fn grant_unauthenticated(access: &Path, rpc: &str) {
    edit(
        access,
        "  unauthenticated:\n",
        &format!("  unauthenticated:\n    - {{ rpc: \"{rpc}\", reason: test }}\n"),
    );
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn proxy_config(client: &Client<HttpConnector, Full<Bytes>>, proxy: &Proxy) -> Value {
    get(client, proxy.admin(), "/config", &[])
        .await
        .expect("/config")
        .json()
}

/// A second "proxy": a bare Watch client, reading the controller's config as any proxy sees
/// it. Keeps the latest config received.
struct Observer {
    stream: tonic::Streaming<ProxyConfig>,
    latest: Option<ProxyConfig>,
}

impl Observer {
    async fn watch(controller: &RealController) -> Observer {
        // With checkout's certificate: the controller streams only to the workload it proves.
        let mut client = controller.client_as("checkout").await;
        let stream = client
            .watch(WatchRequest {
                workload: Some(Workload {
                    namespace: "default".into(),
                    service: "checkout".into(),
                    version: "v1".into(),
                    environment: "stable".into(),
                    instance: "observer".into(),
                    role: String::new(),
                }),
                proxy_id: "observer".into(),
                have_version: String::new(),
            })
            .await
            .expect("Watch")
            .into_inner();
        Observer {
            stream,
            latest: None,
        }
    }

    /// The latest config if it satisfies `check`, else the next one received that does.
    async fn config(&mut self, what: &str, check: impl Fn(&ProxyConfig) -> bool) -> ProxyConfig {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(c) = self.latest.as_ref().filter(|c| check(c)) {
                    return c.clone();
                }
                let config = self
                    .stream
                    .message()
                    .await
                    .expect("stream")
                    .expect("stream open");
                self.latest = Some(config);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {what}; latest: {:?}", self.latest))
    }
}

fn has_endpoint(config: &ProxyConfig, address: &str) -> bool {
    config.services.iter().any(|s| {
        s.service == "payments"
            && s.versions.iter().any(|v| {
                v.version == "v1"
                    && v.endpoints
                        .iter()
                        .any(|e| e.address == address && e.instance == "payments-0")
            })
    })
}

async fn status(client: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr, rpc: &str) -> u16 {
    let (method, path) = rpc.split_once(' ').expect("METHOD /path");
    let method = http::Method::from_bytes(method.as_bytes()).expect("method");
    request(client, method, addr, path, &[])
        .await
        .unwrap_or_else(|e| panic!("{rpc}: {e}"))
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_controller_registers_and_survives_its_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    copy_dir(&root.join("examples/shop/policy"), &policy);
    let access = policy.join("payments/access.yaml");
    let mut controller = RealController::start(&policy, "24h");

    // payments' sidecar: plaintext callers reach the app through an explicit inbound listener
    // on a port chosen up front, because that is also the address it registers.
    let app = upstream::http("payments").await;
    let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env("SLUICE_PROXY_CONTROLLER_ADDR", controller.url.clone())
            .env(
                "SLUICE_PROXY_CONTROLLER_CA",
                controller.ca_file().display().to_string(),
            )
            .env("SLUICE_PROXY_SERVICE", "payments")
            .env("SLUICE_PROXY_SERVICE_VERSION", "v1")
            .env("SLUICE_PROXY_INSTANCE", "payments-0")
            .env(
                "SLUICE_PROXY_EXPLICIT_INBOUND",
                format!("{inbound}={}", app.addr),
            )
            .env("SLUICE_PROXY_REGISTER_ADDR", inbound.to_string())
            // Its certificate (from Certify with payments' token) is what the controller
            // accepts payments' Watch and registration with.
            .env("SLUICE_PROXY_IDENTITY_TOKEN", controller.token("payments")),
    );
    let admin = hyper_client(false);
    let client = hyper_client(false);

    // The first config: the proxy reaches the controller's version and becomes ready.
    let mut observer = Observer::watch(&controller).await;
    let v1 = observer.config("the first config", |_| true).await.version;
    wait_for("the proxy at the controller's version", async || {
        let c = proxy_config(&admin, &proxy).await;
        (c["version"] == v1.as_str()).then_some(())
    })
    .await;
    let config = proxy_config(&admin, &proxy).await;
    assert_eq!(config["source"]["kind"], "controller", "{config:#}");
    assert_eq!(
        config["source"]["describe"],
        format!("controller {}", controller.url),
        "{config:#}"
    );
    assert_eq!(config["source"]["connected"], true, "{config:#}");
    let ready = get(&admin, proxy.admin(), "/ready", &[])
        .await
        .expect("/ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    // Enforcing it: probes are granted to anyone, charge lookups are not.
    assert_eq!(status(&client, inbound, "GET /healthz").await, 200);
    assert_eq!(status(&client, inbound, "GET /v1/charges/1").await, 403);

    // Register: the proxy's inbound shows up in everyone's config.
    observer
        .config("the proxy's registration", |c| {
            has_endpoint(c, &inbound.to_string())
        })
        .await;

    // A policy edit: the proxy follows to the new version and enforces it.
    grant_unauthenticated(&access, "GET /v1/charges/{id}");
    let v2 = observer
        .config("the edited policy", |c| c.version != v1)
        .await
        .version;
    wait_for("the proxy at the edited version", async || {
        let c = proxy_config(&admin, &proxy).await;
        (c["version"] == v2.as_str()).then_some(())
    })
    .await;
    assert_eq!(status(&client, inbound, "GET /v1/charges/1").await, 200);
    drop(observer);

    // SIGKILL: the proxy notices, and keeps serving with the state it has.
    controller.kill();
    wait_for("the proxy to notice the controller is gone", async || {
        let c = proxy_config(&admin, &proxy).await;
        (c["source"]["connected"] == false).then_some(())
    })
    .await;
    assert_eq!(status(&client, inbound, "GET /healthz").await, 200);
    assert_eq!(status(&client, inbound, "GET /v1/charges/1").await, 200);
    assert_eq!(status(&client, inbound, "POST /v1/refunds").await, 403);
    let config = proxy_config(&admin, &proxy).await;
    assert_eq!(config["version"], v2.as_str(), "{config:#}");

    // Policy changes while the controller is down; the restarted controller (same state
    // directory, same address) loads them and brings the proxy to the current version.
    grant_unauthenticated(&access, "POST /v1/refunds");
    controller.restart();
    // Its registration is there (reloaded from the store, kept alive by the reconnect).
    let mut observer = Observer::watch(&controller).await;
    let v3 = observer
        .config(
            "the restarted controller's config with the proxy's registration",
            |c| has_endpoint(c, &inbound.to_string()),
        )
        .await
        .version;
    assert_ne!(v3, v2);
    wait_for(
        "the proxy at the restarted controller's version",
        async || {
            let c = proxy_config(&admin, &proxy).await;
            (c["version"] == v3.as_str() && c["source"]["connected"] == true).then_some(())
        },
    )
    .await;
    assert_eq!(status(&client, inbound, "POST /v1/refunds").await, 200);
    wait_for("the proxy to register again", async || {
        let c = proxy_config(&admin, &proxy).await;
        (c["source"]["registered"] == true).then_some(())
    })
    .await;
    let config = proxy_config(&admin, &proxy).await;
    assert!(
        config["source"]["connects"].as_u64() >= Some(2),
        "{config:#}"
    );
}

#[tokio::test]
async fn waits_unready_for_an_unreachable_controller_and_rejects_conflicts() {
    // Nothing listens on this port: the proxy runs (empty config, deny by default) but is not
    // ready, and /config says why.
    let addr = format!("127.0.0.1:{}", free_port());
    // A certificate from files, so the proxy does not wait for one from the absent controller.
    let ca = TestCa::new("mesh CA");
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write_identity(dir.path(), &Leaf::service("payments"));
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env("SLUICE_PROXY_CONTROLLER_ADDR", addr.clone())
            .env(
                "SLUICE_PROXY_CONTROLLER_CA",
                dir.path().join("roots.pem").display().to_string(),
            )
            .env(
                "SLUICE_PROXY_IDENTITY_DIR",
                dir.path().display().to_string(),
            )
            .env("SLUICE_PROXY_SERVICE", "payments"),
    );
    let admin = hyper_client(false);
    let ready = get(&admin, proxy.admin(), "/ready", &[])
        .await
        .expect("/ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let config = wait_for("a connection error in /config", async || {
        let c = proxy_config(&admin, &proxy).await;
        c["source"]["last_error"].is_string().then_some(c)
    })
    .await;
    assert_eq!(config["source"]["connected"], false, "{config:#}");
    assert_eq!(config["source"]["kind"], "controller", "{config:#}");

    // Naming the controller as the source and a snapshot file at once is a config error.
    let out = std::process::Command::new(sluice_integration::proxy_bin())
        .env("SLUICE_PROXY_CONFIG_SOURCE", "controller")
        .env("SLUICE_PROXY_CONTROLLER_ADDR", addr)
        .env("SLUICE_PROXY_SERVICE", "payments")
        .env("SLUICE_PROXY_SNAPSHOT", "/nonexistent.json")
        .output()
        .expect("run sluice-proxy");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SLUICE_PROXY_SNAPSHOT"), "{stderr}");
}
