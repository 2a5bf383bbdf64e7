//! The one injection function, table-style: each case is a pod template, a mode, and what a
//! user would check in the result.

use super::*;
use serde_json::json;

fn pod(annotations: Value, spec: Value) -> Value {
    json!({
        "metadata": {"labels": {"app": "payments", "sluice.dev/version": "v2"}, "annotations": annotations},
        "spec": spec,
    })
}

fn web() -> Value {
    json!({"containers": [{
        "name": "app", "image": "payments:v2",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
        "livenessProbe": {"httpGet": {"path": "/live?full=1", "port": 8080}},
        "startupProbe": {"tcpSocket": {"port": 8080}},
    }]})
}

fn config(mode: Mode) -> Config {
    Config {
        mode,
        ..Config::default()
    }
}

fn names(spec: &Value, key: &str) -> Vec<String> {
    spec[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| name_of(c).to_owned())
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

fn proxy(template: &Value) -> Value {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| template["spec"][*k].as_array().cloned().unwrap_or_default())
        .find(|c| name_of(c) == PROXY)
        .unwrap_or(Value::Null)
}

fn init(template: &Value) -> Value {
    template["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| name_of(c) == INIT)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn table() {
    type Check = fn(&Value, &Report);
    let cases: Vec<(&str, Value, Mode, Check)> = vec![
        (
            "native: init then proxy before the app's own init containers",
            pod(json!({}), {
                let mut s = web();
                s["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
                s
            }),
            Mode::Native,
            |t, r| {
                assert!(matches!(
                    r.outcome,
                    Outcome::Injected {
                        mode: Mode::Native,
                        ..
                    }
                ));
                assert_eq!(
                    names(&t["spec"], "initContainers"),
                    [INIT, PROXY, "migrate"]
                );
                assert_eq!(names(&t["spec"], "containers"), ["app"]);
                let p = proxy(t);
                assert_eq!(p["restartPolicy"], "Always");
                assert_eq!(p["startupProbe"]["httpGet"]["path"], "/ready");
                assert!(p.get("lifecycle").is_none());
                assert_eq!(
                    t["metadata"]["annotations"][INJECTED],
                    "native,volumes,service-account"
                );
                assert_eq!(
                    t["metadata"]["annotations"].as_object().map(Map::len),
                    Some(1)
                );
            },
        ),
        (
            "classic: proxy first with a postStart wait, init last",
            pod(json!({}), {
                let mut s = web();
                s["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
                s
            }),
            Mode::Classic,
            |t, r| {
                assert!(matches!(
                    r.outcome,
                    Outcome::Injected {
                        mode: Mode::Classic,
                        awaited: false,
                        ..
                    }
                ));
                assert_eq!(names(&t["spec"], "containers"), [PROXY, "app"]);
                assert_eq!(names(&t["spec"], "initContainers"), ["migrate", INIT]);
                let p = proxy(t);
                assert!(p.get("restartPolicy").is_none());
                assert_eq!(
                    p["lifecycle"]["postStart"]["exec"]["command"],
                    json!([PROXY_EXE, "wait-ready", "--timeout=120s"])
                );
                assert_eq!(t["metadata"]["annotations"][DEFAULT_CONTAINER], "app");
            },
        ),
        (
            "the init container has exactly NET_ADMIN and NET_RAW and exempts the proxy's UID",
            pod(json!({}), web()),
            Mode::Native,
            |t, _| {
                let i = init(t);
                assert_eq!(
                    i["securityContext"]["capabilities"],
                    json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
                );
                assert_eq!(i["securityContext"]["privileged"], false);
                assert_eq!(i["securityContext"]["allowPrivilegeEscalation"], false);
                assert!(
                    i["args"]
                        .as_array()
                        .is_some_and(|a| a.contains(&json!("--proxy-uid=2102")))
                );
                let p = proxy(t);
                assert_eq!(p["securityContext"]["runAsUser"], 2102);
                assert_eq!(p["securityContext"]["runAsNonRoot"], true);
                assert_eq!(p["securityContext"]["readOnlyRootFilesystem"], true);
                assert_eq!(
                    p["securityContext"]["capabilities"],
                    json!({"drop": ["ALL"]})
                );
            },
        ),
        (
            "identity: a projected token for audience sluice, downward-API facts, no secret",
            pod(json!({}), web()),
            Mode::Native,
            |t, _| {
                let token = t["spec"]["volumes"]
                    .as_array()
                    .and_then(|v| v.iter().find(|v| v["name"] == IDENTITY_VOLUME))
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(
                    token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
                    TOKEN_AUDIENCE
                );
                let p = proxy(t);
                assert_eq!(
                    env(&p, "SLUICE_PROXY_IDENTITY_TOKEN_FILE")["value"],
                    "/var/run/sluice/identity/token"
                );
                assert_eq!(
                    env(&p, "SLUICE_PROXY_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
                    "metadata.namespace"
                );
                assert_eq!(
                    env(&p, "SLUICE_PROXY_SERVICE_VERSION")["valueFrom"]["fieldRef"]["fieldPath"],
                    "metadata.labels['sluice.dev/version']"
                );
                assert_eq!(env(&p, "SLUICE_PROXY_SERVICE")["value"], "payments");
                // Over TLS (the controller serves nothing else), trusting the mesh CA from the
                // namespace's public ConfigMap.
                assert_eq!(
                    env(&p, "SLUICE_PROXY_CONTROLLER_ADDR")["value"],
                    "https://sluice-controller.sluice.svc:7071"
                );
                assert_eq!(
                    env(&p, "SLUICE_PROXY_CONTROLLER_CA")["value"],
                    "/var/run/sluice/identity/ca.crt"
                );
                assert_eq!(
                    token["projected"]["sources"][1]["configMap"],
                    json!({"name": CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]})
                );
                let text = t.to_string();
                assert!(
                    !text.contains("secretKeyRef") && !text.contains("\"secret\""),
                    "{text}"
                );
            },
        ),
        (
            "probes: HTTP ones (named port resolved, query dropped) become the exemption; TCP is not HTTP",
            pod(json!({}), web()),
            Mode::Native,
            |t, r| {
                let Outcome::Injected { probes, .. } = &r.outcome else {
                    panic!("{r:?}")
                };
                assert_eq!(probes.to_string(), "8080/live,8080/ready");
                assert_eq!(
                    env(&proxy(t), "SLUICE_PROXY_PROBES")["value"],
                    "8080/live,8080/ready"
                );
                assert!(r.problems.is_empty(), "{:?}", r.problems);
            },
        ),
        (
            "probes: an HTTPS probe and an unknown port name are problems, not exemptions",
            pod(
                json!({}),
                json!({"containers": [{
                    "name": "app", "image": "a",
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8443, "scheme": "HTTPS"}},
                    "livenessProbe": {"httpGet": {"path": "/live", "port": "metrics"}},
                }]}),
            ),
            Mode::Native,
            |t, r| {
                assert!(env(&proxy(t), "SLUICE_PROXY_PROBES").is_null());
                let fields: Vec<&str> = r.problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(
                    fields,
                    [
                        "spec.containers[0].livenessProbe.httpGet.port",
                        "spec.containers[0].readinessProbe.httpGet.scheme",
                    ]
                );
            },
        ),
        (
            "annotations: ports, subnets, opaque ports, log level and resources",
            pod(
                json!({
                    "sluice.dev/skip-inbound-ports": "22, 8000-8100",
                    "sluice.dev/skip-outbound-ports": "5432",
                    "sluice.dev/skip-outbound-subnets": "10.0.0.0/8,fd00::/8",
                    "sluice.dev/opaque-ports": "3306",
                    "sluice.dev/proxy-log-level": "info,sluice_proxy=debug",
                    "sluice.dev/proxy-cpu-request": "50m",
                    "sluice.dev/proxy-cpu-limit": "1",
                    "sluice.dev/proxy-memory-limit": "1Gi",
                    "sluice.dev/service": "billing",
                }),
                web(),
            ),
            Mode::Native,
            |t, r| {
                assert!(r.problems.is_empty(), "{:?}", r.problems);
                let args = init(t)["args"].clone();
                for want in [
                    "--skip-inbound-ports=22,8000:8100",
                    "--skip-outbound-ports=5432",
                    "--skip-subnets=10.0.0.0/8,fd00::/8",
                ] {
                    assert!(
                        args.as_array().is_some_and(|a| a.contains(&json!(want))),
                        "{want}: {args}"
                    );
                }
                let p = proxy(t);
                assert_eq!(env(&p, "SLUICE_PROXY_OPAQUE_PORTS")["value"], "3306");
                assert_eq!(
                    env(&p, "SLUICE_PROXY_LOG")["value"],
                    "info,sluice_proxy=debug"
                );
                assert_eq!(env(&p, "SLUICE_PROXY_SERVICE")["value"], "billing");
                assert_eq!(
                    p["resources"],
                    json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
                );
            },
        ),
        (
            "annotations: unknown and malformed ones are problems with the fix; the value is left out",
            pod(
                json!({
                    "sluice.dev/skip-inbound-port": "22",
                    "sluice.dev/opaque-ports": "3306,abc",
                    "sluice.dev/proxy-memory-limit": "lots",
                    "sluice.dev/inject": "yes",
                }),
                web(),
            ),
            Mode::Native,
            |t, r| {
                let text: Vec<String> = r.problems.iter().map(ToString::to_string).collect();
                assert_eq!(text.len(), 4, "{text:#?}");
                assert!(text.iter().any(|p| p.contains("inject\"]: `yes` is neither `enabled` nor `disabled`")), "{text:#?}");
                assert!(
                    text.iter()
                        .any(|p| p.contains("did you mean `sluice.dev/skip-inbound-ports`?")),
                    "{text:#?}"
                );
                assert!(
                    text.iter().any(|p| p.contains("`abc` is not a port")),
                    "{text:#?}"
                );
                assert!(
                    text.iter()
                        .any(|p| p.contains("`lots` is not a positive quantity")),
                    "{text:#?}"
                );
                let p = proxy(t);
                assert!(env(&p, "SLUICE_PROXY_OPAQUE_PORTS").is_null());
                assert_eq!(p["resources"]["limits"]["memory"], "256Mi");
            },
        ),
        (
            "opted out",
            pod(json!({"sluice.dev/inject": "disabled"}), web()),
            Mode::Native,
            |t, r| {
                assert_eq!(r.outcome, Outcome::Skipped(Skip::OptedOut));
                assert!(!is_injected(t));
            },
        ),
        (
            "host network",
            pod(json!({}), {
                let mut s = web();
                s["hostNetwork"] = json!(true);
                s
            }),
            Mode::Classic,
            |t, r| {
                assert_eq!(r.outcome, Outcome::Skipped(Skip::HostNetwork));
                assert!(!is_injected(t));
            },
        ),
        (
            "not a pod template: reported, not overwritten",
            json!({"metadata": {}, "spec": {"containers": "app"}}),
            Mode::Native,
            |t, r| {
                assert_eq!(r.outcome, Outcome::Skipped(Skip::Malformed));
                assert_eq!(r.problems[0].field, "spec.containers");
                assert_eq!(t["spec"]["containers"], "app");
            },
        ),
        (
            "classic Job (Never): the app runs under await, the proxy always stops",
            pod(
                json!({}),
                json!({
                    "restartPolicy": "Never",
                    "containers": [{"name": "migrate", "image": "m", "command": ["/bin/migrate"], "args": ["--all"]}],
                }),
            ),
            Mode::Classic,
            |t, r| {
                assert!(
                    matches!(r.outcome, Outcome::Injected { awaited: true, .. }),
                    "{r:?}"
                );
                let app = &t["spec"]["containers"][1];
                assert_eq!(
                    app["command"],
                    json!([
                        "/var/run/sluice/bin/sluice-proxy",
                        "await",
                        "--shutdown=always",
                        "--",
                        "/bin/migrate"
                    ])
                );
                assert_eq!(app["args"], json!(["--all"]));
                assert!(
                    init(t)["args"]
                        .as_array()
                        .is_some_and(|a| a.contains(&json!("--copy-to=/var/run/sluice/bin")))
                );
                assert_eq!(
                    t["metadata"]["annotations"][INJECTED],
                    "classic,init-containers,volumes,service-account,await,default-container"
                );
            },
        ),
        (
            "classic OnFailure: the proxy stops only after a success",
            pod(
                json!({}),
                json!({
                    "restartPolicy": "OnFailure",
                    "containers": [{"name": "report", "image": "r", "command": ["report"]}],
                }),
            ),
            Mode::Classic,
            |t, _| {
                assert_eq!(
                    t["spec"]["containers"][1]["command"][2],
                    "--shutdown=on-success"
                );
            },
        ),
        (
            "classic Job without a command: injected, with the problem saying what to do",
            pod(
                json!({}),
                json!({"restartPolicy": "Never", "containers": [{"name": "job", "image": "j"}]}),
            ),
            Mode::Classic,
            |t, r| {
                assert!(matches!(
                    r.outcome,
                    Outcome::Injected { awaited: false, .. }
                ));
                assert!(t["spec"]["containers"][1].get("command").is_none());
                assert_eq!(r.problems[0].field, "spec.containers[0].command");
                assert!(r.problems[0].message.contains("1.29"), "{}", r.problems[0]);
            },
        ),
        (
            "native Job: nothing wraps the app, the kubelet stops native sidecars itself",
            pod(
                json!({}),
                json!({"restartPolicy": "Never", "containers": [{"name": "job", "image": "j"}]}),
            ),
            Mode::Native,
            |t, r| {
                assert!(matches!(
                    r.outcome,
                    Outcome::Injected { awaited: false, .. }
                ));
                assert!(r.problems.is_empty());
                assert!(t["spec"]["containers"][0].get("command").is_none());
            },
        ),
    ];
    for (name, mut template, mode, check) in cases {
        let original = template.clone();
        let report = inject(&mut template, "payments", &config(mode));
        check(&template, &report);
        // Idempotent: a second pass changes nothing and says so.
        let once = template.clone();
        let again = inject(&mut template, "payments", &config(mode));
        assert_eq!(template, once, "{name}: injecting twice differs from once");
        if matches!(report.outcome, Outcome::Injected { .. }) {
            assert_eq!(
                again.outcome,
                Outcome::Skipped(Skip::AlreadyInjected),
                "{name}"
            );
            // And uninject removes exactly what was added.
            assert!(uninject(&mut template), "{name}");
            assert_eq!(
                template, original,
                "{name}: uninject did not restore the original"
            );
        }
    }
}

#[test]
fn mode_follows_the_server_version() {
    for (major, minor, mode) in [
        (1, 20, Mode::Classic),
        (1, 28, Mode::Classic),
        (1, 29, Mode::Native),
        (1, 33, Mode::Native),
        (2, 0, Mode::Native),
    ] {
        assert_eq!(Mode::for_server(major, minor), mode, "{major}.{minor}");
    }
}

#[test]
fn uninject_leaves_a_pod_that_was_never_injected_alone() {
    let mut t = pod(json!({"keep": "me"}), web());
    let before = t.clone();
    assert!(!uninject(&mut t));
    assert_eq!(t, before);
}

#[test]
fn workload_kinds_have_templates() {
    for (kind, found) in [
        ("Deployment", true),
        ("StatefulSet", true),
        ("DaemonSet", true),
        ("ReplicaSet", true),
        ("Job", true),
        ("CronJob", true),
        ("Pod", true),
        ("Service", false),
        ("ConfigMap", false),
    ] {
        let mut object = json!({"kind": kind, "spec": {"template": {}, "jobTemplate": {"spec": {"template": {}}}}});
        assert_eq!(template_mut(&mut object).is_some(), found, "{kind}");
    }
}

#[test]
fn the_controller_address_must_be_tls() {
    for (text, ok) in [
        ("https://sluice-controller.sluice.svc:7071", true),
        ("https://10.0.0.1:7071/", true),
        ("https://[fd00::1]:7071", true),
        // The proxy refuses these at start, in every pod: refused here first.
        ("http://sluice-controller.sluice.svc:7071", false),
        ("sluice-controller.sluice.svc:7071", false),
        ("https://sluice-controller.sluice.svc", false),
        ("https://:7071", false),
        ("https://host/path:7071", false),
    ] {
        let parsed = parse_controller_addr(text);
        assert_eq!(parsed.is_ok(), ok, "{text}: {parsed:?}");
        if let Err(e) = parsed {
            assert!(e.contains("https://HOST:PORT"), "{e}");
        }
    }
}
