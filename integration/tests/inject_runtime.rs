//! What the injected sidecar does at run time, at process level (there is no kubelet here):
//! each test takes the pod spec `sluice inject` writes and runs what it says, with the real
//! `sluice-proxy`.
//!
//! - **Probes under default-deny**: the shop's policy (the mesh default is `deny`, payments
//!   has an enforcing AccessPolicy), a pod spec with probes on `/ready` and `/live`. The
//!   kubelet's plain-text call to `/ready` reaches the app; a plain-text call to `/admin`, a
//!   `POST /ready` and `/ready` on another port are denied; `sluice policy explain --pod`
//!   says both. The proxy runs in explicit mode on loopback, its inbound listener standing for
//!   the pod's intercepted port (what `proxy_iptables.rs` proves about interception holds).
//! - **Jobs finish with a classic sidecar**: in a network namespace of its own (as a pod has),
//!   the injected init container's command (iptables rules, and the copy of `sluice-proxy`),
//!   the proxy, the proxy's `postStart` hook, and the Job's container command exactly as
//!   injected: the app exits, and so does the proxy. The kubelet's part (starting them in this
//!   order, and marking the Job complete once every container exited) is not here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_integration::controller::sluice_bin;
use sluice_integration::{Proxy, ProxyOptions, proxy_bin};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `sluice inject ARGS… FILE` → the injected objects (the summary must say "injected").
fn inject(args: &[&str], manifest: &str) -> (tempfile::TempDir, PathBuf, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("manifest.yaml");
    std::fs::write(&file, manifest).expect("write");
    let out = Command::new(sluice_bin())
        .arg("inject")
        .args(args)
        .arg(&file)
        .output()
        .expect("sluice inject");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains(": injected ("),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let docs = sluice_policy::load::parse_yaml(&Path::new("out").into(), &text)
        .0
        .into_iter()
        .map(|d| d.value)
        .collect();
    (dir, file, docs)
}

fn container<'a>(template: &'a Value, group: &str, name: &str) -> &'a Value {
    template["spec"][group]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {group} {name}: {template:#}"))
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_probes_pass_default_deny_and_nothing_else_does() {
    let app = sluice_integration::upstream::http("payments").await;
    let other = sluice_integration::upstream::http("payments-admin").await;
    let port = app.addr.port();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: payments-0\n  labels: {{app: payments, sluice.dev/version: v1}}\n\
         spec:\n  containers:\n    - name: payments\n      image: shop:0.1.0\n      ports: [{{name: http, containerPort: {port}}}]\n\
         \x20     readinessProbe: {{httpGet: {{path: /ready, port: http}}}}\n\
         \x20     livenessProbe: {{httpGet: {{path: /live, port: {port}}}}}\n"
    );
    let (_dir, file, docs) = inject(&[], &manifest);
    let proxy_spec = container(&docs[0], "initContainers", "sluice-proxy");
    let probes = env_value(proxy_spec, "SLUICE_PROXY_PROBES").expect("SLUICE_PROXY_PROBES");
    assert_eq!(probes, format!("{port}/live,{port}/ready"));

    // The sidecar as injected, fed the shop's policy from files instead of the controller.
    let proxy = Proxy::start(
        ProxyOptions::default()
            .env(
                "SLUICE_PROXY_POLICY_DIR",
                repo("examples/shop/policy").display().to_string(),
            )
            .env("SLUICE_PROXY_SERVICE", "payments")
            .env("SLUICE_PROXY_SERVICE_VERSION", "v1")
            .env("SLUICE_PROXY_PROBES", probes)
            // The app's port, and another port of the pod with the same paths.
            .env(
                "SLUICE_PROXY_EXPLICIT_INBOUND",
                format!("0={},0={}", app.addr, other.addr),
            ),
    );
    let client = sluice_integration::client::hyper_client(false);
    let call = |method: http::Method, listener: usize, path: &'static str| {
        let client = client.clone();
        let addr = proxy.explicit(listener);
        async move {
            sluice_integration::client::request(&client, method, addr, path, &[])
                .await
                .expect("call")
        }
    };
    // Until the policy directory is loaded everything is denied; wait for the first allow.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let reply = call(http::Method::GET, 0, "/ready").await;
        if reply.status == 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        ready.status, 200,
        "the kubelet's readiness probe: {}",
        ready.body
    );
    assert_eq!(ready.json()["path"], "/ready", "it reached the app");
    assert_eq!(call(http::Method::GET, 0, "/live").await.status, 200);
    assert_eq!(
        call(http::Method::GET, 0, "/ready?verbose=1").await.status,
        200
    );
    let before = app.hits();
    for (method, listener, path, what) in [
        (
            http::Method::GET,
            0,
            "/admin",
            "a plain-text call to /admin",
        ),
        (http::Method::POST, 0, "/ready", "POST to a probe path"),
        (http::Method::GET, 0, "/readyz", "a longer path"),
        (
            http::Method::GET,
            1,
            "/ready",
            "the probe path on another port",
        ),
    ] {
        let reply = call(method, listener, path).await;
        assert_eq!(reply.status, 403, "{what}: {}", reply.body);
    }
    assert_eq!(app.hits(), before, "nothing denied reached the app");
    assert_eq!(other.hits(), 0);
    // The sidecar says what it lets through.
    let config = sluice_integration::client::get(&client, proxy.admin(), "/config", &[])
        .await
        .expect("/config")
        .json();
    assert_eq!(
        config["kubelet_probes"][1]["rpc"], "GET /ready",
        "{config:#}"
    );
    assert_eq!(
        config["kubelet_probes"][1]["origin"],
        "kubelet probe (from the pod spec)"
    );

    // `sluice policy explain` shows both decisions.
    let explain = |rpc: &str| {
        Command::new(sluice_bin())
            .args(["policy", "explain"])
            .arg(repo("examples/shop/policy"))
            .args([
                "--from",
                "unauthenticated",
                "--to",
                "payments",
                "--rpc",
                rpc,
                "--pod",
            ])
            .arg(&file)
            .output()
            .expect("explain")
    };
    let allowed = explain("GET /ready");
    let text = String::from_utf8_lossy(&allowed.stdout);
    assert!(allowed.status.success(), "{text}");
    assert!(
        text.contains("kubelet probe (from the pod spec)")
            && text.contains(&format!("GET /ready on port {port}")),
        "{text}"
    );
    let denied = explain("GET /admin");
    let text = String::from_utf8_lossy(&denied.stdout);
    assert_eq!(denied.status.code(), Some(1), "{text}");
    assert!(
        text.contains("denied") && text.contains("no mesh identity"),
        "{text}"
    );
}

/// The proxy's environment exactly as injected, resolved the way the kubelet resolves it,
/// starts a proxy that the real controller certifies and feeds: the address is `https://`,
/// the CA to trust the controller by and the token are files in the identity volume, the
/// facts come from the downward API. A mismatch between what the injector writes and what
/// the proxy accepts (an `http://` address, a missing CA) would stop every injected pod.
///
/// Three things stand in for the cluster, and only these: the controller's address (the
/// Service's DNS name does not resolve here), the identity volume's files (the kubelet would
/// project them: the ConfigMap's CA is the controller's CA file; the token is a bootstrap
/// token for the pod's service: this controller runs standalone, and the service-account
/// token path, TokenReview against a real API server, is
/// `kubernetes.rs::service_account_tokens_prove_exactly_their_own_workload`), and the listeners on loopback port 0 instead of the pod's fixed
/// ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_environment_starts_a_proxy_the_controller_certifies_and_feeds() {
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: payments-0\n  labels: {app: payments, sluice.dev/version: v1}\n\
         spec:\n  containers:\n    - name: payments\n      image: shop:0.1.0\n      ports: [{name: http, containerPort: 8080}]\n\
         \x20     readinessProbe: {httpGet: {path: /healthz, port: http}}\n";
    let (_dir, _file, docs) = inject(&[], manifest);
    let spec = container(&docs[0], "initContainers", "sluice-proxy");
    let controller =
        sluice_integration::controller::RealController::start(&repo("examples/shop/policy"), "1h");
    let identity = tempfile::tempdir().expect("tempdir");
    std::fs::write(identity.path().join("token"), controller.token("payments")).expect("token");
    std::fs::copy(controller.ca_file(), identity.path().join("ca.crt")).expect("ca.crt");
    let identity_dir = "/var/run/sluice/identity";
    let mut opts = ProxyOptions::default();
    let mut names = Vec::new();
    for var in spec["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("name");
        names.push(name.to_owned());
        let value = match (
            var["value"].as_str(),
            &var["valueFrom"]["fieldRef"]["fieldPath"],
        ) {
            (Some(v), _) => v.to_owned(),
            (None, Value::String(path)) => match path.as_str() {
                "metadata.namespace" => "default".to_owned(),
                "metadata.name" => "payments-0".to_owned(),
                "metadata.labels['sluice.dev/version']" => "v1".to_owned(),
                other => panic!("a field the test does not resolve: {other}"),
            },
            _ => panic!("{name}: neither a value nor a field: {var}"),
        };
        let value = match name {
            "SLUICE_PROXY_CONTROLLER_ADDR" => {
                assert!(value.starts_with("https://"), "{value}");
                controller.url.clone()
            }
            "SLUICE_PROXY_ADMIN_ADDR" => continue,
            _ => value.replace(identity_dir, &identity.path().display().to_string()),
        };
        opts = opts.env(name, value);
    }
    for wired in [
        "SLUICE_PROXY_CONTROLLER_CA",
        "SLUICE_PROXY_IDENTITY_TOKEN_FILE",
        "SLUICE_PROXY_NAMESPACE",
        "SLUICE_PROXY_SERVICE_VERSION",
        "SLUICE_PROXY_PROBES",
    ] {
        assert!(
            names.iter().any(|n| n == wired),
            "{wired} missing: {names:?}"
        );
    }
    let proxy = Proxy::start(opts);
    let client = sluice_integration::client::hyper_client(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = sluice_integration::client::get(&client, proxy.admin(), "/ready", &[])
            .await
            .map(|r| r.status)
            .unwrap_or_default();
        let config = sluice_integration::client::get(&client, proxy.admin(), "/config", &[])
            .await
            .map(|r| r.json())
            .unwrap_or_default();
        if ready == 200 && config["version"].as_str().is_some_and(|v| !v.is_empty()) {
            assert_eq!(
                config["kubelet_probes"][0]["rpc"], "GET /healthz",
                "{config:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the injected proxy never got its config from the controller (ready {ready}):\n{}\n--- controller ---\n{}",
            proxy.log(),
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Skips (with the reason) where network namespaces and iptables cannot be used.
fn netns_or_skip(test: &str) -> Option<sluice_integration::netns::Netns> {
    if !sluice_integration::is_root() || !sluice_integration::have("ip") {
        sluice_integration::skip(test, "needs root and iproute2 for a network namespace");
        return None;
    }
    let name = format!("sj{}", std::process::id());
    match sluice_integration::netns::Netns::create(&name) {
        Ok(ns) => Some(ns),
        Err(e) => {
            sluice_integration::skip(test, &format!("cannot create a network namespace: {e}"));
            None
        }
    }
}

#[test]
fn a_classic_sidecar_exits_when_the_job_does() {
    let Some(ns) = netns_or_skip("inject_runtime::job") else {
        return;
    };
    let manifest = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: refund}\nspec:\n  template:\n    spec:\n      restartPolicy: OnFailure\n      containers:\n        - name: refund\n          image: shop:0.1.0\n          command: [sh, -c]\n          args: ['test -e \"$MARKER\" && echo refunded || { touch \"$MARKER\"; exit 3; }']\n";
    let (dir, _, docs) = inject(&["--mode", "classic"], manifest);
    let template = &docs[0]["spec"]["template"];
    // Paths in the pod become paths in this test's scratch directory.
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    let localize = |args: Vec<String>| -> Vec<String> {
        args.into_iter()
            .map(|a| {
                a.replace("/var/run/sluice/bin", &bin_dir.display().to_string())
                    .replace(
                        "/usr/local/bin/sluice-proxy",
                        &proxy_bin().display().to_string(),
                    )
            })
            .collect()
    };

    // 1. The init container: iptables rules in the pod's namespace, and the copy.
    let init = container(template, "initContainers", "sluice-init");
    let mut cmd = ns.command(&[&proxy_bin().display().to_string()]);
    cmd.args(localize(strings(&init["args"])));
    let out = cmd.output().expect("init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bin_dir.join("sluice-proxy").exists(),
        "init copied sluice-proxy"
    );

    // 2. The proxy, with the injected ports (inbound 0.0.0.0:4143, outbound 127.0.0.1:4140,
    // admin 0.0.0.0:4191: the namespace is the pod's own) and the shop's policy from files,
    // since there is no controller here.
    let spec = container(template, "containers", "sluice-proxy");
    let mut proxy = Proxy::start(
        ProxyOptions {
            wrapper: ns.prefix(),
            ..Default::default()
        }
        .env("SLUICE_PROXY_INBOUND_ADDR", "0.0.0.0:4143")
        .env("SLUICE_PROXY_OUTBOUND_ADDR", "127.0.0.1:4140")
        .env(
            "SLUICE_PROXY_ADMIN_ADDR",
            env_value(spec, "SLUICE_PROXY_ADMIN_ADDR").expect("admin"),
        )
        .env(
            "SLUICE_PROXY_POLICY_DIR",
            repo("examples/shop/policy").display().to_string(),
        )
        .env("SLUICE_PROXY_SERVICE", "refund"),
    );
    // 3. Its postStart hook returns once it is ready (the kubelet then starts the app).
    let hook = localize(strings(&spec["lifecycle"]["postStart"]["exec"]["command"]));
    let out = ns
        .command(&hook.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .expect("postStart");
    assert!(
        out.status.success(),
        "wait-ready: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 4. The Job's container, exactly as injected. OnFailure: the first run fails, the
    // kubelet restarts the container in the same pod, which still needs its proxy.
    let app = container(template, "containers", "refund");
    let mut argv = localize(strings(&app["command"]));
    argv.extend(strings(&app["args"]));
    assert!(
        argv[0].ends_with("/bin/sluice-proxy") && argv[1] == "await",
        "{argv:?}"
    );
    let marker = dir.path().join("failed-once");
    let run_app = || {
        ns.command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
            .env("MARKER", &marker)
            .output()
            .expect("the app")
    };
    let first = run_app();
    assert_eq!(
        first.status.code(),
        Some(3),
        "the app's own exit status is the container's"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        proxy.wait_exit(Duration::from_millis(100)).is_none(),
        "after a failure (OnFailure) the proxy must keep running for the retry"
    );
    let second = run_app();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "refunded");
    let exited = proxy.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "the proxy kept running after the Job's app exited:\n{}",
            proxy.log()
        )
    });
    assert!(
        exited.success(),
        "the proxy drained and exited cleanly: {exited}"
    );
}
