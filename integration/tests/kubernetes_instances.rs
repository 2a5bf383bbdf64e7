//! The instances the controller starts in Kubernetes (`controller/src/kubernetes/instances.rs`),
//! against a real API server (v1.20.2, `sluice_integration::kube`): `sluice env create`
//! against `sluice controller --kubernetes` creates a Deployment copied from the service's
//! own, the environment follows its pod, a restarted controller finds it again, and
//! `sluice env delete` removes it; a rollout gets its baseline copy the same way.
//!
//! There is no kube-controller-manager, scheduler or kubelet here: nothing turns a Deployment
//! into a ReplicaSet and a pod, or runs the pod. Where the test needs the copy's pod, it
//! creates the pod the ReplicaSet controller would create (the Deployment's template, its
//! labels) and patches its status as the kubelet would (an IP, Ready, the container's start
//! time), and says so.
//!
//! One API server per test binary; the tests take turns on it and start from an empty mesh.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use sluice_integration::controller::sluice_bin;
use sluice_integration::kube::{ApiServer, KubeController, shared};

/// How long anything here may take to happen (the controller syncs every 2 s).
const PATIENCE: Duration = Duration::from_secs(20);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// What these tests run against the controller, as a person runs it.
trait Cli {
    fn env(&self, args: &[&str]) -> (bool, String, String);
    fn rollout(&self, args: &[&str]) -> Value;
    fn environment(&self, name: &str) -> Option<Value>;
}

impl Cli for KubeController {
    /// `sluice env --state-dir STATE ARGS`, as a person runs it: (success, stdout, stderr).
    fn env(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(sluice_bin())
            .arg("env")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--color", "never"])
            .args(args)
            .output()
            .expect("sluice env");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `sluice rollout ARGS --state-dir STATE --output json`, as a person runs it, parsed.
    fn rollout(&self, args: &[&str]) -> Value {
        let out = Command::new(sluice_bin())
            .arg("rollout")
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--output", "json"])
            .output()
            .expect("sluice rollout");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "sluice rollout {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The environment `name` as `sluice env list --output json` shows it.
    fn environment(&self, name: &str) -> Option<Value> {
        let (ok, out, err) = self.env(&["list", "--output", "json"]);
        assert!(ok, "{out}{err}");
        let list: Value = serde_json::from_str(&out).expect("json");
        list["environments"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    }
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The shared API server, an empty mesh with the shop's policy, and no Deployments in
/// `default` (the harness's reset leaves Deployments, which only these tests make).
fn setup(test: &str) -> Option<(&'static ApiServer, std::sync::MutexGuard<'static, ()>)> {
    let api = shared(test)?;
    let guard = api.exclusive();
    api.install_crds();
    api.reset();
    api.kubectl_ok(&["delete", "deployments", "--all", "-n", "default"]);
    api.kubectl_ok(&[
        "apply",
        "-R",
        "-f",
        &repo("examples/shop/policy").display().to_string(),
    ]);
    Some((api, guard))
}

fn apply(api: &ApiServer, object: &Value) {
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &object.to_string());
    assert!(ok, "{err}");
}

/// A shop service as its team deploys it: a Service selecting `app: NAME`, and a Deployment
/// of two replicas whose pods are labelled with the version (`None`: no version label).
fn deploy_service(api: &ApiServer, name: &str, version: Option<&str>, image: &str) {
    apply(
        api,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        }),
    );
    let mut labels = json!({"app": name});
    if let Some(v) = version {
        labels["sluice.dev/version"] = json!(v);
    }
    apply(
        api,
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{
                        "name": name, "image": image,
                        "args": ["shop", name],
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }]},
                },
            },
        }),
    );
}

fn get_json(api: &ApiServer, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-n", "default", "-o", "json"]);
    serde_json::from_str(&api.kubectl_ok(&args)).expect("json")
}

/// The Deployments this backend made, by name.
fn copies(api: &ApiServer) -> Vec<Value> {
    get_json(
        api,
        &["deployments", "-l", "app.kubernetes.io/managed-by=sluice"],
    )["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn copy_state(env: &Value, service: &str) -> (String, String) {
    let copy = env["copies"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["service"] == service))
        .cloned()
        .unwrap_or(Value::Null);
    (
        copy["state"].as_str().unwrap_or_default().to_owned(),
        copy["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

/// RFC 3339 in seconds, `ago` before now, as Kubernetes writes times.
fn timestamp(ago: Duration) -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .saturating_sub(ago)
        .as_secs();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What the ReplicaSet controller and the kubelet would do for `deployment` (neither runs
/// here): create its pod from the template, then report it running and Ready at `ip`, its
/// container started 5 s ago.
fn run_pod_of(api: &ApiServer, deployment: &Value, ip: &str) -> String {
    let name = deployment["metadata"]["name"].as_str().expect("name");
    let template = &deployment["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    labels["pod-template-hash"] = json!("5d8f7c9b4");
    let pod_name = format!("{name}-5d8f7c9b4-x2x9q");
    apply(
        api,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": "default", "labels": labels},
            "spec": template["spec"],
        }),
    );
    let container = template["spec"]["containers"][0].clone();
    let status = json!({
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": timestamp(Duration::from_secs(6)),
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
            ],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "",
                "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": timestamp(Duration::from_secs(5))}},
            }],
        }
    });
    api.raw_patch(
        &format!("/api/v1/namespaces/default/pods/{pod_name}/status"),
        &status,
    )
    .unwrap_or_else(|e| panic!("patch the pod's status: {e}"));
    pod_name
}

#[test]
fn an_environment_runs_as_deployment_copies_that_survive_a_restart_and_go_with_it() {
    let Some((api, _guard)) = setup("kubernetes_instances::lifecycle") else {
        return;
    };
    // checkout calls catalog with `ephemeral: copy`: both are copied, payments is shared.
    deploy_service(api, "checkout", Some("v1"), "registry.example/shop:0.1.0");
    deploy_service(api, "catalog", Some("v1"), "registry.example/shop:0.1.0");
    let mut controller = KubeController::start(api, &[]);

    let (ok, out, err) = controller.env(&[
        "create",
        "pr-1",
        "--service",
        "checkout",
        "--no-wait",
        "--output",
        "json",
    ]);
    assert!(ok, "{out}{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    // Answered before the backend's next round: nothing is started yet.
    assert_eq!(copy_state(&created, "checkout").0, "pending", "{created:#}");

    // The copy: a Deployment of one pod with the service's template and the instance's labels.
    let checkout = wait_for("checkout's copy", || {
        copies(api)
            .into_iter()
            .find(|d| d["metadata"]["name"] == "checkout-pr-1")
    });
    let meta = &checkout["metadata"];
    assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "sluice");
    assert_eq!(meta["labels"]["sluice.dev/instance"], "checkout-pr-1");
    let spec: Value = serde_json::from_str(
        meta["annotations"]["sluice.dev/instance-spec"]
            .as_str()
            .expect("the spec annotation"),
    )
    .expect("the spec is JSON");
    assert_eq!(
        (
            &spec["name"],
            &spec["service"],
            &spec["version"],
            &spec["environment"]
        ),
        (
            &json!("checkout.pr-1"),
            &json!("checkout"),
            &json!("v1"),
            &json!("pr-1")
        )
    );
    assert_eq!(checkout["spec"]["replicas"], 1);
    assert_eq!(
        checkout["spec"]["selector"],
        json!({"matchLabels": {"sluice.dev/instance": "checkout-pr-1"}})
    );
    assert_eq!(
        checkout["spec"]["template"]["metadata"]["labels"],
        json!({
            "app": "checkout",
            "sluice.dev/version": "v1",
            "sluice.dev/environment": "pr-1",
            "sluice.dev/instance": "checkout-pr-1",
        })
    );
    let container = &checkout["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/shop:0.1.0");
    assert_eq!(container["args"], json!(["shop", "checkout"]));
    let uid = meta["uid"].as_str().expect("uid").to_owned();
    wait_for("catalog's copy", || {
        copies(api)
            .iter()
            .any(|d| d["metadata"]["name"] == "catalog-pr-1")
            .then_some(())
    });
    // The service's own Deployment is untouched.
    let own = get_json(api, &["deployment", "checkout"]);
    assert_eq!(own["spec"]["replicas"], 2);
    assert!(
        own["metadata"]["labels"]
            .get("app.kubernetes.io/managed-by")
            .is_none()
    );

    // The Deployment exists, its pod does not: from the backend's next report on, started
    // and not running.
    let (state, detail) = wait_for("the backend's report of the copy", || {
        let env = controller.environment("pr-1")?;
        let state = copy_state(&env, "checkout");
        (state.0 != "pending").then_some(state)
    });
    assert_eq!((state.as_str(), detail.as_str()), ("starting", "starting"));

    // The pod the ReplicaSet controller would create, reported Ready as the kubelet would.
    run_pod_of(api, &checkout, "10.244.1.5");
    let env = wait_for("checkout's copy running", || {
        let env = controller.environment("pr-1")?;
        (copy_state(&env, "checkout").0 == "running").then_some(env)
    });
    let copy = env["copies"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["service"] == "checkout"))
        .cloned()
        .expect("checkout's copy");
    assert_eq!(copy["address"], "10.244.1.5:8080", "{copy:#}");
    assert_eq!(copy["registered"], true, "the registry found the pod");
    assert_eq!(copy["starts"], 1);
    assert_eq!(copy_state(&env, "catalog").0, "starting", "no pod for it");

    // A restarted controller (SIGKILL) finds the copies in the cluster: nothing is created
    // twice or recreated, and the environment still shows checkout's copy running.
    controller.restart();
    wait_for("checkout's copy running after the restart", || {
        let env = controller.environment("pr-1")?;
        (copy_state(&env, "checkout").0 == "running").then_some(())
    });
    // Two more rounds of the backend.
    std::thread::sleep(Duration::from_secs(4));
    let after: Vec<Value> = copies(api);
    let names: Vec<&str> = after
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["catalog-pr-1", "checkout-pr-1"]);
    assert_eq!(after[1]["metadata"]["uid"], uid.as_str(), "not recreated");

    // `sluice env delete` removes both copies, and only them.
    let (ok, out, err) = controller.env(&["delete", "pr-1"]);
    assert!(ok, "{out}{err}");
    wait_for("the copies to go", || copies(api).is_empty().then_some(()));
    let left = get_json(api, &["deployments"]);
    let names: Vec<&str> = left["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["catalog", "checkout"]);
}

#[test]
fn a_command_and_an_undeployed_version_are_refused_with_the_reason_in_the_environment() {
    let Some((api, _guard)) = setup("kubernetes_instances::refused") else {
        return;
    };
    deploy_service(api, "checkout", Some("v1"), "registry.example/shop:0.1.0");
    // catalog's Deployment says no version: the backend cannot tell it runs v1.
    deploy_service(api, "catalog", None, "registry.example/shop:0.1.0");
    let controller = KubeController::start(api, &[]);

    // `sluice env create … -- COMMAND` waits, sees the copy refused, says why, and removes
    // the environment again.
    let (ok, out, err) = controller.env(&[
        "create",
        "pr-2",
        "--service",
        "checkout",
        "--wait",
        "20s",
        "--",
        "/bin/true",
    ]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("checkout.pr-2") && err.contains("on Kubernetes, give a version"),
        "{err}"
    );
    assert!(err.contains("removed environment pr-2 again"), "{err}");
    assert!(controller.environment("pr-2").is_none());

    // A version with no Deployment: the copy is refused naming what exists and the label.
    let (ok, out, err) = controller.env(&["create", "pr-3", "--service", "checkout", "--no-wait"]);
    assert!(ok, "{out}{err}");
    let detail = wait_for("catalog's refusal", || {
        let env = controller.environment("pr-3")?;
        let (state, detail) = copy_state(&env, "catalog");
        (state == "failed").then_some(detail)
    });
    for part in [
        "no Deployment in namespace `default` runs catalog v1",
        "catalog (no version label)",
        "`sluice.dev/version: v1`",
    ] {
        assert!(detail.contains(part), "{part}: {detail}");
    }
    // checkout's copy was made all the same.
    let names: Vec<String> = copies(api)
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["checkout-pr-3"]);
    let (ok, out, err) = controller.env(&["delete", "pr-3"]);
    assert!(ok, "{out}{err}");
    wait_for("the copy to go", || copies(api).is_empty().then_some(()));
}

/// The chart's ClusterRole for instances allows exactly what the backend does with
/// Deployments, and nothing on pods beyond reading them (`kubectl auth can-i` as the chart's
/// service account, with the chart's RBAC applied).
#[test]
fn the_charts_rbac_lets_the_controller_manage_deployments_and_no_more() {
    let Some((api, _guard)) = setup("kubernetes_instances::rbac") else {
        return;
    };
    let out = Command::new(api.bin.join("helm"))
        .args(["template", "sluice"])
        .arg(repo("deploy/helm/sluice"))
        .args(["-n", "sluice", "--show-only", "templates/rbac.yaml"])
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rbac = String::from_utf8_lossy(&out.stdout);
    assert!(
        rbac.contains("name: sluice-sluice-controller-instances"),
        "{rbac}"
    );
    let _ = api.kubectl(&["create", "namespace", "sluice"]).output();
    let (ok, _, err) = api.kubectl_stdin(&["apply", "-f", "-"], &rbac);
    assert!(ok, "{err}");
    let can = |verb: &str, what: &str| {
        let out = api
            .kubectl(&[
                "auth",
                "can-i",
                verb,
                what,
                "-n",
                "default",
                "--as",
                "system:serviceaccount:sluice:sluice-controller",
            ])
            .output()
            .expect("kubectl auth can-i");
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for verb in ["get", "list", "create", "delete"] {
        assert!(can(verb, "deployments.apps"), "{verb} deployments");
    }
    // The backend lists each round and never edits a copy (a changed spec is a new copy).
    for verb in ["update", "patch", "watch"] {
        assert!(!can(verb, "deployments.apps"), "{verb} deployments");
    }
    assert!(!can("create", "pods"), "create pods");
    assert!(!can("delete", "pods"), "delete pods");
    assert!(can("list", "pods"), "list pods (the registry's)");
    assert!(!can("create", "replicasets.apps"), "create replicasets");
}

/// A rollout is judged against a fresh copy of the stable version: with the shop's payments
/// CanaryPolicy (`analysis.baseline` is `copy` by default) the controller in the cluster runs
/// `payments-v1-baseline`, a copy of payments' v1 Deployment labelled with the role
/// `baseline`, while the rollout is active, and deletes it when the rollout is aborted.
///
/// No ReplicaSet controller or kubelet: payments' v1 and v2 pods are created and reported
/// Ready by the test, as they would (so the registry has a live stable and canary version).
#[test]
fn a_rollout_gets_a_baseline_copy_deployment_until_it_ends() {
    let Some((api, _guard)) = setup("kubernetes_instances::rollout") else {
        return;
    };
    deploy_service(api, "payments", Some("v1"), "registry.example/shop:0.1.0");
    let mut v2 = get_json(api, &["deployment", "payments"]);
    v2["metadata"] =
        json!({"name": "payments-v2", "namespace": "default", "labels": {"app": "payments"}});
    v2["spec"]["replicas"] = json!(1);
    v2["spec"]["selector"] =
        json!({"matchLabels": {"app": "payments", "sluice.dev/version": "v2"}});
    v2["spec"]["template"]["metadata"]["labels"]["sluice.dev/version"] = json!("v2");
    v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("registry.example/shop:0.2.0");
    v2.as_object_mut().map(|o| o.remove("status"));
    apply(api, &v2);
    let v1 = get_json(api, &["deployment", "payments"]);
    run_pod_of(api, &v1, "10.244.2.10");
    let v2 = get_json(api, &["deployment", "payments-v2"]);
    run_pod_of(api, &v2, "10.244.2.20");
    let controller = KubeController::start(api, &[]);

    let started = controller.rollout(&["start", "payments", "--version", "v2"]);
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no rollout id: {started:#}"))
        .to_owned();
    assert_eq!(started["baseline"]["copy_requested"], true, "{started:#}");

    let copy = wait_for("payments' baseline copy", || {
        copies(api)
            .into_iter()
            .find(|d| d["metadata"]["name"] == "payments-v1-baseline")
    });
    let labels = &copy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["sluice.dev/version"], "v1", "{copy:#}");
    assert_eq!(labels["sluice.dev/role"], "baseline", "{copy:#}");
    assert_eq!(labels["sluice.dev/environment"], "stable", "{copy:#}");
    assert_eq!(
        labels["app"], "payments",
        "the Service selects it: {copy:#}"
    );
    assert_eq!(
        copy["spec"]["template"]["spec"]["containers"][0]["image"], "registry.example/shop:0.1.0",
        "a copy of the stable version, not the canary: {copy:#}"
    );
    assert_eq!(copies(api).len(), 1, "only the baseline copy");

    let aborted = controller.rollout(&["abort", &id]);
    assert_eq!(aborted["phase"], "aborted", "{aborted:#}");
    wait_for("the baseline copy to go", || {
        copies(api).is_empty().then_some(())
    });
    // The team's own Deployments are untouched.
    for name in ["payments", "payments-v2"] {
        assert_eq!(
            get_json(api, &["deployment", name])["metadata"]["name"],
            name
        );
    }
}
