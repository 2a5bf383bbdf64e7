//! Sluice against a real Kubernetes API server (v1.20.2, built from Debian's source package by
//! `ensure_kube`; etcd 3.4): the CRDs, `sluice controller --kubernetes`, the admission webhook,
//! the registry from Services and Pods, a restart, and a call between real sidecars in network
//! namespaces.
//!
//! What this proves is proved against v1.20 (no CEL, no server-side field validation, no
//! native sidecars); the chart's manifests are also checked offline against the 1.29 and 1.33
//! schemas (`helm.rs`). There is no kubelet or container runtime: where a test needs a pod to
//! be running, the test patches the Pod's status as a kubelet would, and says so; where it
//! needs real traffic, the pod's processes run the way `sluice up` runs workloads (a network
//! namespace, `sluice-proxy init`, the sidecar, the app).
//!
//! One API server per test binary; the tests take turns on it and start from an empty mesh.
//! Waits are generous polls: speed is measured in `benches/`, never asserted here, except the
//! issue's "within 1 s" for an edit to reach a watching proxy, which is asserted with the
//! margin a loaded 2-core machine needs noted below.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_api::v1::{ProxyConfig, WatchRequest, Workload};
use sluice_integration::kube::{ApiServer, KubeController, shared};

const PATIENCE: Duration = Duration::from_secs(30);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shop's policy directory version, as `sluice controller --policy` publishes it.
fn directory_version() -> String {
    sluice_policy::PolicySet::load(&repo("examples/shop/policy"))
        .expect("the shop's policy is valid")
        .version()
}

fn apply_shop(api: &ApiServer) {
    api.kubectl_ok(&[
        "apply",
        "-R",
        "-f",
        &repo("examples/shop/policy").display().to_string(),
    ]);
}

fn condition(api: &ApiServer, resource: &str) -> (String, String) {
    let out = api.kubectl_ok(&["get", resource, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    let c = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Valid").cloned())
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn setup(test: &str) -> Option<(&'static ApiServer, std::sync::MutexGuard<'static, ()>)> {
    let api = shared(test)?;
    let guard = api.exclusive();
    api.install_crds();
    api.reset();
    Some((api, guard))
}

#[test]
fn the_shop_as_custom_resources_publishes_the_directory_version_and_survives_a_restart() {
    let Some((api, _guard)) = setup("kubernetes::shop") else {
        return;
    };
    apply_shop(api);
    let mut controller = KubeController::start(api, &[]);
    let expected = directory_version();
    wait_for("the directory's version", || {
        (controller.version() == expected).then_some(())
    });
    // Every resource says it was accepted, and `kubectl get` shows the printer columns.
    wait_for("Valid=True on the AccessPolicy", || {
        (condition(api, "accesspolicy/payments-callers").0 == "True").then_some(())
    });
    let table = api.kubectl_ok(&["get", "canarypolicies"]);
    assert!(
        table.contains("SERVICE") && table.contains("STEPS") && table.contains("PHASE"),
        "{table}"
    );
    wait_for("the canary's steps and phase", || {
        let t = api.kubectl_ok(&["get", "canarypolicies"]);
        (t.contains("payments") && t.contains("Idle")).then_some(t)
    });

    // Restarted (SIGKILL): the state is rebuilt from the API server, the version is the same,
    // and an edit made while it was down is there.
    let _ = controller.child.kill();
    let _ = controller.child.wait();
    api.kubectl_ok(&[
        "patch",
        "accesspolicy",
        "payments-callers",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/unauthenticated/-","value":{"rpc":"GET /v1/ping","reason":"restart test"}}]"#,
    ]);
    controller.restart();
    let after = controller.version();
    assert_ne!(
        after, expected,
        "the edit made while the controller was down is in force"
    );
    let status = controller.status();
    assert_eq!(status["snapshot"]["services"], 4, "{status:#}");
    assert_eq!(status["snapshot"]["access_policies"], 4, "{status:#}");
}

#[test]
fn the_webhook_refuses_a_misspelt_field_with_the_fix_and_one_that_slipped_past_gets_a_condition() {
    let Some((api, _guard)) = setup("kubernetes::webhook") else {
        return;
    };
    apply_shop(api);
    let controller = KubeController::start(
        api,
        &["--webhook", "127.0.0.1:0", "--webhook-host", "127.0.0.1"],
    );
    let good = wait_for("the shop's version", || {
        let v = controller.version();
        (v == directory_version()).then_some(v)
    });

    // Before the webhook is registered, a broken edit slips past: the controller reports it
    // on the resource and as an Event, and keeps the last good policy.
    let broken = std::fs::read_to_string(repo("examples/shop/policy/payments/access.yaml"))
        .expect("read")
        .replacen("allow:", "alow:", 1);
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &broken);
    assert!(ok, "{err}");
    let (status, message) = wait_for("Valid=False", || {
        let c = condition(api, "accesspolicy/payments-callers");
        (c.0 == "False").then_some(c)
    });
    assert_eq!(status, "False");
    assert!(
        message.contains("spec.rules[0].alow: unknown field `alow`; did you mean `allow`?"),
        "{message}"
    );
    let events = wait_for("an Event", || {
        let e = api.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=payments-callers",
            "-o",
            "json",
        ]);
        e.contains("did you mean `allow`?").then_some(e)
    });
    assert!(events.contains("InvalidPolicy"), "{events}");
    assert_eq!(
        controller.version(),
        good,
        "the last good policy stays in force"
    );
    assert!(
        controller.status()["last_config_error"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("error")),
        "{:#}",
        controller.status()
    );

    // Registered: the same mistake is refused at `kubectl apply`, with the same words.
    let webhook = controller.webhook.clone().expect("the webhook's address");
    register_webhook(api, &webhook, &controller.ca_pem());
    let again = broken.replacen("name: payments-callers", "name: payments-callers-2", 1);
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &again);
    assert!(!ok, "the webhook must refuse it");
    assert!(err.contains("denied the request"), "{err}");
    assert!(
        err.contains("spec.rules[0].alow: unknown field `alow`; did you mean `allow`?"),
        "{err}"
    );
    // A valid resource goes through, and fixing the broken one clears its condition.
    api.kubectl_ok(&[
        "apply",
        "-f",
        &repo("examples/shop/policy/payments/access.yaml")
            .display()
            .to_string(),
    ]);
    wait_for("Valid=True again", || {
        (condition(api, "accesspolicy/payments-callers").0 == "True").then_some(())
    });
}

fn register_webhook(api: &ApiServer, addr: &str, ca_pem: &str) {
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "sluice-test"},
        "webhooks": [{
            "name": "policy.sluice.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://{addr}/validate"), "caBundle": bundle},
            "rules": [{
                "apiGroups": ["sluice.dev"], "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["*"], "scope": "*",
            }],
        }],
    });
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &config.to_string());
    assert!(ok, "{err}");
}

/// A bare `Watch` client, reading the controller's config as payments' proxy sees it (over
/// TLS, with payments' certificate: each proxy is sent its own service's AccessPolicies).
async fn watch(controller: &KubeController) -> tonic::Streaming<ProxyConfig> {
    let mut client = sluice_integration::controller::client_as(
        &controller.grpc,
        std::path::Path::new(&controller.ca_file()),
        &controller.token("payments"),
        "payments",
    )
    .await;
    client
        .watch(WatchRequest {
            workload: Some(Workload {
                namespace: "default".into(),
                service: "payments".into(),
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
        .into_inner()
}

async fn next_matching(
    stream: &mut tonic::Streaming<ProxyConfig>,
    what: &str,
    check: impl Fn(&ProxyConfig) -> bool,
) -> ProxyConfig {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let c = stream.message().await.expect("stream").expect("open");
            if check(&c) {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the other tests (on other threads, with their own runtimes) off the
// shared API server; nothing in this runtime waits for it.
#[allow(clippy::await_holding_lock)]
async fn an_edit_reaches_a_watching_proxy_and_ready_pods_are_the_instances() {
    let Some((api, _guard)) = setup("kubernetes::watch") else {
        return;
    };
    apply_shop(api);
    let controller = KubeController::start(api, &[]);
    let mut stream = watch(&controller).await;
    let first = next_matching(&mut stream, "the shop", |c| {
        c.version == directory_version()
    })
    .await;
    // And a real sidecar, fed by the same controller.
    let proxy = sluice_integration::Proxy::start(
        sluice_integration::ProxyOptions::default()
            .env("SLUICE_PROXY_CONTROLLER_ADDR", controller.grpc.clone())
            .env("SLUICE_PROXY_CONTROLLER_CA", controller.ca_file())
            .env("SLUICE_PROXY_IDENTITY_TOKEN", controller.token("checkout"))
            .env("SLUICE_PROXY_SERVICE", "checkout"),
    );
    let admin = sluice_integration::client::hyper_client(false);
    let proxy_version = async || {
        sluice_integration::client::get(&admin, proxy.admin(), "/config", &[])
            .await
            .map(|r| r.json()["version"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + PATIENCE;
    while proxy_version().await != first.version {
        assert!(
            Instant::now() < deadline,
            "the proxy never got the shop's policy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An edit applied with kubectl reaches the watching proxy. The issue asks for 1 s; the
    // bound asserted is 1 s plus kubectl's own start-up (measured from before it runs).
    let started = Instant::now();
    api.kubectl_ok(&[
        "patch",
        "accesspolicy",
        "payments-callers",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/unauthenticated/-","value":{"rpc":"GET /v1/ping","reason":"watch test"}}]"#,
    ]);
    let kubectl_took = started.elapsed();
    let edited = next_matching(&mut stream, "the edit", |c| c.version != first.version).await;
    let took = started.elapsed();
    assert!(edited.policy_bundle.contains("GET /v1/ping"));
    while proxy_version().await != edited.version {
        assert!(Instant::now() < deadline, "the proxy never got the edit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let proxy_took = started.elapsed();
    eprintln!(
        "edit → Watch stream: {took:?}, → the sidecar's /config: {proxy_took:?} (kubectl itself: {kubectl_took:?})"
    );
    assert!(
        proxy_took < Duration::from_secs(1) + kubectl_took,
        "the edit took {proxy_took:?} to reach the proxy"
    );

    // The registry: the Service of the same name gives the address apps dial (its cluster
    // IP), and its ready pods are the instances, with version and environment from their
    // labels. No kubelet runs here: the test patches the pod's status as a kubelet would.
    api.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "payments",
        "--tcp=8080:8080",
        "-n",
        "default",
    ]);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "payments-6d9f-abcde", "namespace": "default",
            "labels": {"app": "payments", "sluice.dev/version": "v2"}},
        "spec": {"containers": [{"name": "app", "image": "payments:v2",
            "ports": [{"containerPort": 8080}]}]},
    });
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &pod.to_string());
    assert!(ok, "{err}");
    // `kubectl create service` selects `app: payments`.
    let cluster_ip = api
        .kubectl_ok(&[
            "get",
            "service",
            "payments",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_owned();
    let with_address = next_matching(&mut stream, "the cluster IP", |c| {
        c.services
            .iter()
            .any(|s| s.service == "payments" && s.addresses == [format!("{cluster_ip}:8080")])
    })
    .await;
    let payments = with_address
        .services
        .iter()
        .find(|s| s.service == "payments")
        .expect("payments");
    assert!(payments.versions.is_empty(), "not ready yet: {payments:?}");
    api.mark_pod_ready("default", "payments-6d9f-abcde", "10.244.0.7");
    let ready = next_matching(&mut stream, "the ready pod", |c| {
        c.services.iter().any(|s| {
            s.service == "payments"
                && s.versions.iter().any(|v| {
                    v.version == "v2"
                        && v.environment == "stable"
                        && v.endpoints.iter().any(|e| e.address == "10.244.0.7:8080")
                })
        })
    })
    .await;
    assert_eq!(
        ready.version, edited.version,
        "endpoints change, policy does not"
    );
    wait_for("the MeshService's instance count", || {
        let t = api.kubectl_ok(&[
            "get",
            "meshservice",
            "payments",
            "-o",
            "jsonpath={.status.instances}",
        ]);
        (t.trim() == "1").then_some(())
    });
}

fn chart() -> String {
    repo("deploy/helm/sluice").display().to_string()
}

/// `helm lint`, and the rendered chart (with every optional part on) validated strictly and
/// offline against the 1.29 and 1.33 schemas: what the 1.20 test server cannot prove.
#[test]
fn the_chart_lints_and_validates_strictly_against_1_29_and_1_33() {
    let Some(bin) = sluice_integration::kube::bin_dir() else {
        sluice_integration::skip(
            "kubernetes::chart",
            &sluice_integration::kube::skip_reason().unwrap_or_default(),
        );
        return;
    };
    if !sluice_integration::have("kubernetes-validate") {
        sluice_integration::skip("kubernetes::chart", "kubernetes-validate (PyPI) is missing");
        return;
    }
    let helm = bin.join("helm");
    let lint = Command::new(&helm)
        .args(["lint", "--strict", &chart()])
        .output()
        .expect("helm lint");
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, sets) in [
        ("defaults", vec![]),
        (
            "everything",
            vec![
                "portal.enabled=true",
                "portal.trustedProxies[0]=10.0.0.1",
                "portal.url=https://sluice.example",
                "ca.cert=-----BEGIN CERTIFICATE-----",
                "ca.key=-----BEGIN PRIVATE KEY-----",
                "persistence.enabled=true",
                "persistence.storageClass=standard",
            ],
        ),
    ] {
        let mut template = Command::new(&helm);
        template.args([
            "template",
            "sluice",
            &chart(),
            "-n",
            "sluice",
            "--include-crds",
        ]);
        for s in &sets {
            template.args(["--set", s]);
        }
        let out = template.output().expect("helm template");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &out.stdout).expect("write");
        for version in ["1.29.0", "1.33.0"] {
            let check = Command::new("kubernetes-validate")
                .args(["--strict", "-k", version])
                .arg(&file)
                .output()
                .expect("kubernetes-validate");
            let report = String::from_utf8_lossy(&check.stdout);
            assert!(
                check.status.success() && !report.contains("ERROR"),
                "{name} against {version}:\n{report}{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
}

/// `helm install` into the real API server creates everything; the controller, run with the
/// chart's flags and the chart's service account (so its least-privilege RBAC is what is
/// tested), creates the CA Secret, sets the webhook's caBundle and reports ready. (No kubelet
/// runs the Deployment here; the controller runs beside the API server instead.)
#[test]
fn helm_install_creates_everything_and_the_controller_runs_with_the_charts_rbac() {
    let Some((api, _guard)) = setup("kubernetes::helm_install") else {
        return;
    };
    let helm = api.bin.join("helm");
    let _ = Command::new(&helm)
        .args(["uninstall", "sluice", "-n", "sluice", "--kubeconfig"])
        .arg(&api.kubeconfig)
        .output();
    let out = Command::new(&helm)
        .args([
            "install",
            "sluice",
            &chart(),
            "-n",
            "sluice",
            "--create-namespace",
        ])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .output()
        .expect("helm install");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = api.kubectl_ok(&[
        "get",
        "deployment,service,serviceaccount,role,rolebinding",
        "-n",
        "sluice",
        "-o",
        "name",
    ]);
    for expected in [
        "deployment.apps/sluice-controller",
        "service/sluice-controller",
        "service/sluice-metrics",
        "serviceaccount/sluice-controller",
        "role.rbac.authorization.k8s.io/sluice-controller-ca",
    ] {
        assert!(objects.contains(expected), "{expected} missing:\n{objects}");
    }
    let roles = api.kubectl_ok(&["get", "clusterroles", "-o", "name"]);
    for need in [
        "policy",
        "registry",
        "events",
        "identity",
        "webhook",
        "trust",
        "instances",
    ] {
        assert!(
            roles.contains(&format!("sluice-sluice-controller-{need}")),
            "{need}: {roles}"
        );
    }
    let metrics = api.kubectl_ok(&[
        "get",
        "service",
        "sluice-metrics",
        "-n",
        "sluice",
        "-o",
        "jsonpath={.metadata.annotations.prometheus\\.io/scrape}",
    ]);
    assert_eq!(metrics, "true");

    // The chart's own service account, through a TokenRequest (kubectl 1.33 has
    // `create token`; the API is served by 1.20).
    let token = Command::new(api.bin.join("kubectl-1.33"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["create", "token", "sluice-controller", "-n", "sluice"])
        .output()
        .expect("kubectl create token");
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let admin = std::fs::read_to_string(&api.kubeconfig).expect("kubeconfig");
    std::fs::write(
        &kubeconfig,
        admin.replace(sluice_integration::kube::ADMIN_TOKEN, &token),
    )
    .expect("write");
    let controller = KubeController::start_with_kubeconfig(
        &kubeconfig,
        &[
            "--ca-secret",
            "sluice/sluice-ca",
            "--webhook",
            "127.0.0.1:0",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-configuration",
            "sluice-sluice-policy",
        ],
    );
    let healthz = Command::new("curl")
        .args([
            "-sS",
            &format!("http://{}/healthz", controller.admin_addr()),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&healthz.stdout), "ok\n");
    let secret = api.kubectl_ok(&[
        "get",
        "secret",
        "sluice-ca",
        "-n",
        "sluice",
        "-o",
        "jsonpath={.type}",
    ]);
    assert_eq!(secret, "kubernetes.io/tls");
    wait_for("the webhook's caBundle", || {
        let bundle = api.kubectl_ok(&[
            "get",
            "validatingwebhookconfiguration",
            "sluice-sluice-policy",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        (!bundle.trim().is_empty()).then_some(())
    });
    assert!(
        !controller.log().contains("forbidden"),
        "the chart's RBAC is not enough:\n{}",
        controller.log()
    );
    let _ = Command::new(&helm)
        .args(["uninstall", "sluice", "-n", "sluice", "--kubeconfig"])
        .arg(&api.kubeconfig)
        .output();
}

/// The UID the sidecars run as, which `sluice-proxy init` exempts from interception (its
/// default, and `sluice up`'s).
const PROXY_UID: &str = "2102";

/// The API server's `--service-cluster-ip-range` (`kube.rs`): where cluster IPs come from.
const SERVICE_CIDR: &str = "10.96.0.0/16";

/// One "pod" of the end-to-end test: a network namespace on the test's bridge, with the
/// sidecar's interception installed by `sluice-proxy init` (as the injected init container
/// does, and `sluice up` in each workload's namespace). Dropped: its processes are killed and
/// the namespace deleted, which takes its veth and iptables rules with it.
struct PodNs {
    ns: sluice_integration::netns::Netns,
    ip: std::net::Ipv4Addr,
}

impl PodNs {
    fn create(bridge: &sluice_integration::netns::Bridge, name: &str, i: u8) -> PodNs {
        let id = std::process::id();
        // As root with the tools installed, a namespace that cannot be made is a failure.
        let ns = sluice_integration::netns::Netns::create(&format!("sluice-k8s-{id}-{name}"))
            .unwrap_or_else(|e| panic!("`ip netns add` failed as root: {e}"));
        let ip = bridge.addr(10 + i);
        // Link names have at most 15 bytes: `skv<pid><i>` on the host, `…p` inside.
        bridge
            .attach(&ns, &format!("skv{id}{i}"), ip)
            .unwrap_or_else(|e| panic!("veth for {name}: {e}"));
        let mut init = ns.command(&[]);
        init.arg(sluice_integration::proxy_bin())
            .args(["init", "--proxy-uid", PROXY_UID]);
        sluice_integration::netns::run(&mut init).expect("sluice-proxy init");
        PodNs { ns, ip }
    }

    /// Starts the pod's sidecar as `sluice up` does: as [`PROXY_UID`], the inbound listener on
    /// the pod's 4143 and the outbound on 4140 (where `init` redirects), certified with
    /// `token` and fed by the controller at `controller`, which it trusts by `ca`.
    fn sidecar(
        &self,
        controller: &str,
        ca: &Path,
        token: String,
        service: &str,
        pod: &str,
    ) -> sluice_integration::Proxy {
        let mut wrapper = self.ns.prefix();
        wrapper.extend(
            [
                "setpriv",
                "--reuid",
                PROXY_UID,
                "--regid",
                PROXY_UID,
                "--clear-groups",
            ]
            .map(String::from),
        );
        sluice_integration::Proxy::start(sluice_integration::ProxyOptions {
            wrapper,
            shared_dir: true,
            ..sluice_integration::ProxyOptions::default()
                .env("SLUICE_PROXY_INBOUND_ADDR", "0.0.0.0:4143")
                .env("SLUICE_PROXY_OUTBOUND_ADDR", "127.0.0.1:4140")
                .env("SLUICE_PROXY_ADMIN_ADDR", "127.0.0.1:4191")
                .env("SLUICE_PROXY_CONTROLLER_ADDR", controller)
                .env("SLUICE_PROXY_CONTROLLER_CA", ca.display().to_string())
                .env("SLUICE_PROXY_IDENTITY_TOKEN", token)
                .env("SLUICE_PROXY_SERVICE", service)
                .env("SLUICE_PROXY_SERVICE_VERSION", "v1")
                .env("SLUICE_PROXY_INSTANCE", pod)
                .env("SLUICE_PROXY_ID", pod)
        })
    }

    /// `curl URL` run inside the namespace, as the pod's app: (status, body); status 0 when
    /// curl got no response.
    fn curl(&self, url: &str) -> (u16, String) {
        let out = self
            .ns
            .command(&["curl", "-sS", "--noproxy", "*", "--max-time", "5"])
            .args(["-w", "\n%{http_code}", url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let body = if body.is_empty() {
            String::from_utf8_lossy(&out.stderr).into_owned()
        } else {
            body.to_owned()
        };
        (code.trim().parse().unwrap_or(0), body)
    }
}

/// Why the end-to-end test cannot run here: it makes network namespaces, a bridge and
/// iptables rules.
fn netns_skip_reason() -> Option<String> {
    for tool in ["ip", "iptables", "curl", "setpriv"] {
        if !sluice_integration::have(tool) {
            return Some(format!("`{tool}` not installed"));
        }
    }
    (!sluice_integration::is_root())
        .then(|| "needs root (network namespaces, a bridge, iptables)".to_owned())
}

/// End to end with real sidecars in network namespaces, certified and fed by the Kubernetes
/// controller: frontend's app calls payments by its Service's cluster IP, is denied by
/// payments' sidecar with the access-request link (nothing reaches payments' app), and an
/// AccessPolicy applied with kubectl lets the same call through, with frontend's mesh identity.
///
/// There is no kubelet or container runtime. Each pod's processes run the way `sluice up` runs
/// workloads: a network namespace per pod on a bridge (addresses in a private /24 that exists
/// only on that bridge), `sluice-proxy init`'s iptables rules inside it, the sidecar as UID
/// 2102, and the app (payments: the test's HTTP server bound inside its namespace; frontend:
/// `curl` run inside its namespace). Each Pod object in the real API server carries its
/// namespace's address: the test patches the pod's status (IP, Ready) the way a kubelet would.
/// The sidecars prove who they are with the bootstrap tokens of `sluice identity token`
/// (TokenReview is `service_account_tokens_prove_exactly_their_own_workload`).
///
/// The cluster IP is routed to frontend's `eth0` and to nothing else (no kube-proxy here), so
/// the call only works because frontend's sidecar takes the connection (iptables) and resolves
/// its original destination, the cluster IP, to payments' ready pod through the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // as above: the guard only orders the tests
async fn an_ungranted_call_is_denied_with_its_link_until_an_access_policy_is_applied() {
    const TEST: &str = "kubernetes::end_to_end";
    if let Some(reason) = netns_skip_reason() {
        return sluice_integration::skip(TEST, &reason);
    }
    let Some((api, _guard)) = setup(TEST) else {
        return;
    };
    apply_shop(api);
    let bridge =
        sluice_integration::netns::Bridge::create(&format!("skb{}", std::process::id()), 252)
            .unwrap_or_else(|e| panic!("bridge: {e}"));
    let frontend_pod = PodNs::create(&bridge, "frontend", 0);
    let payments_pod = PodNs::create(&bridge, "payments", 1);
    // On the bridge's host address, so that every namespace reaches it (as in `sluice up`).
    let controller =
        KubeController::start_listening(&api.kubeconfig, &format!("{}:0", bridge.host()), &[]);
    // The sidecars run as another user: they get the mesh CA in a directory they can read (the
    // controller's state directory is private), as `sluice up` gives its proxies a copy.
    let shared = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let ca = shared.path().join("controller-ca.pem");
    std::fs::write(&ca, controller.ca_pem()).expect("CA copy");

    // The Kubernetes objects: both Services (the selector `app=<name>`) and both Pods, whose
    // status the test patches as a kubelet would once the pod runs: the namespace's address,
    // Ready.
    for (name, pod) in [("frontend", &frontend_pod), ("payments", &payments_pod)] {
        api.kubectl_ok(&["create", "service", "clusterip", name, "--tcp=8080:8080"]);
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-0"), "namespace": "default",
                "labels": {"app": name, "sluice.dev/version": "v1"}},
            "spec": {"containers": [{"name": "app", "image": format!("{name}:v1")}]},
        });
        let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string());
        assert!(ok, "{err}");
        api.mark_pod_ready("default", &format!("{name}-0"), &pod.ip.to_string());
    }
    let cluster_ip = api
        .kubectl_ok(&[
            "get",
            "service",
            "payments",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_owned();

    // Payments' app listens on the pod's port 8080, inside its namespace.
    let app = sluice_integration::upstream::http_on(
        payments_pod
            .ns
            .bind_tcp("0.0.0.0:8080".parse().expect("addr"))
            .expect("bind in payments' namespace"),
        "payments",
    );
    let grpc = controller.grpc.clone();
    let payments = payments_pod.sidecar(
        &grpc,
        &ca,
        controller.token("payments"),
        "payments",
        "payments-0",
    );
    let frontend = frontend_pod.sidecar(
        &grpc,
        &ca,
        controller.token("frontend"),
        "frontend",
        "frontend-0",
    );
    // A pod reaches cluster IPs through its default route; here only the service range is
    // routed, to eth0, so that the app's connect is attempted (and intercepted) while nothing
    // can leave the bridge.
    frontend_pod
        .ns
        .run(&["ip", "route", "add", SERVICE_CIDR, "dev", "eth0"])
        .expect("route to the service range");

    let url = format!("http://{cluster_ip}:8080/v1/charges/42");
    let logs = || format!("{}\n{}", frontend.log(), payments.log());
    // Until both sidecars have certificates and frontend's knows where payments runs, the call
    // fails otherwise (an unknown destination is passed through, to nowhere); then payments'
    // sidecar denies it: no grant for frontend.
    let deadline = Instant::now() + PATIENCE;
    let denied = loop {
        let (status, body) = frontend_pod.curl(&url);
        if status == 403 && body.contains("access/new?") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "never denied by payments: {status} {body}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        // The link asks for the declared endpoint, not the one charge.
        denied
            .contains("access/new?from=frontend&to=payments&rpc=GET%20%2Fv1%2Fcharges%2F%7Bid%7D"),
        "{denied}"
    );
    assert_eq!(app.hits(), 0, "nothing reached the app");

    // The grant, as an AccessPolicy applied with kubectl.
    let grant = "apiVersion: sluice.dev/v1alpha1\nkind: AccessPolicy\n\
                 metadata: { name: frontend-reads-charges }\n\
                 spec:\n  service: payments\n  rules:\n    - from: [frontend]\n      \
                 allow: [\"GET /v1/charges/{id}\"]\n      reason: The order page shows the charge.\n";
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], grant);
    assert!(ok, "{err}");
    let deadline = Instant::now() + PATIENCE;
    let allowed = loop {
        let (status, body) = frontend_pod.curl(&url);
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the grant never took effect: {status} {body}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen: Value = serde_json::from_str(&allowed).expect("the app's JSON");
    assert_eq!(seen["path"], "/v1/charges/42", "{seen}");
    assert_eq!(
        seen["headers"]["sluice-client-id"], "spiffe://shop.local/ns/default/svc/frontend",
        "payments' sidecar saw frontend's mesh identity: {seen}"
    );
    assert_eq!(app.hits(), 1, "the one granted call reached the app");
    // Frontend's sidecar counted it as an outbound call to the mesh service payments: the
    // cluster IP was resolved by the mesh, not by anything between the namespaces. (Counted
    // when the response stream ends, which may be a moment after curl has the body.)
    let counted = |metrics: &str| {
        metrics.lines().any(|l| {
            l.starts_with("sluice_proxy_responses_total{")
                && [
                    r#"direction="outbound""#,
                    r#"src_service="frontend""#,
                    r#"dst_service="payments""#,
                    r#"status_code="200""#,
                ]
                .iter()
                .all(|label| l.contains(label))
        })
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, metrics) = frontend_pod.curl("http://127.0.0.1:4191/metrics");
        if counted(&metrics) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token the real API server mints with TokenRequest, as the kubelet does for a projected
/// volume (there is no kubelet here): for `account`, with `audience`, bound to `pod` if given.
fn request_token(api: &ApiServer, account: &str, audience: &str, pod: Option<&str>) -> String {
    let mut spec = serde_json::json!({ "audiences": [audience], "expirationSeconds": 3600 });
    if let Some(pod) = pod {
        let uid = api.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);
        spec["boundObjectRef"] =
            serde_json::json!({ "kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid });
    }
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec,
    });
    let path = format!("/api/v1/namespaces/default/serviceaccounts/{account}/token");
    let (ok, out, err) =
        api.kubectl_stdin(&["create", "--raw", &path, "-f", "-"], &request.to_string());
    assert!(ok, "TokenRequest for {account}: {err}");
    let v: Value = serde_json::from_str(&out).expect("TokenRequest json");
    v["status"]["token"].as_str().expect("a token").to_owned()
}

/// Identity by TokenReview, with two service accounts: each pod's token (bound to the pod,
/// audience `sluice`) yields a certificate for its own service and never for the other's;
/// tokens for another audience, for a pod no mesh service selects, and unbound ones of an
/// account named like no service are refused, each saying why. The bootstrap tokens of
/// `sluice identity token` keep working beside them. Proved against v1.20.2 (TokenRequest and
/// TokenReview are v1 there).
#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::await_holding_lock)] // as above: the guard only orders the tests
async fn service_account_tokens_prove_exactly_their_own_workload() {
    let Some((api, _guard)) = setup("kubernetes::identity") else {
        return;
    };
    apply_shop(api);
    let controller = KubeController::start(api, &[]);
    for service in ["frontend", "payments"] {
        api.kubectl_ok(&["create", "serviceaccount", service]);
        api.kubectl_ok(&["create", "service", "clusterip", service, "--tcp=8080:8080"]);
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{service}-0"), "namespace": "default",
                "labels": {"app": service, "sluice.dev/version": "v1"}},
            "spec": {"serviceAccountName": service,
                "containers": [{"name": "app", "image": format!("{service}:v1")}]},
        });
        let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &pod.to_string());
        assert!(ok, "{err}");
    }
    // A pod that no mesh service's Service selects, under an account named like no service.
    api.kubectl_ok(&["create", "serviceaccount", "batch"]);
    let stray = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "batch-0", "namespace": "default", "labels": {"app": "batch"}},
        "spec": {"serviceAccountName": "batch", "containers": [{"name": "app", "image": "batch"}]},
    });
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &stray.to_string());
    assert!(ok, "{err}");

    let ca = PathBuf::from(controller.ca_file());
    let certify = async |token: &str, service: &str| {
        sluice_integration::controller::certify_as(&controller.grpc, &ca, token, service)
            .await
            .map(|(issued, _)| issued.spiffe_id)
    };
    let frontend = request_token(api, "frontend", "sluice", Some("frontend-0"));
    let payments = request_token(api, "payments", "sluice", Some("payments-0"));
    assert_eq!(
        certify(&frontend, "frontend")
            .await
            .expect("frontend's own"),
        "spiffe://shop.local/ns/default/svc/frontend"
    );
    assert_eq!(
        certify(&payments, "payments").await.expect("payments' own"),
        "spiffe://shop.local/ns/default/svc/payments"
    );

    let refused = async |token: &str, service: &str| {
        let status = certify(token, service)
            .await
            .expect_err("a certificate for what the token does not prove");
        (status.code(), status.message().to_owned())
    };
    let (code, message) = refused(&frontend, "payments").await;
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(
        message.contains(
            "the service-account token is for default/frontend, but the request asks for a \
             certificate for default/payments"
        ),
        "{message}"
    );
    // A token the API server would take for itself, not for Sluice.
    let other = request_token(
        api,
        "payments",
        "https://kubernetes.default.svc",
        Some("payments-0"),
    );
    let (code, message) = refused(&other, "payments").await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(
        message.contains("did not accept the service-account token for audience `sluice`"),
        "{message}"
    );
    let (code, message) = refused(
        &request_token(api, "batch", "sluice", Some("batch-0")),
        "batch",
    )
    .await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(
        message
            .contains("pod default/batch-0 is selected by no Service that a MeshService declares"),
        "{message}"
    );
    // Unbound: the account is the workload, so it must be named like a mesh service.
    let unbound_payments = request_token(api, "payments", "sluice", None);
    assert_eq!(
        certify(&unbound_payments, "payments")
            .await
            .expect("unbound, named like payments"),
        "spiffe://shop.local/ns/default/svc/payments"
    );
    let (_, message) = refused(&request_token(api, "batch", "sluice", None), "batch").await;
    assert!(
        message.contains("no MeshService default/batch is named like its service account"),
        "{message}"
    );
    // Garbage never reaches the API server as anything but a failed review.
    let (code, _) = refused("a.b.c", "payments").await;
    assert_eq!(code, tonic::Code::Unauthenticated);
    // The controller's own bootstrap tokens still work (workloads outside the cluster).
    assert_eq!(
        certify(&controller.token("checkout"), "checkout")
            .await
            .expect("bootstrap"),
        "spiffe://shop.local/ns/default/svc/checkout"
    );
}
