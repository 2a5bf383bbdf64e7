//! Sidecar injection against a real Kubernetes API server (v1.20.2, built by `ensure_kube`):
//! the chart's MutatingWebhookConfiguration, registered in the API server, calling the
//! controller's injector for every Pod created through the API.
//!
//! What this proves is proved against v1.20, which has no native sidecars, so the controller
//! (`--inject-mode auto`) picks classic sidecars; native mode is checked offline against the
//! 1.29 and 1.33 schemas (`controller/tests/inject.rs`). There is no kubelet, scheduler or
//! controller-manager here: nothing runs the containers, and no ReplicaSet controller turns a
//! Deployment into Pods, so where a Deployment's pods are needed the test creates the Pod the
//! ReplicaSet controller would (the Deployment's template, `generateName`, the
//! `pod-template-hash` label and the owner reference), through the API, as it would. What the
//! sidecar then does at run time (probes, Jobs finishing) is tested at process level
//! (`inject_runtime.rs`).
//!
//! The chart's webhook is registered with a `url` instead of its in-cluster `service` (the
//! controller runs beside the API server, not in a pod), and otherwise as rendered by
//! `helm template`: the same selectors, failure policies, timeouts and reinvocation policy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_integration::controller::sluice_bin;
use sluice_integration::kube::{ApiServer, shared};

const PATIENCE: Duration = Duration::from_secs(30);
/// The namespace the controller runs in (never injected).
const OWN_NAMESPACE: &str = "sluice";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `sluice controller --kubernetes --webhook … --inject`, killed on drop.
struct Injector {
    child: Option<Child>,
    dir: tempfile::TempDir,
    webhook: String,
}

impl Injector {
    fn start(api: &ApiServer) -> Injector {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("controller.log")).expect("log");
        let out = std::fs::File::create(dir.path().join("stdout")).expect("stdout");
        let child = Command::new(sluice_bin())
            .arg("controller")
            .arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .args([
                "--webhook",
                "127.0.0.1:0",
                "--webhook-host",
                "127.0.0.1",
                "--inject",
                "--inject-mode",
                "auto",
                "--inject-image",
                "registry.example/sluice-proxy:0.1.0",
                "--namespace",
                OWN_NAMESPACE,
            ])
            .env(
                "SLUICE_LOG",
                "info,kube=warn,sluice_controller::kubernetes::injector=debug",
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn sluice controller");
        let mut me = Injector {
            child: Some(child),
            dir,
            webhook: String::new(),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = std::fs::read_to_string(me.dir.path().join("stdout")).unwrap_or_default();
            if let Some(addr) = out
                .lines()
                .find_map(|l| l.strip_prefix("sluice controller webhook on "))
            {
                me.webhook = addr.trim().to_owned();
                return me;
            }
            if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                panic!("controller exited ({status}): {}", me.log());
            }
            assert!(Instant::now() < deadline, "no webhook: {}", me.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/ca/ca.crt")).expect("ca.crt")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- controller log ---\n{}", self.log());
        }
    }
}

fn register_chart_webhook(api: &ApiServer, addr: &str, ca_pem: &str) {
    api.register_chart_injector(OWN_NAMESPACE, addr, ca_pem);
}

/// A namespace, labelled for injection or not.
fn namespace(api: &ApiServer, name: &str, labelled: bool) {
    let labels = if labelled {
        json!({"sluice.dev/inject": "enabled"})
    } else {
        json!({})
    };
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &ns.to_string());
    assert!(ok, "{err}");
}

/// Creates the Pod a ReplicaSet of `deployment` would (there is no controller-manager here);
/// returns (created pod, kubectl's stderr with any admission warnings).
fn pod_of(api: &ApiServer, namespace: &str, deployment: &Value) -> Result<(Value, String), String> {
    let name = deployment["metadata"]["name"].as_str().expect("name");
    let hash = "5d8f7c9b4";
    let mut pod = deployment["spec"]["template"].clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["generateName"] = json!(format!("{name}-{hash}-"));
    pod["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"),
        "uid": "00000000-0000-0000-0000-000000000001", "controller": true,
    }]);
    create(api, namespace, &pod)
}

fn create(api: &ApiServer, namespace: &str, pod: &Value) -> Result<(Value, String), String> {
    let (ok, out, err) = api.kubectl_stdin(
        &["create", "-n", namespace, "-o", "json", "-f", "-"],
        &pod.to_string(),
    );
    if !ok {
        return Err(err);
    }
    Ok((serde_json::from_str(&out).expect("pod json"), err))
}

/// The mesh CA certificate in `namespace`'s ConfigMap `sluice-ca`, waiting a while for the
/// controller to publish it (it does so in the background of the admission).
fn ca_config_map(api: &ApiServer, namespace: &str) -> Option<String> {
    ca_config_map_within(api, namespace, Duration::from_secs(10))
}

fn ca_config_map_within(api: &ApiServer, namespace: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let out = api
            .kubectl(&[
                "get",
                "configmap",
                "sluice-ca",
                "-n",
                namespace,
                "-o",
                "json",
            ])
            .output()
            .expect("kubectl");
        if out.status.success() {
            let cm: Value = serde_json::from_slice(&out.stdout).expect("json");
            return cm["data"]["ca.crt"].as_str().map(str::to_owned);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn env(container: &Value, name: &str) -> Value {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn shop_deployment(file: &str) -> Value {
    let text =
        std::fs::read_to_string(repo(&format!("examples/shop/k8s/{file}.yaml"))).expect("read");
    sluice_policy::load::parse_yaml(&Path::new(file).into(), &text)
        .0
        .into_iter()
        .map(|d| d.value)
        .find(|v| v["kind"] == "Deployment")
        .expect("a Deployment")
}

fn setup(test: &str) -> Option<(&'static ApiServer, std::sync::MutexGuard<'static, ()>)> {
    let api = shared(test)?;
    let guard = api.exclusive();
    api.install_crds();
    api.reset();
    let _ = api
        .kubectl(&[
            "delete",
            "mutatingwebhookconfigurations",
            "--all",
            "--wait=true",
        ])
        .output();
    Some((api, guard))
}

#[test]
fn the_webhook_injects_classic_sidecars_where_asked_and_nowhere_else() {
    let Some((api, _guard)) = setup("kubernetes_inject::webhook") else {
        return;
    };
    let controller = Injector::start(api);
    register_chart_webhook(api, &controller.webhook, &controller.ca_pem());
    namespace(api, "shop", true);
    namespace(api, "plain", false);
    namespace(api, OWN_NAMESPACE, true);

    // The shop's payments Deployment, created through the API in the labelled namespace.
    let deployment = shop_deployment("payments");
    let (ok, _, err) =
        api.kubectl_stdin(&["apply", "-n", "shop", "-f", "-"], &deployment.to_string());
    assert!(ok, "{err}");
    let (pod, _) = pod_of(api, "shop", &deployment).expect("the pod is admitted");
    // Classic, because the server is 1.20 (detected): the proxy first, held until ready.
    assert_eq!(names(&pod, "containers"), ["sluice-proxy", "payments"]);
    assert_eq!(names(&pod, "initContainers"), ["sluice-init"]);
    let proxy = &pod["spec"]["containers"][0];
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"][1], "wait-ready",
        "{proxy:#}"
    );
    assert_eq!(proxy["image"], "registry.example/sluice-proxy:0.1.0");
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"],
        "registry.example/sluice-proxy-init:0.1.0"
    );
    assert_eq!(
        pod["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(env(proxy, "SLUICE_PROXY_SERVICE")["value"], "payments");
    assert_eq!(env(proxy, "SLUICE_PROXY_PROBES")["value"], "8080/healthz");
    let token = pod["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "sluice-identity"))
        .cloned()
        .expect("the identity volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "sluice"
    );
    // The proxy trusts the controller (TLS only) by the mesh CA from the namespace's
    // ConfigMap, which the controller publishes there: public, no secret in the pod.
    assert_eq!(
        token["projected"]["sources"][1]["configMap"]["name"],
        "sluice-ca"
    );
    assert_eq!(
        env(proxy, "SLUICE_PROXY_CONTROLLER_CA")["value"],
        "/var/run/sluice/identity/ca.crt"
    );
    assert!(
        env(proxy, "SLUICE_PROXY_CONTROLLER_ADDR")["value"]
            .as_str()
            .is_some_and(|a| a.starts_with("https://")),
        "{proxy:#}"
    );
    assert_eq!(
        ca_config_map(api, "shop").as_deref(),
        Some(controller.ca_pem().as_str()),
        "the mesh CA published in the pod's namespace"
    );
    assert!(
        pod["metadata"]["annotations"]["sluice.dev/injected"]
            .as_str()
            .is_some_and(|a| a.starts_with("classic")),
        "{pod:#}"
    );
    // The Deployment itself is left as written: the webhook injects pods.
    let stored = api.kubectl_ok(&["get", "deployment", "payments", "-n", "shop", "-o", "json"]);
    assert!(!stored.contains("sluice-proxy"), "{stored}");

    // Opted out, and host network: untouched, in the same labelled namespace.
    let mut opted_out = deployment.clone();
    opted_out["metadata"]["name"] = json!("opted-out");
    opted_out["spec"]["template"]["metadata"]["annotations"] =
        json!({"sluice.dev/inject": "disabled"});
    let (pod, _) = pod_of(api, "shop", &opted_out).expect("admitted");
    assert_eq!(names(&pod, "containers"), ["payments"], "opted out");
    let mut host = deployment.clone();
    host["metadata"]["name"] = json!("host-net");
    host["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
    let (pod, _) = pod_of(api, "shop", &host).expect("admitted");
    assert_eq!(names(&pod, "containers"), ["payments"], "host network");
    assert!(names(&pod, "initContainers").is_empty());

    // An unlabelled namespace: untouched, unless the pod asks.
    let (pod, _) = pod_of(api, "plain", &deployment).expect("admitted");
    assert_eq!(
        names(&pod, "containers"),
        ["payments"],
        "unlabelled namespace"
    );
    assert_eq!(
        ca_config_map_within(api, "plain", Duration::from_secs(1)),
        None,
        "no CA where nothing is injected"
    );
    let mut asks = deployment.clone();
    asks["spec"]["template"]["metadata"]["annotations"] = json!({"sluice.dev/inject": "enabled"});
    let (pod, _) = pod_of(api, "plain", &asks).expect("admitted");
    assert_eq!(
        names(&pod, "containers"),
        ["sluice-proxy", "payments"],
        "pod opted in"
    );
    assert!(
        ca_config_map(api, "plain").is_some(),
        "the CA follows the pod"
    );

    // Injected offline by `sluice inject`, into a namespace nobody labelled: the webhook
    // adds nothing, and the proxy still gets the CA to trust the controller by.
    namespace(api, "offline", false);
    let out = Command::new(sluice_bin())
        .args(["inject", "--mode", "classic", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(deployment.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .expect("sluice inject");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = sluice_policy::load::parse_yaml(
        &Path::new("stdin").into(),
        &String::from_utf8_lossy(&out.stdout),
    )
    .0
    .into_iter()
    .map(|d| d.value)
    .next()
    .expect("the Deployment");
    let (pod, _) = pod_of(api, "offline", &injected).expect("admitted");
    assert_eq!(names(&pod, "containers"), ["sluice-proxy", "payments"]);
    assert_eq!(names(&pod, "initContainers"), ["sluice-init"], "once");
    assert!(
        ca_config_map(api, "offline").is_some(),
        "the CA follows a pod injected offline"
    );

    // The controller's own namespace is never injected, even labelled.
    let (pod, _) = pod_of(api, OWN_NAMESPACE, &asks).expect("admitted");
    assert_eq!(
        names(&pod, "containers"),
        ["payments"],
        "the controller's namespace"
    );

    // A misspelt annotation: kubectl prints the warning with the fix, and an Event says it
    // on the pod's owner (its ReplicaSet).
    let mut typo = deployment.clone();
    typo["metadata"]["name"] = json!("typo");
    typo["spec"]["template"]["metadata"]["annotations"] = json!({"sluice.dev/opaque-port": "3306"});
    let (pod, warnings) = pod_of(api, "shop", &typo).expect("admitted");
    assert_eq!(names(&pod, "containers"), ["sluice-proxy", "payments"]);
    assert!(
        warnings.contains("did you mean `sluice.dev/opaque-ports`?"),
        "kubectl's warnings: {warnings}"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = api.kubectl_ok(&["get", "events", "-n", "shop", "-o", "json"]);
        if events.contains("SidecarInjection") && events.contains("typo-5d8f7c9b4") {
            assert!(events.contains("did you mean"), "{events}");
            break;
        }
        assert!(Instant::now() < deadline, "no Event: {events}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With a second mutating webhook after Sluice's that changes the pod, the API server calls
/// Sluice's again (`reinvocationPolicy: IfNeeded`). A naive injector would add the sidecar a
/// second time and the API server would refuse the pod (duplicate container names).
#[test]
fn reinvocation_adds_nothing_twice() {
    let Some((api, _guard)) = setup("kubernetes_inject::reinvocation") else {
        return;
    };
    let controller = Injector::start(api);
    register_chart_webhook(api, &controller.webhook, &controller.ca_pem());
    let labeller = labeller::start();
    labeller.register(api);
    namespace(api, "shop", true);
    let (pod, _) = pod_of(api, "shop", &shop_deployment("checkout")).expect("admitted");
    assert_eq!(
        pod["metadata"]["labels"]["touched-by"], "labeller",
        "the other webhook ran"
    );
    assert_eq!(names(&pod, "containers"), ["sluice-proxy", "checkout"]);
    assert_eq!(names(&pod, "initContainers"), ["sluice-init"]);
    // Sluice's webhook was called again after the labeller, and added nothing.
    let deadline = Instant::now() + PATIENCE;
    while !controller.log().contains("already injected") {
        assert!(
            Instant::now() < deadline,
            "the API server did not reinvoke the injector: {}",
            controller.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The controller down: in a labelled namespace pods are refused (`Fail`: none starts without
/// its sidecar); elsewhere pod creation goes on (`Ignore`), as docs/kubernetes.md says.
#[test]
fn with_the_webhook_down_meshed_namespaces_wait_and_others_go_on() {
    let Some((api, _guard)) = setup("kubernetes_inject::down") else {
        return;
    };
    let mut controller = Injector::start(api);
    register_chart_webhook(api, &controller.webhook, &controller.ca_pem());
    namespace(api, "shop", true);
    namespace(api, "plain", false);
    controller.stop();
    let deployment = shop_deployment("catalog");
    let refused = pod_of(api, "shop", &deployment).expect_err("refused while the injector is down");
    assert!(
        refused.contains("namespace.inject.sluice.dev"),
        "the error names the webhook: {refused}"
    );
    let (pod, _) = pod_of(api, "plain", &deployment).expect("admitted: Ignore");
    assert_eq!(names(&pod, "containers"), ["catalog"]);
}

/// A second mutating webhook that labels every pod, so the API server reinvokes earlier ones.
mod labeller {
    use super::*;
    use std::sync::Arc;

    pub struct Labeller {
        pub addr: std::net::SocketAddr,
        pub ca_pem: String,
        _runtime: tokio::runtime::Runtime,
    }

    impl Labeller {
        pub fn register(&self, api: &ApiServer) {
            use base64::Engine;
            let bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
            // Named after Sluice's configuration: webhooks run in configuration-name order.
            let config = json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "zz-labeller"},
                "webhooks": [{
                    "name": "labeller.example.com",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "Never",
                    "clientConfig": {"url": format!("https://{}/", self.addr), "caBundle": bundle},
                    "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                               "resources": ["pods"], "scope": "Namespaced"}],
                }],
            });
            let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &config.to_string());
            assert!(ok, "{err}");
        }
    }

    pub fn start() -> Labeller {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.self_signed(&key).expect("cert");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let has_labels = review["request"]["object"]["metadata"]["labels"].is_object();
                        let patch = if has_labels {
                            json!([{"op": "add", "path": "/metadata/labels/touched-by", "value": "labeller"}])
                        } else {
                            json!([{"op": "add", "path": "/metadata/labels", "value": {"touched-by": "labeller"}}])
                        };
                        use base64::Engine;
                        let answer = json!({
                            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "response": {
                                "uid": review["request"]["uid"], "allowed": true, "patchType": "JSONPatch",
                                "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string()),
                            },
                        });
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(answer.to_string())),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Labeller {
            addr,
            ca_pem: cert.pem(),
            _runtime: runtime,
        }
    }
}
